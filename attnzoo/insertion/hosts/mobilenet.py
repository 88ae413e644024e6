"""Inverted residuals: MobileNetV2 / V3 and EfficientNet blocks of torchvision and timm.

Positions (main branch = expand 1x1 -> depthwise kxk -> [SE] -> project 1x1; Sandler et al.,
"MobileNetV2", 2018, https://arxiv.org/abs/1801.04381; Tan & Le, "EfficientNet", 2019,
https://arxiv.org/abs/1905.11946):

* ``pre``: on the block input, before the split into branch and shortcut;
* ``after_expand``: after the expansion conv, its norm and activation (only blocks that expand:
  torchvision's with expand ratio != 1, FusedMBConv's fused 3x3 expansion when it has a separate
  projection, timm's InvertedResidual and EdgeResidual);
* ``after_dw``: after the depthwise conv, its norm and activation, *before* the block's SE if it has
  one (where MobileNetV3 and EfficientNet put their SE; to swap that SE instead, use
  ``replace_attn`` / position ``replace``); absent in FusedMBConv / EdgeResidual (no depthwise conv);
* ``standard``: after the projection conv and its norm (the branch's last norm), before drop-path
  and the add; in a block without a shortcut (stride 2 or a change of width) this is its output;
* ``post``: after the add (these blocks have no activation after it), on the block's output.

Hosts: torchvision ``mobilenetv2.InvertedResidual``, ``mobilenetv3.InvertedResidual``,
``efficientnet.MBConv`` and ``FusedMBConv``; timm ``InvertedResidual``, ``DepthwiseSeparableConv``
(MobileNetV2's / EfficientNet's first block: no expansion) and ``EdgeResidual`` (EfficientNet-EdgeTPU
/ V2 fused block) from ``timm.models._efficientnet_blocks``.
NOTE: an instance that lacks a position (a torchvision block with expand ratio 1 has no
``after_expand``) is not a candidate for it; the others in the model still are.
"""
from __future__ import annotations

import torch
from timm.models import _efficientnet_blocks as _timm_eff
from torch import nn
from torchvision.models import efficientnet as _tv_eff
from torchvision.models import mobilenetv2 as _tv_mbv2
from torchvision.models import mobilenetv3 as _tv_mbv3

from ..adapters import HostAdapter, register_host_adapter, slot_attrs
from ..positions import register_position

__all__ = ["AFTER_EXPAND", "AFTER_DW", "INVERTED_RESIDUAL"]

AFTER_EXPAND = "after the expansion conv (1x1, or a fused 3x3), its norm and activation (inverted residuals)"
AFTER_DW = ("after the depthwise conv: in inverted residuals with its norm and activation, before the "
            "block's SE if any; in ConvNeXt the 7x7 conv alone, before the norm")
register_position("after_expand", AFTER_EXPAND)
register_position("after_dw", AFTER_DW)

INVERTED_RESIDUAL = ("standard", "pre", "post", "after_expand", "after_dw")


# -- torchvision: the branch is a Sequential (``conv`` in V2, ``block`` in V3 and EfficientNet) -----
def _is_depthwise(layer: nn.Module) -> bool:
    conv = layer[0] if isinstance(layer, nn.Sequential) and len(layer) else layer
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


def _tv_layout(seq: nn.Sequential) -> tuple[int | None, int | None]:
    """(index of the expansion unit, index of the depthwise unit) in a torchvision branch; None if absent."""
    dw = next((i for i, layer in enumerate(seq) if _is_depthwise(layer)), None)
    if dw is not None:
        return (dw - 1 if dw > 0 else None), dw
    return (0 if len(seq) > 1 else None), None  # FusedMBConv: fused expand 3x3, then project 1x1


def _tv_branch(host: nn.Module) -> nn.Sequential:
    return host.conv if isinstance(host, _tv_mbv2.InvertedResidual) else host.block


def _tv_has(host: nn.Module, position: str) -> bool:
    expand, dw = _tv_layout(_tv_branch(host))
    return {"after_expand": expand is not None, "after_dw": dw is not None}.get(position, True)


