"""Non-local block, embedded Gaussian version.

Paper: X. Wang, R. Girshick, A. Gupta, K. He, "Non-local Neural Networks", CVPR 2018.
https://arxiv.org/abs/1711.07971

    f(x_i, x_j) = exp(theta(x_i)^T phi(x_j))                embedded Gaussian (Eq. 3)
    y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j)     (Eq. 1 with C(x) = sum_j f, i.e. a softmax)
    z_i = BN(W_z y_i) + x_i                                 residual; BN's scale starts at 0 (Sec. 4.1)

theta, phi, g are 1x1 convolutions to C/2 channels (``rd_ratio=0.5``). The logits are not scaled by
1/sqrt(d), as in the paper. ``sub_sample=True`` max-pools phi and g by 2 (the paper's subsampling
trick, Sec. 3.3); ceil mode keeps 1-pixel maps valid.

NOTE: phi has no bias: a bias on phi adds theta(x_i)^T b to every logit of query i, a constant that
softmax removes, so it could never learn. The block starts as the identity (zero BN scale), as the
paper intends.
Implementation: theta, phi and g run as one 1x1 convolution (their weights concatenated at each call,
``_fused.conv1x1_cat``), so x is read once and backward forms one input gradient; the parameters
and state-dict keys are the separate convolutions'.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from ._fused import conv1x1_cat

# Below this many attention scores per image (N queries x M keys), softmax(theta phi^T) g as two matmuls
# beat F.scaled_dot_product_attention forward + backward on CPU (2 threads, d = 32, train mode; a one-off
# measurement, not one of benchmarks/): the fused kernel took 1.23-1.46x the explicit time at
# N x M = 9.6k-38k, 1.01x at 262k, 0.42x at 2.5M.
_SDPA_MIN_SCORES = 2**18
from .base import AttnTap, SafeBatchNorm2d, check_input, reduced_channels

__all__ = ["NonLocal2d"]


@register_attn(
    "nonlocal",
    family="self-attention",
    paper="Non-local Neural Networks",
    authors="Wang, Girshick, Gupta, He",
    year=2018,
    link="https://arxiv.org/abs/1711.07971",
)
class NonLocal2d(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        sub_sample: bool = False,
        zero_init: bool = True,
        rd_ratio: float = 0.5,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = reduced_channels("nonlocal", channels, rd_ratio, rd_channels, rd_divisor)
        self.theta = nn.Conv2d(channels, self.rd_channels, 1)
        self.phi = nn.Conv2d(channels, self.rd_channels, 1, bias=False)
        self.g = nn.Conv2d(channels, self.rd_channels, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if sub_sample else nn.Identity()
        self.w_z = nn.Conv2d(self.rd_channels, channels, 1, bias=False)
        self.norm = SafeBatchNorm2d(channels)
        if zero_init:
            nn.init.zeros_(self.norm.weight)
        self.tap = AttnTap("query")

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        d = self.rd_channels
        theta, phi_g = conv1x1_cat(x, [self.theta, self.phi, self.g]).split([d, 2 * d], 1)  # one GEMM: (B, d | 2d, H, W)
        phi_g = self.pool(phi_g)  # (B, 2d, H', W'), phi and g pooled together
        hk, wk = phi_g.shape[-2:]
        if self.tap.active or h * w * hk * wk < _SDPA_MIN_SCORES:
            # small maps: two bmm in the layouts the convolutions produce, no copies (see _SDPA_MIN_SCORES)
            phi, g = phi_g.flatten(2).split(d, 1)  # 2 x (B, d, M)
            weights = torch.bmm(theta.flatten(2).transpose(1, 2), phi).softmax(-1)  # (B, N, M)
            if self.tap.active:
                self.tap(weights.reshape(b, 1, h * w, hk, wk))  # (B, 1, Nq, H', W')
            y = torch.bmm(g, weights.transpose(1, 2)).reshape(b, d, h, w)  # (B, d, H, W)
        else:
            theta = theta.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, d)
            phi, g = phi_g.flatten(2).transpose(1, 2).unsqueeze(1).split(d, -1)  # 2 x (B, 1, M, d), M = H'*W'
            # contiguous q/k/v (small: B x N x d) let CPU SDPA use its fused kernel, not the math fallback
            y = F.scaled_dot_product_attention(theta.contiguous(), phi.contiguous(), g.contiguous(), scale=1.0)
            y = y.squeeze(1).transpose(1, 2).reshape(b, d, h, w)  # (B, d, H, W)
        return x + self.norm(self.w_z(y))
