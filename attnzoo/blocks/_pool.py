"""Pooling as the blocks use it: the same functions as ``Tensor.mean`` / ``Tensor.amax``, faster.

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it).

Measured on CPU (torch 2.14, 2 threads, forward + backward, ``benchmarks/pooling.py`` ->
``benchmarks/results/pooling_cpu.json``, at 32x64x56x56, 16x64x32x32 and 128x16x28x28):

* ``x.mean(dims)`` is slow, and far slower in channels_last: there a global average over (H, W)
  took 2.8-8.7x longer than ``x.sum(dims) / n``, an average over C 1.9-7x. In NCHW ``sum / n`` is 1.4-2.7x faster over (H, W) and within ±20% over C.
  ``pool_mean`` is ``sum / n`` for float32/float64; in float16/bfloat16 it stays ``Tensor.mean``
  (a half-precision sum of a large map can overflow before the division).
* ``x.amax((2, 3))``'s backward compares every element with the maximum (several full-size passes);
  ``F.adaptive_max_pool2d(x, 1)`` keeps the index of the maximum and scatters the gradient to it,
  2.2-8x faster. The value is the same; where several positions tie for the maximum, ``amax`` splits
  the gradient evenly among them and ``pool_max`` gives it to one of them (both are valid
  subgradients of the max). Ties have probability zero for real-valued activations; a map that
  is all zeros after a ReLU ties everywhere, but the ReLU's backward zeroes either gradient.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["pool_mean", "pool_max"]


def pool_mean(x: torch.Tensor, dims: int | Sequence[int], keepdim: bool = True) -> torch.Tensor:
    """``x.mean(dims, keepdim=keepdim)``, computed as ``x.sum(dims) / n`` in float32/float64."""
    if x.dtype not in (torch.float32, torch.float64):
        return x.mean(dims, keepdim=keepdim)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    n = 1
    for d in dims:
        n *= x.shape[d]
    return x.sum(dims, keepdim=keepdim) / n


def pool_max(x: torch.Tensor) -> torch.Tensor:
    """``x.amax((2, 3), keepdim=True)`` of a (B, C, H, W) map: (B, C, 1, 1)."""
    return F.adaptive_max_pool2d(x, 1)
