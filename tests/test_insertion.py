"""insert_attn: timm parity, site counts, where each position puts its block, errors, export."""
from __future__ import annotations

import copy
import io
import json

import pytest
import timm
import torch
import torchvision
from timm.models import cspnet as timm_csp
from timm.models import resnet as timm_resnet
from torch import nn

from attnzoo import create_backbone, insert_attn, list_attn, list_backbones
from attnzoo.backbones import resnet as az_resnet
from attnzoo.insertion import IdentityInit, InsertReport


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model: nn.Module):
    """Everything a failed insertion must leave unchanged: values, keys, module classes and repr."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, type(m)) for n, m in model.named_modules()],
        repr(model),
    )


def assert_unchanged(model: nn.Module, snap) -> None:
    state, structure, text = snap
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert [(n, type(m)) for n, m in model.named_modules()] == structure
    assert repr(model) == text


# -- timm parity ----------------------------------------------------------------------------------
# Every (plain model, timm's attention model, block, kwargs, position) pair timm 1.0.31 offers in
# its ResNet and CSPNet families. Not listed: the byobnet models (seresnet33ts, eca_resnet33ts,
# gcresnet33ts, gcresnet50t, ...: not hosts of insert_attn), skresnet* (SK replaces conv2, it is not
# an insertion), legacy_seresnet* (a different network class), nf_* (norm-free nets), resnetrs* and
# senet154/seresnet269d/ecaresnetlight/*_pruned (no plain twin in timm).
TIMM_PAIRS = [
    ("resnet18", "seresnet18", "se", {}, "standard"),
    ("resnet34", "seresnet34", "se", {}, "standard"),
    ("resnet50", "seresnet50", "se", {}, "standard"),
    ("resnet50t", "seresnet50t", "se", {}, "standard"),
    ("resnet101", "seresnet101", "se", {}, "standard"),
    ("resnet152", "seresnet152", "se", {}, "standard"),
    ("resnet152d", "seresnet152d", "se", {}, "standard"),
    ("resnet200d", "seresnet200d", "se", {}, "standard"),
    ("resnetaa50d", "seresnetaa50d", "se", {}, "standard"),
    ("resnext50_32x4d", "seresnext50_32x4d", "se", {}, "standard"),
    ("resnext101_32x4d", "seresnext101_32x4d", "se", {}, "standard"),
    ("resnext101_32x8d", "seresnext101_32x8d", "se", {}, "standard"),
    ("resnext101_64x4d", "seresnext101_64x4d", "se", {}, "standard"),
    ("resnet26t", "ecaresnet26t", "eca", {}, "standard"),
    ("resnet50d", "ecaresnet50d", "eca", {}, "standard"),
    ("resnet50t", "ecaresnet50t", "eca", {}, "standard"),
    ("resnet101d", "ecaresnet101d", "eca", {}, "standard"),
    ("resnet200d", "ecaresnet200d", "eca", {}, "standard"),
    ("darknet21", "sedarknet21", "se", {"act_layer": "leaky_relu"}, "after_conv1"),
    ("cs3darknet_l", "cs3sedarknet_l", "se", {"rd_ratio": 0.25, "act_layer": "silu"}, "after_conv1"),
    ("cs3darknet_x", "cs3sedarknet_x", "se", {"act_layer": "silu"}, "after_conv1"),
    ("cs3edgenet_x", "cs3se_edgenet_x", "se", {"rd_ratio": 0.25, "act_layer": "silu"}, "after_conv1"),
]
# The pairs whose outputs are also compared (the others would cost seconds each to initialise).
OUTPUT_PAIRS = {"seresnet18", "seresnet50", "ecaresnet26t", "ecaresnet50d", "seresnext50_32x4d", "seresnetaa50d",
                "sedarknet21", "cs3sedarknet_l"}


@pytest.mark.parametrize("plain,attn_model,attn,kwargs,position", TIMM_PAIRS, ids=[p[1] for p in TIMM_PAIRS])
def test_insertion_gives_timm_attention_model_parameters_and_keys(plain, attn_model, attn, kwargs, position):
    """Built on the meta device (shapes only): same parameter count, same state_dict keys and shapes."""
    with torch.device("meta"):
        model = timm.create_model(plain)
        reference = timm.create_model(attn_model)
    before = n_params(model)
    report = insert_attn(model, attn, position=position, input_size=(3, 64, 64), **kwargs)
    assert n_params(model) == n_params(reference)
    assert n_params(model) - before == report.total_params
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs


@pytest.mark.parametrize("plain,attn_model,attn,kwargs,position",
                         [p for p in TIMM_PAIRS if p[1] in OUTPUT_PAIRS], ids=sorted(OUTPUT_PAIRS, key=[p[1] for p in TIMM_PAIRS].index))
def test_insertion_with_copied_weights_matches_timm_attention_model_outputs(plain, attn_model, attn, kwargs, position):
    torch.manual_seed(0)
    model = timm.create_model(plain)
    insert_attn(model, attn, position=position, input_size=(3, 64, 64), **kwargs)
    with torch.device("meta"):
        reference = timm.create_model(attn_model)
    reference = reference.to_empty(device="cpu")
    reference.load_state_dict(model.state_dict(), strict=True)
    model.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


# -- counts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("position,stages,blocks,expected", [
    ("standard", [3, 4], "last", 2),
    ("standard", "all", "all", 8),
    ("post", 2, "first", 1),
    ("identity", [1, 2, 3, 4], [0, -1], 8),
    ("after_conv1", "all", 1, 4),
    ("pre", [4], "all", 2),
])
def test_site_count_per_position_stage_and_block_selection(position, stages, blocks, expected):
    model = torchvision.models.resnet18()
    before = n_params(model)
    report = insert_attn(model, "se", position=position, stages=stages, blocks=blocks, input_size=(32, 32))
    assert len(report.sites) == expected
    assert n_params(model) - before == report.total_params


def test_bottleneck_positions_count_every_block_of_resnet50():
    model = torchvision.models.resnet50()
    report = insert_attn(model, "eca", position="after_conv2", input_size=(32, 32))
    assert len(report.sites) == 3 + 4 + 6 + 3
    assert [s.channels for s in report.sites[:3]] == [64, 64, 64]  # width of conv2 in stage 1
    assert report.sites[-1].channels == 512


@pytest.mark.parametrize("name,position,expected", [
    ("yolov8n", "block", 4), ("yolov8n", "sppf", 1), ("yolov8n", "bottleneck", 1 + 2 + 2 + 1),
    ("yolo11n", "block", 4), ("resnet20", "standard", 9), ("resnet20", "post", 9),
])
def test_site_count_on_attnzoo_backbones(name, position, expected):
    model = create_backbone(name, num_classes=10)
    before = n_params(model)
    report = insert_attn(model, "cbam", position=position, input_size=(32, 32))
    assert len(report.sites) == expected
    assert n_params(model) - before == report.total_params


def test_report_spatial_sizes_and_channels_come_from_the_dummy_forward():
    model = torchvision.models.resnet18()
    report = insert_attn(model, "se", position="standard", blocks="last", input_size=(3, 64, 64))
    assert [(s.channels, s.spatial) for s in report.sites] == [
        (64, (16, 16)), (128, (8, 8)), (256, (4, 4)), (512, (2, 2))]
    assert [s.path for s in report.sites] == [f"layer{k}.1.attn_standard" for k in range(1, 5)]
    # se at 512 channels: rd = 32; FLOPs = 2 * (512*32 + 32*512) counted by torch's counter
    assert report.sites[-1].flops == 2 * 2 * 512 * 32
    assert report.total_flops == sum(s.flops for s in report.sites)


def test_report_prints_a_table_and_serialises_to_json():
    model = torchvision.models.resnet18()
    report = insert_attn(model, "cbam", position="standard", stages=[4], input_size=(32, 32))
    text = str(report)
    assert "layer4.0.attn_standard" in text and "layer4.1.attn_standard" in text
    assert f"{report.total_params:,}" in text.splitlines()[-2]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total_params"] == report.total_params and len(data["sites"]) == 2


# -- where each position puts its block -----------------------------------------------------------
class Recorder(nn.Module):
    """An identity block that keeps a copy of what reaches it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return x


