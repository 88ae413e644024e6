"""Where an attnzoo block goes into a timm model: every timm (1.0.31) family with an attention slot.

timm builds the module in an ``attn_layer`` or ``se_layer`` slot itself, as ``cls(channels, **kw)``
with keywords that differ by family. ``TIMM_SLOTS`` lists one small model per family, how to put a
block class (or partial, e.g. ``attnzoo.get_attn("cbam")``) into it, and what timm passes. It is
the parameter list of tests/test_timm_slots.py and the source of the README's table, so the two
cannot drift apart.

The models are timm's own classes and configs, shortened (one block per stage, few channels) so
that every registered block can be built and run in each of them in seconds; each entry names the
timm model its config comes from and what was shortened. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

from torch import nn

__all__ = ["TimmSlot", "TIMM_SLOTS", "timm_slot"]


@dataclass(frozen=True)
class TimmSlot:
    """One timm family's attention slot, with a small model to try a block in it."""

    family: str  # timm's module, e.g. "resnet", "efficientnet"
    slot: str  # how the block gets there, e.g. "block_args=dict(attn_layer=...)"
    model: str  # the timm model (config) the small model is made from, and what was shortened
    calls: str  # what timm calls, with which keywords
    kind: str  # the keyword set of the call; families sharing a kind call the block the same way
    build: Callable[[Callable[..., nn.Module], int], nn.Module]  # (block class or partial, num_classes) -> model


def _resnet(attn, num_classes):
    import timm

    return timm.create_model("resnet10t", num_classes=num_classes, block_args=dict(attn_layer=attn))


def _sknet(attn, num_classes):
    from timm.models.resnet import ResNet
    from timm.models.sknet import SelectiveKernelBasic

    sk_kwargs = dict(rd_ratio=1 / 8, rd_divisor=16, split_input=True)  # skresnet18's
    return ResNet(block=SelectiveKernelBasic, layers=(1, 1, 1, 1), num_classes=num_classes,
                  block_args=dict(sk_kwargs=sk_kwargs, attn_layer=attn), zero_init_last=False)


def _res2net(attn, num_classes):
    from timm.models.res2net import Bottle2neck
    from timm.models.resnet import ResNet

    return ResNet(block=Bottle2neck, layers=(1, 1, 1, 1), base_width=26, num_classes=num_classes,
                  block_args=dict(scale=4, attn_layer=attn))


def _nfnet(attn, num_classes):
    from timm.models.nfnet import NormFreeNet, model_cfgs

    cfg = dataclasses.replace(model_cfgs["nf_regnet_b0"], depths=(1, 1, 1, 1), num_features=64, attn_layer=attn)
    return NormFreeNet(cfg, num_classes=num_classes)


def _byobnet(attn, num_classes):
    from timm.models.byobnet import ByobNet, model_cfgs

    base = model_cfgs["regnetz_b16"]
    blocks = tuple(dataclasses.replace(b, d=1) for b in base.blocks)
    cfg = dataclasses.replace(base, blocks=blocks, num_features=64, attn_layer=attn)
    return ByobNet(cfg, num_classes=num_classes)


def _cspnet(attn, num_classes):
    from timm.models.cspnet import CspNet, model_cfgs

    base = model_cfgs["cs3darknet_s"]
    stages = dataclasses.replace(base.stages, depth=(1, 1, 1, 1), attn_layer=attn, attn_kwargs=dict(rd_ratio=0.25))
    return CspNet(dataclasses.replace(base, stages=stages), num_classes=num_classes)


def _vovnet(attn, num_classes):
    from timm.models.vovnet import VovNet, model_cfgs

    return VovNet(model_cfgs["ese_vovnet19b_slim_dw"], num_classes=num_classes, attn=attn)


# EfficientNet's block strings: depthwise-separable, inverted residual and edge residual, all with SE
_EFFNET_ARCH = [["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r1_k3_s2_e6_c24_se0.25"], ["er_r1_k3_s2_e4_c32_se0.25"]]


def _efficientnet(attn, num_classes):
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    return EfficientNet(block_args=decode_arch_def(_EFFNET_ARCH), num_classes=num_classes, stem_size=16,
                        num_features=64, act_layer=nn.SiLU, se_layer=attn)


