"""ECA with a per-channel MLP (ecam): timm's ``EcaModule(use_mlp=True)``, attn name "ecam".

Built on ECA: Q. Wang, B. Wu, P. Zhu, P. Li, W. Zuo, Q. Hu, "ECA-Net: Efficient Channel Attention for
Deep Convolutional Neural Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
The MLP variant is a timm experiment (not in the paper); timm's documented behaviour is the
specification here:

    z = GAP(x)                                  (B, 1, C), channels as a 1-D sequence
    u = act(conv1d_1(z))                        1 -> r features per channel (1-tap conv, bias), (B, r, C)
    s = sigmoid(conv1d_k(u))                    r -> 1 with ECA's k-tap window over channels (bias)
    y = x * s

r = ``make_divisible(C * rd_ratio, rd_divisor)`` (timm's rounding, rd_ratio = 1/8, rd_divisor = 8), so
it is a width, not a reduction of C: ECA's single linear k-tap filter becomes a small non-linear one.
k is ECA's adaptive size with timm's floor of 3 (see ``ceca``). Default act_layer: ReLU, as timm.

No departures from timm's module; parity under copied weights is tested (tests/test_zoo_timm_extra.py).
"""
from __future__ import annotations

from timm.layers import make_divisible
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from .ceca import timm_eca_kernel_size
from ._pool import pool_mean
from ._small_graphs import channel_conv_gate

__all__ = ["EcaMlp"]


@register_attn(
    "ecam",
    family="channel",
    paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks (MLP variant: timm's EcaModule(use_mlp=True))",
    authors="Wang, Wu, Zhu, Li, Zuo, Hu; MLP variant by R. Wightman in timm",
    year=2020,
    link="https://arxiv.org/abs/1910.03151",
)
class EcaMlp(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        rd_ratio: float = 1.0 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("ecam", channels)
        self.kernel_size = timm_eca_kernel_size(channels, kernel_size, gamma, beta, "ecam")
        if rd_channels is None:
            if not rd_ratio > 0:
                raise ValueError(f"ecam: rd_ratio must be > 0, got {rd_ratio!r}")
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"ecam: rd_channels must be a positive int, got {rd_channels!r}")
        self.rd_channels = rd_channels
        self.conv = nn.Conv1d(1, rd_channels, 1, bias=True)
        self.act = resolve_layer("ecam", "act_layer", act_layer)(inplace=True)
        self.conv2 = nn.Conv1d(rd_channels, 1, self.kernel_size, padding=(self.kernel_size - 1) // 2, bias=True)
        self.gate = resolve_layer("ecam", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def from_pooled(self, mean):
        """The channel factor from the mean over positions, (B, C, 1, 1)."""
        s = channel_conv_gate(mean, self.conv2, self.gate, hidden=self.conv, act=self.act)  # one op where it applies
        if s is None:
            b, c = mean.shape[:2]
            s = self.act(self.conv(mean.view(b, 1, c)))  # (B, r, C)
            s = self.gate(self.conv2(s)).view(b, c, 1, 1)  # (B, C, 1, 1)
        return self.tap(s)

    def forward(self, x):
        check_input(self, x)
        return x * self.from_pooled(pool_mean(x, (2, 3)))  # (not on moment_gates: see _pooled_gates.MEAN_ONLY)