def _tv_basic(b, x):
    a1 = b.relu(b.bn1(b.conv1(x)))
    return {"after_conv1": a1, "standard": b.bn2(b.conv2(a1))}


def _tv_bottleneck(b, x):
    a1 = b.relu(b.bn1(b.conv1(x)))
    a2 = b.relu(b.bn2(b.conv2(a1)))
    return {"after_conv1": a1, "after_conv2": a2, "standard": b.bn3(b.conv3(a2))}


def _timm_basic(b, x):
    a1 = b.aa(b.act1(b.drop_block(b.bn1(b.conv1(x)))))
    return {"after_conv1": a1, "standard": b.bn2(b.conv2(a1))}


def _timm_bottleneck(b, x):
    a1 = b.act1(b.bn1(b.conv1(x)))
    a2 = b.aa(b.act2(b.drop_block(b.bn2(b.conv2(a1)))))
    return {"after_conv1": a1, "after_conv2": a2, "standard": b.bn3(b.conv3(a2))}


def _csp_bottleneck(b, x):
    a1 = b.conv1(x)
    a2 = b.conv2(a1)
    return {"after_conv1": a1, "after_conv2": a2, "standard": b.conv3(a2)}


def _dark(b, x):
    a1 = b.conv1(x)
    return {"after_conv1": a1, "standard": b.conv2(a1)}


