"""Shuffle Attention (SA-Net).

Paper: Q.-L. Zhang, Y.-B. Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
ICASSP 2021. https://arxiv.org/abs/2102.00240

x is split into G groups along the channels, each group X_k into two halves X_k1, X_k2 (C/2G each):

    X'_k1 = X_k1 * sigmoid(W1 * GAP(X_k1) + b1)             channel branch (Eq. 1, 2)
    X'_k2 = X_k2 * sigmoid(W2 * GN(X_k2) + b2)              spatial branch (Eq. 3)
    y = channel_shuffle(concat_k [X'_k1; X'_k2], 2)          aggregation and shuffle

W1, b1, W2, b2 are per-channel (C/2G each), shared by the G groups. Defaults are the paper's:
G = 64, W initialized to 0 and b to 1. The factor that multiplies x (before the shuffle), a full
(B, C, H, W) map in the input's channel order, passes through ``self.tap`` (kind "spatial").

``groups``: ``None`` (default) is the paper's 64, lowered to the largest count <= 64 with 2G
dividing C (C = 16 -> 8, C = 32 -> 16, C = 64 -> 32, C >= 128 and a multiple of 128 -> 64), so
the block works in small networks. An explicit ``groups`` must satisfy C % (2 * groups) == 0;
otherwise a ValueError lists the valid counts.

NOTE: GN here is GroupNorm with one group per channel (C/2G groups over C/2G channels, as the
authors' code) *without* its own affine: W2, b2 of Eq. 3 are that affine, so GN's weight/bias would
only duplicate them. It is computed directly as a per-channel normalization over H x W with
eps = 1e-5 (a 1x1 map gives GN = 0, no NaN).
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_input, resolve_layer
from .sge import resolve_groups

__all__ = ["ShuffleAttn", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (B, g*n, H, W) viewed (B, g, n, H, W), transposed, flattened."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


@register_attn(
    "shuffle",
    family="channel+spatial",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
    authors="Zhang, Yang",
    year=2021,
    link="https://arxiv.org/abs/2102.00240",
)
class ShuffleAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        groups: int | None = None,
        eps: float = 1e-5,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.groups = resolve_groups("shuffle", channels, groups, per_group=2)
        if not eps > 0:
            raise ValueError(f"shuffle: eps must be > 0 (it keeps GroupNorm finite on constant maps), got {eps!r}")
        self.eps = eps
        half = channels // (2 * self.groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))  # W1
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))  # b1
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))  # W2
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))  # b2
        self.gate = resolve_layer("shuffle", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        xg = x.reshape(b * self.groups, c // self.groups, h, w)  # (B*G, C/G, H, W)
        x1, x2 = xg.chunk(2, dim=1)  # (B*G, C/2G, H, W) each
        a1 = self.gate(self.cweight * x1.mean((2, 3), keepdim=True) + self.cbias)  # (B*G, C/2G, 1, 1)
        mu = x2.mean((2, 3), keepdim=True)  # (B*G, C/2G, 1, 1)
        var = (x2 - mu).float().square().mean((2, 3), keepdim=True)  # (B*G, C/2G, 1, 1), float32
        gn = ((x2 - mu) * torch.rsqrt(var + self.eps)).to(x.dtype)  # (B*G, C/2G, H, W); float32: rsqrt's grad overflows fp16
        a2 = self.gate(self.sweight * gn + self.sbias)  # (B*G, C/2G, H, W)
        a = torch.cat([a1.expand_as(x1), a2], dim=1).reshape(b, c, h, w)  # (B, C, H, W), input order
        return channel_shuffle(x * self.tap(a), 2)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
