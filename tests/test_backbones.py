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
from attnzoo.backbones.yolo import C2f, C3k, C3k2, SPPF, ConvBnAct, YoloBottleneck

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
def test_backbone_runs_on_28_pixel_grey_images(name):
    # Fashion-MNIST: 1 x 28 x 28; odd maps (7, 4, ...) must flow through every downsampling
    model = create_backbone(name, num_classes=10, in_chans=1, **small_kwargs(name)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


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


@pytest.mark.parametrize("name", ["resnet20", "yolov8n", "yolo11n"])
def test_create_backbone_attn_inserts_at_default_position(name):
    insertion = pytest.importorskip("attnzoo.insertion")
    plain = create_backbone(name, num_classes=10)
    model = create_backbone(name, num_classes=10, attn="se")
    assert n_params(model) > n_params(plain)
    ref = create_backbone(name, num_classes=10)
    insertion.insert_attn(ref, "se", position=ref.default_attn_position, input_size=ref.default_input_size)
    assert n_params(model) == n_params(ref)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# YOLO-like backbones
# ---------------------------------------------------------------------------------------------

YOLO = list_backbones(family="yolo")


def test_yolo_names_are_registered():
    assert YOLO == ["yolo11m", "yolo11n", "yolo11s", "yolov8m", "yolov8n", "yolov8s"]


# (stage conv width, block output width, blocks in the stage) for stage1..4, derived by hand from
# yolov8.yaml / yolo11.yaml: ceil(min(c, max_ch) * width / 8) * 8 and max(round(n * depth), 1).
YOLO_PLAN = {
    "yolov8n": (16, [(32, 32, 1), (64, 64, 2), (128, 128, 2), (256, 256, 1)]),
    "yolov8s": (32, [(64, 64, 1), (128, 128, 2), (256, 256, 2), (512, 512, 1)]),
    "yolov8m": (48, [(96, 96, 2), (192, 192, 4), (384, 384, 4), (576, 576, 2)]),
    "yolo11n": (16, [(32, 64, 1), (64, 128, 1), (128, 128, 1), (256, 256, 1)]),
    "yolo11s": (32, [(64, 128, 1), (128, 256, 1), (256, 256, 1), (512, 512, 1)]),
    "yolo11m": (64, [(128, 256, 1), (256, 512, 1), (512, 512, 1), (512, 512, 1)]),
}


@pytest.mark.parametrize("name", sorted(YOLO_PLAN))
def test_yolo_widths_and_depths_follow_ultralytics_scaling(name):
    model = create_backbone(name, num_classes=10)
    stem, plan = YOLO_PLAN[name]
    assert model.stem.conv.out_channels == stem and model.stem.conv.stride == (2, 2)
    assert model.stage_names == ["stage1", "stage2", "stage3", "stage4"]
    got = []
    for s in model.stage_names:
        down, block = getattr(model, s)
        assert isinstance(down, ConvBnAct) and down.conv.stride == (2, 2) and down.conv.kernel_size == (3, 3)
        assert isinstance(block, C3k2 if name.startswith("yolo11") else C2f)
        got.append((down.conv.out_channels, block.cv2.conv.out_channels, len(block.m)))
    assert got == plan
    c5 = plan[-1][1]
    assert model.sppf.cv1.conv.in_channels == c5 and model.sppf.cv2.conv.out_channels == c5


@pytest.mark.parametrize("name,published_millions", [("yolov8n", 2.7), ("yolov8s", 6.4)])
def test_yolov8_without_sppf_matches_published_cls_parameter_count(name, published_millions):
    # yolov8n/s-cls (Ultralytics docs: 2.7M / 6.4M at 1000 classes) = this backbone without SPPF
    model = create_backbone(name, num_classes=1000)
    assert round((n_params(model) - n_params(model.sppf)) / 1e6, 1) == published_millions


def test_yolov8n_without_sppf_has_exactly_ultralytics_cls_parameter_count():
    # "YOLOv8n-cls summary: ... 2719288 parameters" (Ultralytics model summary at 1000 classes)
    model = create_backbone("yolov8n", num_classes=1000)
    assert n_params(model) - n_params(model.sppf) == 2_719_288


@pytest.mark.parametrize("name,c3k_per_stage", [
    ("yolo11n", [False, False, True, True]),
    ("yolo11s", [False, False, True, True]),
    ("yolo11m", [True, True, True, True]),
])
def test_yolo11_uses_c3k_in_deep_stages_and_everywhere_at_m(name, c3k_per_stage):
    model = create_backbone(name, num_classes=10)
    for s, c3k in zip(model.stage_names, c3k_per_stage):
        block = getattr(model, s)[1]
        assert block.c3k is c3k
        inner = C3k if c3k else YoloBottleneck
        assert all(type(m) is inner for m in block.m)
        if c3k:
            assert all(len(m.m) == 2 for m in block.m)
    # stages 1-2 use hidden ratio e = 0.25 (yaml: C3k2 [256, False, 0.25])
    b1 = model.stage1[1]
    assert b1.c == b1.cv2.conv.out_channels // 4


def test_yolo_bottleneck_shortcut_only_when_shapes_match():
    assert YoloBottleneck(8, 8, shortcut=True).add is True
    assert YoloBottleneck(8, 16, shortcut=True).add is False
    assert YoloBottleneck(8, 8, shortcut=False).add is False
    b = YoloBottleneck(8, 8, shortcut=True).eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(b(x), x + b.cv2(b.cv1(x)))


def test_c2f_concatenates_both_halves_and_every_bottleneck_output():
    block = C2f(8, 12, n=2, shortcut=True).eval()
    assert block.c == 6 and block.cv2.conv.in_channels == (2 + 2) * 6
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        y = block.cv1(x)
        a, b = y[:, :6], y[:, 6:]
        m1 = block.m[0](b)
        m2 = block.m[1](m1)
        torch.testing.assert_close(block(x), block.cv2(torch.cat([a, b, m1, m2], 1)))


def test_sppf_equals_spp_with_5_9_13_max_pools():
    # He et al.'s SPP with parallel 5/9/13 pools equals SPPF's three chained 5x5 pools
    sppf = SPPF(8, 8).eval()
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        y = sppf.cv1(x)
        pools = [nn.functional.max_pool2d(y, k, 1, k // 2) for k in (5, 9, 13)]
        torch.testing.assert_close(sppf(x), sppf.cv2(torch.cat([y, *pools], 1)))


@pytest.mark.parametrize("name", YOLO)
def test_yolo_forward_pyramid_has_strides_8_16_32(name):
    model = create_backbone(name, num_classes=10, in_chans=1).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        pyr = model.forward_pyramid(x)
        feats = model.forward_features(x)
    assert sorted(pyr) == [8, 16, 32]
    widths = [YOLO_PLAN[name][1][i][1] for i in (1, 2, 3)]
    for (stride, fmap), c in zip(sorted(pyr.items()), widths):
        assert fmap.shape == (1, c, 64 // stride, 64 // stride)
    torch.testing.assert_close(pyr[32], feats)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [p[1] for p in YOLO_PLAN[name][1]]


def test_yolo_head_is_ultralytics_classify_and_bn_uses_yolo_settings():
    model = create_backbone("yolov8n", num_classes=10, drop_rate=0.2)
    head = model.head
    assert head.conv.conv.kernel_size == (1, 1) and head.conv.conv.out_channels == 1280
    assert isinstance(head.pool, nn.AdaptiveAvgPool2d) and head.dropout.p == 0.2
    assert head.linear.in_features == 1280 and head.linear.out_features == 10
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    assert all(isinstance(m.act, nn.SiLU) for m in model.modules() if isinstance(m, ConvBnAct))


def test_yolov8n_runs_at_224_pixels():
    model = create_backbone("yolov8n", num_classes=10).eval()
    assert model.default_input_size == (3, 224, 224)
    with torch.no_grad():
        assert model.forward_pyramid(torch.randn(1, 3, 224, 224))[32].shape == (1, 256, 7, 7)


def test_yolo_bad_arguments_raise():
    with pytest.raises(ValueError, match="drop_rate"):
        create_backbone("yolov8n", drop_rate=1.5)
    with pytest.raises(TypeError, match=r"\['stem'\].*drop_rate=0.0"):
        create_backbone("yolov8n", stem="cifar")