def _downsample(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))


HOSTS = {
    "tv_basic": (lambda: torchvision.models.resnet.BasicBlock(8, 16, 2, _downsample(8, 16)), 8, _tv_basic),
    "tv_bottleneck": (lambda: torchvision.models.resnet.Bottleneck(16, 4, 2, _downsample(16, 16)), 16, _tv_bottleneck),
    "az_basic": (lambda: az_resnet.BasicBlock(8, 16, 2, _downsample(8, 16)), 8, _tv_basic),
    "az_bottleneck": (lambda: az_resnet.Bottleneck(16, 4, 1, None), 16, _tv_bottleneck),
    "timm_basic": (lambda: timm_resnet.BasicBlock(8, 16, 2, _downsample(8, 16)), 8, _timm_basic),
    "timm_bottleneck": (lambda: timm_resnet.Bottleneck(16, 4, 2, _downsample(16, 16)), 16, _timm_bottleneck),
    "csp_bottleneck": (lambda: timm_csp.BottleneckBlock(16, 16), 16, _csp_bottleneck),
    "csp_dark": (lambda: timm_csp.DarkBlock(16, 16), 16, _dark),
    "csp_edge": (lambda: timm_csp.EdgeBlock(16, 16), 16, _dark),
}
CASES = [(h, p) for h, (_, _, f) in HOSTS.items()
         for p in ["pre", "identity", "post", "standard", "after_conv1", "after_conv2"]
         if p in ("pre", "identity", "post") or p in f(HOSTS[h][0]().eval(), torch.zeros(1, HOSTS[h][1], 8, 8))]


@pytest.mark.parametrize("host,position", CASES, ids=[f"{h}-{p}" for h, p in CASES])
def test_each_position_feeds_its_block_the_tensor_it_claims(host, position):
    make, cin, branch = HOSTS[host]
    torch.manual_seed(0)
    block = make()
    for m in block.modules():  # non-trivial norm statistics, so a wrong site cannot match by chance
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
    block.eval()
    x = torch.randn(2, cin, 8, 8)
    with torch.no_grad():
        original_out = block(x.clone())
        expected = {
            "pre": x,
            "identity": block.downsample(x) if getattr(block, "downsample", None) is not None else x,
            "post": original_out,
            **branch(block, x.clone()),
        }[position]
        insert_attn(block, Recorder, position=position, input_size=(cin, 8, 8))
        recorder = next(m for m in block.modules() if isinstance(m, Recorder))
        out = block(x.clone())
    torch.testing.assert_close(recorder.seen, expected)
    torch.testing.assert_close(out, original_out)  # the recorder is an identity: the host's forward is kept


