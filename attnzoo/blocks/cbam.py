"""Convolutional Block Attention Module, and its channel and spatial halves.

Paper: S. Woo, J. Park, J.-Y. Lee, I. S. Kweon, "CBAM: Convolutional Block Attention Module",
ECCV 2018. https://arxiv.org/abs/1807.06521

    Mc(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))         shared MLP C -> C/r -> C, r = 16 (Eq. 2)
    Ms(F) = sigmoid(f7x7([mean_c(F); max_c(F)]))                 7x7 conv over 2 maps (Eq. 3)
    F'  = Mc(F) * F,   F'' = Ms(F') * F'                         channel first, then spatial (Eq. 1)

NOTE (readings of the authors' released code, Jongchan/attention-module, where the paper is silent):
* The 7x7 spatial convolution has no bias and is followed by BatchNorm with momentum 0.01 and
  eps 1e-5 (``spatial_norm=True``), as in the authors' ``BasicConv``; Eq. 3 shows no norm.
  ``spatial_norm=False`` gives Eq. 3 as written (a conv with bias, no BatchNorm).
* The MLP has biases as in the authors' code (``mlp_bias=True``); timm's CbamModule uses
  ``mlp_bias=False`` -- pass that for timm parity.
* The reduced width is floored, ``C // r`` (``int(C * rd_ratio)``, at least 1, then a multiple of
  ``rd_divisor``), as the authors' ``gate_channels // reduction_ratio``. ``rd_floor=False`` rounds
  to the nearest int instead, ``make_divisible(C * rd_ratio, rd_divisor)``, as timm's CbamModule;
  the two agree whenever r divides C (C = 64, 128, ... at r = 16).
* The spatial map stacks [mean; max] in the order of Eq. 3; the authors' ``ChannelPool`` stacks
  [max; mean]. That only permutes the two input channels of the 7x7 conv's weight (same function
  with ``conv.weight[:, [1, 0]]``).
* The spatial BatchNorm also runs at batch 1 on a 1x1 map in training mode (``SafeBatchNorm2d``).

Speed (CPU): in eager float32 with a batch of at least the thread count, cbam, cbam_channel and cbam_spatial
with their default small parts (the ReLU MLP of 1x1 convs, the k x k conv with BatchNorm2d or a bias, the
sigmoid) and taps neither captured nor hooked run as one autograd op (``_pooled_gates.cbam_gates``): F' is
never written, backward keeps x and the small maps only, and nothing runs between the kernels. Other small
parts, or a captured tap, run as ordinary modules between three split ops on the same kernels
(``_pooled_gates.pooled_gates``). Under ``torch.compile`` on CPU the one op runs as a custom op (``_compiled.py``;
inductor's code for the expression below had added 1.5-1.6x what the eager op adds to a training step,
``benchmarks/results/overhead_floor_cpu_previous.json``). Elsewhere the PyTorch expression
below runs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, reduced_channels, resolve_layer
from ._layout import LayoutConv2d
from ._pool import pool_amax, pool_max, pool_mean
from ._pooled_gates import cbam_gates, pooled_gates
from ._small_graphs import conv_norm_gate, mlp_gate

__all__ = ["CbamChannel", "CbamSpatial", "Cbam"]

_META = dict(
    paper="CBAM: Convolutional Block Attention Module",
    authors="Woo, Park, Lee, Kweon",
    year=2018,
    link="https://arxiv.org/abs/1807.06521",
)


@register_attn("cbam_channel", family="channel", **_META)
class CbamChannel(nn.Module):
    """Mc: a shared MLP over the average- and max-pooled channel descriptors."""

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        mlp_bias: bool = True,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
        rd_floor: bool = True,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = reduced_channels("cbam", channels, rd_ratio, rd_channels, rd_divisor)
        if rd_floor and rd_channels is None:  # the authors' C // r (reduced_channels rounds)
            self.rd_channels = max(rd_divisor, int(channels * rd_ratio) // rd_divisor * rd_divisor)
        self.fc1 = LayoutConv2d(channels, self.rd_channels, 1, bias=mlp_bias)
        self.act = resolve_layer("cbam", "act_layer", act_layer)(inplace=True)
        self.fc2 = LayoutConv2d(self.rd_channels, channels, 1, bias=mlp_bias)
        self.gate = resolve_layer("cbam", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def factor(self, x):
        """Mc(x), (B, C, 1, 1)."""
        return self.from_pooled(pool_mean(x, (2, 3)), pool_max(x))

    def from_pooled(self, avg, mx):
        """Mc from the average- and max-pooled descriptors, each (B, C, 1, 1)."""
        g = mlp_gate([avg, mx], self.fc1, self.act, self.fc2, self.gate)  # one autograd op where it applies
        if g is None:
            b = avg.shape[0]
            avg, mx = self.fc2(self.act(self.fc1(torch.cat([avg, mx])))).split(b)  # shared MLP in one call
            g = self.gate(avg + mx)
        return self.tap(g)  # (B, C, 1, 1)

    def forward(self, x):
        check_input(self, x)
        y = cbam_gates(x, self, None)  # native CPU kernels where they apply: one op, else the split ops
        if y is None:
            y = pooled_gates(x, self.from_pooled, None, channel_module=self)
        return x * self.factor(x) if y is None else y


@register_attn("cbam_spatial", family="spatial", **_META)
class CbamSpatial(nn.Module):
    """Ms: a k x k convolution over the channel-wise mean and max maps."""

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        spatial_norm: bool = True,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("cbam_spatial", channels)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"cbam_spatial: kernel_size must be a positive odd int, got {kernel_size!r}")
        self.conv = LayoutConv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not spatial_norm)
        self.norm = SafeBatchNorm2d(1, momentum=0.01) if spatial_norm else nn.Identity()  # the authors' momentum
        self.gate = resolve_layer("cbam_spatial", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def factor(self, x):
        """Ms(x), (B, 1, H, W)."""
        # amax (pool_amax: its faster backward), not max(dim) (25x slower on CPU at 16x64x32x32: it also
        # finds the argmax); the input it keeps for backward is the one the product keeps anyway
        return self.from_maps(pool_mean(x, 1), pool_amax(x, 1))

    def from_maps(self, mean, mx):
        """Ms from the channel-wise mean and max maps, each (B, 1, H, W)."""
        z = torch.cat([mean, mx], dim=1)
        g = conv_norm_gate(z, self.conv, self.norm, self.gate)  # one autograd op where it applies
        return self.tap(self.gate(self.norm(self.conv(z))) if g is None else g)  # (B, 1, H, W)

    def forward(self, x):
        check_input(self, x)
        y = cbam_gates(x, None, self)
        if y is None:
            y = pooled_gates(x, None, self.from_maps, spatial_module=self)
        return x * self.factor(x) if y is None else y


@register_attn("cbam", family="channel+spatial", **_META)
class Cbam(nn.Module):
    """Mc then Ms, sequentially (the arrangement the paper found best, Table 4)."""

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        mlp_bias: bool = True,
        spatial_norm: bool = True,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
        rd_floor: bool = True,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.channel = CbamChannel(
            channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
            mlp_bias=mlp_bias, act_layer=act_layer, gate_layer=gate_layer, rd_floor=rd_floor,
        )
        self.rd_channels = self.channel.rd_channels
        self.spatial = CbamSpatial(channels, kernel_size=kernel_size, spatial_norm=spatial_norm, gate_layer=gate_layer)

    def forward(self, x):
        check_input(self, x)
        y = cbam_gates(x, self.channel, self.spatial)
        if y is None:
            y = pooled_gates(x, self.channel.from_pooled, self.spatial.from_maps, channel_module=self.channel,
                             spatial_module=self.spatial)
        if y is not None:  # the native CPU kernels (_pooled_gates.py): F' is never written
            return y
        x1 = x * self.channel.factor(x)  # F' (B, C, H, W)
        return x1 * self.spatial.factor(x1)  # F''

