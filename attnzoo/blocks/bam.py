"""Bottleneck Attention Module.

Paper: J. Park, S. Woo, J.-Y. Lee, I. S. Kweon, "BAM: Bottleneck Attention Module", BMVC 2018.
https://arxiv.org/abs/1807.06514

    Mc(F) = BN(W1 relu(BN(W0 GAP(F))) + b1)                     channel branch, C -> C/r -> C (Eq. 3)
    Ms(F) = BN(f1x1_3(f3x3_2(f3x3_1(f1x1_0(F)))))                 spatial branch, C -> C/r -> 1 (Eq. 4)
    M(F)  = sigmoid(Mc(F) + Ms(F))                                 (B, C, 1, 1) + (B, 1, H, W) (Eq. 2)
    F'    = F + F * M(F)                                           residual (Eq. 1)

Defaults are the paper's: reduction r = 16 and dilation d = 4 for both 3x3 convolutions.
The factor M (a full (B, C, H, W) map) passes through ``self.tap`` (kind "spatial").

``form`` chooses between the paper's equations and the authors' released code (Jongchan/attention-module):

* ``form="paper"`` (default): Eq. 1-4 as written, so each branch ends in a BatchNorm (Eq. 3 and 4 put
  one on the MLP output and one on the spatial map) and the branches are summed inside the sigmoid
  (Eq. 2). Where the paper is silent (the hidden layers) the authors' code is followed: the hidden FC
  of the channel MLP and every convolution of the spatial branch but the last are followed by
  BatchNorm and ReLU.
* ``form="authors"``: the authors' code exactly. BatchNorm + ReLU after the hidden FC and after every
  spatial convolution but the last, *no* BatchNorm on either branch's output, every FC/conv with a
  bias, the branches multiplied inside the sigmoid: F' = F * (1 + sigmoid(Mc(F) * Ms(F))), and the
  reduced width floored, C // r (when ``rd_channels`` is not given and ``rd_divisor=1``).

NOTE (departures and readings, ``form="paper"``):
* A convolution or FC layer directly followed by BatchNorm has no bias (``b0``, ``b1`` of Eq. 3 and the
  spatial-branch biases): BN subtracts the batch mean, so such a bias would never learn. The authors'
  code keeps them (``form="authors"``), where they are equally inert except in the last layers.
* BatchNorm needs more than one value per channel in training. The channel branch sees one value
  per channel and sample, so at batch size 1 (and the spatial branch at batch 1 with a 1x1 map)
  torch's BatchNorm raises. ``SafeBatchNorm2d`` normalizes such a single-value batch with its running
  statistics instead and leaves them unchanged (both forms; the authors' BatchNorm1d raises there).
* The reduced width is ``make_divisible(C * rd_ratio, rd_divisor=1)``: C/r rounded to the nearest
  int (the authors' code floors; the two agree whenever r divides C).
* BatchNorm momentum and eps are torch's defaults (0.1, 1e-5), as in the authors' code.

Speed (CPU): in eager float32 with a batch of at least the thread count, a sigmoid gate and nothing
capturing the tap (a captured tap needs the full map M(F)), the combination ``F + F * sigmoid(Mc + Ms)``
is one native op (``_pooled_gates.bam_gate``: one pass each way, the full-size sum, sigmoid and product
never written); the two branches are the modules above either way, except that each BatchNorm + ReLU
pair of the spatial branch is one native op too (``_pooled_gates.norm_relu``, for the default BatchNorm2d
and ReLU without hooks).
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_input, reduced_channels, resolve_layer
from ._layout import LayoutConv2d, combine_like
from ._fused import is_sigmoid
from ._pool import pool_mean
from ._pooled_gates import bam_gate, norm_relu

__all__ = ["BottleneckAttn", "FORMS"]


def _norm_act(u: torch.Tensor, norm: nn.Module, act: nn.Module) -> torch.Tensor:
    """act(norm(u)): one native op for a plain BatchNorm2d and ReLU where the kernels apply, else the modules."""
    y = norm_relu(u, norm, act)
    return act(norm(u)) if y is None else y

FORMS = ("paper", "authors")


@register_attn(
    "bam",
    family="channel+spatial",
    paper="BAM: Bottleneck Attention Module",
    authors="Park, Woo, Lee, Kweon",
    year=2018,
    link="https://arxiv.org/abs/1807.06514",
)
class BottleneckAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        dilation: int = 4,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
        form: str = "paper",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = rd = reduced_channels("bam", channels, rd_ratio, rd_channels, rd_divisor)
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"bam: dilation must be a positive int (the paper uses 4), got {dilation!r}")
        self.dilation = dilation
        if form not in FORMS:
            raise ValueError(f"bam: form must be one of {FORMS} ('paper': Eq. 1-4; 'authors': the released code), got {form!r}")
        self.form = form
        authors = form == "authors"
        if authors and rd_channels is None and rd_divisor == 1:
            self.rd_channels = rd = max(1, int(channels * rd_ratio))  # the authors' C // r
        act = resolve_layer("bam", "act_layer", act_layer)

        # channel branch, Eq. 3: GAP -> FC -> BN -> act -> FC -> BN (paper) / no BN (authors)
        self.fc1 = LayoutConv2d(channels, rd, 1, bias=authors)
        self.bn_hidden = SafeBatchNorm2d(rd)
        self.act = act(inplace=True)
        self.fc2 = LayoutConv2d(rd, channels, 1, bias=authors)
        self.bn_channel = nn.Identity() if authors else SafeBatchNorm2d(channels)

        # spatial branch, Eq. 4: 1x1 reduce -> two dilated 3x3 -> 1x1 to one map -> BN (paper) / no BN (authors)
        self.conv_reduce = LayoutConv2d(channels, rd, 1, bias=authors)
        self.bn_reduce = SafeBatchNorm2d(rd)
        self.act_reduce = act(inplace=True)
        self.conv_dil1 = LayoutConv2d(rd, rd, 3, padding=dilation, dilation=dilation, bias=authors)
        self.bn_dil1 = SafeBatchNorm2d(rd)
        self.act_dil1 = act(inplace=True)
        self.conv_dil2 = LayoutConv2d(rd, rd, 3, padding=dilation, dilation=dilation, bias=authors)
        self.bn_dil2 = SafeBatchNorm2d(rd)
        self.act_dil2 = act(inplace=True)
        self.conv_spatial = LayoutConv2d(rd, 1, 1, bias=authors)
        self.bn_spatial = nn.Identity() if authors else SafeBatchNorm2d(1)

        self.gate = resolve_layer("bam", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        mc = pool_mean(x, (2, 3))  # (B, C, 1, 1)
        mc = self.bn_channel(self.fc2(self.act(self.bn_hidden(self.fc1(mc)))))  # (B, C, 1, 1)
        ms = _norm_act(self.conv_reduce(x), self.bn_reduce, self.act_reduce)  # (B, C/r, H, W)
        ms = _norm_act(self.conv_dil1(ms), self.bn_dil1, self.act_dil1)  # (B, C/r, H, W)
        ms = _norm_act(self.conv_dil2(ms), self.bn_dil2, self.act_dil2)  # (B, C/r, H, W)
        ms = self.bn_spatial(self.conv_spatial(ms))  # (B, 1, H, W)
        if not (self.tap.active or self.tap._forward_hooks) and is_sigmoid(self.gate):  # a captured tap needs m
            y = bam_gate(x, mc, ms, mul=self.form == "authors")  # the native CPU kernels where they apply
            if y is not None:
                return y
        m = self.tap(self.gate(combine_like(mc, ms, x, torch.mul if self.form == "authors" else torch.add)))  # (B, C, H, W)
        return x + x * m

    def extra_repr(self) -> str:
        return f"form={self.form!r}"
