"""Simplified Coordinate Attention (scoord): timm's ``SimpleCoordAttn``, attn name "scoord".

Built on Coordinate Attention: Q. Hou, D. Zhou, J. Feng, "Coordinate Attention for Efficient Mobile
Network Design", CVPR 2021. https://arxiv.org/abs/2103.02907
The simplification is timm's; its documented behaviour is the specification here:

    z^h = mean_w x (B, C, H),  z^w = mean_h x (B, C, W)             directional (strip) pooling
    f^h = act(W1 z^h),  f^w = act(W1 z^w)                           one shared linear C -> r, no norm
    y = x * sigmoid(W_h f^h + W_w f^w)                               the two maps added *before* the gate

Coordinate Attention concatenates the strips through a 1x1 conv + BatchNorm and multiplies two gated
factors; here the map is one gate of a sum, with linear layers and no norm. r =
``make_divisible(C * rd_ratio * se_factor, rd_divisor)`` (rd_ratio = 1/4, se_factor = 2/3,
rd_divisor = 8: about SE's parameter count), SiLU, biases on, as timm. ``has_skip=True`` returns
y + x. No departures from timm's module; parity under copied weights is tested
(tests/test_zoo_timm_extra.py).

Speed (CPU): with the sigmoid gate, nothing capturing the tap, eager float32 and a batch of at least
the thread count, the block is one native op (``_pooled_gates.strip_gates(sigmoid='gate')``, as strip),
and with SiLU or hard swish its small graph (fc1, the activation, fc_h and fc_w on the strips) is one
autograd op in C (``_small_graphs.coord_gates``); elsewhere the PyTorch expression runs.
"""
from __future__ import annotations

from timm.layers import make_divisible
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._layout import combine_like
from ._fused import is_sigmoid
from ._pool import pool_mean
from ._pooled_gates import strip_gates
from ._small_graphs import coord_gates

__all__ = ["SimpleCoordAttn"]


@register_attn(
    "scoord",
    family="channel+spatial",
    paper="Coordinate Attention for Efficient Mobile Network Design (simplified: timm's SimpleCoordAttn)",
    authors="Hou, Zhou, Feng; simplification by R. Wightman in timm",
    year=2021,
    link="https://arxiv.org/abs/2103.02907",
)
class SimpleCoordAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        se_factor: float = 2 / 3,
        bias: bool = True,
        has_skip: bool = False,
        rd_ratio: float = 0.25,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: str | type[nn.Module] = "silu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("scoord", channels)
        if rd_channels is None:
            if not rd_ratio > 0 or not se_factor > 0:
                raise ValueError(f"scoord: rd_ratio and se_factor must be > 0, got {rd_ratio!r}, {se_factor!r}")
            rd_channels = make_divisible(channels * rd_ratio * se_factor, rd_divisor, round_limit=0.0)
        if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"scoord: rd_channels must be a positive int, got {rd_channels!r}")
        self.rd_channels = rd_channels
        self.has_skip = has_skip
        self.fc1 = nn.Linear(channels, rd_channels, bias=bias)
        self.act = resolve_layer("scoord", "act_layer", act_layer)()
        self.fc_h = nn.Linear(rd_channels, channels, bias=bias)
        self.fc_w = nn.Linear(rd_channels, channels, bias=bias)
        self.gate = resolve_layer("scoord", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def factors(self, mean_w, mean_h):
        """a_h (B, C, H, 1) and a_w (B, C, 1, W) from the means over W and over H (before the gate)."""
        a = coord_gates(mean_w, mean_h, self.fc1, None, self.act, self.fc_h, self.fc_w, None)  # one op where it applies
        if a is not None:
            return a
        f_h = self.act(self.fc1(mean_w.squeeze(3).transpose(1, 2)))  # (B, H, r)
        f_w = self.act(self.fc1(mean_h.squeeze(2).transpose(1, 2)))  # (B, W, r)
        a_h = self.fc_h(f_h).transpose(1, 2).unsqueeze(-1)  # (B, C, H, 1)
        a_w = self.fc_w(f_w).transpose(1, 2).unsqueeze(-2)  # (B, C, 1, W)
        return a_h, a_w

    def forward(self, x):
        check_input(self, x)
        if is_sigmoid(self.gate) and not (self.tap.active or self.tap._forward_hooks):  # the tap needs the full map
            y = strip_gates(x, self.factors, self, sigmoid="skip" if self.has_skip else "gate")  # native kernels
            if y is not None:
                return y
        a_h, a_w = self.factors(pool_mean(x, 3), pool_mean(x, 2))
        y = x * self.tap(self.gate(combine_like(a_h, a_w, x)))  # (B, C, H, W)
        return y + x if self.has_skip else y
