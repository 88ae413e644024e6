"""Concurrent spatial and channel squeeze & excitation (scSE).

Paper: A. G. Roy, N. Navab, C. Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in
Fully Convolutional Networks", MICCAI 2018. https://arxiv.org/abs/1803.02579
Journal extension: "Recalibrating Fully Convolutional Networks with Spatial and Channel 'Squeeze &
Excitation' Blocks", IEEE TMI 2019. https://arxiv.org/abs/1808.08127

    s = sigmoid(W2 relu(W1 GAP(x)))          cSE: SE with reduction r = 2, (B, C, 1, 1)
    q = sigmoid(w_sq * x)                    sSE: 1x1 conv C -> 1, (B, 1, H, W)
    y = max(x * s, x * q)                    aggregation (default "max")

``aggregation`` chooses how the two recalibrated maps x*s and x*q are combined: ``"max"``
(element-wise maximum, the default), ``"add"`` (x*s + x*q) or ``"mult"`` ((x*s) * (x*q), the
product of the two recalibrated maps, as the journal paper's multiplication aggregation).

NOTE: the MICCAI paper combines cSE and sSE by element-wise addition. Its journal extension
compares max-out, addition, multiplication and concatenation and reports max-out as the best
aggregation, and the authors' released code uses the maximum; that is the default here, with
``aggregation="add"`` for the MICCAI formulation. Concatenation is not offered: it doubles the
channels, which a drop-in block cannot do. The reduced width is ``make_divisible(C * rd_ratio, 1)``,
C/2 rounded to the nearest int (the authors floor; the two agree for even C).
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_input, reduced_channels, resolve_layer
from ._fused import max_of_gates, use_fused
from ._layout import LayoutConv2d
from ._pool import pool_mean
from ._pooled_gates import scse_gates

__all__ = ["ConcurrentSpatialChannelSE"]

AGGREGATIONS = ("max", "add", "mult")


@register_attn(
    "scse",
    family="channel+spatial",
    paper="Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
    authors="Roy, Navab, Wachinger",
    year=2018,
    link="https://arxiv.org/abs/1803.02579",
)
class ConcurrentSpatialChannelSE(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        aggregation: str = "max",
        rd_ratio: float = 1.0 / 2,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"scse: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.channels = channels
        self.aggregation = aggregation
        self.rd_channels = reduced_channels("scse", channels, rd_ratio, rd_channels, rd_divisor)
        # cSE
        self.fc1 = LayoutConv2d(channels, self.rd_channels, 1, bias=True)
        self.act = resolve_layer("scse", "act_layer", act_layer)(inplace=True)
        self.fc2 = LayoutConv2d(self.rd_channels, channels, 1, bias=True)
        # sSE
        self.conv_spatial = nn.Conv2d(channels, 1, 1, bias=True)
        self.gate = resolve_layer("scse", "gate_layer", gate_layer)()
        self.tap_channel = AttnTap("channel")
        self.tap_spatial = AttnTap("spatial")

    def factors(self, mean, logits):
        """(gc, gs): the channel gate from the mean over positions (B, C, 1, 1) and the spatial gate from the
        1x1 conv's logits without its bias (B, 1, H, W)."""
        gc = self.tap_channel(self.gate(self.fc2(self.act(self.fc1(mean)))))
        bias = self.conv_spatial.bias
        return gc, self.tap_spatial(self.gate(logits if bias is None else logits + bias.view(1, 1, 1, 1)))

    def forward(self, x):
        check_input(self, x)
        y = scse_gates(x, self)  # native CPU kernels where they apply
        if y is not None:
            return y
        s = self.fc2(self.act(self.fc1(pool_mean(x, (2, 3)))))  # (B, C, 1, 1)
        gc = self.tap_channel(self.gate(s))
        q = self.tap_spatial(self.gate(self.conv_spatial(x)))  # (B, 1, H, W)
        if self.aggregation == "max" and use_fused(x) and x.device.type == "cpu":
            return max_of_gates(x, gc, q)  # one op, the same function (see _fused._MaxOfGates)
        x_cse = x * gc
        x_sse = x * q
        if self.aggregation == "max":
            return torch.maximum(x_cse, x_sse)
        if self.aggregation == "add":
            return x_cse + x_sse
        return x_cse * x_sse

    def extra_repr(self) -> str:
        return f"aggregation={self.aggregation!r}"
