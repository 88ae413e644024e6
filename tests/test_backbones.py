"""Backbones: every registered one builds, runs forward/backward at 32x32 for 1 and 3 channels,
and matches its reference (paper parameter counts, torchvision's ResNets, YOLO strides)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import attnzoo
from attnzoo.backbones import backbone_info, create_backbone, list_backbones
from attnzoo.backbones.resnet import BasicBlock, Bottleneck, ShortcutA

ALL = list_backbones()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_kwargs(name: str) -> dict:
    """Keyword arguments that make a backbone suited to 32-pixel inputs."""
    return {"stem": "cifar"} if name in ("resnet18", "resnet34", "resnet50") else {}


def test_public_api_exports_backbone_factory():
    assert attnzoo.create_backbone is create_backbone
    assert attnzoo.list_backbones is list_backbones
    assert {"resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "resnet34", "resnet50"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_backbone_forward_backward_at_32_pixels(name, in_chans):
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=7, in_chans=in_chans, **small_kwargs(name))
    x = torch.randn(2, in_chans, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert model.stage_names[0] and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", ALL)
def test_backbone_attributes_and_metadata(name):
    model = create_backbone(name, num_classes=5, in_chans=1, **small_kwargs(name))
    assert model.num_classes == 5 and model.in_chans == 1
    meta = backbone_info(name).metadata
    for key in ("family", "paper", "year", "link", "default_position", "input_size"):
        assert key in meta, key
    assert model.default_attn_position == meta["default_position"]
    assert model.default_input_size[0] == 1
    for stage in model.stage_names:
        assert isinstance(getattr(model, stage), nn.Sequential)
    # forward == forward_head(forward_features)
    model.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


@pytest.mark.parametrize("name,stages", [
    ("resnet20", ["layer1", "layer2", "layer3"]),
    ("resnet110", ["layer1", "layer2", "layer3"]),
    ("resnet18", ["layer1", "layer2", "layer3", "layer4"]),
    ("resnet50", ["layer1", "layer2", "layer3", "layer4"]),
])
def test_resnet_stage_names(name, stages):
    assert create_backbone(name, num_classes=10).stage_names == stages


# He et al. 2016, Table 6: #params of the CIFAR-10 ResNets, rounded as the paper prints them.
@pytest.mark.parametrize("name,paper_millions,digits", [
    ("resnet20", 0.27, 2), ("resnet32", 0.46, 2), ("resnet56", 0.85, 2), ("resnet110", 1.7, 1),
])
def test_cifar_resnet_parameter_count_matches_paper_table6(name, paper_millions, digits):
    model = create_backbone(name, num_classes=10)
    assert round(n_params(model) / 1e6, digits) == paper_millions


def test_cifar_resnet_blocks_and_widths_follow_section_4_2():
    model = create_backbone("resnet56", num_classes=10)
    assert [len(getattr(model, s)) for s in model.stage_names] == [9, 9, 9]
    assert [getattr(model, s)[0].conv1.out_channels for s in model.stage_names] == [16, 32, 64]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert feats.shape == (1, 64, 8, 8)


def test_cifar_resnet_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    model = create_backbone("resnet20", num_classes=10)
    assert model.layer1[0].downsample is None
    ds = model.layer2[0].downsample
    assert isinstance(ds, ShortcutA) and n_params(ds) == 0
    x = torch.arange(2 * 16 * 5 * 5, dtype=torch.float32).reshape(2, 16, 5, 5)
    y = ds(x)
    assert y.shape == (2, 32, 3, 3)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


def test_cifar_resnet_option_b_uses_projection_shortcuts():
    a = create_backbone("resnet20", num_classes=10)
    b = create_backbone("resnet20", num_classes=10, shortcut="B")
    ds = b.layer2[0].downsample
    assert isinstance(ds, nn.Sequential) and isinstance(ds[0], nn.Conv2d) and ds[0].kernel_size == (1, 1)
    # two projections 16->32, 32->64 (1x1 conv + BN each)
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert n_params(b) - n_params(a) == extra


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_imagenet_resnet_parameter_count_equals_torchvision(name):
    ours = create_backbone(name, num_classes=1000, stem="imagenet")
    ref = getattr(torchvision.models, name)(weights=None)
    assert n_params(ours) == n_params(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_resnet_matches_torchvision_output_with_copied_weights(name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    ours = create_backbone(name, num_classes=10).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_cifar_stem_keeps_resolution_and_imagenet_stem_divides_by_four():
    cifar = create_backbone("resnet18", num_classes=10, stem="cifar")
    imnet = create_backbone("resnet18", num_classes=10).eval()
    cifar.eval()
    assert cifar.default_input_size == (3, 32, 32) and imnet.default_input_size == (3, 224, 224)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert cifar.forward_features(x).shape == (1, 512, 4, 4)
        assert imnet.forward_features(x).shape == (1, 512, 1, 1)


def test_zero_init_residual_zeroes_last_bn_of_every_block():
    basic = create_backbone("resnet20", num_classes=10, zero_init_residual=True)
    blocks = [m for m in basic.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9 and all(int(torch.count_nonzero(b.bn2.weight)) == 0 for b in blocks)
    bott = create_backbone("resnet50", num_classes=10, zero_init_residual=True)
    blocks = [m for m in bott.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(int(torch.count_nonzero(b.bn3.weight)) == 0 for b in blocks)
    default = create_backbone("resnet20", num_classes=10)
    assert all(bool((b.bn2.weight == 1).all()) for b in default.modules() if isinstance(b, BasicBlock))


def test_zero_init_residual_makes_blocks_identity_maps_in_eval():
    model = create_backbone("resnet32", num_classes=10, zero_init_residual=True).eval()
    block = model.layer2[1]
    x = torch.randn(1, 32, 8, 8).relu()
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_unknown_backbone_name_raises_key_error_with_suggestion():
    with pytest.raises(KeyError, match=r"did you mean 'resnet20'.*list_backbones\(\)"):
        create_backbone("resnet200")


def test_unknown_backbone_kwarg_raises_type_error_naming_accepted_ones():
    with pytest.raises(TypeError, match=r"\['stem'\].*shortcut='A'.*zero_init_residual=False"):
        create_backbone("resnet20", stem="cifar")


@pytest.mark.parametrize("kwargs,match", [
    ({"stem": "tiny"}, "stem must be 'imagenet'"),
    ({"num_classes": 0}, "num_classes must be a positive int"),
    ({"in_chans": 0}, "in_chans must be a positive int"),
])
def test_bad_backbone_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_backbone("resnet18", **kwargs)


def test_wrong_input_channels_raise_value_error():
    model = create_backbone("resnet20", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        model(torch.randn(1, 3, 32, 32))


def test_list_backbones_filters_by_pattern_and_family():
    assert list_backbones("resnet1*") == ["resnet110", "resnet18"]
    assert set(list_backbones(family="resnet")) >= {"resnet20", "resnet50"}
    with pytest.raises(ValueError, match="family"):
        list_backbones(family="vit")


def test_create_backbone_attn_inserts_at_default_position():
    insertion = pytest.importorskip("attnzoo.insertion")
    plain = create_backbone("resnet20", num_classes=10)
    model = create_backbone("resnet20", num_classes=10, attn="se")
    assert n_params(model) > n_params(plain)
    ref = create_backbone("resnet20", num_classes=10)
    insertion.insert_attn(ref, "se", position=ref.default_attn_position)
    assert n_params(model) == n_params(ref)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
