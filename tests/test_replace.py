"""replace_attn: one site per SE-like module, the rest of the network kept, errors change nothing."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from timm.layers import SEModule
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn
from torchvision.ops import SqueezeExcitation

from attnzoo import create_attn, insert_attn, replace_attn
from attnzoo.insertion import IdentityInit

# model -> (builder, number of SE modules it has, the class they are). The counts come from the
# architectures: MobileNetV3-Small has SE in 9 of its 11 bnecks, -Large in 8 of 15 (Howard et al.
# 2019, Tables 1-2); EfficientNet-B0 in all 16 MBConvs; RegNetY-400MF in all 1+3+6+6 blocks;
# RegNetY-200MF in 1+1+4+7; SE-ResNet-18 in all 8 basic blocks.
MODELS = {
    "tv_mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 9, SqueezeExcitation),
    "tv_mobilenet_v3_large": (lambda: torchvision.models.mobilenet_v3_large(num_classes=10), 8, SqueezeExcitation),
    "tv_efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), 16, SqueezeExcitation),
    "tv_regnet_y_400mf": (lambda: torchvision.models.regnet_y_400mf(num_classes=10), 16, SqueezeExcitation),
    "timm_mobilenetv3_small_100": (lambda: timm.create_model("mobilenetv3_small_100", num_classes=10), 9, SqueezeExcite),
    "timm_efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=10), 16, SqueezeExcite),
    "timm_regnety_002": (lambda: timm.create_model("regnety_002", num_classes=10), 13, SEModule),
    "timm_seresnet18": (lambda: timm.create_model("seresnet18", num_classes=10), 8, SEModule),
}


def snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()], repr(model))


def assert_unchanged(model: nn.Module, snap) -> None:
    state, structure, text = snap
    now = model.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)
    assert [(n, type(m)) for n, m in model.named_modules()] == structure and repr(model) == text


def under(key: str, paths) -> bool:
    return any(key.startswith(p + ".") for p in paths)


@pytest.mark.parametrize("name", list(MODELS))
def test_replace_puts_one_block_per_se_module_keeps_other_keys_and_trains(name):
    make, count, se_class = MODELS[name]
    torch.manual_seed(0)
    model = make()
    se_paths = [n for n, m in model.named_modules() if isinstance(m, se_class)]
    assert len(se_paths) == count
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = replace_attn(model, "eca", input_size=(3, 64, 64))
    assert [s.path for s in report.sites] == se_paths
    assert all(s.replaced and se_class.__name__ in s.replaced for s in report.sites)
    eca_type = type(create_attn("eca", 16))
    assert all(type(model.get_submodule(p)) is eca_type for p in se_paths)
    assert not any(isinstance(m, se_class) for m in model.modules())
    # every key outside the replaced modules keeps its name and value; those inside belong to eca
    after = model.state_dict()
    kept = {k for k in before if not under(k, se_paths)}
    assert kept == {k for k in after if not under(k, se_paths)}
    assert all(torch.equal(after[k], before[k]) for k in kept)
    assert report.total_params == sum(v.numel() for k, v in after.items() if under(k, se_paths))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for s in report.sites for p in model.get_submodule(s.path).parameters())


def test_report_channels_are_the_se_modules_input_channels():
    model = torchvision.models.mobilenet_v3_small()
    expected = [m.fc1.in_channels for m in model.modules() if isinstance(m, SqueezeExcitation)]
    report = replace_attn(model, "cbam", input_size=(64, 64))
    assert [s.channels for s in report.sites] == expected
    assert "replace_attn: cbam" in str(report) and "torchvision SqueezeExcitation" in str(report)


def test_identity_init_computes_the_network_without_its_se_modules():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", num_classes=10).eval()
    reference = timm.create_model("mobilenetv3_small_100", num_classes=10).eval()
    reference.load_state_dict(model.state_dict())
    for n, m in list(reference.named_modules()):
        if isinstance(m, SqueezeExcite):
            parent, _, child = n.rpartition(".")
            setattr(reference.get_submodule(parent), child, nn.Identity())
    report = replace_attn(model, "cbam", init="identity", input_size=(64, 64))
    assert all(isinstance(model.get_submodule(s.path), IdentityInit) for s in report.sites)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_insert_attn_position_replace_is_replace_attn():
    a, b = torchvision.models.regnet_y_400mf(), torchvision.models.regnet_y_400mf()
    ra = replace_attn(a, "eca", input_size=(64, 64))
    rb = insert_attn(b, "eca", position="replace", input_size=(64, 64))
    assert ra.to_dict() == rb.to_dict()
    assert len(insert_attn(torchvision.models.regnet_y_400mf(), None, position="replace")) == 0  # like any position
    with pytest.raises(ValueError, match="stages= and blocks= do not apply"):
        insert_attn(torchvision.models.regnet_y_400mf(), "eca", position="replace", stages=[2])


def test_original_checkpoint_loads_after_replacement_with_only_se_keys_unexpected():
    pretrained = timm.create_model("seresnet18").state_dict()
    model = timm.create_model("seresnet18")
    report = replace_attn(model, "eca", input_size=(64, 64))
    result = model.load_state_dict(pretrained, strict=False)
    paths = [s.path for s in report.sites]
    assert result.unexpected_keys and all(under(k, paths) for k in result.unexpected_keys)
    assert result.missing_keys and all(under(k, paths) for k in result.missing_keys)


def test_model_without_se_modules_raises_and_changes_nothing():
    model = torchvision.models.resnet18()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="holds no SE-like module.*insert_attn"):
        replace_attn(model, "eca", input_size=(32, 32))
    assert_unchanged(model, snap)


def test_block_failing_at_a_later_site_raises_and_changes_nothing():
    model = torchvision.models.mobilenet_v3_small()
    snap = snapshot(model)
    # mhsa needs channels divisible by num_heads: the SE sites before features.7 have 16, 96, 240, 240
    # channels, features.7 has 120; the earlier sites were built, none may have been applied
    with pytest.raises(ValueError, match=r"cannot insert mhsa\(num_heads=16\) at features\.7\.block\.2 \(120 channels"):
        replace_attn(model, "mhsa", input_size=(64, 64), num_heads=16)
    with pytest.raises(KeyError, match="unknown attention block"):
        replace_attn(model, "sse")
    assert_unchanged(model, snap)


def test_failure_while_applying_restores_the_model(monkeypatch):
    import attnzoo.insertion.replace as replace_mod

    model = torchvision.models.mobilenet_v3_small()
    snap = snapshot(model)
    real_build = replace_mod._build
    calls = {"n": 0}

    def build_then_break(*args):
        block, flops = real_build(*args)
        calls["n"] += 1
        if calls["n"] == 3:  # a block that assigns fine but whose registration breaks a later step
            block = "not a module"
        return block, flops

    monkeypatch.setattr(replace_mod, "_build", build_then_break)
    with pytest.raises(TypeError):
        replace_attn(model, "eca", input_size=(64, 64))
    assert_unchanged(model, snap)
