"""Split attention (split): the ResNeSt block's radix-split convolution with a softmax attention
across the splits.

Paper: H. Zhang, C. Wu, Z. Zhang, Y. Zhu, H. Lin, Z. Zhang, Y. Sun, T. He, J. Mueller, R. Manmatha,
M. Li, A. Smola, "ResNeSt: Split-Attention Networks", 2020 (CVPR Workshops 2022).
https://arxiv.org/abs/2004.08955

With radix R and cardinality K (``groups``), Sec. 3.1-3.2 and Fig. 2:

    U = ReLU(BN(conv_{k x k, groups K*R}(X)))           (B, R*C, H, W): R splits U_1..U_R of C channels
    s = GAP(sum_r U_r)                                   (B, C), the fused global context (Eq. 1)
    z = ReLU(BN(W_1 s))                                  (B, d), grouped by K, d = R*C*rd_ratio, >= 32
    a = softmax over r of W_2 z, per cardinal group      (B, R, C) (Eq. 2); sigmoid when R = 1
    V = sum_r a_r * U_r                                  (B, C, H, W)

Defaults as the paper's ResNeSt-50: R = 2, K = 1, k = 3, rd_ratio = 1/4 with a floor of 32 (``rd_min``).
d is ``make_divisible(C * R * rd_ratio, rd_divisor=8, min_value=rd_min)``, timm's rounding of the
authors' ``max(C * R // 4, 32)``; ``rd_channels`` sets d / R directly, as in timm.

Like ``sk`` (its relative) this is a convolution with attention inside: it *replaces* its input by V
(stride 1, C -> C, no residual), so it is not the identity at init. ``taps[r]`` receives a_r, the
(B, C, 1, 1) weight multiplied into split r.

NOTE: timm's SplitAttn defaults to no norm (``norm_layer=None``) and gets BatchNorm from the ResNeSt
model; here ``norm=True`` (the paper's BN) is the default and ``norm=False`` is timm's default module.
Both are tested for parity with timm's SplitAttn under copied weights (tests/test_zoo_timm_extra.py);
the attribute names are timm's. The BNs are SafeBatchNorm2d, so batch 1 trains. Stride and
DropBlock (the model's business) are not part of this block.
"""
from __future__ import annotations

from timm.layers import make_divisible
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d, keep_layout
from ._pool import pool_mean

__all__ = ["SplitAttn"]


def _positive_int(block: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{block}: {name} must be a positive int, got {v!r}")
    return v


@register_attn(
    "split",
    family="channel",
    paper="ResNeSt: Split-Attention Networks",
    authors="Zhang, Wu, Zhang, Zhu, Lin, Zhang, Sun, He, Mueller, Manmatha, Li, Smola",
    year=2020,
    link="https://arxiv.org/abs/2004.08955",
)
class SplitAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        radix: int = 2,
        groups: int = 1,
        kernel_size: int = 3,
        dilation: int = 1,
        bias: bool = False,
        norm: bool = True,
        rd_ratio: float = 0.25,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        rd_min: int = 32,
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        super().__init__()
        self.channels = check_channels("split", channels)
        self.radix = _positive_int("split", "radix", radix)
        self.groups = _positive_int("split", "groups", groups)
        _positive_int("split", "kernel_size", kernel_size)
        _positive_int("split", "dilation", dilation)
        if channels % (groups * radix):
            raise ValueError(f"split: channels={channels} must be divisible by groups * radix = {groups * radix} "
                             f"(the split convolution has that many groups); choose radix/groups that divide it")
        if rd_channels is not None:
            attn_chs = _positive_int("split", "rd_channels", rd_channels) * radix
        else:
            if not rd_ratio > 0:
                raise ValueError(f"split: rd_ratio must be > 0, got {rd_ratio!r}")
            attn_chs = make_divisible(channels * radix * rd_ratio, rd_divisor, min_value=rd_min)
        if attn_chs % groups:
            raise ValueError(f"split: the attention width {attn_chs} must be divisible by groups={groups}; set rd_channels")
        self.rd_channels = attn_chs
        mid = channels * radix
        act = resolve_layer("split", "act_layer", act_layer)
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(channels, mid, kernel_size, 1, pad, dilation, groups=groups * radix, bias=bias)
        self.bn0 = SafeBatchNorm2d(mid) if norm else nn.Identity()
        self.act0 = act(inplace=True)
        self.fc1 = LayoutConv2d(channels, attn_chs, 1, groups=groups)
        self.bn1 = SafeBatchNorm2d(attn_chs) if norm else nn.Identity()
        self.act1 = act(inplace=True)
        self.fc2 = LayoutConv2d(attn_chs, mid, 1, groups=groups)
        self.taps = nn.ModuleList(AttnTap("channel") for _ in range(radix))

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        r, k = self.radix, self.groups
        u = keep_layout(self.act0(self.bn0(self.conv(x)))).reshape(b, r, c, h, w)  # (B, R, C, H, W), the R splits
        s = pool_mean(u.sum(1), (2, 3))  # (B, C, 1, 1)
        a = self.fc2(self.act1(self.bn1(self.fc1(s))))  # (B, R*C, 1, 1), per cardinal group: (K, R, C/K)
        if r > 1:
            a = a.reshape(b, k, r, c // k).softmax(2).transpose(1, 2).reshape(b, r, c, 1, 1)  # (B, R, C, 1, 1)
        else:
            a = a.sigmoid().reshape(b, 1, c, 1, 1)  # (B, 1, C, 1, 1)
        out = u[:, 0] * self.taps[0](a[:, 0])
        for i in range(1, r):
            out = out + u[:, i] * self.taps[i](a[:, i])
        return out  # (B, C, H, W)
