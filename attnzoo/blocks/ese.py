"""Effective Squeeze-and-Excitation (eSE).

Paper: Y. Lee, J. Park, "CenterMask: Real-Time Anchor-Free Instance Segmentation", CVPR 2020
(the VoVNetV2 backbone, Sec. 3.3). https://arxiv.org/abs/1911.06667

    z = GAP(x)                            squeeze, (B, C)
    s = hard_sigmoid(W z + b)             one FC, W: C -> C, no reduction (Eq. 1)
    y = x * s

SE's bottleneck (C -> C/r -> C) loses channel information; eSE keeps one full-width FC.
``hard_sigmoid(t) = relu6(t + 3) / 6``, the gate of the paper and of the authors' VoVNet code.

Defaults: ``gate_layer="hard_sigmoid"`` as in the paper. No departures from the paper.
Parity: identical to timm's ``EffectiveSEModule`` (default ``add_maxpool=False``); the attribute
names (``fc``) match, so timm's state_dict loads as is. timm's experimental ``add_maxpool`` path
is not part of the paper and is not offered.
"""
from __future__ import annotations

from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d
from ._pool import pool_mean

__all__ = ["EffectiveSqueezeExcite"]


@register_attn(
    "ese",
    family="channel",
    paper="CenterMask: Real-Time Anchor-Free Instance Segmentation",
    authors="Lee, Park",
    year=2020,
    link="https://arxiv.org/abs/1911.06667",
)
class EffectiveSqueezeExcite(nn.Module):
    def __init__(self, channels: int, *, gate_layer: str | type[nn.Module] = "hard_sigmoid") -> None:
        super().__init__()
        self.channels = check_channels("ese", channels)
        self.fc = LayoutConv2d(channels, channels, 1, bias=True)  # the FC as a 1x1 conv on (B, C, 1, 1)
        self.gate = resolve_layer("ese", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def from_pooled(self, mean):
        """The channel factor from the mean over positions, (B, C, 1, 1)."""
        return self.tap(self.gate(self.fc(mean)))

    def forward(self, x):
        check_input(self, x)
        return x * self.from_pooled(pool_mean(x, (2, 3)))  # (not on moment_gates: see _pooled_gates.MEAN_ONLY)
