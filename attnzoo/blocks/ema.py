"""Efficient Multi-scale Attention.

Paper: D. Ouyang, S. He, G. Zhang, M. Luo, H. Guo, J. Zhan, Z. Huang, "Efficient Multi-Scale
Attention Module with Cross-Spatial Learning", ICASSP 2023. https://arxiv.org/abs/2305.13563

The C channels are split into G groups of C/G channels (``factor``, G = 32 in the paper), folded
into the batch, and every group goes through the same weights:

    z_h = avgpool_W(x),  z_w = avgpool_H(x)                      X / Y pooling, (C/G, H) and (C/G, W)
    [a_h; a_w] = conv1x1([z_h; z_w])                             shared 1x1 conv on the joined strips
    x1 = GroupNorm(x * sigmoid(a_h) * sigmoid(a_w))              1x1 branch (GroupNorm per channel)
    x2 = conv3x3(x)                                              3x3 branch
    w  = softmax(GAP(x1)) . x2  +  softmax(GAP(x2)) . x1         cross-spatial learning, (1, H, W);
                                                                 softmax over the C/G channels
    y  = x * sigmoid(w)                                          one map per group, broadcast over it

``gate_layer`` (default sigmoid, e.g. timm's ``hard_sigmoid``) is used for all three sigmoids above.

NOTE (groups): G must divide C. If ``factor`` does not divide ``channels`` (or exceeds it), the block
*adapts*: it uses the largest divisor of C that is <= ``factor`` and keeps it on ``self.groups``
(C=16 -> 16 groups of 1, C=48 -> 24 groups of 2, C=64 -> 32 groups of 2). This keeps the paper's
default usable in narrow networks (CIFAR ResNets with 16/32/64 channels), where factor=32 cannot
divide 16. With one channel per group the channel softmax is 1 and w = x1 + x2.

Speed (CPU): in eager float32 with a batch of at least the thread count, input contiguous in NCHW or
channels_last, the sigmoid gate and no capture of the factor, the cross-spatial step -- both softmaxes of
the branch means, the weighted sums, the last sigmoid and the broadcast product, and their backward -- is
one native op (``_pooled_gates.ema_gates``), and the 1x1 branch's GroupNorm of x times its strip gates is
another (``ema_branch``, for the default GroupNorm without hooks); the pooling, the 1x1 conv on the strips,
their sigmoids and the 3x3 conv (on the native small-conv kernel) stay PyTorch modules. Elsewhere the block runs the expression below.

NOTE (as in the authors' code): the GroupNorm has C/G groups over C/G channels, i.e. it normalises
every channel over H x W, so GAP(x1) equals the GroupNorm's bias exactly and softmax(GAP(x1)) is a
learned, input-independent channel weighting. At H = W = 1 GroupNorm returns its bias (variance 0 is
guarded by its eps), so no NaN appears, and the 1x1 branch then carries no input signal.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d, like_input
from ._fused import is_sigmoid
from ._pool import pool_mean
from ._pooled_gates import ema_branch, ema_gates
from ._small_graphs import _unhooked

__all__ = ["EfficientMultiScaleAttn", "ema_groups"]


def ema_groups(channels: int, factor: int) -> int:
    """Largest divisor of ``channels`` that is <= ``factor`` (== factor when it divides channels)."""
    return max(g for g in range(1, min(factor, channels) + 1) if channels % g == 0)


@register_attn(
    "ema",
    family="channel+spatial",
    paper="Efficient Multi-Scale Attention Module with Cross-Spatial Learning",
    authors="Ouyang, He, Zhang, Luo, Guo, Zhan, Huang",
    year=2023,
    link="https://arxiv.org/abs/2305.13563",
)
class EfficientMultiScaleAttn(nn.Module):
    def __init__(self, channels: int, *, factor: int = 32, gate_layer: str | type[nn.Module] = "sigmoid") -> None:
        super().__init__()
        self.channels = check_channels("ema", channels)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"ema: factor (the number of channel groups G) must be a positive int, got {factor!r}")
        self.factor = factor
        self.groups = ema_groups(channels, factor)
        cg = channels // self.groups
        self.conv1x1 = LayoutConv2d(cg, cg, 1)
        self.conv3x3 = LayoutConv2d(cg, cg, 3, padding=1)
        self.gn = nn.GroupNorm(cg, cg)
        self.gate = resolve_layer("ema", "gate_layer", gate_layer)()  # the paper's three sigmoids
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        g = self.groups
        gx = x.reshape(b * g, c // g, h, w)  # (B*G, C/G, H, W)
        z_h = pool_mean(gx, 3)  # (B*G, C/G, H, 1)
        z_w = pool_mean(gx, 2).transpose(2, 3)  # (B*G, C/G, W, 1)
        a = self.conv1x1(torch.cat([z_h, z_w], dim=2))  # (B*G, C/G, H+W, 1)
        a_h, a_w = a.split([h, w], dim=2)  # (B*G, C/G, H, 1), (B*G, C/G, W, 1)
        gh, gw = self.gate(a_h), self.gate(a_w.transpose(2, 3))  # (B*G, C/G, H, 1), (B*G, C/G, 1, W)
        x1 = ema_branch(gx, gh, gw, self.gn)  # one native op where it applies
        if x1 is None:
            x1 = self.gn(gx * gh * gw)  # (B*G, C/G, H, W)
        x2 = self.conv3x3(gx)  # (B*G, C/G, H, W)
        if not (self.tap.active or self.tap._forward_hooks) and is_sigmoid(self.gate) and _unhooked(self.gate):
            y = ema_gates(x, x1, x2, g)  # the cross-spatial step as one native op where it applies
            if y is not None:
                return y
        s1 = pool_mean(x1, (2, 3), keepdim=False).softmax(-1).unsqueeze(1)  # (B*G, 1, C/G)
        s2 = pool_mean(x2, (2, 3), keepdim=False).softmax(-1).unsqueeze(1)  # (B*G, 1, C/G)
        wts = s1 @ x2.flatten(2) + s2 @ x1.flatten(2)  # (B*G, 1, H*W)
        gate = self.gate(wts).reshape(b, g, h, w)  # (B, G, H, W), one map per group
        if self.tap.active or self.tap._forward_hooks:  # the full (B, C, H, W) factor only while captured
            return x * self.tap(gate.unsqueeze(2).expand(b, g, c // g, h, w).reshape(b, c, h, w))
        # broadcast over each group's channels without materialising the (B, C, H, W) factor, in x's layout
        return (x.reshape(b, g, c // g, h, w) * like_input(gate, x).unsqueeze(2)).reshape(b, c, h, w)
