"""Gated Channel Transformation (GCT).

Paper: Z. Yang, L. Zhu, Y. Wu, Y. Yang, "Gated Channel Transformation for Visual Recognition",
CVPR 2020. https://arxiv.org/abs/1909.11519

    s_c  = alpha_c * sqrt(sum_{h,w} x_c^2 + eps)              global context embedding, l2 (Eq. 1)
    s^_c = sqrt(C) * s_c / ||s||_2 = s_c / sqrt(mean_c s_c^2 + eps)   channel normalization (Eq. 2)
    y_c  = x_c * (1 + tanh(gamma_c * s^_c + beta_c))            gating adaptation (Eq. 3)

With ``mode="l1"`` (the paper's alternative): ``s_c = alpha_c * sum_{h,w} |x_c|`` and
``s^_c = C * s_c / ||s||_1 = s_c / (mean_c |s_c| + eps)``.

Defaults: ``mode="l2"``, ``eps=1e-5``. Parameters alpha, gamma, beta are (1, C, 1, 1).

NOTE: initialization follows the paper's recommendation (Sec. 3.4): alpha = 1, gamma = 0, beta = 0,
so the gate is 1 + tanh(0) = 1 and a freshly built GCT is the identity; inserting it into a
pretrained network leaves the network's outputs unchanged. A consequence: at this initialization
alpha's gradient is exactly zero (alpha only acts through gamma * s^), until gamma moves off zero.
NOTE: eps sits inside the square roots (as in the authors' code) so an all-zero channel, or a 1x1
map of zeros, gives a finite embedding; the normalization divides by ``sqrt(mean + eps)`` rather
than ``sqrt(sum + eps) / sqrt(C)``, the same map up to where eps enters.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input
from ._pooled_gates import moment_gates

__all__ = ["GatedChannelTransform"]

_MODES = ("l2", "l1")


@register_attn(
    "gct",
    family="channel",
    paper="Gated Channel Transformation for Visual Recognition",
    authors="Yang, Zhu, Wu, Yang",
    year=2020,
    link="https://arxiv.org/abs/1909.11519",
)
class GatedChannelTransform(nn.Module):
    def __init__(self, channels: int, *, mode: str = "l2", eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = check_channels("gct", channels)
        if mode not in _MODES:
            raise ValueError(f"gct: mode must be one of {_MODES} (the embedding norm), got {mode!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps <= 0:
            raise ValueError(f"gct: eps must be a positive float, got {eps!r}")
        self.mode = mode
        self.eps = float(eps)
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))  # embedding weight
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))  # gating weight
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))  # gating bias
        self.tap = AttnTap("channel")

    def from_embedding(self, s):
        """The gate from the embedding s = alpha * ||x_c|| (B, C, 1, 1): normalisation across channels, tanh."""
        if self.mode == "l2":
            s_hat = s / (s.pow(2).mean(1, keepdim=True) + self.eps).sqrt()  # (B, C, 1, 1)
        else:
            s_hat = s / (s.abs().mean(1, keepdim=True) + self.eps)  # (B, C, 1, 1)
        return self.tap(1.0 + torch.tanh(self.gamma * s_hat + self.beta))  # (B, C, 1, 1)

    def forward(self, x):
        check_input(self, x)
        if self.mode == "l2":
            n = x.shape[2] * x.shape[3]

            def from_moments(mean, var):  # sum_p x^2 = P (var + mean^2)
                return self.from_embedding(self.alpha * ((var + mean.square()) * n + self.eps).sqrt())

            y = moment_gates(x, from_moments, self, variance=True)  # native CPU kernels where they apply
            if y is not None:
                return y
            s = self.alpha * (x.pow(2).sum((2, 3), keepdim=True) + self.eps).sqrt()  # (B, C, 1, 1)
        else:
            s = self.alpha * x.abs().sum((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * self.from_embedding(s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}, eps={self.eps:g}"
