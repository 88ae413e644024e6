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

Three implementations of the same function (``impl=``), all plain torch ops (no NATTEN kernel):

* ``"blocked"`` (default): queries in tiles of k x k; each tile attends, as one dense matmul, to
  the (2k - 1) x (2k - 1) keys that contain all its queries' neighbourhoods, with -inf outside each
  query's own k x k: O(N (2k-1)^2 d) in batched matmuls, (2k-1)^2 / k^2 (3.4 at k = 7) times the
  necessary multiply-adds, but in matrix products, which CPUs and GPUs run far faster than the
  gather path's elementwise products.
* ``"gather"``: the k^2 neighbours' keys and values are gathered into a
  (B, heads, H, W, k^2, d) tensor (two ``index_select`` calls: the rows of every query's
  neighbourhood, then its columns), then one small softmax per query: O(N k^2 d) time and
  memory, N = H*W.
* ``"naive"``: the reference; all N x N logits with -inf outside each query's neighbourhood,
  O(N^2 d). ``benchmarks/neighborhood.py`` prints the time ratios blocked / naive and gather / naive.

NOTE (departures, and why):
* NAT's kernels are CUDA (NATTEN); this is plain torch, so it runs everywhere, exports to ONNX
  and compiles, at the cost of materialising the key windows.
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

IMPLS = ("blocked", "gather", "naive")


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
        impl: str = "blocked",
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
        b, heads, _, _, d = k.shape

        def neighbours(t):  # (B, heads, H, W, d) -> (B, heads, H, kh, W, kw, d), two index_selects
            t = t.index_select(2, rows.reshape(-1)).reshape(b, heads, h, kh, w, d)  # rows of every query
            return t.index_select(4, cols.reshape(-1)).reshape(b, heads, h, kh, w, kw, d)  # then its columns

        kn, vn = neighbours(k), neighbours(v)  # kept in this (contiguous) layout: products stay fast
        kc = self.kernel_size - 1
        dy = rows - torch.arange(h, device=q.device)[:, None] + kc  # (H, kh) key - query, >= 0
        dx = cols - torch.arange(w, device=q.device)[:, None] + kc  # (W, kw)
        bias = self.rel_bias[:, dy[:, None, :, None], dx[None, :, None, :]]  # (heads, H, W, kh, kw)
        # elementwise products and sums, not einsum: einsum would be H*W*heads*B matmuls of 1 x d x k^2
        logits = (q[:, :, :, None, :, None, :] * self.head_dim**-0.5 * kn).sum(-1)  # (B, heads, H, kh, W, kw)
        logits = logits.permute(0, 1, 2, 4, 3, 5) + bias.to(q.dtype)  # (B, heads, H, W, kh, kw)
        attn = logits.reshape(b, heads, h, w, kh * kw).softmax(-1)  # (B, heads, H, W, kh*kw)
        attn = F.dropout(attn, self.attn_drop, self.training)
        attn = attn.reshape(b, heads, h, w, kh, kw).permute(0, 1, 2, 4, 3, 5)  # (B, heads, H, kh, W, kw)
        return (attn[..., None] * vn).sum((3, 5))  # (B, heads, H, W, d)

    def _blocked(self, q, k, v, h: int, w: int):
        """q, k, v (B, heads, H, W, d) -> (B, heads, H, W, d): tiles of t x t queries (t = k) against
        the (t + k - 1)^2 keys that hold all their neighbourhoods, as batched matmuls with a mask."""
        b, heads, _, _, d = q.shape
        kc = self.kernel_size - 1
        geo = [self._tiles(length, q.device) for length in (h, w)]  # per axis
        (ty, win_y, ok_y, dy), (tx, win_x, ok_x, dx) = geo
        nty, nly = win_y.shape
        ntx, nlx = win_x.shape
        qp = F.pad(q, (0, 0, 0, ntx * tx - w, 0, nty * ty - h))  # (B, heads, Hp, Wp, d), zero queries dropped later
        qt = qp.reshape(b, heads, nty, ty, ntx, tx, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, heads, nty, ntx, ty * tx, d)

        def windows(t):  # (B, heads, H, W, d) -> (B, heads, nty, ntx, nly*nlx, d)
            t = t.index_select(2, win_y.reshape(-1)).index_select(3, win_x.reshape(-1))  # (B, heads, nty*nly, ntx*nlx, d)
            t = t.reshape(b, heads, nty, nly, ntx, nlx, d).permute(0, 1, 2, 4, 3, 5, 6)
            return t.reshape(b, heads, nty, ntx, nly * nlx, d)

        kw_, vw = windows(k), windows(v)
        bias = self.rel_bias[:, dy[:, :, :, None, None, None], dx[None, None, None, :, :, :]]  # (heads, nty, ty, nly, ntx, tx, nlx)
        ok = ok_y[:, :, :, None, None, None] & ok_x[None, None, None, :, :, :]  # (nty, ty, nly, ntx, tx, nlx)
        bias = bias.masked_fill(~ok, float("-inf")).permute(1, 4, 0, 2, 5, 3, 6)  # (nty, ntx, heads, ty, tx, nly, nlx)
        bias = bias.reshape(nty, ntx, heads, ty * tx, nly * nlx).permute(2, 0, 1, 3, 4).to(q.dtype)
        logits = (qt @ kw_.transpose(-1, -2)) * self.head_dim**-0.5 + bias  # (B, heads, nty, ntx, t*t, L)
        attn = F.dropout(logits.softmax(-1), self.attn_drop, self.training)
        out = (attn @ vw).reshape(b, heads, nty, ntx, ty, tx, d).permute(0, 1, 2, 4, 3, 5, 6)  # (B, heads, nty, ty, ntx, tx, d)
        return out.reshape(b, heads, nty * ty, ntx * tx, d)[:, :, :h, :w]

    def _tiles(self, length: int, device):
        """One axis of the blocked path: tile size t, each tile's key window (n_tiles, L) (indices into the
        axis), whether key a of the window is a neighbour of query i of the tile (n_tiles, t, L), and the
        relative-bias index of that pair (n_tiles, t, L)."""
        kk = min(self.kernel_size, length)
        t = kk
        n_tiles = -(-length // t)
        span = min(t + kk - 1, length)  # all neighbourhoods of a tile fit in this many consecutive keys
        starts = neighbour_starts(length, kk, device)  # (length,)
        first_q = torch.arange(n_tiles, device=device) * t
        win_start = torch.minimum(starts[first_q], torch.full_like(first_q, length - span))
        win = win_start[:, None] + torch.arange(span, device=device)  # (n_tiles, span)
        query = (first_q[:, None] + torch.arange(t, device=device)).clamp(max=length - 1)  # (n_tiles, t), padded rows repeat the last
        qs = starts[query][:, :, None]  # (n_tiles, t, 1)
        ok = (win[:, None, :] >= qs) & (win[:, None, :] < qs + kk)
        kc = self.kernel_size - 1
        rel = (win[:, None, :] - query[:, :, None]).clamp(-kc, kc) + kc  # key - query, clamped where masked
        return t, win, ok, rel

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
        elif self.impl == "gather":
            out = self._gather(q, k, v, h, w).reshape(b, heads, n, d)
        else:
            out = self._blocked(q, k, v, h, w).reshape(b, heads, n, d)
        if self.tap.active:
            self.tap(weights.reshape(b, heads, n, h, w))  # (B, heads, N, H, W)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.gamma * self.proj(out)
