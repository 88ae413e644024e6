"""Squeeze-and-Excitation.

Paper: J. Hu, L. Shen, G. Sun, "Squeeze-and-Excitation Networks", CVPR 2018.
https://arxiv.org/abs/1709.01507

    z = GAP(x)                        squeeze, (B, C)
    s = sigmoid(W2 relu(W1 z))        excitation, W1: C -> C/r, W2: C/r -> C, r = 16
    y = x * s                         channel-wise rescaling

NOTE: the reduced width is ``make_divisible(C / r, rd_divisor=8)`` (timm's convention) rather than
exactly C/r, so widths stay hardware-friendly; for the ResNet widths of the paper (C >= 128) the two
agree. Pass ``rd_divisor=1`` for the paper's exact C/r. The FC layers are 1x1 convolutions on the
(B, C, 1, 1) descriptor, which is the same map and keeps channels_last inputs in their layout.
"""
from __future__ import annotations

from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_input, reduced_channels, resolve_layer
from ._layout import LayoutConv2d
from ._pool import pool_mean
from ._small_graphs import mlp_gate

__all__ = ["SqueezeExcite"]


@register_attn(
    "se",
    family="channel",
    paper="Squeeze-and-Excitation Networks",
    authors="Hu, Shen, Sun",
    year=2018,
    link="https://arxiv.org/abs/1709.01507",
)
class SqueezeExcite(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = reduced_channels("se", channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = LayoutConv2d(channels, self.rd_channels, 1, bias=True)
        self.act = resolve_layer("se", "act_layer", act_layer)(inplace=True)
        self.fc2 = LayoutConv2d(self.rd_channels, channels, 1, bias=True)
        self.gate = resolve_layer("se", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def from_pooled(self, mean):
        """The channel factor from the mean over positions, (B, C, 1, 1)."""
        g = mlp_gate([mean], self.fc1, self.act, self.fc2, self.gate)  # one autograd op where it applies
        return self.tap(self.gate(self.fc2(self.act(self.fc1(mean)))) if g is None else g)

    def forward(self, x):
        check_input(self, x)
        return x * self.from_pooled(pool_mean(x, (2, 3)))  # (not on moment_gates: see _pooled_gates.MEAN_ONLY)
