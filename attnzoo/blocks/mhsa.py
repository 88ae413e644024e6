"""Multi-head self-attention over all H x W positions of a feature map (BoTNet-style).

Paper: A. Srinivas, T.-Y. Lin, N. Parmar, J. Shlens, P. Abbeel, A. Vaswani, "Bottleneck
Transformers for Visual Recognition", CVPR 2021. https://arxiv.org/abs/2101.11605

    q, k, v = Wq x, Wk x, Wv x                       1x1 projections, heads h, d = C / h per head
    A = softmax(q k^T / sqrt(d) + B_rel)             over all N = H*W key positions
    y = x + gamma * Wo (A v)                         residual with a learnable per-channel scale

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``.

NOTE (departures from BoTNet, and why):
* BoTNet's relative-position logits use learned embeddings of a fixed feature size. To work at any
  H x W, the 2-D relative position bias ``B_rel`` here is a continuous position bias (Liu et al.,
  "Swin Transformer V2", 2022, https://arxiv.org/abs/2111.09883): a small MLP maps the log-spaced
  offset (dy, dx) to one bias per head, evaluated for the offsets the input actually has.
* BoTNet uses MHSA *in place of* a 3x3 convolution; as a drop-in block it is wrapped in a residual
  with a per-channel scale ``gamma`` (``layer_scale_init=0`` starts the block as the identity, as in
  ReZero, Bachlechner et al. 2020) and an output projection ``Wo``.
* q, k, v have no bias (as BoTNet): a key bias only shifts every logit of a query by a constant,
  which softmax ignores, so it would be a parameter that never learns.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_heads, check_input

__all__ = ["MultiHeadSelfAttn2d", "relative_offsets"]


def relative_offsets(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Table of the (2h-1)(2w-1) possible offsets (dy, dx) and, for every (query, key) pair of an
    h x w grid, the index of its offset in that table: ((2h-1)(2w-1), 2) float, (h*w, h*w) long."""
    dy = torch.arange(-(h - 1), h, device=device, dtype=torch.float32)
    dx = torch.arange(-(w - 1), w, device=device, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2)  # (T, 2)
    ys = torch.arange(h, device=device).repeat_interleave(w)  # (N,) row of each position
    xs = torch.arange(w, device=device).repeat(h)  # (N,) column of each position
    rel_y = ys[:, None] - ys[None, :] + (h - 1)  # (N, N) in [0, 2h-2]
    rel_x = xs[:, None] - xs[None, :] + (w - 1)  # (N, N) in [0, 2w-2]
    return table, rel_y * (2 * w - 1) + rel_x


@register_attn(
    "mhsa",
    family="self-attention",
    paper="Bottleneck Transformers for Visual Recognition",
    authors="Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani",
    year=2021,
    link="https://arxiv.org/abs/2101.11605",
)
class MultiHeadSelfAttn2d(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        rel_pos: bool = True,
        rel_pos_hidden: int = 64,
        layer_scale_init: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_channels("mhsa", channels)
        self.num_heads = check_heads("mhsa", channels, num_heads)
        self.head_dim = channels // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.rel_pos = (
            nn.Sequential(nn.Linear(2, rel_pos_hidden), nn.ReLU(inplace=True), nn.Linear(rel_pos_hidden, num_heads, bias=False))
            if rel_pos
            else None
        )
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.tap = AttnTap("query")

    def position_bias(self, h: int, w: int, device) -> torch.Tensor:
        """(heads, N, N) additive attention bias for an h x w map."""
        table, index = relative_offsets(h, w, device)
        table = torch.sign(table) * torch.log1p(table.abs())  # log-spaced offsets, as Swin V2
        bias = self.rel_pos(table)  # (T, heads)
        return bias[index].permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, 3, self.num_heads, self.head_dim, n)  # (B, 3, heads, d, N)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, N, d)
        bias = self.position_bias(h, w, x.device).to(q.dtype) if self.rel_pos is not None else None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, heads, N, d)
        if self.tap.active:  # build the weights only while they are being captured
            logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5  # (B, heads, N, N)
            if bias is not None:
                logits = logits + bias
            self.tap(logits.softmax(-1).reshape(b, self.num_heads, n, h, w))  # (B, heads, Nq, H, W)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.gamma * self.proj(out)
