"""Swin window attention: multi-head self-attention inside non-overlapping M x M windows, with
optionally shifted windows and a learned relative position bias.

Paper: Z. Liu, Y. Lin, Y. Cao, H. Hu, Y. Wei, Z. Zhang, S. Lin, B. Guo, "Swin Transformer:
Hierarchical Vision Transformer using Shifted Windows", ICCV 2021. https://arxiv.org/abs/2103.14030

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + B) V      inside each window (Eq. 4)
    B = B_hat[dy + M - 1, dx + M - 1], B_hat in R^{(2M-1) x (2M-1)} per head
    y = x + gamma * W_o (window attention(x))                  residual with a per-channel scale

With ``shift=True`` the map is cyclically shifted by (-floor(M/2), -floor(M/2)) before the windows
are cut and shifted back afterwards (Sec. 3.2, "efficient batch computation for shifted
configuration"); a window then holds pieces of up to four regions that are not adjacent in the
map, and the attention mask lets a query see only keys of its own region, as in the paper. Swin
alternates W-MSA and SW-MSA in consecutive blocks: insert ``window`` and ``window_shifted``.

Any H x W works: the map is zero-padded at the bottom and right to a multiple of the window, and
the padded keys are masked out (never attended); padded queries are dropped. An axis no longer
than M uses one window of its own length and no shift on that axis (as Swin does for small maps).

NOTE (departures, and why):
* Swin pads the map and lets queries attend to the padded (zero-feature) tokens; here they are
  masked, so the output at a position does not depend on how much padding its window got.
* As a drop-in block the attention is wrapped in a residual with a per-channel scale ``gamma``
  (``layer_scale_init=0`` starts it as the identity) and an output projection ``W_o``; Swin's
  LayerNorm and MLP are the host network's business. q, k, v are 1x1 convolutions with a bias, as
  Swin's qkv Linear.
* timm's ``attn_layer`` / ``se_layer`` keyword arguments ``act_layer``, ``gate_layer``,
  ``rd_ratio``, ``rd_channels``, ``rd_divisor``, ``force_act_layer`` and ``rd_round_fn`` do not
  apply (no reduction, no activation; softmax is the gate) and are ignored.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from ._local import dense_query_map, pad_to_multiple
from .base import AttnTap, check_channels, check_heads, check_input

__all__ = ["WindowAttn"]

_META = dict(
    family="self-attention",
    paper="Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    authors="Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo",
    year=2021,
    link="https://arxiv.org/abs/2103.14030",
    scope="local",
    hardness="soft",
    score="scaled_dot",
)


def _windows(t: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    """(B, C, Hp, Wp) -> (B, nW, mh*mw, C), windows in row-major order."""
    b, c, hp, wp = t.shape
    t = t.reshape(b, c, hp // mh, mh, wp // mw, mw).permute(0, 2, 4, 3, 5, 1)  # (B, nh, nw, mh, mw, C)
    return t.reshape(b, (hp // mh) * (wp // mw), mh * mw, c)


def _region_labels(length: int, m: int, s: int, device) -> torch.Tensor:
    """Swin's three regions along one axis of the shifted map: [0, L-m), [L-m, L-s), [L-s, L)."""
    i = torch.arange(length, device=device)
    if s == 0:
        return torch.zeros_like(i)
    return (i >= length - m).long() + (i >= length - s).long()


