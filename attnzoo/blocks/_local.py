"""Shared pieces of the local self-attention blocks (halo, window, neighborhood): padding a map to
a multiple of a size, and turning per-group attention weights into the dense (B, heads, N, H, W)
maps that ``AttnTap("query")`` documents (built only while a tap is capturing)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom and right so H and W become multiples of mh and mw."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % mw, 0, (-h) % mh))


def dense_query_map(weights: torch.Tensor, q_index: torch.Tensor, k_index: torch.Tensor,
                    h: int, w: int) -> torch.Tensor:
    """Scatter grouped weights into full maps.

    weights (B, heads, G, Lq, Lk); q_index (G, Lq) and k_index (G, Lk) hold the flat position
    (y * w + x) of each query and key in the h x w input map, or -1 for a padded one (dropped).
    Returns (B, heads, h*w, h, w).
    """
    b, heads = weights.shape[:2]
    n = h * w
    qi = torch.where(q_index < 0, n, q_index)  # padded queries and keys go to a sink row / column
    ki = torch.where(k_index < 0, n, k_index)
    dense = weights.new_zeros(b, heads, n + 1, n + 1)
    g, lq, lk = weights.shape[2:]
    rows = qi[:, :, None].expand(g, lq, lk).reshape(-1)
    cols = ki[:, None, :].expand(g, lq, lk).reshape(-1)
    flat = dense.reshape(b, heads, -1)
    flat = flat.index_add(-1, rows * (n + 1) + cols, weights.reshape(b, heads, -1))
    return flat.reshape(b, heads, n + 1, n + 1)[:, :, :n, :n].reshape(b, heads, n, h, w)
