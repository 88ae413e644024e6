"""Large Kernel Attention (LKA) and its separable rewrite, Large Separable Kernel Attention (LSKA).

LKA paper: M.-H. Guo, C.-Z. Lu, Z.-N. Liu, M.-M. Cheng, S.-M. Hu, "Visual Attention Network",
2022 (Computational Visual Media 2023). https://arxiv.org/abs/2202.09741

    Attention = Conv1x1(DW-D-Conv(DW-Conv(F)))          (Eq. 1)
    Output    = Attention (*) F                         (Eq. 2, elementwise product)

A K x K convolution is decomposed into a (2d-1) x (2d-1) depthwise conv, a ceil(K/d) x ceil(K/d)
depthwise conv with dilation d, and a 1x1 conv. The paper's K = 21, d = 3 gives 5x5, 7x7 (d=3), 1x1
(defaults here; ``kernel_size``/``dilation`` pick other decompositions by the same rule).

LSKA paper: K. W. Lau, L.-M. Po, Y. A. U. Rehman, "Large Separable Kernel Attention: Rethinking the
Large Kernel Attention Design in CNN", 2023 (Expert Systems with Applications 2024).
https://arxiv.org/abs/2309.01439

    Attention = Conv1x1(DW-D-Conv_kx1(DW-D-Conv_1xk(DW-Conv_(2d-1)x1(DW-Conv_1x(2d-1)(F)))))
    Output    = Attention (*) F

each 2-D depthwise kernel of LKA split into a horizontal 1-D and a vertical 1-D one. The kernel
size k sets the decomposition as in the paper's table (and the authors' code): k = (2d-1) + (k_d-1)*d
for a (2d-1)-tap plain and a k_d-tap dilated 1-D conv:

    k    7   11   23   35   41   53
    d    2    2    3    3    3    3
    2d-1 3    3    5    5    5    5
    k_d  3    5    7   11   13   17

Other k raise a ValueError naming these. Default k = 23, the size of the authors' released
ImageNet model and the separable counterpart of LKA's 5x5 + 7x7(d=3) (same receptive field, 23).

Both are one family in one file: LSKA is LKA with separable kernels, same equation, same output.

Family: registered as "spatial". The attention map has one value per position *and* channel
(B, C, H, W): the depthwise convs aggregate each channel's spatial neighbourhood and the 1x1 conv
mixes channels, so it is in truth a channel-and-position map; it is classed "spatial" because it is
produced by spatial (large-kernel) aggregation and has no global channel descriptor, and it is
tapped as a spatial factor of shape (B, C, H, W).

NOTE: the attention is not squashed by a gate (no sigmoid), as in the paper: it can be negative or
exceed one. The receptive field of LKA's 5x5 + 7x7(d=3) is 23, which the VAN paper calls K = 21
(its ceil(K/d) rule); the default here reproduces the paper's layers exactly. The convs keep their
biases, as in both papers' code.

Speed (CPU): the depthwise convolutions run on the native depthwise kernel for channels_last float32
input (``LayoutConv2d``; oneDNN's backward of them dominated the block's training step).
"""
from __future__ import annotations

import math

from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input
from ._layout import LayoutConv2d

__all__ = ["LargeKernelAttn", "LargeSeparableKernelAttn", "LSKA_KERNELS"]

# kernel size k -> (plain 1-D kernel 2d-1, dilated 1-D kernel k_d, dilation d), the LSKA paper's table
LSKA_KERNELS: dict[int, tuple[int, int, int]] = {
    7: (3, 3, 2),
    11: (3, 5, 2),
    23: (5, 7, 3),
    35: (5, 11, 3),
    41: (5, 13, 3),
    53: (5, 17, 3),
}


def _dw(channels: int, kernel: tuple[int, int], dilation: int = 1) -> nn.Conv2d:
    """Depthwise conv that keeps H x W: 'same' padding for an odd dilated span."""
    pad = tuple((k - 1) * dilation // 2 for k in kernel)
    return LayoutConv2d(channels, channels, kernel, padding=pad, dilation=dilation, groups=channels)


@register_attn(
    "lka",
    family="spatial",
    paper="Visual Attention Network",
    authors="Guo, Lu, Liu, Cheng, Hu",
    year=2022,
    link="https://arxiv.org/abs/2202.09741",
)
class LargeKernelAttn(nn.Module):
    """LKA: depthwise (2d-1)^2 conv, depthwise ceil(K/d)^2 conv with dilation d, 1x1 conv; x * attn."""

    def __init__(self, channels: int, *, kernel_size: int = 21, dilation: int = 3) -> None:
        super().__init__()
        self.channels = check_channels("lka", channels)
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"lka: dilation must be a positive int, got {dilation!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 2 * dilation - 1:
            raise ValueError(
                f"lka: kernel_size must be an int >= 2*dilation-1 = {2 * dilation - 1}, got {kernel_size!r} "
                "(the paper uses kernel_size=21, dilation=3)"
            )
        dw_kernel = 2 * dilation - 1
        dwd_kernel = math.ceil(kernel_size / dilation)
        if (dwd_kernel - 1) * dilation % 2:
            raise ValueError(
                f"lka: kernel_size={kernel_size}, dilation={dilation} give a {dwd_kernel}-tap dilated kernel "
                f"whose span is even, so it cannot keep H x W; pick kernel_size so that ceil(kernel_size/dilation) "
                f"is odd (e.g. kernel_size={dilation * (dwd_kernel + 1)})"
            )
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.conv0 = _dw(channels, (dw_kernel, dw_kernel))
        self.conv_spatial = _dw(channels, (dwd_kernel, dwd_kernel), dilation)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        attn = self.conv1(self.conv_spatial(self.conv0(x)))  # (B, C, H, W)
        return x * self.tap(attn)


@register_attn(
    "lska",
    family="spatial",
    paper="Large Separable Kernel Attention: Rethinking the Large Kernel Attention Design in CNN",
    authors="Lau, Po, Rehman",
    year=2023,
    link="https://arxiv.org/abs/2309.01439",
)
class LargeSeparableKernelAttn(nn.Module):
    """LSKA: LKA with each depthwise kernel split into 1 x n and n x 1 depthwise convs."""

    def __init__(self, channels: int, *, kernel_size: int = 23) -> None:
        super().__init__()
        self.channels = check_channels("lska", channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size not in LSKA_KERNELS:
            raise ValueError(
                f"lska: kernel_size must be one of the paper's {sorted(LSKA_KERNELS)}, got {kernel_size!r}"
            )
        dw_kernel, dwd_kernel, dilation = LSKA_KERNELS[kernel_size]
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.conv0h = _dw(channels, (1, dw_kernel))
        self.conv0v = _dw(channels, (dw_kernel, 1))
        self.conv_spatial_h = _dw(channels, (1, dwd_kernel), dilation)
        self.conv_spatial_v = _dw(channels, (dwd_kernel, 1), dilation)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        attn = self.conv0v(self.conv0h(x))  # (B, C, H, W)
        attn = self.conv_spatial_v(self.conv_spatial_h(attn))  # (B, C, H, W)
        attn = self.conv1(attn)  # (B, C, H, W)
        return x * self.tap(attn)
