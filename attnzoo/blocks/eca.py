"""Efficient Channel Attention.

Paper: Q. Wang, B. Wu, P. Zhu, P. Li, W. Zuo, Q. Hu, "ECA-Net: Efficient Channel Attention for
Deep Convolutional Neural Networks", CVPR 2020. https://arxiv.org/abs/1910.03151

    z = GAP(x)                                  (B, C)
    s = sigmoid(conv1d_k(z))                    1-D conv across channels, no bias
    k = |log2(C) / gamma + b / gamma|_odd       gamma = 2, b = 1 (Eq. 12)
    y = x * s

``|t|_odd`` is read as in the authors' code: t truncated to an int, then +1 if even.
NOTE: timm's EcaModule additionally clamps k to >= 3; the two differ only for C < 8 (attnzoo gives
k = 1 there, which is what the paper's formula gives). Pass ``kernel_size`` to fix k.
"""
from __future__ import annotations

import math

from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._pool import pool_mean
from ._small_graphs import channel_conv_gate

__all__ = ["EfficientChannelAttn", "eca_kernel_size", "checked_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The adaptive kernel size of Eq. 12: |log2(C)/gamma + b/gamma| rounded up to odd."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


def checked_kernel_size(block: str, kernel_size: object) -> int:
    """``kernel_size`` if it is a positive odd int (not a bool), else a ValueError naming ``block``."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{block}: kernel_size must be a positive odd int, got {kernel_size!r}")
    return kernel_size


@register_attn(
    "eca",
    family="channel",
    paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
    authors="Wang, Wu, Zhu, Li, Zuo, Hu",
    year=2020,
    link="https://arxiv.org/abs/1910.03151",
)
class EfficientChannelAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("eca", channels)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        self.kernel_size = kernel_size = checked_kernel_size("eca", kernel_size)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.gate = resolve_layer("eca", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def from_pooled(self, mean):
        """The channel factor from the mean over positions, (B, C, 1, 1)."""
        s = channel_conv_gate(mean, self.conv, self.gate)  # one autograd op where it applies
        if s is None:
            b, c = mean.shape[:2]
            s = self.gate(self.conv(mean.view(b, 1, c))).view(b, c, 1, 1)  # channels as a 1-D sequence
        return self.tap(s)

    def forward(self, x):
        check_input(self, x)
        return x * self.from_pooled(pool_mean(x, (2, 3)))  # (not on moment_gates: see _pooled_gates.MEAN_ONLY)
