"""Gather-Excite (GE).

Paper: J. Hu, L. Shen, S. Albanie, G. Sun, A. Vedaldi, "Gather-Excite: Exploiting Feature Context
in Convolutional Neural Networks", NeurIPS 2018. https://arxiv.org/abs/1810.12348

    x^ = xi_G(x)                                gather over an extent e: each output summarizes an
                                                e x e-strided neighbourhood (global: one value per channel)
    y  = x * sigmoid(interp(x^))                excite: nearest-neighbour upsampling to H x W (Eq. 2)

Variants (registered names):
  * ``ge`` -- GE-theta-minus: parameter-free gather, average pooling; default global extent
    (``extent=0``), where the gather is the channel mean and the gate a per-channel factor.
  * ``ge_theta`` -- GE-theta: gather by log2(e) depthwise 3x3 stride-2 convs, each followed by
    BatchNorm, ReLU between them; default ``extent=8``.
  * ``ge_theta_plus`` -- GE-theta-plus: GE-theta followed by an SE-style 1x1 conv bottleneck
    (C -> C/16 -> C, ReLU) before the gate; default ``extent=8``.

Local parameter-free gather (``extent=e > 0``): average pooling with kernel 2e - 1, stride e,
padding e - 1, padding not counted (an e-strided grid of overlapping windows, timm's reading of the
paper); the gathered map has ceil(H/e) x ceil(W/e) cells, at least 1x1.

NOTE: the paper's parametric *global* gather is a depthwise conv whose kernel is the whole feature
map, i.e. a fixed input size; attnzoo blocks fix no size, so ``extra_params=True`` requires a local
extent (2, 4, 8, ...) and says so otherwise. The parameter-free global ``ge`` has no such limit.
NOTE: the gather convs have no bias (BatchNorm follows each). Their BatchNorm is
``SafeBatchNorm2d``: at batch 1 in training mode on a map gathered down to 1x1 it uses its
running statistics, where ``nn.BatchNorm2d`` would raise (``attnzoo.blocks.base.SafeBatchNorm2d``).
NOTE: the tap is of kind "channel" for the global extent (gate (B, C, 1, 1)) and "spatial" for a
local extent (gate (B, C, H, W)). The registry family is "channel" for all variants; a local
extent makes the gate vary over positions too.
Speed (CPU): with a local extent, a sigmoid gate and nothing capturing the tap (a capture needs the full
factor), the gate runs on the gathered map and ``x * upsample(gate)`` is one native op
(``_pooled_gates.nearest_gate``: the upsampled (B, C, H, W) factor is never written); elsewhere, and
where the kernels do not apply, the expression in ``forward``. The gather's stride-2 depthwise convs and the
MLP's 1x1 convs are ``LayoutConv2d`` (the native depthwise kernel on channels_last input; ``nn.Conv2d``'s
parameters and state_dict keys).
Parity: identical to timm's ``GatherExcite`` under copied weights, for every configuration both
have (same attribute names: ``gather.conv1``/``gather.norm1``/..., ``mlp.fc1``/``mlp.fc2``).
timm 1.0.31 can only build ``use_mlp=False, extra_params=False`` (its default ``use_mlp=True`` and
its ``extra_params=True`` both raise TypeError in the constructor: ``*dd`` passed positionally);
the tests attach the layers timm's constructor names to a buildable instance and run timm's forward.
"""
from __future__ import annotations

import functools
import math

from torch import nn
from torch.nn import functional as F

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, reduced_channels, resolve_layer
from ._fused import is_sigmoid
from ._layout import LayoutConv2d
from ._pool import pool_mean
from ._pooled_gates import nearest_gate
from ._small_graphs import _unhooked

__all__ = ["GatherExcite"]

_META = dict(
    family="channel",
    paper="Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks",
    authors="Hu, Shen, Albanie, Sun, Vedaldi",
    year=2018,
    link="https://arxiv.org/abs/1810.12348",
)


class ExciteMlp(nn.Module):
    """The SE-style bottleneck of GE-theta-plus: 1x1 conv C -> C/r, activation, 1x1 conv C/r -> C."""

    def __init__(self, channels: int, rd_channels: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = LayoutConv2d(channels, rd_channels, 1, bias=True)  # nn.Conv2d's parameters and keys
        self.act = act_layer(inplace=True)
        self.fc2 = LayoutConv2d(rd_channels, channels, 1, bias=True)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@register_attn("ge", **_META)
class GatherExcite(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        extent: int = 0,
        extra_params: bool = False,
        use_mlp: bool = False,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("ge", channels)
        if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0 or (extent and extent & (extent - 1)) or extent == 1:
            raise ValueError(f"ge: extent must be 0 (global) or a power of two >= 2 such as 2, 4, 8; got {extent!r}")
        if extra_params and extent == 0:
            raise ValueError(
                "ge: a parametric gather (extra_params=True) needs a local extent such as 2, 4 or 8; the paper's "
                "global parametric gather is a conv over the whole map and would fix the input size. "
                "Use extent=0 without extra_params for a global gather."
            )
        self.extent = extent
        act = resolve_layer("ge", "act_layer", act_layer)
        if extra_params:
            self.gather = nn.Sequential()
            num_conv = int(math.log2(extent))
            for i in range(1, num_conv + 1):
                self.gather.add_module(f"conv{i}", LayoutConv2d(channels, channels, 3, stride=2, padding=1, groups=channels,
                                                                bias=False))
                self.gather.add_module(f"norm{i}", SafeBatchNorm2d(channels))
                if i < num_conv:
                    self.gather.add_module(f"act{i}", act(inplace=True))
        else:
            self.gather = None
        if use_mlp:
            self.rd_channels = reduced_channels("ge", channels, rd_ratio, rd_channels, rd_divisor)
            self.mlp = ExciteMlp(channels, self.rd_channels, act)
        else:
            self.mlp = nn.Identity()
        self.gate = resolve_layer("ge", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel" if extent == 0 else "spatial")

    def from_pooled(self, mean):
        """The global (extent 0, no gather convs) factor from the mean over positions, (B, C, 1, 1)."""
        return self.tap(self.gate(self.mlp(mean)))

    def forward(self, x):
        check_input(self, x)
        if self.gather is not None:
            g = self.gather(x)  # (B, C, ceil(H/e), ceil(W/e))
        elif self.extent == 0:  # (not on moment_gates: see _pooled_gates.MEAN_ONLY)
            g = pool_mean(x, (2, 3))  # (B, C, 1, 1)
        else:
            e = self.extent
            g = F.avg_pool2d(x, 2 * e - 1, stride=e, padding=e - 1, count_include_pad=False)  # (B, C, ceil(H/e), ceil(W/e))
        g = self.mlp(g)
        if self.extent:
            if not (self.tap.active or self.tap._forward_hooks) and is_sigmoid(self.gate) and _unhooked(self.gate):
                # the gate commutes with nearest upsampling: gated on the small map, upsampled inside the op
                y = nearest_gate(x, self.gate(g))
                if y is not None:
                    return y
            g = F.interpolate(g, size=x.shape[2:], mode="nearest")  # (B, C, H, W)
        return x * self.tap(self.gate(g))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, extent={self.extent}"


register_attn("ge_theta", functools.partial(GatherExcite, extent=8, extra_params=True), **_META)
register_attn("ge_theta_plus", functools.partial(GatherExcite, extent=8, extra_params=True, use_mlp=True), **_META)
