"""Dual Attention Network: position attention (PAM), channel attention (CAM), and the two summed.

Paper: J. Fu, J. Liu, H. Tian, Y. Li, Y. Bao, Z. Fang, H. Lu, "Dual Attention Network for Scene
Segmentation", CVPR 2019. https://arxiv.org/abs/1809.02983

Position attention module (Sec. 3.2, Eq. 1-2), N = H*W positions, q, k: 1x1 convs C -> C/8, v: C -> C:

    s_ji = softmax_i(q_j . k_i)                    attention of position j over all positions i
    E_j  = alpha * sum_i s_ji v_i + A_j            residual, alpha is a scalar initialised to 0

Channel attention module (Sec. 3.3, Eq. 3-4), A reshaped to (C, N):

    e_ji = A_j . A_i                               (C, C) channel affinity
    x_ji = softmax_i(max_i' e_ji' - e_ji)          the "max-minus" form of the authors' released code
    E_j  = beta * sum_i x_ji A_i + A_j             residual, beta is a scalar initialised to 0

``danet`` (the drop-in block) sums the two attention terms onto one residual:

    y = x + alpha * PAM_term(x) + beta * CAM_term(x)

Attention of PAM runs through ``torch.nn.functional.scaled_dot_product_attention`` with
``scale=1`` (the paper does not scale the logits by 1/sqrt(d)) on accelerators; on CPU it is the
explicit softmax(q k^T) v, which is faster there for PAM's narrow keys (d = C/8) and wide values.

NOTE (departures, and why):
* The paper's heads wrap each module in 3x3 conv-BN-ReLU layers (before and after) and sum the two
  modules' *outputs* after those convs. As a drop-in block the head convolutions are left out, and
  the modules are combined as above: each module alone is ``x + term``, so summing the two modules
  would count the input twice (``2x + ...``); one residual keeps the block the identity at init
  (alpha = beta = 0), as each half is.
* CAM: Eq. 3 of the paper is ``softmax_i(A_j . A_i)``; the authors' code (and this block) feed
  ``max - energy`` to the softmax. Because softmax ignores a per-row constant this equals
  ``softmax_i(-A_j . A_i)``: a channel attends most to the channels *least* similar to it. Pass
  ``max_minus=False`` for Eq. 3 as printed.
* CAM's energies A A^T are sums over all N positions with no 1/sqrt scaling, so its softmax is
  sharp and bfloat16 rounding of the energies alone shifts it (a 20% relative output error at
  32x32 in a test); under autocast they and their softmax are computed in float32.
* PAM's key convolution has no bias: a key bias b adds q_j . b to every logit of query j, a
  constant that softmax removes, so it could never learn.
* Taps: PAM's weights go through a ``"query"`` tap, (B, 1, N, H, W). CAM's weights mix channels
  rather than scale them, so they are no channel factor; they are self-attention weights among the
  C channels and go through a ``"query"`` tap as (B, 1, C, C, 1): C queries, keys laid out on a
  C x 1 grid (not H x W). Both are built only while captured.
Implementation: PAM's query, key and value run as one 1x1 convolution (their weights concatenated at each call,
``_fused.conv1x1_cat``), so x is read once and backward forms one input gradient; the parameters
and state-dict keys are the separate convolutions'.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from ._fused import conv1x1_cat
from .base import AttnTap, check_channels, check_input, reduced_channels

__all__ = ["DanetPositionAttn", "DanetChannelAttn", "DualAttn"]

_META = dict(
    family="self-attention",
    paper="Dual Attention Network for Scene Segmentation",
    authors="Fu, Liu, Tian, Li, Bao, Fang, Lu",
    year=2019,
    link="https://arxiv.org/abs/1809.02983",
)


@register_attn("danet_pam", **_META)
class DanetPositionAttn(nn.Module):
    """PAM: softmax attention of every position over all H*W positions, gamma-scaled residual."""

    def __init__(
        self,
        channels: int,
        *,
        gamma_init: float = 0.0,
        rd_ratio: float = 1.0 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = reduced_channels("danet_pam", channels, rd_ratio, rd_channels, rd_divisor)
        self.query = nn.Conv2d(channels, self.rd_channels, 1)
        self.key = nn.Conv2d(channels, self.rd_channels, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.tap = AttnTap("query")

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """alpha * sum_i s_ji v_i, the term PAM adds to its input; (B, C, H, W)."""
        b, c, h, w = x.shape
        d = self.rd_channels
        qkv = conv1x1_cat(x, [self.query, self.key, self.value])  # (B, 2d + C, H, W), one GEMM
        q, k, v = qkv.flatten(2).transpose(1, 2).unsqueeze(1).split([d, d, c], -1)  # (B, 1, N, d/d/C)
        if x.device.type == "cpu" or self.tap.active:
            # on CPU, with d = C/8 keys and C-wide values, the explicit product is faster than SDPA's
            # kernel (about 10-20% at N = 256 and 1024, forward + backward); it also gives the weights
            weights = (q @ k.transpose(-1, -2)).softmax(-1)  # (B, 1, N, N)
            if self.tap.active:  # shown only while they are being captured
                self.tap(weights.reshape(b, 1, h * w, h, w))  # (B, 1, Nq, H, W)
            out = weights @ v  # (B, 1, N, C)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, 1, N, C), never builds N x N
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return self.gamma * out

    def forward(self, x):
        check_input(self, x)
        return x + self.context(x)


@register_attn("danet_cam", **_META)
class DanetChannelAttn(nn.Module):
    """CAM: a (C, C) channel affinity from the features themselves (no projections), beta-scaled residual."""

    def __init__(self, channels: int, *, gamma_init: float = 0.0, max_minus: bool = True) -> None:
        super().__init__()
        self.channels = check_channels("danet_cam", channels)
        self.max_minus = bool(max_minus)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.tap = AttnTap("query")

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """beta * sum_i x_ji A_i, the term CAM adds to its input; (B, C, H, W)."""
        a = x.flatten(2)  # (B, C, N)
        # the unscaled energies grow with N and the softmax over them is sharp: in bfloat16 their
        # rounding alone moves the weights, so they are computed in float32 (see module NOTE)
        with torch.autocast(device_type=x.device.type, enabled=False):
            a32 = a.float()
            energy = a32 @ a32.transpose(1, 2)  # (B, C, C)
            if self.max_minus:  # a constructor flag, not a tensor value
                energy = energy.amax(-1, keepdim=True) - energy  # (B, C, C)
            weights = energy.softmax(-1).to(a.dtype)  # (B, C, C), rows sum to 1
        if self.tap.active:
            self.tap(weights.unsqueeze(1).unsqueeze(-1))  # (B, 1, C, C, 1): channels as queries and keys
        out = weights @ a  # (B, C, N)
        return self.gamma * out.reshape(x.shape)  # (B, C, H, W)

    def forward(self, x):
        check_input(self, x)
        return x + self.context(x)


@register_attn("danet", **_META)
class DualAttn(nn.Module):
    """PAM and CAM in parallel, both attention terms added to one residual (see module NOTE)."""

    def __init__(
        self,
        channels: int,
        *,
        gamma_init: float = 0.0,
        max_minus: bool = True,
        rd_ratio: float = 1.0 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.pam = DanetPositionAttn(
            channels, gamma_init=gamma_init, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor
        )
        self.cam = DanetChannelAttn(channels, gamma_init=gamma_init, max_minus=max_minus)
        self.rd_channels = self.pam.rd_channels

    def forward(self, x):
        check_input(self, x)
        return x + self.pam.context(x) + self.cam.context(x)