def test_yolo_positions_feed_their_block_the_tensor_they_claim():
    torch.manual_seed(0)
    model = create_backbone("yolov8n", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    seen = {}
    hooks = [model.stage2[1].register_forward_hook(lambda m, i, o: seen.__setitem__("block", o.clone())),
             model.sppf.register_forward_hook(lambda m, i, o: seen.__setitem__("sppf", o.clone())),
             model.stage2[1].m[0].cv2.register_forward_hook(lambda m, i, o: seen.__setitem__("bottleneck", o.clone()))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for position, path in [("block", "stage2.1.attn_block"), ("sppf", "sppf.attn_sppf"),
                           ("bottleneck", "stage2.1.m.0.attn_bottleneck")]:
        m = copy.deepcopy(model)
        insert_attn(m, Recorder, position=position, stages=[2, 4] if position != "sppf" else "all",
                    blocks="first", input_size=(32, 32))
        with torch.no_grad():
            m(x)
        torch.testing.assert_close(m.get_submodule(path).seen, seen[position])


def test_after_glob_inserts_after_each_matching_module():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    outs = {}
    hooks = [model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: outs.__setitem__(p, o.clone()))
             for p in ("layer3.0.bn2", "layer3.1.bn2")]
    with torch.no_grad():
        reference = model(x)
    for h in hooks:
        h.remove()
    report = insert_attn(model, Recorder, position="after:layer3.*.bn2", input_size=(32, 32))
    assert [(s.host, s.channels, s.spatial) for s in report.sites] == [
        ("layer3.0.bn2", 256, (2, 2)), ("layer3.1.bn2", 256, (2, 2))]
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)
    for p in outs:
        torch.testing.assert_close(model.get_submodule(p).attn_after.seen, outs[p])


# -- every block into every backbone --------------------------------------------------------------
# One representative backbone per host block type: the full list_attn() x list_backbones() grid
# (~480 cases) takes several minutes on 2 CPU cores, and the blocks of larger members of a family
# are the same classes at other widths. resnet50 (imagenet stem) gets its blocks in stage 1 only,
# where a 32x32 input gives 8x8 maps: GAM's 7x7 convs at 2048 channels alone cost ~20 s per case.
REPRESENTATIVES = {
    "resnet20": dict(kwargs={}, stages="all"),  # attnzoo BasicBlock, 16/32/64 channels
    "resnet50": dict(kwargs={}, stages=[1]),  # attnzoo Bottleneck, 256 channels
    "yolov8n": dict(kwargs={}, stages="all"),  # C2f
    "yolo11n": dict(kwargs={}, stages="all"),  # C3k2
}


@pytest.mark.parametrize("backbone", list(REPRESENTATIVES))
@pytest.mark.parametrize("attn", list_attn())
def test_every_block_inserts_into_each_host_type_at_default_position_and_trains(attn, backbone):
    """Default position of each backbone, 32x32 input, batch 2: forward and backward."""
    spec = REPRESENTATIVES[backbone]
    model = create_backbone(backbone, num_classes=5, **spec["kwargs"])
    report = insert_attn(model, attn, stages=spec["stages"], input_size=(32, 32))
    assert len(report.sites) > 0
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    out.sum().backward()
    grads = [p.grad for s in report.sites for p in model.get_submodule(s.path).parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_backbone_takes_a_block_at_its_default_position_and_trains(backbone):
    model = create_backbone(backbone, num_classes=5)
    before = n_params(model)
    report = insert_attn(model, "eca", input_size=(32, 32))
    assert report.position == model.default_attn_position and len(report.sites) > 0
    assert n_params(model) - before == report.total_params
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is not None for s in report.sites for p in model.get_submodule(s.path).parameters())


# -- init="identity" and pretrained weights -------------------------------------------------------
@pytest.mark.parametrize("attn,position", [("se", "standard"), ("cbam", "post"), ("mhsa", "after_conv2"),
                                           ("nonlocal", "pre"), ("eca", "identity")])
