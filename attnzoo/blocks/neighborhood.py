"""Neighborhood attention (NAT): every query attends to the k x k keys nearest to it.

Paper: A. Hassani, S. Walton, J. Li, S. Li, H. Shi, "Neighborhood Attention Transformer",
CVPR 2023. https://arxiv.org/abs/2204.07143

    NA(x_i) = softmax(Q_i K_{rho(i)}^T / sqrt(d) + B_{i, rho(i)}) V_{rho(i)}          (Eq. 2-3)
    y = x + gamma * W_o NA(x)                                residual with a per-channel scale

rho(i) is the k x k neighbourhood of query i: centred on it, and at the borders shifted to stay
inside the map, so every query has exactly k^2 keys (NAT, Sec. 3.1: this is what makes NA equal
to full self-attention when k equals the map size); B is a learned relative position bias
B_hat[dy + k - 1, dx + k - 1] per head, dy, dx the key's offset from the query. An axis shorter than
k uses a neighbourhood of that axis's length. Nothing is padded, so no key is ever masked.

Two implementations of the same function (``impl=``):

* ``"gather"`` (default): the k^2 neighbours' keys and values are gathered into a
  (B, heads, H, W, k^2, d) tensor by index, then one small softmax per query: O(N k^2 d) time and
  memory, N = H*W. Plain torch ops (no NATTEN kernel).
* ``"naive"``: the reference; all N x N logits with -inf outside each query's neighbourhood,
  O(N^2 d). ``benchmarks/neighborhood.py`` prints the time ratio of the two.

NOTE (departures, and why):
* NAT's kernels are CUDA (NATTEN); this is plain torch, so it runs everywhere, exports to ONNX
  and compiles, at the cost of materialising the gathered neighbours.
* As a drop-in block the attention is wrapped in a residual with a per-channel scale ``gamma``
  (``layer_scale_init=0`` starts it as the identity) and an output projection ``W_o``; NAT's
  LayerNorm and MLP belong to the host network. q, k, v are a 1x1 convolution with a bias.
* Dilation (DiNAT, Hassani & Shi 2022) is not implemented.
* timm's ``attn_layer`` / ``se_layer`` keyword arguments ``act_layer``, ``gate_layer``,
  ``rd_ratio``, ``rd_channels``, ``rd_divisor``, ``force_act_layer`` and ``rd_round_fn`` do not
  apply (no reduction, no activation; softmax is the gate) and are ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_heads, check_input

__all__ = ["NeighborhoodAttn", "neighbour_starts"]

IMPLS = ("gather", "naive")


def neighbour_starts(length: int, k: int, device=None) -> torch.Tensor:
    """First neighbour of each position along an axis: clamp(i - k//2, 0, L - k), (L,) long."""
    i = torch.arange(length, device=device)
    return (i - k // 2).clamp(0, length - k)


@register_attn(
    "neighborhood",
    family="self-attention",
    paper="Neighborhood Attention Transformer",
    authors="Hassani, Walton, Li, Li, Shi",
    year=2023,
    link="https://arxiv.org/abs/2204.07143",
    scope="local",
    hardness="soft",
    score="scaled_dot",
)
class NeighborhoodAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        kernel_size: int = 7,
        impl: str = "gather",
        qkv_bias: bool = True,
        layer_scale_init: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_channels("neighborhood", channels)
        self.num_heads = check_heads("neighborhood", channels, num_heads)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"neighborhood: kernel_size must be an odd positive int (the neighbourhood is centred), got {kernel_size!r}")
        if impl not in IMPLS:
            raise ValueError(f"neighborhood: impl must be one of {IMPLS}, got {impl!r}")
        self.kernel_size = kernel_size
        self.impl = impl
        self.head_dim = channels // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))  # B_hat
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.tap = AttnTap("query")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, impl={self.impl!r}"

    def _neighbours(self, h: int, w: int, device):
        """Row indices (H, kh) and column indices (W, kw) of every query's neighbours."""
        kh, kw = min(self.kernel_size, h), min(self.kernel_size, w)
        rows = neighbour_starts(h, kh, device)[:, None] + torch.arange(kh, device=device)  # (H, kh)
        cols = neighbour_starts(w, kw, device)[:, None] + torch.arange(kw, device=device)  # (W, kw)
        return rows, cols

    def _gather(self, q, k, v, h: int, w: int):
        """q, k, v (B, heads, H, W, d) -> out (B, heads, H, W, d) attending to k x k neighbours."""
        rows, cols = self._neighbours(h, w, q.device)
        kh, kw = rows.shape[1], cols.shape[1]
        r = rows[:, None, :, None]  # (H, 1, kh, 1)
        c = cols[None, :, None, :]  # (1, W, 1, kw)
        kn = k[:, :, r, c]  # (B, heads, H, W, kh, kw, d)
        vn = v[:, :, r, c]
        kc = self.kernel_size - 1
        dy = rows - torch.arange(h, device=q.device)[:, None] + kc  # (H, kh) key - query, >= 0
        dx = cols - torch.arange(w, device=q.device)[:, None] + kc  # (W, kw)
        bias = self.rel_bias[:, dy[:, None, :, None], dx[None, :, None, :]]  # (heads, H, W, kh, kw)
        logits = torch.einsum("bnhwd,bnhwijd->bnhwij", q * self.head_dim**-0.5, kn) + bias.to(q.dtype)
        attn = logits.reshape(*logits.shape[:4], kh * kw).softmax(-1)  # (B, heads, H, W, kh*kw)
        attn = F.dropout(attn, self.attn_drop, self.training)
        return torch.einsum("bnhwj,bnhwjd->bnhwd", attn, vn.reshape(*vn.shape[:4], kh * kw, -1))

    def naive_weights(self, q, k, h: int, w: int):
        """Dense (B, heads, N, N) weights, -inf logits outside each neighbourhood; q, k (B, heads, N, d)."""
        rows, cols = self._neighbours(h, w, q.device)
        ys = torch.arange(h, device=q.device).repeat_interleave(w)  # (N,)
        xs = torch.arange(w, device=q.device).repeat(h)
        in_rows = (ys[None, :] >= rows[ys, :1]) & (ys[None, :] <= rows[ys, -1:])  # (N, N): key row in query's span
        in_cols = (xs[None, :] >= cols[xs, :1]) & (xs[None, :] <= cols[xs, -1:])
        kc = self.kernel_size - 1
        dy = (ys[None, :] - ys[:, None]).clamp(-kc, kc) + kc  # key - query, clamped where masked anyway
        dx = (xs[None, :] - xs[:, None]).clamp(-kc, kc) + kc
        bias = self.rel_bias[:, dy, dx].to(q.dtype)  # (heads, N, N)
        logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5 + bias
        return logits.masked_fill(~(in_rows & in_cols), float("-inf")).softmax(-1)

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        heads, d, n = self.num_heads, self.head_dim, h * w
        qkv = self.qkv(x).reshape(b, 3, heads, d, h, w).permute(1, 0, 2, 4, 5, 3)  # (3, B, heads, H, W, d)
        q, k, v = qkv.unbind(0)
        weights = None
        if self.impl == "naive" or self.tap.active:
            flat = lambda t: t.reshape(b, heads, n, d)  # noqa: E731  (B, heads, N, d)
            weights = self.naive_weights(flat(q), flat(k), h, w)  # (B, heads, N, N)
        if self.impl == "naive":
            out = (F.dropout(weights, self.attn_drop, self.training) @ v.reshape(b, heads, n, d))  # (B, heads, N, d)
        else:
            out = self._gather(q, k, v, h, w).reshape(b, heads, n, d)
        if self.tap.active:
            self.tap(weights.reshape(b, heads, n, h, w))  # (B, heads, N, H, W)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.gamma * self.proj(out)
