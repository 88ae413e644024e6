"""Pooling as the blocks use it: the same functions as ``Tensor.mean`` / ``Tensor.amax``, faster.

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it).

Measured on CPU (torch 2.14, 2 threads, forward + backward, ``benchmarks/pooling.py`` ->
``benchmarks/results/pooling_cpu.json``, at 32x64x56x56, 16x64x32x32 and 128x16x28x28):

* ``x.mean(dims)`` is slow, and far slower in channels_last: there ``x.sum(dims) / n`` took 0.15-0.34
  of its time over (H, W), 0.14-0.48 over C and 0.37-0.67 over W; in NCHW 0.50-0.65 over (H, W) and
  0.59-0.65 over W. An NCHW mean over C is the exception: in an earlier run of the same script
  ``sum / n`` took 1.05-1.34 of ``Tensor.mean``'s time there, so ``pool_mean`` keeps ``Tensor.mean``
  (the committed run, with the same op on both sides, reads 0.75-1.05: the timing noise). ``pool_mean`` is ``sum / n`` for float32/float64; in
  float16/bfloat16 it stays ``Tensor.mean`` (a half-precision sum of a large map can overflow
  before the division).
* ``x.amax((2, 3))``'s backward compares every element with the maximum (several full-size passes);
  ``F.adaptive_max_pool2d(x, 1)`` keeps the index of the maximum and scatters the gradient to it,
  in 0.10-0.39 of the time. The value is the same; where several positions tie for the maximum, ``amax`` splits
  the gradient evenly among them and ``pool_max`` gives it to one of them (both are valid
  subgradients of the max). Ties have probability zero for real-valued activations; a map that
  is all zeros after a ReLU ties everywhere, but the ReLU's backward zeroes either gradient.
* ``x.amax(dim)`` over one axis (CBAM's and triplet attention's max over C, H or W) has a backward
  that compares with ``==`` broadcast along the reduced axis, slow on CPU; ``(x - v).sign_().add_(1)``
  builds the same 0/1 mask in float in fewer, cheaper passes. ``pool_amax`` is ``amax`` with that
  backward (CPU, float32/64), in 0.40-0.66 of ``amax``'s time over C; the gradient
  ``mask * (g / mask.sum(dim))`` is autograd's own formula, so ties split evenly as in ``amax``, and the
  result is the same to the bit. Where the maximum is not finite (inf or NaN) it uses ``==``:
  ``inf - inf`` is NaN. With denormals flushed to zero (``torch.set_flush_denormal(True)``) two
  values closer than the smallest normal float would count as a tie.
* The max over H or over W alone (triplet attention's Z-pool of its rotated branches) is
  ``F.adaptive_max_pool2d(x, (1, W))`` / ``(H, 1)`` in ``pool_max_along``: over W in channels_last
  it took 0.07-0.13 of ``amax``'s time, in NCHW 0.63-1.07. As with ``pool_max``, a tie sends the
  gradient to one position. Over C it is ``pool_amax``.

The ratios are attnzoo / Tensor method, forward + backward, from the pooling_cpu.json named above.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["pool_mean", "pool_max", "pool_amax", "pool_max_along"]


def pool_mean(x: torch.Tensor, dims: int | Sequence[int], keepdim: bool = True) -> torch.Tensor:
    """``x.mean(dims, keepdim=keepdim)``, computed as ``x.sum(dims) / n`` in float32/float64."""
    if x.dtype not in (torch.float32, torch.float64):
        return x.mean(dims, keepdim=keepdim)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if dims in ((1,), (-x.dim() + 1,)) and x.is_contiguous():  # NCHW over C: Tensor.mean is as fast (see above)
        return x.mean(dims, keepdim=keepdim)
    n = 1
    for d in dims:
        n *= x.shape[d]
    return x.sum(dims, keepdim=keepdim) / n


def pool_max(x: torch.Tensor) -> torch.Tensor:
    """``x.amax((2, 3), keepdim=True)`` of a (B, C, H, W) map: (B, C, 1, 1)."""
    return F.adaptive_max_pool2d(x, 1)


class _AMax(torch.autograd.Function):
    """``x.amax(dim, keepdim=True)``; backward builds the 0/1 mask of the maxima without ``==``."""

    @staticmethod
    def forward(ctx, x, dim):
        v = x.amax(dim, keepdim=True)
        ctx.save_for_backward(x, v)
        ctx.dim = dim
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, v = ctx.saved_tensors
        if bool(torch.isfinite(v).all()):
            mask = (x - v).sign_().add_(1)  # x < v: -1 + 1 = 0; x == v: 0 + 1 = 1
        else:
            mask = (x == v).to(x.dtype)
        count = mask.sum(ctx.dim, keepdim=True)
        return mask.mul_(grad / count), None


def pool_amax(x: torch.Tensor, dim: int, keepdim: bool = True) -> torch.Tensor:
    """``x.amax(dim, keepdim=keepdim)``, with a faster backward in CPU float32/float64 training."""
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not x.requires_grad
            or not torch.is_grad_enabled() or torch.compiler.is_compiling()):
        return x.amax(dim, keepdim=keepdim)
    v = _AMax.apply(x, dim % x.dim())
    return v if keepdim else v.squeeze(dim)


def pool_max_along(x: torch.Tensor, dim: int, keepdim: bool = True) -> torch.Tensor:
    """``x.amax(dim, keepdim=keepdim)`` of a (B, C, H, W) map along one of C (1), H (2) or W (3)."""
    dim = dim % 4
    if dim == 1:
        return pool_amax(x, 1, keepdim)
    if dim not in (2, 3):
        raise ValueError(f"pool_max_along: dim must be 1, 2 or 3 of a (B, C, H, W) map, got {dim}")
    h, w = x.shape[2:]
    v = F.adaptive_max_pool2d(x, (1, w) if dim == 2 else (h, 1))
    return v if keepdim else v.squeeze(dim)