def test_identity_init_leaves_pretrained_outputs_unchanged(attn, position):
    torch.manual_seed(0)
    model = timm.create_model("resnet26", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    report = insert_attn(model, attn, position=position, stages=[3, 4], init="identity", input_size=(64, 64))
    assert all(isinstance(model.get_submodule(s.path), IdentityInit) for s in report.sites)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_default_init_changes_outputs():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    insert_attn(model, "se", input_size=(32, 32))
    with torch.no_grad():
        assert not torch.allclose(model(x), before, atol=1e-4)


def test_pretrained_state_dict_survives_insertion_and_loads_after_it():
    torch.manual_seed(0)
    pretrained = torchvision.models.resnet50().state_dict()
    model = torchvision.models.resnet50()
    model.load_state_dict(pretrained)
    report = insert_attn(model, "cbam", position="standard", init="identity", input_size=(32, 32))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pretrained.items())  # original keys and values kept
    new_keys = set(state) - set(pretrained)
    assert new_keys and all(any(k.startswith(s.path + ".") for s in report.sites) for k in new_keys)
    fresh = torchvision.models.resnet50()
    insert_attn(fresh, "cbam", position="standard", init="identity", input_size=(32, 32))
    result = fresh.load_state_dict(pretrained, strict=False)
    # BatchNorm inside a block does not report a missing num_batches_tracked; everything else is listed
    assert set(result.missing_keys) == {k for k in new_keys if not k.endswith("num_batches_tracked")}
    assert not result.unexpected_keys


# -- errors leave the model exactly as it was -----------------------------------------------------
def test_inserting_twice_at_the_same_site_raises_and_changes_nothing():
    model = torchvision.models.resnet18()
    insert_attn(model, "se", position="standard", stages=[4], input_size=(32, 32))
    snap = snapshot(model)
    with pytest.raises(ValueError, match="already holds a block"):
        insert_attn(model, "eca", position="standard", input_size=(32, 32))
    assert_unchanged(model, snap)
    insert_attn(model, "eca", position="identity", stages=[4], input_size=(32, 32))  # another site is fine


def test_timm_attention_model_refuses_a_second_block_at_its_own_slot():
    with torch.device("meta"):
        model = timm.create_model("seresnet18")
    with pytest.raises(ValueError, match=r"layer1\.0\.se already holds a block"):
        insert_attn(model, "se", input_size=(32, 32))


def test_position_the_host_lacks_names_the_positions_it_has():
    model = torchvision.models.resnet18()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"'after_conv2'.*torchvision BasicBlock: standard, pre, post, identity, after_conv1"):
        insert_attn(model, "se", position="after_conv2", input_size=(32, 32))
    with pytest.raises(ValueError, match="'sppf'"):
        insert_attn(model, "se", position="sppf", input_size=(32, 32))
    with pytest.raises(ValueError, match="unknown position 'standart'; did you mean 'standard'"):
        insert_attn(model, "se", position="standart")
    assert_unchanged(model, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(position="after:layer9.*"), "no module name matches"),
    (dict(stages=[5]), r"stages \[5\] do not exist: this model has 4 stages"),
    (dict(blocks=[2]), r"block indices \[2\] do not exist"),
    (dict(position="after:layer1"), "a Sequential"),
    (dict(position="after:layer1.0.relu"), "runs 2 times"),
    (dict(position="after:fc"), r"shape \(1, 1000\)"),
])
def test_no_matching_site_raises_and_changes_nothing(kwargs, match):
    model = torchvision.models.resnet18()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        insert_attn(model, "se", input_size=(32, 32), **kwargs)
    assert_unchanged(model, snap)


def test_unknown_model_without_hosts_points_to_the_glob_fallback():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    with pytest.raises(ValueError, match="after:<glob>"):
        insert_attn(model, "se", input_size=(16, 16))
    report = insert_attn(model, "se", position="after:1", input_size=(16, 16), rd_ratio=0.25)
    assert report.sites[0].channels == 8


def test_block_that_cannot_take_the_channels_raises_and_changes_nothing():
    model = create_backbone("resnet20")
    snap = snapshot(model)
    # mhsa needs channels divisible by num_heads; stage 1 has 16 channels, stage 2 has 32, so the
    # failure comes after sites that would have worked: nothing may have been inserted by then.
    with pytest.raises(ValueError, match=r"cannot insert mhsa\(num_heads=12\) at layer1.0.attn_standard \(16 channels"):
        insert_attn(model, "mhsa", num_heads=12)
    with pytest.raises(ValueError, match=r"rd_ratio"):
        insert_attn(model, "se", rd_ratio=0.01, stages=[2, 3])
    with pytest.raises(KeyError, match="unknown attention block 'sse'"):
        insert_attn(model, "sse")
    assert_unchanged(model, snap)


