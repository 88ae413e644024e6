"""Global Attention Mechanism.

Paper: Y. Liu, Z. Shao, N. Hoffmann, "Global Attention Mechanism: Retain Information to Enhance
Channel-Spatial Interactions", 2021. https://arxiv.org/abs/2112.05561

    Mc(F) = sigmoid(P^-1(MLP(P(F))))          P: (B, C, H, W) -> (B, H, W, C) permutation; the MLP
                                              C -> C/r -> C (ReLU) acts on every position's C-vector
    Ms(F) = sigmoid(BN(conv7x7(ReLU(BN(conv7x7(F))))))      C -> C/r -> C, no pooling
    F2 = Mc(F1) * F1,   F3 = Ms(F2) * F2                    channel submodule, then spatial (Eq. 1-2)

r = 4 (the paper's rate). Both maps are (B, C, H, W): the channel submodule's MLP keeps the spatial
positions (that is the paper's point, no pooling), so its factor varies per position too. Both are
tapped as kind "spatial" (by their shape), named ``tap_channel`` and ``tap_spatial`` by submodule.

NOTE: the reduced width is ``make_divisible(C * rd_ratio, rd_divisor=1)``, i.e. C/r floor-rounded
(C=16 -> 4). The 7x7 convs have no bias (each is followed by BatchNorm, which removes it; it would
never learn). The paper's ResNet-50 runs replace the dense 7x7 convs by group convs with channel
shuffle to save parameters; this block uses the dense convs of the paper's Fig. 2 (its default
design), at 2 * 49 * C^2 / r parameters (~100k at C=64). The channel map is gated by a sigmoid as
in the paper's Fig. 2; widely copied third-party code multiplies by the raw MLP output instead.
"""
from __future__ import annotations

from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_input, reduced_channels, resolve_layer

__all__ = ["GlobalAttnMechanism"]


@register_attn(
    "gam",
    family="channel+spatial",
    paper="Global Attention Mechanism: Retain Information to Enhance Channel-Spatial Interactions",
    authors="Liu, Shao, Hoffmann",
    year=2021,
    link="https://arxiv.org/abs/2112.05561",
)
class GlobalAttnMechanism(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        rd_ratio: float = 1.0 / 4,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = reduced_channels("gam", channels, rd_ratio, rd_channels, rd_divisor)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"gam: kernel_size must be a positive odd int, got {kernel_size!r}")
        act = resolve_layer("gam", "act_layer", act_layer)
        gate = resolve_layer("gam", "gate_layer", gate_layer)
        rd, pad = self.rd_channels, kernel_size // 2
        # channel submodule: MLP over the channel vector of every position
        self.fc1 = nn.Linear(channels, rd)
        self.act1 = act(inplace=True)
        self.fc2 = nn.Linear(rd, channels)
        self.gate_channel = gate()
        # spatial submodule
        self.conv1 = nn.Conv2d(channels, rd, kernel_size, padding=pad, bias=False)
        self.bn1 = SafeBatchNorm2d(rd)
        self.act2 = act(inplace=True)
        self.conv2 = nn.Conv2d(rd, channels, kernel_size, padding=pad, bias=False)
        self.bn2 = SafeBatchNorm2d(channels)
        self.gate_spatial = gate()
        self.tap_channel = AttnTap("spatial")
        self.tap_spatial = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        mc = self.fc2(self.act1(self.fc1(x.permute(0, 2, 3, 1))))  # (B, H, W, C)
        mc = self.gate_channel(mc.permute(0, 3, 1, 2))  # (B, C, H, W), reverse permutation
        x = x * self.tap_channel(mc)
        ms = self.gate_spatial(self.bn2(self.conv2(self.act2(self.bn1(self.conv1(x))))))  # (B, C, H, W)
        return x * self.tap_spatial(ms)
