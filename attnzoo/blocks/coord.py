"""Coordinate Attention.

Paper: Q. Hou, D. Zhou, J. Feng, "Coordinate Attention for Efficient Mobile Network Design",
CVPR 2021. https://arxiv.org/abs/2103.02907

    z^h = mean_w x  (B, C, H, 1),   z^w = mean_h x  (B, C, 1, W)            directional pooling (Eq. 4, 5)
    f = h_swish(BN(F1([z^h; z^w])))      1x1 conv C -> mip on the concatenated strips (Eq. 6)
    g^h = sigmoid(F_h(f^h)),  g^w = sigmoid(F_w(f^w))                      1x1 convs mip -> C (Eq. 7, 8)
    y = x * g^h * g^w                                                      (Eq. 9)

Default width (the paper's): ``mip = max(min_rd_channels, floor(C * rd_ratio))`` with rd_ratio = 1/32
and min_rd_channels = 8, the floor and the minimum as in the authors' code; ``rd_divisor > 1`` then
rounds mip to a multiple of it; ``rd_channels`` sets mip directly.
The factors g^h (B, C, H, 1) and g^w (B, C, 1, W) pass through ``tap_h`` and ``tap_w`` (kind
"spatial"; each broadcasts over the other axis).

NOTE: F1 has no bias -- BatchNorm follows it, so a bias would never learn (the authors' code has one).
F_h and F_w have biases (``bias=True``) as in the authors' code.

Parity with timm (``timm.layers.coord_attn.CoordAttn``, timm's attn name ``"coord"``): attribute
names match (conv1, bn1, act, conv_h, conv_w), so timm's state_dict loads into this block. timm's
defaults differ: its width is ``make_divisible(C / 16 * 2/3, 8)`` (8 up to C=256 as here, but 24 for
C=512 and 40 for C=1024, where the paper's gives 16 and 32) and it has no bias on F_h/F_w.
``CoordAttn(C, rd_channels=<timm's width>, bias=False)`` computes exactly what timm's
``CoordAttn(C)`` computes.

Speed (CPU): in eager float32 with a batch of at least the thread count the block is one native op
(``_pooled_gates.strip_gates``: both strip means in one pass, y = (x * g_h) * g_w in one, two passes
backward), and the default small graph (the three 1x1 convs, BatchNorm, hard swish and sigmoids on the
strips) is one autograd op in C (``_small_graphs.coord_gates``); elsewhere the PyTorch expression runs.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import make_divisible

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d, like_input
from ._pool import pool_mean
from ._pooled_gates import strip_gates
from ._small_graphs import coord_gates

__all__ = ["CoordAttn"]


@register_attn(
    "coord",
    family="channel+spatial",
    paper="Coordinate Attention for Efficient Mobile Network Design",
    authors="Hou, Zhou, Feng",
    year=2021,
    link="https://arxiv.org/abs/2103.02907",
)
class CoordAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        min_rd_channels: int = 8,
        bias: bool = True,
        rd_ratio: float = 1.0 / 32,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "hard_swish",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("coord", channels)
        if rd_channels is not None:
            if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
                raise ValueError(f"coord: rd_channels must be a positive int, got {rd_channels!r}")
            rd = rd_channels
        else:
            if not 0 < rd_ratio <= 1:
                raise ValueError(f"coord: rd_ratio must be in (0, 1], got {rd_ratio!r} (the paper uses 1/32)")
            if isinstance(min_rd_channels, bool) or not isinstance(min_rd_channels, int) or min_rd_channels < 1:
                raise ValueError(f"coord: min_rd_channels must be a positive int (the paper uses 8), got {min_rd_channels!r}")
            if isinstance(rd_divisor, bool) or not isinstance(rd_divisor, int) or rd_divisor < 1:
                raise ValueError(f"coord: rd_divisor must be a positive int, got {rd_divisor!r}")
            rd = max(min_rd_channels, int(channels * rd_ratio))
            if rd_divisor > 1:
                rd = make_divisible(rd, rd_divisor, round_limit=0.0)
        self.rd_channels = rd

        self.conv1 = LayoutConv2d(channels, rd, 1, bias=False)
        self.bn1 = SafeBatchNorm2d(rd)
        self.act = resolve_layer("coord", "act_layer", act_layer)(inplace=True)
        self.conv_h = LayoutConv2d(rd, channels, 1, bias=bias)
        self.conv_w = LayoutConv2d(rd, channels, 1, bias=bias)
        self.gate = resolve_layer("coord", "gate_layer", gate_layer)()
        self.tap_h = AttnTap("spatial")
        self.tap_w = AttnTap("spatial")

    def factors(self, z_h, z_w):
        """g_h (B, C, H, 1) and g_w (B, C, 1, W), through their taps, from the means over W (B, C, H, 1)
        and over H (B, C, 1, W)."""
        g = coord_gates(z_h, z_w, self.conv1, self.bn1, self.act, self.conv_h, self.conv_w, self.gate)
        if g is not None:  # the small graph as one autograd op (_small_graphs.py)
            return self.tap_h(g[0]), self.tap_w(g[1])
        h, w = z_h.shape[2], z_w.shape[3]
        f = self.act(self.bn1(self.conv1(torch.cat([z_h, z_w.transpose(2, 3)], dim=2))))  # (B, mip, H+W, 1)
        f_h, f_w = torch.split(f, [h, w], dim=2)  # (B, mip, H, 1), (B, mip, W, 1)
        g_h = self.gate(self.conv_h(f_h))  # (B, C, H, 1)
        g_w = self.gate(self.conv_w(f_w.transpose(2, 3)))  # (B, C, 1, W)
        return self.tap_h(g_h), self.tap_w(g_w)

    def forward(self, x):
        check_input(self, x)
        y = strip_gates(x, self.factors, self)  # the native CPU kernels (_pooled_gates.py) where they apply
        if y is not None:
            return y
        g_h, g_w = self.factors(pool_mean(x, 3), pool_mean(x, 2))
        return x * like_input(g_h, x) * like_input(g_w, x)
