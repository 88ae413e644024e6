"""Style-based Recalibration Module (SRM).

Paper: H. Lee, H.-E. Kim, H. Nam, "SRM: A Style-based Recalibration Module for Convolutional
Neural Networks", ICCV 2019. https://arxiv.org/abs/1903.10829

    mu_c    = mean_{h,w} x_c,  sigma_c = sqrt(mean_{h,w} (x_c - mu_c)^2 + eps)   style pooling (Eq. 1-2)
    t_c     = [mu_c, sigma_c]                                                 (B, C, 2)
    z_c     = w_c . t_c,  w in R^{C x 2}                channel-wise fully connected, CFC (Eq. 3)
    g_c     = sigmoid(BN(z_c))                          (Eq. 4-5)
    y_c     = x_c * g_c

Defaults: ``eps=1e-5``; CFC weights start at zero as in the authors' released code, so the gate
starts at sigmoid(BN bias) = 0.5 for every channel.

NOTE: sigma uses the population variance (1/HW) with eps inside the square root. The authors' code
uses the unbiased variance (1/(HW-1)), which is 0/0 = NaN on a 1x1 map; the population form is
the paper's Eq. 2, is finite at 1x1 (sigma = sqrt(eps)), and differs from the unbiased one by the
factor sqrt(HW/(HW-1)) only.
NOTE: the CFC has no bias, as in the paper: the BatchNorm that follows would cancel it, so it
could never learn.
NOTE: z holds one value per channel and sample, so a training batch of one sample has no batch
statistics (``nn.BatchNorm2d`` raises there). ``SafeBatchNorm2d`` then normalizes with its running
statistics, as in eval mode, and leaves them unchanged; any batch of two or more is ordinary
training-mode BatchNorm.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer
from ._pool import pool_mean
from ._pooled_gates import moment_gates

__all__ = ["StyleRecalibration"]




@register_attn(
    "srm",
    family="channel",
    paper="SRM: A Style-based Recalibration Module for Convolutional Neural Networks",
    authors="Lee, Kim, Nam",
    year=2019,
    link="https://arxiv.org/abs/1903.10829",
)
class StyleRecalibration(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        eps: float = 1e-5,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("srm", channels)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps <= 0:
            raise ValueError(f"srm: eps must be a positive float, got {eps!r}")
        self.eps = float(eps)
        self.cfc = nn.Parameter(torch.zeros(channels, 2))  # per-channel weights for (mean, std)
        self.bn = SafeBatchNorm2d(channels)
        self.gate = resolve_layer("srm", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def from_moments(self, mu, var):
        """The channel factor from the mean and the biased variance over positions, each (B, C, 1, 1)."""
        sigma = (var + self.eps).sqrt()  # (B, C, 1, 1)
        w = self.cfc.view(1, self.channels, 2, 1)  # (1, C, 2, 1)
        z = mu * w[:, :, 0:1] + sigma * w[:, :, 1:2]  # (B, C, 1, 1)
        return self.tap(self.gate(self.bn(z)))

    def forward(self, x):
        check_input(self, x)
        y = moment_gates(x, self.from_moments, self, variance=True)  # native CPU kernels where they apply
        if y is not None:
            return y
        mu = pool_mean(x, (2, 3))  # (B, C, 1, 1)
        return x * self.from_moments(mu, pool_mean((x - mu).pow(2), (2, 3)))
