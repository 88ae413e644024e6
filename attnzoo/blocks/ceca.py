"""Circular Efficient Channel Attention (ceca): ECA whose 1-D channel convolution wraps around.

ECA paper: Q. Wang, B. Wu, P. Zhu, P. Li, W. Zuo, Q. Hu, "ECA-Net: Efficient Channel Attention for
Deep Convolutional Neural Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
The circular variant is timm's (``timm.layers.CecaModule``, by C. Ha); its documented behaviour is the
specification here:

    z = GAP(x)                                     (B, C), channels as a 1-D sequence
    s = sigmoid(conv1d_k(pad_circular(z, k // 2))) no bias; channel C-1 neighbours channel 0
    y = x * s

Channels have no natural order, so nothing marks the first and last channel as edges: circular
padding gives every channel k neighbours, where ECA's zero padding gives the edge channels fewer.

Kernel size, as timm: ECA's adaptive k = |log2(C)/gamma + b/gamma|_odd (gamma = 2, b = 1), at least 3
(``eca`` has no such floor; the two differ for C < 8). ``kernel_size`` fixes k.

NOTE: timm's CecaModule takes ``act_layer`` only to switch on the conv's bias and never applies the
activation; here the bias is its own argument (``bias=True`` is timm's ``act_layer=...``) and
``act_layer`` is ignored. Parity with timm under copied weights is tested (tests/test_zoo_timm_extra.py).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from .eca import checked_kernel_size, eca_kernel_size
from ._pool import pool_mean
from ._small_graphs import channel_conv_gate

__all__ = ["CircularEfficientChannelAttn", "timm_eca_kernel_size"]


def timm_eca_kernel_size(channels: int, kernel_size: int | None, gamma: float, beta: float, block: str) -> int:
    """ECA's adaptive kernel size with timm's floor of 3, or ``kernel_size`` if given (checked)."""
    if kernel_size is None:
        kernel_size = max(eca_kernel_size(channels, gamma, beta), 3)
    return checked_kernel_size(block, kernel_size)


@register_attn(
    "ceca",
    family="channel",
    paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks (circular padding: timm's CecaModule)",
    authors="Wang, Wu, Zhu, Li, Zuo, Hu; circular variant by C. Ha in timm",
    year=2020,
    link="https://arxiv.org/abs/1910.03151",
)
class CircularEfficientChannelAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        bias: bool = False,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("ceca", channels)
        self.kernel_size = timm_eca_kernel_size(channels, kernel_size, gamma, beta, "ceca")
        self.padding = (self.kernel_size - 1) // 2
        if self.padding > channels:
            raise ValueError(f"ceca: kernel_size={self.kernel_size} wraps around {channels} channels more than once; "
                             f"use kernel_size <= {2 * channels + 1}")
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=0, bias=bias)
        self.gate = resolve_layer("ceca", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def from_pooled(self, mean):
        """The channel factor from the mean over positions, (B, C, 1, 1)."""
        s = channel_conv_gate(mean, self.conv, self.gate, circular=self.padding)  # one autograd op where it applies
        if s is None:
            b, c = mean.shape[:2]
            s = F.pad(mean.view(b, 1, c), (self.padding, self.padding), mode="circular")  # (B, 1, C + k - 1), wrapped
            s = self.gate(self.conv(s)).view(b, c, 1, 1)  # (B, C, 1, 1)
        return self.tap(s)

    def forward(self, x):
        check_input(self, x)
        return x * self.from_pooled(pool_mean(x, (2, 3)))  # (not on moment_gates: see _pooled_gates.MEAN_ONLY)
