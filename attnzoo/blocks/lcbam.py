"""Light CBAM (lcbam): CBAM with its average- and max-pooled descriptors averaged before the MLP / conv.

CBAM paper: S. Woo, J. Park, J.-Y. Lee, I. S. Kweon, "CBAM: Convolutional Block Attention Module",
ECCV 2018. https://arxiv.org/abs/1807.06521
The light variant is timm's (``timm.layers.LightCbamModule``, attn name "lcbam"); its documented
behaviour is the specification here:

    channel:  M_c = sigmoid(MLP(0.5 * AvgPool(x) + 0.5 * MaxPool(x)))        one MLP pass, not two
    spatial:  M_s = sigmoid(BN(conv_k([0.5 * mean_c(x') + 0.5 * max_c(x')])))  1 input map, not 2
    y = x' * M_s,  x' = x * M_c

CBAM runs its shared MLP on each descriptor and adds the results, and convolves the two stacked
spatial maps; averaging first halves the MLP's work and the spatial conv's input. MLP: 1x1 convs
C -> C * rd_ratio -> C without bias (``mlp_bias``), rd_ratio = 1/16, rd_divisor = 1, ReLU; spatial
conv k = 7 without bias, then BatchNorm, as timm.

NOTE: timm's LightChannelAttn gates with a fixed sigmoid whatever ``gate_layer`` says, and its
spatial half always uses sigmoid; here ``gate_layer`` sets both gates (the default, sigmoid, is
timm's computation). Parity under copied weights is tested (tests/test_zoo_timm_extra.py); the
state_dict keys are timm's.

Speed (CPU): in eager float32 with a batch of at least the thread count, with the default small parts and taps
neither captured nor hooked, the whole block is one native op (``_pooled_gates.cbam_gates``, as cbam); otherwise
three split ops around the small parts (``pooled_gates``). ``torch.compile`` on CPU calls the one op as a custom
op (``_compiled.py``); elsewhere the PyTorch expression runs.
"""
from __future__ import annotations

from timm.layers import make_divisible
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer
from ._layout import LayoutConv2d
from ._pool import pool_amax, pool_max, pool_mean
from ._pooled_gates import cbam_gates, pooled_gates
from ._small_graphs import conv_norm_gate, mlp_gate

__all__ = ["LightCbam"]


class _LightChannel(nn.Module):
    def __init__(self, channels, rd_channels, mlp_bias, act_layer, gate_layer):
        super().__init__()
        self.fc1 = LayoutConv2d(channels, rd_channels, 1, bias=mlp_bias)
        self.act = act_layer(inplace=True)
        self.fc2 = LayoutConv2d(rd_channels, channels, 1, bias=mlp_bias)
        self.gate = gate_layer()
        self.tap = AttnTap("channel")

    def from_pooled(self, avg, mx):
        z = 0.5 * avg + 0.5 * mx  # (B, C, 1, 1)
        g = mlp_gate([z], self.fc1, self.act, self.fc2, self.gate)  # one autograd op where it applies
        return self.tap(self.gate(self.fc2(self.act(self.fc1(z)))) if g is None else g)

    def forward(self, x):
        return x * self.from_pooled(pool_mean(x, (2, 3)), pool_max(x))


class _ConvBn(nn.Module):
    """conv (no bias) + BatchNorm, named as timm's ConvNormAct (conv, bn) so state_dicts match."""

    def __init__(self, kernel_size):
        super().__init__()
        self.conv = LayoutConv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = SafeBatchNorm2d(1)

    def forward(self, x):
        return self.bn(self.conv(x))


class _LightSpatial(nn.Module):
    def __init__(self, kernel_size, gate_layer):
        super().__init__()
        self.conv = _ConvBn(kernel_size)
        self.gate = gate_layer()
        self.tap = AttnTap("spatial")

    def from_maps(self, mean, mx):
        z = 0.5 * mean + 0.5 * mx
        g = conv_norm_gate(z, self.conv.conv, self.conv.bn, self.gate, owners=(self.conv,))  # one op where it applies
        return self.tap(self.gate(self.conv(z)) if g is None else g)  # (B, 1, H, W)

    def forward(self, x):
        return x * self.from_maps(pool_mean(x, 1), pool_amax(x, 1))


@register_attn(
    "lcbam",
    family="channel+spatial",
    paper="CBAM: Convolutional Block Attention Module (light variant: timm's LightCbamModule)",
    authors="Woo, Park, Lee, Kweon; light variant by R. Wightman in timm",
    year=2018,
    link="https://arxiv.org/abs/1807.06521",
)
class LightCbam(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        mlp_bias: bool = False,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("lcbam", channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"lcbam: kernel_size must be a positive odd int (the paper uses 7), got {kernel_size!r}")
        if rd_channels is None:
            if not 0 < rd_ratio <= 1 or channels * rd_ratio < 1:
                raise ValueError(f"lcbam: rd_ratio={rd_ratio!r} leaves no channel of {channels}; use rd_ratio in "
                                 f"[{1 / channels:.3g}, 1] or set rd_channels")
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"lcbam: rd_channels must be a positive int, got {rd_channels!r}")
        self.rd_channels = rd_channels
        act = resolve_layer("lcbam", "act_layer", act_layer)
        gate = resolve_layer("lcbam", "gate_layer", gate_layer)
        self.channel = _LightChannel(channels, rd_channels, mlp_bias, act, gate)
        self.spatial = _LightSpatial(kernel_size, gate)

    def forward(self, x):
        check_input(self, x)
        y = cbam_gates(x, self.channel, self.spatial, light=True)  # the native CPU kernels where they apply
        if y is None:  # other small parts or a captured tap: the split ops, or the plain path
            y = pooled_gates(x, self.channel.from_pooled, self.spatial.from_maps, channel_module=self.channel,
                             spatial_module=self.spatial)
        return self.spatial(self.channel(x)) if y is None else y
