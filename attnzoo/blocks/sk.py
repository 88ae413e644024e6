"""Selective Kernel unit: parallel convolution branches of different receptive fields, mixed per
channel by a softmax attention across the branches.

Paper: X. Li, W. Wang, X. Hu, J. Yang, "Selective Kernel Networks", CVPR 2019.
https://arxiv.org/abs/1903.06586

With M branches U_m = ReLU(BN(conv_m(X))) (Sec. 3.1):

    Split:   U_1 = 3x3 conv, U_2 = 3x3 conv with dilation 2 (the paper's stand-in for 5x5), grouped
    Fuse:    s = GAP(sum_m U_m)  (C,);   z = ReLU(BN(W_reduce s))  (d,),  d = max(C / r, L)
    Select:  a_m = softmax_m(W_select,m z)  (C,) per branch;   V = sum_m a_m * U_m

Defaults as the paper: M = 2 (``kernel_size=(3, 5)``, ``keep_3x3=True``), groups G = 32, r = 16,
L = 32 (``rd_min``). The block keeps the shape (C -> C, stride 1); like the paper's SK
convolution it *replaces* its input by V (no residual), so it is not the identity at init.

Family: registered as ``"channel"``: what the attention produces is one softmax weight per
channel and branch, a channel attention over the branches (the paper's "attention over kernels");
the registry has no "multi-branch" family, and the block neither mixes positions nor builds a
spatial map.

NOTE (departures, and why):
* Groups: the paper's G = 32 assumes widths >= 128. The branches here use
  ``groups = gcd(channels, groups)``, the largest group count that divides both the channel count
  and the requested G: 32 for every multiple of 32 (64, 128, ..., 2048), 16 for C = 16 and 48
  (depthwise at 16), 8 for C = 24. ``self.groups`` keeps the value used.
* ``attn_norm=False`` (default) replaces the BN in the fuse step by a bias on ``W_reduce``: BN over
  a (B, d, 1, 1) descriptor has one value per channel when B = 1 and cannot train at batch 1.
  ``attn_norm=True`` is the paper's form and, with ``groups`` and ``rd_channels`` matched, equals
  ``timm.layers.SelectiveKernel(C, kernel_size=[3, 5], split_input=False)`` under the same weights
  (tested; the attribute names match so timm's state_dict loads).
* timm's own defaults differ from the paper: ``split_input=True`` (each branch sees C/M inputs),
  ``groups=1``, ``d = make_divisible(C/16, 8)`` with no L; this block follows the paper.
* Taps: ``taps[m]`` receives a_m, the (B, C, 1, 1) weight multiplied into branch m.

Speed (CPU): a branch whose convolution is depthwise (groups = C, e.g. C <= 32 at the default 32
groups) or has 2 channels per group (C = 64) runs on the native depthwise or grouped kernel for
channels_last float32 input (``LayoutConv2d``). After
the convs, the BatchNorms, ReLUs, the fuse's pooling and the select run as two native ops
(``_pooled_gates.sk_gates``: the normalised maps are never written) around the MLP, softmax and taps,
which stay modules; with hooks on a branch or on ``attn``, another norm or activation, or where the
kernels do not apply, the block runs its modules.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from timm.layers import make_divisible

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d
from ._pool import pool_mean
from ._pooled_gates import sk_gates
from ._small_graphs import _unhooked

__all__ = ["SelectiveKernel"]

_PATH = ["conv", "bn", "act"]  # a branch's modules, in order


class _SelectAttn(nn.Module):
    """Fuse and select: (B, M, C, H, W) branch outputs -> (B, M, C, 1, 1) softmax weights over M."""

    def __init__(self, channels: int, num_paths: int, rd_channels: int, attn_norm: bool, act_layer) -> None:
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = LayoutConv2d(channels, rd_channels, 1, bias=not attn_norm)
        self.bn = SafeBatchNorm2d(rd_channels) if attn_norm else nn.Identity()
        self.act = act_layer(inplace=True)
        self.fc_select = LayoutConv2d(rd_channels, channels * num_paths, 1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # fuse by sum, then GAP; the mean of the sum is the sum of the means, which never builds
        # the (B, C, H, W) sum
        return self.from_pooled(sum(pool_mean(f, (2, 3)) for f in feats))  # from s (B, C, 1, 1)

    def from_pooled(self, s: torch.Tensor) -> torch.Tensor:
        """The softmax weights (B, M, C, 1, 1) from the fused descriptor s = sum_m GAP(U_m) (B, C, 1, 1)."""
        b, c = s.shape[:2]
        z = self.act(self.bn(self.fc_reduce(s)))  # (B, d, 1, 1)
        logits = self.fc_select(z).reshape(b, self.num_paths, c, 1, 1)  # (B, M, C, 1, 1)
        return logits.softmax(1)


@register_attn(
    "sk",
    family="channel",
    paper="Selective Kernel Networks",
    authors="Li, Wang, Hu, Yang",
    year=2019,
    link="https://arxiv.org/abs/1903.06586",
)
class SelectiveKernel(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: tuple[int, ...] | list[int] = (3, 5),
        keep_3x3: bool = True,
        groups: int = 32,
        attn_norm: bool = False,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        rd_min: int = 32,
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        super().__init__()
        self.channels = check_channels("sk", channels)
        kernels = list(kernel_size) if isinstance(kernel_size, (list, tuple)) else None
        if not kernels or len(kernels) < 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 3 or k % 2 == 0 for k in kernels):
            raise ValueError(f"sk: kernel_size must list >= 2 odd kernel sizes >= 3, one per branch (the paper: (3, 5)), got {kernel_size!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"sk: groups must be a positive int (the paper's G = 32), got {groups!r}")
        if not isinstance(rd_min, int) or rd_min < 0:
            raise ValueError(f"sk: rd_min (the paper's L) must be an int >= 0, got {rd_min!r}")
        if rd_channels is not None:
            if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
                raise ValueError(f"sk: rd_channels must be a positive int, got {rd_channels!r}")
            self.rd_channels = rd_channels
        else:
            if not 0 < rd_ratio <= 1:
                raise ValueError(f"sk: rd_ratio must be in (0, 1] (the paper's 1/r), got {rd_ratio!r}")
            reduced = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0) if channels * rd_ratio >= 1 else 0
            self.rd_channels = max(reduced, rd_min, 1)  # d = max(C / r, L)
        if keep_3x3:  # a k x k kernel becomes a 3x3 kernel with dilation (k - 1) / 2, same receptive field
            dilations = [(k - 1) // 2 for k in kernels]
            kernels = [3] * len(kernels)
        else:
            dilations = [1] * len(kernels)
        self.num_paths = len(kernels)
        self.groups = math.gcd(channels, groups)
        act = resolve_layer("sk", "act_layer", act_layer)
        self.paths = nn.ModuleList(
            nn.Sequential(OrderedDict(
                conv=LayoutConv2d(channels, channels, k, padding=dl * (k - 1) // 2, dilation=dl, groups=self.groups,
                                  bias=False),
                bn=SafeBatchNorm2d(channels),
                act=act(inplace=True),
            ))
            for k, dl in zip(kernels, dilations)
        )
        self.attn = _SelectAttn(channels, self.num_paths, self.rd_channels, attn_norm, act)
        self.taps = nn.ModuleList(AttnTap("channel") for _ in range(self.num_paths))

    def _weights(self, s: torch.Tensor) -> list[torch.Tensor]:
        a = self.attn.from_pooled(s)
        return [tap(a[:, i]) for i, tap in enumerate(self.taps)]

    def forward(self, x):
        check_input(self, x)
        if _unhooked(*self.paths, self.attn) and all(type(p) is nn.Sequential and list(p._modules) == _PATH
                                                     for p in self.paths):
            # the fuse and select, with the BatchNorms and ReLUs, on the kernels where they apply
            convs = [path.conv(x) for path in self.paths]
            out = sk_gates(convs, [path.bn for path in self.paths], [path.act for path in self.paths], self._weights,
                           self)
            if out is not None:
                return out
            feats = [path.act(path.bn(u)) for path, u in zip(self.paths, convs)]
        else:
            feats = [path(x) for path in self.paths]  # M x (B, C, H, W)
        a = self.attn(feats)  # (B, M, C, 1, 1), sums to 1 over M
        # select: sum_i a_i * U_i, accumulated branch by branch (no (B, M, C, H, W) stack to copy into)
        out = feats[0] * self.taps[0](a[:, 0])
        for i in range(1, self.num_paths):
            out = out + feats[i] * self.taps[i](a[:, i])
        return out  # (B, C, H, W)
