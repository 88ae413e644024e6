"""Axial attention: multi-head self-attention along the height axis, then along the width axis.

Papers: J. Ho, N. Kalchbrenner, D. Weissenborn, T. Salimans, "Axial Attention in Multidimensional
Transformers", 2019, https://arxiv.org/abs/1912.12180; H. Wang, Y. Zhu, B. Green, H. Adam,
A. Yuille, L.-C. Chen, "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation",
ECCV 2020, https://arxiv.org/abs/2003.07853

For each column (height pass) and then each row (width pass), heads h, d = C / h per head:

    q, k, v = W_qkv x                                 1x1 projections, one set per axis
    y_o = sum_{p in axis(o)} softmax_p(q_o . k_p / sqrt(d) + b(p - o)) v_p
    out = x + gamma * W_o (width_pass(height_pass(x)))  residual with a learnable per-channel scale

Two passes give every position a path to every other one (Ho et al., Sec. 3). Attention runs
through ``torch.nn.functional.scaled_dot_product_attention``; defaults 8 heads (Axial-DeepLab).

NOTE (departures, and why):
* Axial-DeepLab's positional terms are learned embeddings over a fixed span (q, k and v all
  position-sensitive). To work at any H x W, the position bias ``b(p - o)`` here is a continuous
  1-D relative bias, one small MLP per axis mapping the log-spaced offset to one logit per head
  (Swin V2's continuous position bias, as ``attnzoo.blocks.mhsa``; offsets from its
  ``relative_offsets``), evaluated for the lengths the input has. ``rel_pos=False`` turns it off.
  The offsets are built in the MLP's dtype, so the block runs after ``.half()`` / ``.bfloat16()``.
* As a drop-in block the two passes are wrapped in a residual with a per-channel scale ``gamma``
  (``layer_scale_init=0`` starts the block as the identity) and an output projection ``W_o``, as
  ``mhsa``; Axial-DeepLab's bottleneck convolutions and BN are the host network's.
* q, k, v have no bias: a key bias only shifts all logits of a query by a constant, which softmax
  ignores, so it would be a parameter that never learns (as ``mhsa``).
* Query taps: ``tap_h`` and ``tap_w`` receive each pass's weights as full (B, heads, N, H, W) maps,
  zero off the query's column (height pass) or row (width pass), built only while captured.
* timm's ``attn_layer`` / ``se_layer`` keyword arguments ``act_layer``, ``gate_layer``,
  ``rd_ratio``, ``rd_channels``, ``rd_divisor``, ``force_act_layer`` and ``rd_round_fn`` do not
  apply (no reduction bottleneck, no activation, softmax is the gate) and are ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from .base import AttnTap, BiaslessLinear, check_channels, check_heads, check_input
from .mhsa import relative_offsets

__all__ = ["AxialAttn"]


class _AxialBias(nn.Module):
    """Continuous 1-D relative position bias: (heads, L, L) logits for an axis of any length L."""

    def __init__(self, num_heads: int, hidden: int) -> None:
        super().__init__()
        # the last layer has no bias: a per-head constant on every logit is removed by softmax
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(inplace=True), BiaslessLinear(hidden, num_heads))

    def forward(self, length: int, device) -> torch.Tensor:
        table, index = relative_offsets(length, 1, device, self.mlp[0].weight.dtype)  # (2L-1, 2) with dx = 0, (L, L)
        offsets = table[:, :1]  # (2L-1, 1)
        offsets = torch.sign(offsets) * torch.log1p(offsets.abs())  # log-spaced, as Swin V2
        return self.mlp(offsets)[index].permute(2, 0, 1)  # (heads, L, L)


@register_attn(
    "axial",
    family="self-attention",
    paper="Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation",
    authors="Wang, Zhu, Green, Adam, Yuille, Chen (axial attention: Ho, Kalchbrenner, Weissenborn, Salimans 2019)",
    year=2020,
    link="https://arxiv.org/abs/2003.07853",
    scope="global",
    hardness="soft",
    score="scaled_dot",
)
class AxialAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 8,
        rel_pos: bool = True,
        rel_pos_hidden: int = 64,
        layer_scale_init: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_channels("axial", channels)
        self.num_heads = check_heads("axial", channels, num_heads)
        self.head_dim = channels // num_heads
        self.attn_drop = attn_drop
        self.qkv_h = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.qkv_w = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.pos_h = _AxialBias(num_heads, rel_pos_hidden) if rel_pos else None
        self.pos_w = _AxialBias(num_heads, rel_pos_hidden) if rel_pos else None
        self.proj = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.tap_h = AttnTap("query")
        self.tap_w = AttnTap("query")

    def _attend(self, q, k, v, pos: _AxialBias | None, tap: AttnTap):
        """SDPA over the last-but-one axis of (B', heads, L, d) tensors; returns (out, weights or None)."""
        length = q.shape[-2]
        bias = pos(length, q.device).to(q.dtype) if pos is not None else None  # (heads, L, L)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B', heads, L, d)
        weights = None
        if tap.active:  # build the weights only while they are being captured
            logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5  # (B', heads, L, L)
            if bias is not None:
                logits = logits + bias
            weights = logits.softmax(-1)
        return out, weights

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        heads, d = self.num_heads, self.head_dim

        # height pass: every column is a sequence of length H
        qkv = self.qkv_h(x).reshape(b, 3, heads, d, h, w).permute(1, 0, 5, 2, 4, 3)  # (3, B, W, heads, H, d)
        q, k, v = qkv.reshape(3, b * w, heads, h, d).unbind(0)  # each (B*W, heads, H, d)
        y, weights = self._attend(q, k, v, self.pos_h, self.tap_h)  # (B*W, heads, H, d)
        if weights is not None:
            weights = weights.reshape(b, w, heads, h, h)  # (B, W, heads, H, H)
            eye_w = torch.eye(w, dtype=weights.dtype, device=x.device)
            self.tap_h(torch.einsum("bwnhg,wv->bnhwgv", weights, eye_w).reshape(b, heads, h * w, h, w))
        y = y.reshape(b, w, heads, h, d).permute(0, 2, 4, 3, 1).reshape(b, c, h, w)  # (B, C, H, W)

        # width pass: every row is a sequence of length W
        qkv = self.qkv_w(y).reshape(b, 3, heads, d, h, w).permute(1, 0, 4, 2, 5, 3)  # (3, B, H, heads, W, d)
        q, k, v = qkv.reshape(3, b * h, heads, w, d).unbind(0)  # each (B*H, heads, W, d)
        z, weights = self._attend(q, k, v, self.pos_w, self.tap_w)  # (B*H, heads, W, d)
        if weights is not None:
            weights = weights.reshape(b, h, heads, w, w)  # (B, H, heads, W, W)
            eye_h = torch.eye(h, dtype=weights.dtype, device=x.device)
            self.tap_w(torch.einsum("bhnwv,hg->bnhwgv", weights, eye_h).reshape(b, heads, h * w, h, w))
        z = z.reshape(b, h, heads, w, d).permute(0, 2, 4, 1, 3).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.gamma * self.proj(z)