def test_failure_while_applying_restores_the_model(monkeypatch):
    """A failure during the mutation step itself (after some sites were filled) is rolled back."""
    import attnzoo.insertion.insert as insert_mod

    model = torchvision.models.resnet18()
    snap = snapshot(model)
    real_fill = insert_mod._fill
    calls = {"n": 0}

    def failing_fill(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure")
        return real_fill(*args)

    monkeypatch.setattr(insert_mod, "_fill", failing_fill)
    monkeypatch.setattr(insert_mod, "_probe", lambda model, sites, size: [(64, 8, 8)] * 2 + [(128, 4, 4)] * 2
                        + [(256, 2, 2)] * 2 + [(512, 1, 1)] * 2)
    with pytest.raises(RuntimeError, match="simulated failure"):
        insert_attn(model, "se", position="pre", input_size=(32, 32))
    assert calls["n"] == 3
    assert_unchanged(model, snap)


def test_attn_none_inserts_nothing():
    model = torchvision.models.resnet18()
    snap = snapshot(model)
    report = insert_attn(model, None)
    assert isinstance(report, InsertReport) and report.total_params == 0 and not report.sites
    assert_unchanged(model, snap)


# -- training, pickling, compile, ONNX ------------------------------------------------------------
def test_modified_model_trains_and_pickles():
    torch.manual_seed(0)
    model = create_backbone("resnet20", num_classes=3)
    report = insert_attn(model, "cbam", position="post", init="identity", stages=[3])
    alphas = [model.get_submodule(s.path).alpha for s in report.sites]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(a.item() != 0 for a in alphas)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_modified_model_works_under_torch_compile():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    insert_attn(model, "cbam", position="identity", stages=[4], input_size=(32, 32))
    insert_attn(model, "se", position="after:layer3.1.bn1", input_size=(32, 32))
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_modified_model_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    insert_attn(model, "se", position="standard", stages=[3, 4], input_size=(32, 32))
    insert_attn(model, "eca", position="pre", stages=[2], blocks="last", input_size=(32, 32))
    insert_attn(model, "se", position="after:layer1.0.bn1", input_size=(32, 32))
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)


# -- the glob follows module names ----------------------------------------------------------------
@pytest.mark.parametrize("pattern,name,matches", [
    ("layer3.*.bn2", "layer3.0.bn2", True),
    ("layer3.*.bn2", "layer3.0.downsample.bn2", False),  # '*' never crosses a dot
    ("layer3.**.bn2", "layer3.0.downsample.bn2", True),  # '**' does
    ("layer3.**", "layer3.0.downsample.0", True),
    ("layer?.0", "layer3.0", True),
    ("layer?.0", "layer.3.0", False),  # '?' is not a dot either
    ("layer[12].0", "layer3.0", False),
    ("layer[!12].0", "layer3.0", True),
])
def test_glob_star_stays_in_a_segment_and_double_star_crosses(pattern, name, matches):
    from attnzoo.insertion.glob import glob_to_regex

    assert bool(glob_to_regex(pattern).match(name)) is matches


def test_glob_on_convnext_blocks_matches_the_blocks_not_their_insides():
    with torch.device("meta"):
        model = timm.create_model("convnext_atto")
    from attnzoo.insertion.glob import match_glob

    names = [n for n, _ in match_glob(model, "stages.*.blocks.*", set())]
    assert len(names) == 2 + 2 + 6 + 2 and all(n.count(".") == 3 for n in names)


def test_glob_matching_several_classes_warns_and_names_them():
    model = torchvision.models.mobilenet_v3_small()
    with pytest.warns(UserWarning, match=r"2 classes: InvertedResidual \(11\), Conv2dNormActivation \(2\)"):
        report = insert_attn(model, "eca", position="after:features.*", input_size=(64, 64))
    assert len(report.sites) == 13


def test_glob_reaches_torchvision_sequential_blocks_through_their_last_child():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    x = torch.randn(1, 3, 64, 64)
    seen = {}
    hook = model.features[0].register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.clone()))
    with torch.no_grad():
        reference = model(x)
    hook.remove()
    report = insert_attn(model, Recorder, position="after:features.0", input_size=(64, 64))
    assert [s.host for s in report.sites] == ["features.0.2"]  # Conv2dNormActivation = conv, bn, act
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)
    torch.testing.assert_close(model.get_submodule("features.0.2.attn_after").seen, seen["out"])


