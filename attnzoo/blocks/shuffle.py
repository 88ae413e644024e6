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

Implementation: both gates are x * sigmoid(x * s + t) with per-(sample, channel) s, t (s = 0 on the
channel half; s = W2 * rstd, t = b2 - s * mu on the spatial half), so one ``var_mean`` pass gives
every statistic. In eager training (sigmoid gate, tap not captured) the whole block is one custom
autograd op, ``_fused.shuffle_attention``: the shuffle is folded into the product's output strides
and only x is kept for backward; on CPU float32 with a batch of at least the thread count its
statistics, gate, product, shuffle and backward passes run on the native kernels (``_native.c``).
``torch.compile`` and ONNX export see the plain expression.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from ._fused import affine_sigmoid_gate, is_sigmoid, shuffle_attention, use_fused
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
        g, half = self.groups, c // (2 * self.groups)
        tapped = self.tap.active or self.tap._forward_hooks
        if use_fused(x) and is_sigmoid(self.gate) and not tapped:  # eager training: one custom op
            return shuffle_attention(x, self.cweight, self.cbias, self.sweight, self.sbias, g, self.eps)
        # Both branches are a per-(sample, channel) affine map of x inside the sigmoid:
        #   channel half: sigmoid(0 * x + (W1 * mean + b1));  spatial half: GN(x) = (x - mu) * rstd, so
        #   sigmoid(x * (W2 * rstd) + (b2 - W2 * rstd * mu)).  One pass gives every channel's mean and
        #   variance, and the gate, the product and the shuffle then run over x once (_fused).
        # float32 statistics: in float16, rsqrt's gradient overflows
        var, mu = torch.var_mean(x.float(), (2, 3), correction=0, keepdim=True)  # (B, C, 1, 1)
        var = var.view(b, g, 2, half)[:, :, 1]  # (B, G, C/2G), spatial halves only
        mu = mu.view(b, g, 2, half)  # (B, G, 2, C/2G)
        cw, cb, sw, sb = (p.view(1, 1, half) for p in (self.cweight, self.cbias, self.sweight, self.sbias))
        scale_sp = sw * torch.rsqrt(var + self.eps)  # (B, G, C/2G)
        s = torch.stack([torch.zeros_like(scale_sp), scale_sp], 2).reshape(b, c, 1, 1)  # (B, C, 1, 1)
        t = torch.stack([cw * mu[:, :, 0] + cb, sb - scale_sp * mu[:, :, 1]], 2).reshape(b, c, 1, 1)  # (B, C, 1, 1)
        s, t = s.to(x.dtype), t.to(x.dtype)
        if tapped:  # materialise the factor only while it is captured
            return channel_shuffle(x * self.tap(self.gate(torch.addcmul(t, x, s))), 2)
        if is_sigmoid(self.gate):
            return affine_sigmoid_gate(x, s, t, shuffle=True)
        return channel_shuffle(x * self.gate(torch.addcmul(t, x, s)), 2)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
