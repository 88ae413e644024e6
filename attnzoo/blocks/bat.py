"""Non-local block with Bilinear Attentional Transforms (bat).

Paper: L. Chi, Z. Yuan, Y. Mu, C. Wang, "Non-Local Neural Networks With Grouped Bilinear Attentional
Transforms", CVPR 2020. https://openaccess.thecvf.com/content_CVPR_2020/html/Chi_Non-Local_Neural_Networks_With_Grouped_Bilinear_Attentional_Transforms_CVPR_2020_paper.html

Instead of an (HW x HW) affinity, BAT mixes whole rows and whole columns of the map: for a map cut
into k x k blocks of t_h x t_w pixels (H = k t_h, W = k t_w),

    x_r = ReLU(BN(conv1x1(x)))                          C -> r = C * rd_ratio (rounded to 8)
    f   = ReLU(BN(conv1x1(x_r)))                        r -> G maps, one per channel group
    p   = sigmoid(conv_{k x 1}(maxpool_{k x 1}(f)))     (B, G, k, k), each row normalised to sum 1
    q   = sigmoid(conv_{1 x k}(maxpool_{1 x k}(f)))     (B, G, k, k), each column normalised to sum 1
    P   = p (x) I_{t_h},  Q = q (x) I_{t_w}              block-structured (H x H), (W x W) transforms
    y   = ReLU(BN(conv1x1(P x_r Q)))                     per group of r / G channels, then conv r -> r
    out = x + Dropout2d(ReLU(BN(conv1x1(y))))           r -> C

so row u of block a becomes a weighted sum of row u of every block (and likewise for columns): an
attention over block positions, O(k^2) per pixel. Defaults as timm's ``BatNonLocalAttn`` (from the
authors' code): k = 7 (``block_size``), G = 2 (``groups``), rd_ratio = 1/4, dropout 0.2.
P x Q is computed with two grouped einsums over the (k, t) factorisation, without building P or Q.

NOTE (any H x W): the paper and timm need H and W divisible by k (timm asserts). Here a map whose
H or W is not is zero-padded at the bottom/right to the next multiple of k for the transform and
cropped back after it; the pooled descriptors that give p and q are taken from the unpadded map.
At sizes divisible by k nothing is padded and the block equals timm's BatNonLocalAttn under copied
weights (tested at 7x7, 14x14 and 14x21, tests/test_zoo_timm_extra.py; state_dict keys are timm's).
Padded rows are zeros, so at other sizes each real row mixes fewer real rows than p's row sums
(1) suggest: a tested, documented difference (timm has no output there). The BNs are
SafeBatchNorm2d, so batch 1 trains. The tap (kind "query", built only while captured) holds each
pixel's weights p[a, j] q[l, i] over the k x k key blocks (the same offset inside each block).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import make_divisible
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer

__all__ = ["BatNonLocal"]


class _ConvBnAct(nn.Module):
    """1x1 conv (no bias) + BN + activation; attribute names (conv, bn) as timm's ConvNormAct."""

    def __init__(self, cin, cout, act_layer):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = SafeBatchNorm2d(cout)
        self.act = act_layer(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def _adaptive_max_1d(t: torch.Tensor, k: int) -> torch.Tensor:
    """torch's adaptive max pooling of the last axis (length n) to k bins, [floor(a n / k), ceil((a + 1) n / k)),
    written with a mask so that it exports to ONNX (aten.adaptive_max_pool2d has no ONNX function)."""
    n = t.shape[-1]
    a = torch.arange(k, device=t.device).unsqueeze(1)  # (k, 1)
    i = torch.arange(n, device=t.device).unsqueeze(0)  # (1, n)
    inside = (i >= (a * n) // k) & (i < ((a + 1) * n + k - 1) // k)  # (k, n), bin membership
    return t.unsqueeze(-2).masked_fill(~inside, float("-inf")).amax(-1)  # (..., k)


class _BilinearTransform(nn.Module):
    def __init__(self, channels, block_size, groups, act_layer):
        super().__init__()
        k, g = block_size, groups
        self.block_size, self.groups = k, g
        self.conv1 = _ConvBnAct(channels, g, act_layer)
        self.conv_p = nn.Conv2d(g, k * k * g, (k, 1))
        self.conv_q = nn.Conv2d(g, k * k * g, (1, k))
        self.conv2 = _ConvBnAct(channels, channels, act_layer)
        self.tap = AttnTap("query")  # (B, G, H*W, k, k): each pixel's weights over the k x k key blocks

    def forward(self, x):
        b, c, h, w = x.shape
        k, g = self.block_size, self.groups
        f = self.conv1(x)  # (B, G, H, W)
        rp = _adaptive_max_1d(f.amax(3), k).unsqueeze(3)  # (B, G, k, 1) = adaptive_max_pool2d(f, (k, 1))
        cp = _adaptive_max_1d(f.amax(2), k).unsqueeze(2)  # (B, G, 1, k) = adaptive_max_pool2d(f, (1, k))
        p = self.conv_p(rp).view(b, g, k, k).sigmoid()  # (B, G, k, k)
        q = self.conv_q(cp).view(b, g, k, k).sigmoid()  # (B, G, k, k)
        p = p / p.sum(3, keepdim=True)  # rows sum to 1
        q = q / q.sum(2, keepdim=True)  # columns sum to 1
        hp, wp = -(-h // k) * k, -(-w // k) * k
        if self.tap.active:  # only when captured: pixel (y, x) in block (a, i) takes p[a, j] q[l, i] from block (j, l)
            rows = p[:, :, torch.arange(h, device=x.device) // (hp // k)]  # (B, G, H, k)
            cols = q[:, :, :, torch.arange(w, device=x.device) // (wp // k)]  # (B, G, k, W)
            self.tap(torch.einsum("bgyj,bglx->bgyxjl", rows, cols).reshape(b, g, h * w, k, k))
        xp = F.pad(x, (0, wp - w, 0, hp - h))  # (B, C, Hp, Wp), zeros bottom/right
        th, tw = hp // k, wp // k
        xg = xp.reshape(b, g, c // g, k, th, wp)  # (B, G, C/G, k, t_h, Wp): row = block a, offset u
        y = torch.einsum("bgij,bgcjuw->bgciuw", p, xg)  # (P x): y[a, u] = sum_j p[a, j] x[j, u]
        y = y.reshape(b, g, c // g, hp, k, tw)  # (B, G, C/G, Hp, k, t_w): column = block j, offset v
        y = torch.einsum("bgchjv,bgji->bgchiv", y, q)  # (. Q): y[:, i, v] = sum_j y[:, j, v] q[j, i]
        y = y.reshape(b, c, hp, wp)[:, :, :h, :w]  # (B, C, H, W), cropped back
        return self.conv2(y)


@register_attn(
    "bat",
    family="self-attention",
    paper="Non-Local Neural Networks With Grouped Bilinear Attentional Transforms",
    authors="Chi, Yuan, Mu, Wang",
    year=2020,
    link="https://openaccess.thecvf.com/content_CVPR_2020/html/Chi_Non-Local_Neural_Networks_With_Grouped_Bilinear_Attentional_Transforms_CVPR_2020_paper.html",
)
class BatNonLocal(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        block_size: int = 7,
        groups: int = 2,
        drop_rate: float = 0.2,
        rd_ratio: float = 0.25,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        super().__init__()
        self.channels = check_channels("bat", channels)
        for n, v in (("block_size", block_size), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"bat: {n} must be a positive int, got {v!r}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"bat: drop_rate must be in [0, 1), got {drop_rate!r}")
        if rd_channels is None:
            if not rd_ratio > 0:
                raise ValueError(f"bat: rd_ratio must be > 0, got {rd_ratio!r}")
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"bat: rd_channels must be a positive int, got {rd_channels!r}")
        if rd_channels % groups:
            raise ValueError(f"bat: the reduced width {rd_channels} must be divisible by groups={groups}; "
                             f"set rd_channels to a multiple of {groups} or change groups")
        self.rd_channels = rd_channels
        self.block_size, self.groups = block_size, groups
        act = resolve_layer("bat", "act_layer", act_layer)
        self.conv1 = _ConvBnAct(channels, rd_channels, act)
        self.ba = _BilinearTransform(rd_channels, block_size, groups, act)
        self.conv2 = _ConvBnAct(rd_channels, channels, act)
        self.dropout = nn.Dropout2d(p=drop_rate)

    def forward(self, x):
        check_input(self, x)
        return x + self.dropout(self.conv2(self.ba(self.conv1(x))))  # (B, C, H, W)