def test_glob_on_a_bare_container_says_what_to_match_instead():
    model = torchvision.models.resnet18()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"bare Sequential.*'after:layer1\.\*'.*'after:layer1\.1'"):
        insert_attn(model, "se", position="after:layer1", input_size=(32, 32))
    assert_unchanged(model, snap)


# -- positions of the inverted-residual, RegNet and ConvNeXt hosts --------------------------------
def _new_hosts():
    from functools import partial

    from timm.models import _efficientnet_blocks as eff
    from timm.models import convnext as timm_cnx
    from timm.models import regnet as timm_regnet
    from torchvision.models import convnext as tv_cnx
    from torchvision.models import efficientnet as tv_eff
    from torchvision.models import mobilenetv2 as tv_v2
    from torchvision.models import mobilenetv3 as tv_v3
    from torchvision.models import regnet as tv_regnet

    bn = partial(nn.BatchNorm2d, eps=1e-3)
    seq3 = lambda s, x: {"after_expand": (a := s[0](x)), "after_dw": (d := s[1](a)), "standard": s[3](s[2](d))}  # noqa: E731
    return {
        # name: (make, in channels, branch(block, x) -> {position: tensor the block there must see})
        "tv_mbv2": (lambda: tv_v2.InvertedResidual(8, 8, 1, expand_ratio=4), 8,
                    lambda b, x: {"after_expand": (a := b.conv[0](x)), "after_dw": (d := b.conv[1](a)),
                                  "standard": b.conv[3](b.conv[2](d))}),
        "tv_mbv3": (lambda: tv_v3.InvertedResidual(tv_v3.InvertedResidualConfig(8, 3, 24, 8, True, "HS", 1, 1, 1.0), bn),
                    8, lambda b, x: seq3(b.block, x)),
        "tv_mbconv": (lambda: tv_eff.MBConv(tv_eff.MBConvConfig(4, 3, 1, 8, 8, 1), 0.0, bn), 8,
                      lambda b, x: seq3(b.block, x)),
        "tv_fused": (lambda: tv_eff.FusedMBConv(tv_eff.FusedMBConvConfig(4, 3, 1, 8, 8, 1), 0.0, bn), 8,
                     lambda b, x: {"after_expand": (a := b.block[0](x)), "standard": b.block[1](a)}),
        "timm_ir": (lambda: eff.InvertedResidual(8, 8, exp_ratio=4.0, se_layer=eff.SqueezeExcite), 8,
                    lambda b, x: {"after_expand": (a := b.bn1(b.conv_pw(x))), "after_dw": (d := b.aa(b.bn2(b.conv_dw(a)))),
                                  "standard": b.bn3(b.conv_pwl(b.se(d)))}),
        "timm_ds": (lambda: eff.DepthwiseSeparableConv(8, 8, se_layer=eff.SqueezeExcite), 8,
                    lambda b, x: {"after_dw": (d := b.aa(b.bn1(b.conv_dw(x)))), "standard": b.bn2(b.conv_pw(b.se(d)))}),
        "timm_edge": (lambda: eff.EdgeResidual(8, 8, exp_ratio=4.0), 8,
                      lambda b, x: {"after_expand": (a := b.aa(b.bn1(b.conv_exp(x)))), "standard": b.bn2(b.conv_pwl(b.se(a)))}),
        "tv_regnet": (lambda: tv_regnet.ResBottleneckBlock(8, 16, 2, nn.BatchNorm2d, nn.ReLU, 4, 1.0, 0.25), 8,
                      lambda b, x: {"after_conv1": (a := b.f.a(x)), "after_conv2": (c := b.f.b(a)),
                                    "standard": b.f.c(b.f.se(c)), "identity": b.proj(x)}),
        "timm_regnet": (lambda: timm_regnet.Bottleneck(8, 16, stride=2, group_size=4, se_ratio=0.0), 8,
                        lambda b, x: {"after_conv1": (a := b.conv1(x)), "after_conv2": (c := b.conv2(a)),
                                      "standard": b.conv3(c), "identity": b.downsample(x)}),
        "tv_convnext": (lambda: tv_cnx.CNBlock(8, 0.5, 0.0), 8,
                        lambda b, x: {"after_dw": b.block[0](x), "standard": b.layer_scale * b.block(x)}),
        "timm_convnext": (lambda: timm_cnx.ConvNeXtBlock(8, ls_init_value=0.5), 8,
                          lambda b, x: {"after_dw": b.conv_dw(x), "standard": b.mlp(b.norm(b.conv_dw(x).permute(0, 2, 3, 1)))
                                        .permute(0, 3, 1, 2) * b.gamma.reshape(1, -1, 1, 1)}),
    }


