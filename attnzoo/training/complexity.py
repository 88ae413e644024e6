"""Model cost: parameters, FLOPs at one input size, and inference images/s.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a batch
of 1 in eval mode: a multiply-add counts as 2 FLOPs (so ResNet-50 at 224x224 is ~8.2 GFLOPs here,
~4.1 G "FLOPs" in papers that count multiply-adds). Only the operators FlopCounterMode knows are
counted (matmul, convolution, SDPA, ...); elementwise operations (BN, activations, pooling, the
sigmoid gates of most attention blocks) count 0.
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["complexity", "count_params", "inference_throughput", "normalize_input_size"]


def normalize_input_size(input_size: int | Sequence[int], in_chans: int = 3) -> tuple[int, int, int]:
    """(C, H, W) from an int H (square), an (H, W) pair, or a (C, H, W) triple."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        return (in_chans, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (in_chans, *size)
    if len(size) == 3:
        return size  # type: ignore[return-value]
    raise ValueError(f"input_size must be H, (H, W) or (C, H, W), got {input_size!r}")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _first_param(model: nn.Module) -> torch.Tensor | None:
    return next(iter(model.parameters()), None)


def complexity(model: nn.Module, input_size: int | Sequence[int]) -> dict[str, int]:
    """``{"params": int, "flops": int}`` of ``model`` for one (C, H, W) image (batch 1).

    The model runs in eval mode under ``torch.no_grad`` (BatchNorm statistics are not touched) on
    the device and dtype of its parameters; its training mode is restored afterwards.
    """
    c, h, w = normalize_input_size(input_size)
    ref = _first_param(model)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros(1, c, h, w, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": count_params(model), "flops": int(counter.get_total_flops())}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_throughput(
    model: nn.Module,
    input_size: int | Sequence[int],
    batch_size: int = 64,
    repeats: int = 5,
    warmup: int = 2,
    channels_last: bool = False,
) -> float:
    """Images per second of ``model`` in eval mode under ``torch.inference_mode``.

    One fixed batch of ``batch_size`` random images at ``input_size``, on the model's device;
    ``warmup`` untimed forward passes, then the median over ``repeats`` timed passes (each timed
    pass synchronizes CUDA before and after). Training mode is restored afterwards.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} and {repeats}")
    c, h, w = normalize_input_size(input_size)
    ref = _first_param(model)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)  # a private generator: the global RNG stream is untouched
    x = torch.randn(batch_size, c, h, w, generator=gen).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return batch_size / statistics.median(times)