class _TorchvisionInvertedSlots:
    """torchvision InvertedResidual / MBConv / FusedMBConv forward with slots."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        seq = _tv_branch(self)
        expand, dw = _tv_layout(seq)
        out = x
        for i, layer in enumerate(seq):
            out = layer(out)
            if i == expand and self.attn_after_expand is not None:
                out = self.attn_after_expand(out)
            if i == dw and self.attn_after_dw is not None:
                out = self.attn_after_dw(out)
        if self.attn_standard is not None:
            out = self.attn_standard(out)
        if self.use_res_connect:
            drop = getattr(self, "stochastic_depth", None)
            if drop is not None:
                out = drop(out)
            out = out + x
        if self.attn_post is not None:
            out = self.attn_post(out)
        return out


class TorchvisionMobileNetV2BlockAttn(_TorchvisionInvertedSlots, _tv_mbv2.InvertedResidual):
    pass


class TorchvisionMobileNetV3BlockAttn(_TorchvisionInvertedSlots, _tv_mbv3.InvertedResidual):
    pass


class TorchvisionMBConvAttn(_TorchvisionInvertedSlots, _tv_eff.MBConv):
    pass


class TorchvisionFusedMBConvAttn(_TorchvisionInvertedSlots, _tv_eff.FusedMBConv):
    pass


# -- timm: named convs and BatchNormAct (norm + activation in one module) --------------------------
class TimmInvertedResidualAttn(_timm_eff.InvertedResidual):
    """timm InvertedResidual.forward with slots (pre, after_expand, after_dw, standard, post)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        if self.conv_s2d is not None:
            x = self.bn_s2d(self.conv_s2d(x))
        x = self.bn1(self.conv_pw(x))
        if self.attn_after_expand is not None:
            x = self.attn_after_expand(x)
        x = self.aa(self.bn2(self.conv_dw(x)))
        if self.attn_after_dw is not None:
            x = self.attn_after_dw(x)
        x = self.bn3(self.conv_pwl(self.se(x)))
        if self.attn_standard is not None:
            x = self.attn_standard(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


class TimmDepthwiseSeparableAttn(_timm_eff.DepthwiseSeparableConv):
    """timm DepthwiseSeparableConv.forward with slots (pre, after_dw, standard, post)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        if self.conv_s2d is not None:
            x = self.bn_s2d(self.conv_s2d(x))
        x = self.aa(self.bn1(self.conv_dw(x)))
        if self.attn_after_dw is not None:
            x = self.attn_after_dw(x)
        x = self.bn2(self.conv_pw(self.se(x)))
        if self.attn_standard is not None:
            x = self.attn_standard(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


class TimmEdgeResidualAttn(_timm_eff.EdgeResidual):
    """timm EdgeResidual.forward with slots (pre, after_expand, standard, post)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pre is not None:
            x = self.attn_pre(x)
        shortcut = x
        x = self.aa(self.bn1(self.conv_exp(x)))
        if self.attn_after_expand is not None:
            x = self.attn_after_expand(x)
        x = self.bn2(self.conv_pwl(self.se(x)))
        if self.attn_standard is not None:
            x = self.attn_standard(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        if self.attn_post is not None:
            x = self.attn_post(x)
        return x


for _adapter in [
    HostAdapter("torchvision MobileNetV2 InvertedResidual", _tv_mbv2.InvertedResidual, TorchvisionMobileNetV2BlockAttn,
                slot_attrs(*INVERTED_RESIDUAL), has=_tv_has),
    HostAdapter("torchvision MobileNetV3 InvertedResidual", _tv_mbv3.InvertedResidual, TorchvisionMobileNetV3BlockAttn,
                slot_attrs(*INVERTED_RESIDUAL), has=_tv_has),
    HostAdapter("torchvision MBConv", _tv_eff.MBConv, TorchvisionMBConvAttn, slot_attrs(*INVERTED_RESIDUAL), has=_tv_has),
    HostAdapter("torchvision FusedMBConv", _tv_eff.FusedMBConv, TorchvisionFusedMBConvAttn,
                slot_attrs("standard", "pre", "post", "after_expand"), has=_tv_has),
    HostAdapter("timm InvertedResidual", _timm_eff.InvertedResidual, TimmInvertedResidualAttn,
                slot_attrs(*INVERTED_RESIDUAL)),
    HostAdapter("timm DepthwiseSeparableConv", _timm_eff.DepthwiseSeparableConv, TimmDepthwiseSeparableAttn,
                slot_attrs("standard", "pre", "post", "after_dw")),
    HostAdapter("timm EdgeResidual", _timm_eff.EdgeResidual, TimmEdgeResidualAttn,
                slot_attrs("standard", "pre", "post", "after_expand")),
]:
    register_host_adapter(_adapter)
