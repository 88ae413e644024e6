"""Triplet Attention.

Paper: D. Misra, T. Nalamada, A. U. Arasanipalai, Q. Hou, "Rotate to Attend: Convolutional Triplet
Attention Module", WACV 2021. https://arxiv.org/abs/2010.03045

    Z-pool(t) = [max_0(t); mean_0(t)]                         max and mean over the first axis, 2 maps
    a_p = sigmoid(BN(conv7x7(Z-pool(x rotated so that the pooled axis comes first))))
    y = x * (a_hc + a_cw + a_hw) / 3                          average of the three branches

The three branches pool over W (an H x C map, a C-H interaction), over H (a C x W map, C-W) and
over C (an H x W map, the spatial branch); k = 7. Each factor passes through its own tap (kind
"spatial"): ``tap_hc`` (B, C, H, 1), ``tap_cw`` (B, C, 1, W), ``tap_hw`` (B, 1, H, W).

NOTE: the rotations are not materialized: the block pools x along the axis directly and lays the
2-channel pooled map out as the authors' rotated tensor would be (H x C for the first branch,
C x W for the second, H x W for the third), so the 7x7 kernels mean the same as in their code.
The convolutions have no bias (BatchNorm follows). BatchNorm uses torch's default momentum 0.1
(the authors' code: 0.01). A training batch with a single value per channel (batch 1 and a 1x1 map)
is normalized with the running statistics (``SafeBatchNorm2d``) instead of raising.

Speed (CPU; ``_pool`` and ``_layout`` give the measurements): the max over W and over H is
``adaptive_max_pool2d`` (several times faster than ``amax`` in channels_last; where positions tie for
the maximum, the gradient goes to one of them instead of being split), the max over C is
``pool_amax``, and the 2 -> 1 convolutions run in channels_last (``LayoutConv2d``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d, like_input
from ._pool import pool_amax, pool_max_along, pool_mean

__all__ = ["TripletAttn"]


class _ZPoolGate(nn.Module):
    """conv k x k (2 -> 1, no bias) + BN + gate over an already Z-pooled (B, 2, P, Q) map."""

    def __init__(self, kernel_size: int, gate_layer) -> None:
        super().__init__()
        self.conv = LayoutConv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = SafeBatchNorm2d(1)
        self.gate = gate_layer()

    def forward(self, z):
        return self.gate(self.bn(self.conv(z)))  # (B, 1, P, Q)


@register_attn(
    "triplet",
    family="channel+spatial",
    paper="Rotate to Attend: Convolutional Triplet Attention Module",
    authors="Misra, Nalamada, Arasanipalai, Hou",
    year=2021,
    link="https://arxiv.org/abs/2010.03045",
)
class TripletAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("triplet", channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"triplet: kernel_size must be a positive odd int (the paper uses 7), got {kernel_size!r}")
        self.kernel_size = kernel_size
        gate = resolve_layer("triplet", "gate_layer", gate_layer)
        self.gate_hc = _ZPoolGate(kernel_size, gate)
        self.gate_cw = _ZPoolGate(kernel_size, gate)
        self.gate_hw = _ZPoolGate(kernel_size, gate)
        self.tap_hc = AttnTap("spatial")
        self.tap_cw = AttnTap("spatial")
        self.tap_hw = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        # pool over W: (B, 2, C, H) -> laid out (B, 2, H, C) as the rotated tensor of the paper
        z_hc = torch.stack([pool_max_along(x, 3, keepdim=False), pool_mean(x, 3, keepdim=False)], dim=1).transpose(2, 3)  # (B, 2, H, C)
        a_hc = self.gate_hc(z_hc).transpose(2, 3).reshape(b, c, h, 1)  # (B, C, H, 1)
        # pool over H
        z_cw = torch.stack([pool_max_along(x, 2, keepdim=False), pool_mean(x, 2, keepdim=False)], dim=1)  # (B, 2, C, W)
        a_cw = self.gate_cw(z_cw).reshape(b, c, 1, w)  # (B, C, 1, W)
        # pool over C
        z_hw = torch.cat([pool_amax(x, 1), pool_mean(x, 1)], dim=1)  # (B, 2, H, W)
        a_hw = self.gate_hw(z_hw)  # (B, 1, H, W)
        a = self.tap_hc(like_input(a_hc, x)) + self.tap_cw(like_input(a_cw, x)) + self.tap_hw(a_hw)  # (B, C, H, W)
        return x * a * (1.0 / 3.0)
