"""Criss-Cross Attention, applied recurrently (RCCA).

Paper: Z. Huang, X. Wang, L. Huang, C. Huang, Y. Wei, W. Liu, "CCNet: Criss-Cross Attention for
Semantic Segmentation", ICCV 2019. https://arxiv.org/abs/1811.11721

Every position u attends to the H + W - 1 positions of its own column and row (Sec. 3.2, Eq. 1-2);
q, k: 1x1 convs C -> C/8, v: 1x1 conv C -> C:

    d_{i,u} = q_u . k_{i,u}                        i over the column of u, then the row of u
    A_u     = softmax_i(d_{i,u})                   over H + W entries, one of them masked (below)
    H'_u    = gamma * sum_i A_{i,u} v_{i,u} + H_u   residual, gamma is a scalar initialised to 0

u itself lies in both its row and its column; as in the authors' code, its column logit is set to
-inf (the diagonal of the H x H column energies) so it is counted once, leaving H + W - 1 live
entries. RCCA (Sec. 3.3) applies the same module ``recurrence`` times (R = 2 by default, shared
weights), which connects every pair of positions. The logits are not scaled by 1/sqrt(d), as in the
paper. Plain ``torch.einsum``; no custom CUDA kernel.

NOTE (departures, and why):
* The key convolution has no bias: a key bias b adds q_u . b to every logit of query u (row and
  column alike), a constant that softmax removes, so it could never learn.
* CCNet's head adds 3x3 conv-BN-ReLU layers before and after RCCA and concatenates the result with
  the input; those are segmentation-head layers and are left out of this drop-in block.
* Query tap: each recurrence sends its weights through ``self.tap`` as a full (B, 1, N, H, W) map
  that is zero off the criss-cross, so a capture records ``recurrence`` maps per forward.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_input, reduced_channels

__all__ = ["CrissCrossAttn"]


@register_attn(
    "cca",
    family="self-attention",
    paper="CCNet: Criss-Cross Attention for Semantic Segmentation",
    authors="Huang, Wang, Huang, Huang, Wei, Liu",
    year=2019,
    link="https://arxiv.org/abs/1811.11721",
)
class CrissCrossAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        recurrence: int = 2,
        gamma_init: float = 0.0,
        rd_ratio: float = 1.0 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = reduced_channels("cca", channels, rd_ratio, rd_channels, rd_divisor)
        if isinstance(recurrence, bool) or not isinstance(recurrence, int) or recurrence < 1:
            raise ValueError(f"cca: recurrence must be an int >= 1 (the paper's R; 2 links every pair of positions), got {recurrence!r}")
        self.recurrence = recurrence
        self.query = nn.Conv2d(channels, self.rd_channels, 1)
        self.key = nn.Conv2d(channels, self.rd_channels, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.tap = AttnTap("query")

    def criss_cross(self, x: torch.Tensor) -> torch.Tensor:
        """One pass of criss-cross attention with its residual; (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, d, H, W), (B, d, H, W), (B, C, H, W)
        energy_col = torch.einsum("bdhw,bdgw->bhwg", q, k)  # (B, H, W, H): query (h, w), key (g, w)
        self_mask = torch.eye(h, dtype=torch.bool, device=x.device).unsqueeze(1)  # (H, 1, H), g == h
        energy_col = energy_col.masked_fill(self_mask, float("-inf"))  # u counted once, in its row
        energy_row = torch.einsum("bdhw,bdhv->bhwv", q, k)  # (B, H, W, W): query (h, w), key (h, v)
        attn = torch.cat([energy_col, energy_row], dim=-1).softmax(-1)  # (B, H, W, H + W)
        attn_col, attn_row = attn.split([h, w], dim=-1)  # (B, H, W, H), (B, H, W, W)
        attn_col, attn_row = attn_col.to(v.dtype), attn_row.to(v.dtype)
        if self.tap.active:  # build the full map only while it is being captured
            eye_w = torch.eye(w, dtype=attn.dtype, device=x.device)
            eye_h = torch.eye(h, dtype=attn.dtype, device=x.device)
            full = torch.einsum("bhwg,wv->bhwgv", attn_col, eye_w) + torch.einsum("bhwv,hg->bhwgv", attn_row, eye_h)
            self.tap(full.reshape(b, 1, h * w, h, w))  # (B, 1, Nq, H, W)
        out = torch.einsum("bhwg,bcgw->bchw", attn_col, v) + torch.einsum("bhwv,bchv->bchw", attn_row, v)  # (B, C, H, W)
        return x + self.gamma * out

    def forward(self, x):
        check_input(self, x)
        for _ in range(self.recurrence):  # RCCA: the same weights, applied R times
            x = self.criss_cross(x)
        return x
