"""Halo attention (HaloNet): blocked local self-attention, each b x b block of queries attending to
its block grown by a halo of h pixels on every side.

Paper: A. Vaswani, P. Ramachandran, A. Srinivas, N. Parmar, B. Hechtman, J. Shlens, "Scaling Local
Self-Attention for Parameter Efficient Visual Backbones", CVPR 2021. https://arxiv.org/abs/2103.12731

    for every query block Q (b x b) and its key/value window K, V ((b + 2h) x (b + 2h)):
    A = softmax(Q K^T / sqrt(d) + Q R^T)        R: relative embeddings, r_dy + r_dx per key (Sec. 2)
    y = x + gamma * W_o (A V)                   residual with a learnable per-channel scale

The relative logit of query i and key j is q_i . (r^h_{dy} + r^w_{dx}) with (dy, dx) the key's
offset from the query, one d-vector per row offset and per column offset (factorised, as the
paper's 2-D relative attention). Heads split q, k (width ``rd_channels``, default C) and v (C).

Any H x W works: the map is zero-padded at the bottom and right to a multiple of b, and by h on
every side for the halo. With ``mask_padding=True`` (default) padded keys are masked out (never
attended), so a border pixel attends only to real pixels; padded queries are dropped.

Parity with ``timm.layers.HaloAttn`` (tests/test_local_attention.py, weights copied): with
``mask_padding=False`` and H, W multiples of b, ``attend(x)`` equals timm's output (timm's module
is the attention alone: no residual, no output projection); with the default masking the two
agree wherever a block's window lies inside the map. timm's relative tables have 2(b + 2h) - 1
rows of which the first 2h are never used; here they have b + 2h + b - 1, timm's rows 2h onwards.
The kv projection keeps timm's channel order (per head: k channels, then v channels).

NOTE (departures, and why):
* timm (and, as far as the paper says, HaloNet) lets border queries attend to the zero-padded
  halo; masking is the default here so the output does not depend on the padding; set
  ``mask_padding=False`` for timm's behaviour.
* As a drop-in block the attention is wrapped in a residual with a per-channel scale ``gamma``
  (``layer_scale_init=0`` starts it as the identity) and an output projection ``W_o``; HaloNet uses
  it in place of a 3x3 conv. Only stride 1 (the block keeps the map's shape).
* timm's keyword arguments: ``rd_ratio`` / ``rd_channels`` / ``rd_divisor`` set the q/k width
  (timm's ``qk_ratio``: ``make_divisible(C * rd_ratio, rd_divisor)``, default 1.0 -> C);
  ``act_layer``, ``gate_layer``, ``force_act_layer`` and ``rd_round_fn`` do not apply and are ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from ._local import dense_query_map, pad_to_multiple
from .base import AttnTap, check_channels, check_heads, check_input, reduced_channels

__all__ = ["HaloAttn2d"]


@register_attn(
    "halo",
    family="self-attention",
    paper="Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
    authors="Vaswani, Ramachandran, Srinivas, Parmar, Hechtman, Shlens",
    year=2021,
    link="https://arxiv.org/abs/2103.12731",
    scope="local",
    hardness="soft",
    score="scaled_dot",
)
class HaloAttn2d(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 8,
        block_size: int = 8,
        halo_size: int = 3,
        mask_padding: bool = True,
        scale_pos_embed: bool = False,
        qkv_bias: bool = False,
        rd_ratio: float = 1.0,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        layer_scale_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_channels("halo", channels)
        self.num_heads = check_heads("halo", channels, num_heads)
        for key, val, low in (("block_size", block_size, 1), ("halo_size", halo_size, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"halo: {key} must be an int >= {low}, got {val!r}")
        self.rd_channels = reduced_channels("halo", channels, rd_ratio, rd_channels, rd_divisor)
        self.dim_qk = max(1, self.rd_channels // num_heads)  # per head
        self.dim_v = channels // num_heads
        self.block_size, self.halo_size = block_size, halo_size
        self.win_size = block_size + 2 * halo_size
        self.mask_padding = bool(mask_padding)
        self.scale_pos_embed = bool(scale_pos_embed)
        self.q = nn.Conv2d(channels, num_heads * self.dim_qk, 1, bias=qkv_bias)
        self.kv = nn.Conv2d(channels, num_heads * (self.dim_qk + self.dim_v), 1, bias=qkv_bias)
        rel = self.win_size + block_size - 1  # offsets -(b-1+h) .. (b-1+h)
        self.rel_h = nn.Parameter(torch.randn(rel, self.dim_qk) * self.dim_qk**-0.5)
        self.rel_w = nn.Parameter(torch.randn(rel, self.dim_qk) * self.dim_qk**-0.5)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.tap = AttnTap("query")

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, halo_size={self.halo_size}, mask_padding={self.mask_padding}"

    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        """(B, ch, Hp, Wp) -> (B, nb, b*b, ch): the query blocks."""
        bsz, ch, hp, wp = t.shape
        b = self.block_size
        t = t.reshape(bsz, ch, hp // b, b, wp // b, b).permute(0, 2, 4, 3, 5, 1)  # (B, nbh, nbw, b, b, ch)
        return t.reshape(bsz, (hp // b) * (wp // b), b * b, ch)

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        """(B, ch, Hp, Wp) -> (B, nb, win*win, ch): each block's window, halo zero-padded."""
        hs, ws, b = self.halo_size, self.win_size, self.block_size
        t = F.pad(t, (hs, hs, hs, hs))
        t = t.unfold(2, ws, b).unfold(3, ws, b)  # (B, ch, nbh, nbw, win, win)
        bsz, ch, nbh, nbw = t.shape[:4]
        return t.reshape(bsz, ch, nbh * nbw, ws * ws).permute(0, 2, 3, 1)

    def _rel_index(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(b*b, win*win) row and column of the relative table for every (query, key) of a block."""
        b, ws = self.block_size, self.win_size
        qy = torch.arange(b, device=device).repeat_interleave(b)
        qx = torch.arange(b, device=device).repeat(b)
        ky = torch.arange(ws, device=device).repeat_interleave(ws)
        kx = torch.arange(ws, device=device).repeat(ws)
        # key - query offset in map pixels is (ky - h) - qy; + (b - 1 + h) makes it a row index >= 0
        return ky[None, :] - qy[:, None] + b - 1, kx[None, :] - qx[:, None] + b - 1

    def _weights(self, x: torch.Tensor):
        b_, _, h, w = x.shape
        heads = self.num_heads
        q = self._blocks(pad_to_multiple(self.q(x), self.block_size, self.block_size))  # (B, nb, b*b, heads*dqk)
        nb, lq = q.shape[1], q.shape[2]
        q = q.reshape(b_, nb, lq, heads, self.dim_qk).permute(0, 3, 1, 2, 4)  # (B, heads, nb, b*b, dqk)
        kv = self._windows(pad_to_multiple(self.kv(x), self.block_size, self.block_size))  # (B, nb, win^2, ...)
        lk = kv.shape[2]
        kv = kv.reshape(b_, nb, lk, heads, self.dim_qk + self.dim_v).permute(0, 3, 1, 2, 4)
        k, v = kv.split([self.dim_qk, self.dim_v], dim=-1)  # (B, heads, nb, win^2, dqk / dv)
        iy, ix = self._rel_index(x.device)
        rel_h = (q @ self.rel_h.to(q.dtype).T).gather(-1, iy.expand(b_, heads, nb, lq, lk))  # (B, heads, nb, b*b, win^2)
        rel_w = (q @ self.rel_w.to(q.dtype).T).gather(-1, ix.expand(b_, heads, nb, lq, lk))
        scale = self.dim_qk**-0.5
        content = q @ k.transpose(-1, -2)  # (B, heads, nb, b*b, win^2)
        logits = (content + rel_h + rel_w) * scale if self.scale_pos_embed else content * scale + rel_h + rel_w
        if self.mask_padding:
            valid = pad_to_multiple(torch.ones(1, 1, h, w, device=x.device, dtype=q.dtype), self.block_size, self.block_size)
            key_ok = self._windows(valid)[0, :, :, 0] > 0  # (nb, win^2)
            logits = logits.masked_fill(~key_ok[:, None, :], float("-inf"))
        return logits.softmax(-1), v

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output (B, C, H, W) before W_o and the residual (what timm's HaloAttn returns)."""
        b_, c, h, w = x.shape
        weights, v = self._weights(x)
        out = weights @ v  # (B, heads, nb, b*b, dv)
        b = self.block_size
        hp, wp = h + (-h) % b, w + (-w) % b
        if self.tap.active:  # build the dense maps only while they are being captured
            pos = F.pad(torch.arange(h * w, device=x.device).reshape(1, 1, h, w) + 1, (0, wp - w, 0, hp - h)) - 1
            q_index = self._blocks(pos)[0, :, :, 0]  # (nb, b*b) flat position, -1 where padded
            k_index = self._windows(pos + 1)[0, :, :, 0] - 1  # halo padding is 0 -> -1
            self.tap(dense_query_map(weights, q_index, k_index, h, w))  # (B, heads, N, H, W)
        out = out.permute(0, 1, 4, 2, 3).reshape(b_, c, hp // b, wp // b, b, b)  # (B, C, nbh, nbw, b, b)
        out = out.permute(0, 1, 2, 4, 3, 5).reshape(b_, c, hp, wp)
        return out[:, :, :h, :w]

    def forward(self, x):
        check_input(self, x)
        return x + self.gamma * self.proj(self.attend(x))