@register_attn("window", **_META)
class WindowAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        window_size: int = 7,
        shift: bool = False,
        qkv_bias: bool = True,
        layer_scale_init: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_channels("window", channels)
        self.num_heads = check_heads("window", channels, num_heads)
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window: window_size must be a positive int, got {window_size!r}")
        self.head_dim = channels // num_heads
        self.window_size = m = window_size
        self.shift = bool(shift)
        self.attn_drop = attn_drop
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, 2 * m - 1, 2 * m - 1))  # B_hat
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.tap = AttnTap("query")

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift={self.shift}"

    def _geometry(self, h: int, w: int):
        mh, mw = min(self.window_size, h), min(self.window_size, w)
        sh = mh // 2 if self.shift and h > self.window_size else 0
        sw = mw // 2 if self.shift and w > self.window_size else 0
        return mh, mw, sh, sw

    def attn_bias(self, h: int, w: int, device, dtype) -> torch.Tensor:
        """(nW, heads, L, L) relative position bias plus the mask (-inf) of padded keys and, when
        shifted, of keys from another region; L = mh*mw."""
        mh, mw, sh, sw = self._geometry(h, w)
        hp, wp = h + (-h) % mh, w + (-w) % mw
        m = self.window_size
        ys = torch.arange(mh, device=device).repeat_interleave(mw)  # (L,)
        xs = torch.arange(mw, device=device).repeat(mh)
        idx_y = ys[:, None] - ys[None, :] + m - 1  # (L, L) query - key offsets, shifted to >= 0
        idx_x = xs[:, None] - xs[None, :] + m - 1
        bias = self.rel_bias[:, idx_y, idx_x].to(dtype)  # (heads, L, L)
        valid = F.pad(torch.ones(h, w, dtype=torch.long, device=device), (0, wp - w, 0, hp - h))  # (Hp, Wp)
        valid = torch.roll(valid, (-sh, -sw), (0, 1)) if (sh or sw) else valid  # into the shifted frame
        region = _region_labels(hp, mh, sh, device)[:, None] * 3 + _region_labels(wp, mw, sw, device)[None, :]
        label = torch.stack([valid, region])[None].float()  # (1, 2, Hp, Wp), both in the shifted frame
        win = _windows(label, mh, mw)  # (1, nW, L, 2)
        key_ok = win[0, :, None, :, 0] > 0  # (nW, 1, L)
        same = win[0, :, :, None, 1] == win[0, :, None, :, 1]  # (nW, L, L)
        eye = torch.eye(mh * mw, dtype=torch.bool, device=device)
        allowed = (same & key_ok) | eye  # a padded query sees itself, so no row is empty
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        return bias[None] + mask[:, None]  # (nW, heads, L, L)

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        heads, d = self.num_heads, self.head_dim
        mh, mw, sh, sw = self._geometry(h, w)
        qkv = pad_to_multiple(self.qkv(x), mh, mw)  # (B, 3C, Hp, Wp)
        hp, wp = qkv.shape[-2:]
        if sh or sw:
            qkv = torch.roll(qkv, shifts=(-sh, -sw), dims=(2, 3))
        t = _windows(qkv, mh, mw)  # (B, nW, L, 3C)
        nw, length = t.shape[1], t.shape[2]
        q, k, v = t.reshape(b * nw, length, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW, heads, L, d)
        bias = self.attn_bias(h, w, x.device, q.dtype)  # (nW, heads, L, L)
        bias = bias[None].expand(b, -1, -1, -1, -1).reshape(b * nw, heads, length, length)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0)
        if self.tap.active:  # build the weights only while they are being captured
            weights = ((q @ k.transpose(-1, -2)) * d**-0.5 + bias).softmax(-1)  # (B*nW, heads, L, L)
            pos = torch.full((hp, wp), -1, dtype=torch.long, device=x.device)
            pos[:h, :w] = torch.arange(h * w, device=x.device).reshape(h, w)
            pos = torch.roll(pos, (-sh, -sw), (0, 1)) if (sh or sw) else pos
            index = _windows(pos[None, None], mh, mw)[0, :, :, 0]  # (nW, L) flat input position or -1
            weights = weights.reshape(b, nw, heads, length, length).transpose(1, 2)  # (B, heads, nW, L, L)
            self.tap(dense_query_map(weights, index, index, h, w))  # (B, heads, N, H, W)
        out = out.transpose(1, 2).reshape(b, nw, length, c)  # (B, nW, L, C)
        out = out.reshape(b, hp // mh, wp // mw, mh, mw, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp, wp)
        if sh or sw:
            out = torch.roll(out, shifts=(sh, sw), dims=(2, 3))
        out = out[:, :, :h, :w]  # (B, C, H, W)
        return x + self.gamma * self.proj(out)


register_attn("window_shifted", functools.partial(WindowAttn, shift=True), **_META)
