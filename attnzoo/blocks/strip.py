"""Strip attention (strip): timm's ``StripAttn``, attn name "strip".

Strip pooling: Q. Hou, L. Zhang, M.-M. Cheng, J. Feng, "Strip Pooling: Rethinking Spatial Pooling for
Scene Parsing", CVPR 2020. https://arxiv.org/abs/2003.13328
The attention block is timm's; its documented behaviour is the specification here:

    z^h = mean_w x (B, C, H, 1),  z^w = mean_h x (B, C, 1, W)        strip pooling
    y = x * sigmoid(dwconv_{k x 1}(z^h) + dwconv_{1 x k}(z^w))       1-D depthwise convs, broadcast sum

This is the strip pooling module of the paper reduced to a gate: the paper expands each strip back
to H x W with a 1-D conv, adds them, and gates x with sigmoid(conv1x1(.)); here there is no 1x1 conv
(every channel gates itself) and the expanded maps are broadcasts. k = 3, no conv bias, as timm.
``use_conv=False`` drops the convs (a parameter-free gate), ``has_skip=True`` returns y + x.
No departures from timm's module; parity under copied weights is tested (tests/test_zoo_timm_extra.py).

Speed (CPU): with the sigmoid gate, nothing capturing the tap, eager float32 and a batch of at least
the thread count, the block is one native op (``_pooled_gates.strip_gates(sigmoid='gate')``; the
sigmoid of the full map is the kernels' own, relative error about 2e-7 against torch's) and each of its
depthwise strip convs is one autograd op in C (``_small_graphs.strip_norm_gate``); elsewhere the PyTorch
expression runs.
"""
from __future__ import annotations

from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d, combine_like
from ._fused import is_sigmoid
from ._pool import pool_mean
from ._pooled_gates import strip_gates
from ._small_graphs import strip_norm_gate

__all__ = ["StripAttn"]


@register_attn(
    "strip",
    family="spatial",
    paper="Strip Pooling: Rethinking Spatial Pooling for Scene Parsing (attention gate: timm's StripAttn)",
    authors="Hou, Zhang, Cheng, Feng; attention gate by R. Wightman in timm",
    year=2020,
    link="https://arxiv.org/abs/2003.13328",
)
class StripAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        use_conv: bool = True,
        kernel_size: int = 3,
        bias: bool = False,
        has_skip: bool = False,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("strip", channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"strip: kernel_size must be a positive odd int (timm uses 3), got {kernel_size!r}")
        self.has_skip = has_skip
        self.use_conv = use_conv
        if use_conv:
            self.conv_h = LayoutConv2d(channels, channels, (kernel_size, 1), padding=(kernel_size // 2, 0),
                                       groups=channels, bias=bias)
            self.conv_w = LayoutConv2d(channels, channels, (1, kernel_size), padding=(0, kernel_size // 2),
                                       groups=channels, bias=bias)
        else:
            self.conv_h = nn.Identity()
            self.conv_w = nn.Identity()
        self.gate = resolve_layer("strip", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def factors(self, mean_w, mean_h):
        """z_h (B, C, H, 1) and z_w (B, C, 1, W) from the means over W and over H (before the gate)."""
        if not self.use_conv:
            return mean_w, mean_h
        z_h = strip_norm_gate(mean_w, self.conv_h, None, None, None)  # one autograd op where it applies
        z_w = strip_norm_gate(mean_h, self.conv_w, None, None, None)
        return (self.conv_h(mean_w) if z_h is None else z_h), (self.conv_w(mean_h) if z_w is None else z_w)

    def forward(self, x):
        check_input(self, x)
        if is_sigmoid(self.gate) and not (self.tap.active or self.tap._forward_hooks):  # the tap needs the full map
            y = strip_gates(x, self.factors, self, sigmoid="skip" if self.has_skip else "gate")  # native kernels
            if y is not None:
                return y
        z_h, z_w = self.factors(pool_mean(x, 3), pool_mean(x, 2))  # (B, C, H, 1), (B, C, 1, W)
        y = x * self.tap(self.gate(combine_like(z_h, z_w, x)))  # (B, C, H, W)
        return y + x if self.has_skip else y