NEW_HOSTS = _new_hosts()
NEW_CASES = [(h, p) for h, (make, cin, f) in NEW_HOSTS.items()
             for p in ["pre", "post", *f(make().eval(), torch.zeros(1, cin, 8, 8))]]


@pytest.mark.parametrize("host,position", NEW_CASES, ids=[f"{h}-{p}" for h, p in NEW_CASES])
def test_each_new_host_position_feeds_its_block_the_tensor_it_claims(host, position):
    make, cin, branch = NEW_HOSTS[host]
    torch.manual_seed(0)
    block = make()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
    block.eval()
    x = torch.randn(2, cin, 8, 8)
    with torch.no_grad():
        original_out = block(x.clone())
        expected = {"pre": x, "post": original_out, **branch(block, x.clone())}[position]
        report = insert_attn(block, Recorder, position=position, input_size=(cin, 8, 8))
        assert len(report.sites) == 1
        recorder = next(m for m in block.modules() if isinstance(m, Recorder))
        out = block(x.clone())
    torch.testing.assert_close(recorder.seen, expected)
    torch.testing.assert_close(out, original_out)


@pytest.mark.parametrize("make,position,expected", [
    (lambda: torchvision.models.mobilenet_v2(), "after_dw", 17),
    (lambda: torchvision.models.mobilenet_v2(), "after_expand", 16),  # the first block does not expand
    (lambda: torchvision.models.mobilenet_v3_small(), "after_expand", 10),
    (lambda: torchvision.models.efficientnet_b0(), "standard", 16),
    (lambda: torchvision.models.regnet_y_400mf(), "after_conv2", 16),  # before torchvision's own SE
    (lambda: torchvision.models.convnext_tiny(), "after_dw", 3 + 3 + 9 + 3),
    (lambda: timm.create_model("mobilenetv3_small_100"), "after_dw", 11),
    (lambda: timm.create_model("efficientnet_b0"), "post", 16),
    (lambda: timm.create_model("regnetx_002"), "after_conv2", 13),  # timm's own (empty) se slot
    (lambda: timm.create_model("convnext_atto"), "standard", 2 + 2 + 6 + 2),
], ids=["tv_mbv2_dw", "tv_mbv2_expand", "tv_mbv3s_expand", "tv_effb0_std", "tv_regnety_conv2", "tv_cnx_t_dw",
        "timm_mbv3s_dw", "timm_effb0_post", "timm_regnetx_conv2", "timm_cnx_atto_std"])
def test_site_count_on_new_host_models_and_they_train(make, position, expected):
    model = make()
    before = n_params(model)
    report = insert_attn(model, "eca", position=position, input_size=(64, 64))
    assert len(report.sites) == expected
    assert n_params(model) - before == report.total_params
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for s in report.sites for p in model.get_submodule(s.path).parameters())


def test_timm_regnety_after_conv2_is_its_own_se_and_points_to_replace():
    model = timm.create_model("regnety_002")
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"s1\.b1\.se already holds a block \(SEModule\).*position='replace'"):
        insert_attn(model, "eca", position="after_conv2", input_size=(64, 64))
    assert_unchanged(model, snap)
    report = insert_attn(model, "eca", position="standard", stages=[4], input_size=(64, 64))
    assert {s.stage for s in report.sites} == {4}  # s1..s4 are its stages


def test_new_hosts_pickle_and_compile():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    insert_attn(model, "eca", position="after_dw", input_size=(64, 64))
    insert_attn(model, "se", position="post", input_size=(64, 64))
    x = torch.randn(1, 3, 64, 64)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).eval()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
