"""Bottleneck Attention Module.

Paper: J. Park, S. Woo, J.-Y. Lee, I. S. Kweon, "BAM: Bottleneck Attention Module", BMVC 2018.
https://arxiv.org/abs/1807.06514

    Mc(F) = BN(W1 relu(W0 GAP(F) + b0) + b1)                      channel branch, C -> C/r -> C (Eq. 3)
    Ms(F) = BN(f1x1_3(f3x3_2(f3x3_1(f1x1_0(F)))))                 spatial branch, C -> C/r -> 1 (Eq. 4)
    M(F)  = sigmoid(Mc(F) + Ms(F))                                 (B, C, 1, 1) + (B, 1, H, W) (Eq. 2)
    F'    = F + F * M(F)                                           residual (Eq. 1)

Defaults are the paper's: reduction r = 16 and dilation d = 4 for both 3x3 convolutions.
The factor M (a full (B, C, H, W) map) passes through ``self.tap`` (kind "spatial").

NOTE (departures and readings):
* Branches are combined by a sum inside the sigmoid, as Eq. 2 of the paper. The authors' released
  code multiplies the two branch outputs instead; this module follows the paper.
* Inside the spatial branch each convolution but the last is followed by BatchNorm and ReLU (the
  authors' code; Eq. 4 lists only the convolutions). The hidden layer of the channel MLP has a ReLU.
* A convolution or FC layer directly followed by BatchNorm has no bias (``b1`` of Eq. 3 and the
  spatial-branch biases): BN subtracts the batch mean, so such a bias would never learn.
* BatchNorm needs more than one value per channel in training. The channel branch sees one value
  per channel and sample, so at batch size 1 (and the spatial branch at batch 1 with a 1x1 map)
  torch's BatchNorm raises. ``SafeBatchNorm2d`` normalizes such a single-value batch with its running
  statistics instead and leaves them unchanged.
* The reduced width is ``make_divisible(C * rd_ratio, rd_divisor=1)``: C/r rounded to the nearest
  int (the authors' code floors; the two agree whenever r divides C).
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_input, reduced_channels, resolve_layer

__all__ = ["BottleneckAttn"]




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
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = rd = reduced_channels("bam", channels, rd_ratio, rd_channels, rd_divisor)
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"bam: dilation must be a positive int (the paper uses 4), got {dilation!r}")
        self.dilation = dilation
        act = resolve_layer("bam", "act_layer", act_layer)

        # channel branch, Eq. 3: GAP -> FC (bias b0) -> act -> FC (no bias: BN follows) -> BN
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = act(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=False)
        self.bn_channel = SafeBatchNorm2d(channels)

        # spatial branch, Eq. 4: 1x1 reduce -> two dilated 3x3 -> 1x1 to one map -> BN
        self.conv_reduce = nn.Conv2d(channels, rd, 1, bias=False)
        self.bn_reduce = SafeBatchNorm2d(rd)
        self.act_reduce = act(inplace=True)
        self.conv_dil1 = nn.Conv2d(rd, rd, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_dil1 = SafeBatchNorm2d(rd)
        self.act_dil1 = act(inplace=True)
        self.conv_dil2 = nn.Conv2d(rd, rd, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_dil2 = SafeBatchNorm2d(rd)
        self.act_dil2 = act(inplace=True)
        self.conv_spatial = nn.Conv2d(rd, 1, 1, bias=False)
        self.bn_spatial = SafeBatchNorm2d(1)

        self.gate = resolve_layer("bam", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        mc = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        mc = self.bn_channel(self.fc2(self.act(self.fc1(mc))))  # (B, C, 1, 1)
        ms = self.act_reduce(self.bn_reduce(self.conv_reduce(x)))  # (B, C/r, H, W)
        ms = self.act_dil1(self.bn_dil1(self.conv_dil1(ms)))  # (B, C/r, H, W)
        ms = self.act_dil2(self.bn_dil2(self.conv_dil2(ms)))  # (B, C/r, H, W)
        ms = self.bn_spatial(self.conv_spatial(ms))  # (B, 1, H, W)
        m = self.tap(self.gate(mc + ms))  # (B, C, H, W)
        return x + x * m
