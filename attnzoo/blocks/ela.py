"""Efficient Local Attention.

Paper: W. Xu, Y. Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", 2024.
https://arxiv.org/abs/2403.01123

    z_h = mean_W(x),  z_w = mean_H(x)                     strip pooling, (B, C, H) and (B, C, W)
    y_h = sigmoid(GN(F_h(z_h))),  y_w = sigmoid(GN(F_w(z_w)))      1-D depthwise conv, GroupNorm
    out = x * y_h * y_w                                   y_h broadcast over W, y_w over H

Family "spatial": the factors locate rows and columns (one value per channel and row / column, no
channel reduction), as the paper describes ELA.

Defaults are the paper's ELA-B: kernel_size=7, depthwise 1-D conv, GroupNorm with 16 groups. The
other variants: ELA-T ``kernel_size=5, num_groups=32``; ELA-S ``kernel_size=5, conv_group_width=8``;
ELA-L ``kernel_size=7, conv_group_width=8`` (``conv_group_width`` channels per conv group, i.e. the
paper's C/8 groups).

NOTE (shared weights): the paper writes F_h and F_w, but the authors' code applies one conv and one
GroupNorm to both strips; ``shared=True`` (default) does that. ``shared=False`` learns one conv and one
norm per direction, as timm's ``EfficientLocalAttn`` does.

NOTE (timm): timm 1.0.31 has ``timm.layers.coord_attn.EfficientLocalAttn`` ('ela' in
``timm.layers.get_attn``). It differs from the paper in three ways: separate per-direction weights, a
GroupNorm with *one* group, and a SiLU between the norm and the sigmoid. ``ela(shared=False,
num_groups=1, act_layer='silu')`` is timm's block exactly, state_dict keys included (tested).

NOTE (groups): if ``num_groups`` does not divide ``channels`` the GroupNorm uses gcd(channels,
num_groups) groups (kept on ``self.num_groups``), so the paper's 16 works at any width
(C=24 -> 8 groups). The conv has no bias: the GroupNorm that follows removes it, so it would never learn.

Speed (CPU): in eager float32 with a batch of at least the thread count the block is one native op
(``_pooled_gates.strip_gates``, as coord), its depthwise 1-D convs on the native depthwise kernel
(``LayoutConv2d``, channels_last), and with no activation each strip's conv + GroupNorm + sigmoid is one
autograd op in C (``_small_graphs.strip_norm_gate``); elsewhere the PyTorch expression runs.
"""
from __future__ import annotations

import math

from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d, like_input
from ._pool import pool_mean
from ._pooled_gates import strip_gates
from ._small_graphs import strip_norm_gate

__all__ = ["EfficientLocalAttn"]


@register_attn(
    "ela",
    family="spatial",
    paper="ELA: Efficient Local Attention for Deep Convolutional Neural Networks",
    authors="Xu, Wan",
    year=2024,
    link="https://arxiv.org/abs/2403.01123",
)
class EfficientLocalAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        num_groups: int = 16,
        conv_group_width: int = 1,
        shared: bool = True,
        act_layer: str | type[nn.Module] | None = None,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("ela", channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ela: kernel_size must be a positive odd int, got {kernel_size!r}")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"ela: num_groups must be a positive int, got {num_groups!r}")
        if (isinstance(conv_group_width, bool) or not isinstance(conv_group_width, int) or conv_group_width < 1
                or channels % conv_group_width):
            raise ValueError(
                f"ela: conv_group_width={conv_group_width!r} must be a positive int dividing channels={channels} "
                "(1 = depthwise, the paper's ELA-B; 8 for ELA-S/L)"
            )
        self.kernel_size = kernel_size
        self.num_groups = math.gcd(channels, num_groups)
        self.shared = bool(shared)
        conv_groups = channels // conv_group_width

        def conv(kernel):
            return LayoutConv2d(channels, channels, kernel, padding=tuple(k // 2 for k in kernel),
                                groups=conv_groups, bias=False)

        # Strips are (B, C, L, 1) for H and, unshared, (B, C, 1, W) for W (timm's layout, so its
        # state_dict loads); shared weights see the W strip transposed to (B, C, W, 1).
        if self.shared:
            self.conv = conv((kernel_size, 1))
            self.norm = nn.GroupNorm(self.num_groups, channels)
        else:
            self.conv_h = conv((kernel_size, 1))
            self.conv_w = conv((1, kernel_size))
            self.norm_h = nn.GroupNorm(self.num_groups, channels)
            self.norm_w = nn.GroupNorm(self.num_groups, channels)
        self.act = nn.Identity() if act_layer is None else resolve_layer("ela", "act_layer", act_layer)()
        self.gate = resolve_layer("ela", "gate_layer", gate_layer)()
        self.tap_h = AttnTap("spatial")
        self.tap_w = AttnTap("spatial")

    def factors(self, z_h, z_w):
        """a_h (B, C, H, 1) and a_w (B, C, 1, W), through their taps, from the means over W and over H."""
        conv_h, norm_h = (self.conv, self.norm) if self.shared else (self.conv_h, self.norm_h)
        conv_w, norm_w = (self.conv, self.norm) if self.shared else (self.conv_w, self.norm_w)
        z_w = z_w.transpose(2, 3) if self.shared else z_w  # the shared conv sees the W strip as (B, C, W, 1)
        a_h = strip_norm_gate(z_h, conv_h, norm_h, self.act, self.gate)  # one autograd op where it applies
        if a_h is None:
            a_h = self.gate(self.act(norm_h(conv_h(z_h))))  # (B, C, H, 1)
        a_w = strip_norm_gate(z_w, conv_w, norm_w, self.act, self.gate)
        if a_w is None:
            a_w = self.gate(self.act(norm_w(conv_w(z_w))))
        return self.tap_h(a_h), self.tap_w(a_w.transpose(2, 3) if self.shared else a_w)  # (B, C, 1, W)

    def forward(self, x):
        check_input(self, x)
        y = strip_gates(x, self.factors, self)  # the native CPU kernels (_pooled_gates.py) where they apply
        if y is not None:
            return y
        a_h, a_w = self.factors(pool_mean(x, 3), pool_mean(x, 2))
        return x * like_input(a_h, x) * like_input(a_w, x)