def _mobilenetv5(attn, num_classes):
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.mobilenetv5 import MobileNetV5

    arch = [["er_r1_k3_s2_e4_c24_se0.25"], ["uir_r1_a3_k5_s2_e4_c32", "ir_r1_k3_s1_e2_c32_se0.25"]]
    return MobileNetV5(block_args=decode_arch_def(arch), num_classes=num_classes, stem_size=16, num_features=64,
                       use_msfa=False, act_layer=nn.GELU, se_layer=attn)


def _hardcorenas(attn, num_classes):
    from timm.layers import get_act_layer
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv3 import MobileNetV3

    # hardcorenas_a's first stages; its generator fixes se_layer to SqueezeExcite with these keywords
    # (so `se_layer=` cannot be passed to timm.create_model("hardcorenas_a")); here they go to the block
    arch = [["ds_r1_k3_s1_e1_c16_nre"], ["ir_r1_k5_s2_e3_c24_nre", "ir_r1_k5_s1_e3_c24_nre_se0.25"],
            ["ir_r1_k5_s2_e6_c40_se0.25"]]
    se_layer = functools.partial(attn, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)
    return MobileNetV3(block_args=decode_arch_def(arch), num_classes=num_classes, stem_size=16, num_features=64,
                       act_layer=get_act_layer("hard_swish"), se_layer=se_layer)


_DD = "device=, dtype="
TIMM_SLOTS: tuple[TimmSlot, ...] = (
    TimmSlot("resnet", "block_args=dict(attn_layer=...)", "resnet10t",
             f"create_attn(attn_layer, C, {_DD})", "C", _resnet),
    TimmSlot("sknet", "block_args=dict(attn_layer=...)", "skresnet18, 1 block per stage",
             f"create_attn(attn_layer, C, {_DD})", "C", _sknet),
    TimmSlot("res2net", "block_args=dict(attn_layer=...)", "res2net50_26w_4s, 1 block per stage",
             f"attn_layer(C, {_DD})", "C", _res2net),
    TimmSlot("nfnet", "NfCfg(attn_layer=...)", "nf_regnet_b0, 1 block per stage",
             f"partial(attn_layer, **attn_kwargs)(C_mid, {_DD}), attn_kwargs=dict(rd_ratio=0.5)", "C, rd_ratio", _nfnet),
    TimmSlot("byobnet", "ByoModelCfg(attn_layer=...)", "regnetz_b16, 1 block per stage",
             f"partial(attn_layer, **attn_kwargs)(C_mid, {_DD}), attn_kwargs=dict(rd_ratio=0.25)", "C, rd_ratio",
             _byobnet),
    TimmSlot("cspnet", "CspStagesCfg(attn_layer=...)", "cs3darknet_s, 1 block per stage",
             f"partial(attn_layer, **attn_kwargs)(C_mid, act_layer=, {_DD}), attn_kwargs=dict(rd_ratio=0.25)",
             "C, rd_ratio, act_layer", _cspnet),
    TimmSlot("vovnet", "VovNet(cfg, attn=...)", "ese_vovnet19b_slim_dw",
             f"create_attn(attn, C, {_DD})", "C", _vovnet),
    TimmSlot("efficientnet", "se_layer=...", "efficientnet_b0's ds/ir/er blocks, 3 stages",
             f"se_layer(8, rd_ratio=1.0) (probe), then se_layer(C, rd_ratio=, act_layer=, {_DD})",
             "C, rd_ratio, act_layer", _efficientnet),
    TimmSlot("mobilenetv5", "se_layer=...", "mobilenetv5 er/uir/ir blocks, 2 stages, no MSFA",
             f"se_layer(8, rd_ratio=1.0) (probe), then se_layer(C, rd_ratio=, act_layer=, {_DD})",
             "C, rd_ratio, act_layer", _mobilenetv5),
    TimmSlot("hardcorenas", "se_layer=partial(..., gate_layer, force_act_layer, rd_round_fn)",
             "hardcorenas_a, 3 stages",
             "se_layer(C, rd_ratio=, act_layer=, gate_layer='hard_sigmoid', force_act_layer=nn.ReLU, "
             f"rd_round_fn=round_channels, {_DD})",
             "C, rd_ratio, act_layer, gate_layer, force_act_layer, rd_round_fn", _hardcorenas),
)


def timm_slot(family: str) -> TimmSlot:
    """The entry of one timm family."""
    for s in TIMM_SLOTS:
        if s.family == family:
            return s
    raise KeyError(f"no timm slot for family {family!r}; known: {[s.family for s in TIMM_SLOTS]}")
