"""Triplet Attention.

Paper: D. Misra, T. Nalamada, A. U. Arasanipalai, Q. Hou, "Rotate to Attend: Convolutional Triplet
Attention Module", WACV 2021. https://arxiv.org/abs/2010.03045

    Z-pool(t) = [max_0(t); mean_0(t)]                         max and mean over the first axis, 2 maps
    a_p = sigmoid(BN(conv7x7(Z-pool(x rotated so that the pooled axis comes first))))
    y = x * (a_hc + a_cw + a_hw) / 3                          average of the three branches

The three branches pool over W (an H x C map, a C-H interaction), over H (a C x W map, C-W) and
over C (an H x W map, the spatial branch); k = 7. Each factor passes through its own tap (kind
"spatial"): ``tap_hc`` (B, C, H, 1), ``tap_cw`` (B, C, 1, W), ``tap_hw`` (B, 1, H, W).

NOTE: the rotations are not materialized: the block pools x along the axis directly and lays the
2-channel pooled map out as the authors' rotated tensor would be (H x C for the first branch,
C x W for the second, H x W for the third), so the 7x7 kernels mean the same as in their code.
The convolutions have no bias (BatchNorm follows). BatchNorm uses torch's default momentum 0.1
(the authors' code: 0.01). A training batch with a single value per channel (batch 1 and a 1x1 map)
is normalized with the running statistics (``SafeBatchNorm2d``) instead of raising.

Speed (CPU): in eager float32 training and inference with a batch of at least the thread count, the
block is one native op (``_pooled_gates.triplet_gates`` on ``_native.c``): one pass over x gives all
six pooled maps, one pass applies the three factors, and backward takes two passes; the 2 -> 1
convolutions run on the native small-conv kernel (``LayoutConv2d``), each with its BatchNorm and
sigmoid as one autograd op (``_small_graphs.conv_norm_gate``). Elsewhere (other dtypes and
devices, ``torch.compile``, export, tracing) it runs the PyTorch expression: the max over W and over H
is ``adaptive_max_pool2d`` (where positions tie for the maximum, the gradient goes to one of them
instead of being split; the native op does the same, to the first), the max over C is ``pool_amax``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d, like_input
from ._pool import pool_amax, pool_max_along, pool_mean
from ._pooled_gates import triplet_gates
from ._small_graphs import conv_norm_gate

__all__ = ["TripletAttn"]


class _ZPoolGate(nn.Module):
    """conv k x k (2 -> 1, no bias) + BN + gate over an already Z-pooled (B, 2, P, Q) map."""

    def __init__(self, kernel_size: int, gate_layer) -> None:
        super().__init__()
        self.conv = LayoutConv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = SafeBatchNorm2d(1)
        self.gate = gate_layer()

    def forward(self, z):
        g = conv_norm_gate(z, self.conv, self.bn, self.gate)  # one autograd op where it applies
        return self.gate(self.bn(self.conv(z))) if g is None else g  # (B, 1, P, Q)


@register_attn(
    "triplet",
    family="channel+spatial",
    paper="Rotate to Attend: Convolutional Triplet Attention Module",
    authors="Misra, Nalamada, Arasanipalai, Hou",
    year=2021,
    link="https://arxiv.org/abs/2010.03045",
)
class TripletAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("triplet", channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"triplet: kernel_size must be a positive odd int (the paper uses 7), got {kernel_size!r}")
        self.kernel_size = kernel_size
        gate = resolve_layer("triplet", "gate_layer", gate_layer)
        self.gate_hc = _ZPoolGate(kernel_size, gate)
        self.gate_cw = _ZPoolGate(kernel_size, gate)
        self.gate_hw = _ZPoolGate(kernel_size, gate)
        self.tap_hc = AttnTap("spatial")
        self.tap_cw = AttnTap("spatial")
        self.tap_hw = AttnTap("spatial")

    def factors(self, mx_w, mean_w, mx_h, mean_h, mx_c, mean_c):
        """The three factors from the pooled maps: over W (B, C, H) x 2, over H (B, C, W) x 2, over C
        (B, 1, H, W) x 2; returns (B, C, H, 1), (B, C, 1, W) and (B, 1, H, W), through their taps."""
        b, c, h = mx_w.shape
        w = mx_h.shape[2]
        z_hc = torch.stack([mx_w, mean_w], dim=1).transpose(2, 3)  # (B, 2, H, C), the paper's rotated layout
        a_hc = self.gate_hc(z_hc).transpose(2, 3).reshape(b, c, h, 1)
        a_cw = self.gate_cw(torch.stack([mx_h, mean_h], dim=1)).reshape(b, c, 1, w)  # (B, 2, C, W) -> (B, C, 1, W)
        a_hw = self.gate_hw(torch.cat([mx_c, mean_c], dim=1))  # (B, 2, H, W) -> (B, 1, H, W)
        return self.tap_hc(a_hc), self.tap_cw(a_cw), self.tap_hw(a_hw)

    def forward(self, x):
        check_input(self, x)
        y = triplet_gates(x, self.factors, self)  # the native CPU kernels (_pooled_gates.py) where they apply
        if y is not None:
            return y
        a_hc, a_cw, a_hw = self.factors(pool_max_along(x, 3, keepdim=False), pool_mean(x, 3, keepdim=False),
                                        pool_max_along(x, 2, keepdim=False), pool_mean(x, 2, keepdim=False),
                                        pool_amax(x, 1), pool_mean(x, 1))
        a = like_input(a_hc, x) + like_input(a_cw, x) + a_hw  # (B, C, H, W)
        return x * a * (1.0 / 3.0)
