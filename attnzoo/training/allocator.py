"""CPU memory allocator tuning: keep freed tensor memory in the process instead of returning it to the OS.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a request above its mmap
threshold (128 KiB at start, raised dynamically up to 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so every large activation of every training step is new memory that page-faults on first
touch (a fault per 4 KiB page). A step allocates and frees the same sizes again and again, so the
faults are pure overhead. ``benchmarks/allocator.py`` (-> ``benchmarks/results/allocator_cpu.json``)
measures it in fresh processes: on this 2-core AMD EPYC (torch 2.14.1; ResNet-20 on 1x28x28, batch
128, channels_last, eager SGD steps) a plain ResNet-20 step took 0.85 of its time with
:func:`keep_freed_memory`, with SE blocks 0.82; with CBAM (whose step is dominated by other costs)
0.99.

:func:`keep_freed_memory` raises the mmap threshold and the trim threshold to 1 GiB with
``mallopt``, so those requests come from the heap and freed memory stays there for the next step
(the cost: the process keeps its peak memory rather than giving it back between steps). It changes
no result, only where memory comes from. It acts only where the C library is glibc (Linux); elsewhere
it does nothing and says so. The harness calls it for fits on CPU (``model.cpu_allocator: keep``,
the default; ``system`` leaves the allocator alone) and ``attnzoo cost`` calls it too, so that step
times are measured as the fits run.
"""
from __future__ import annotations

import ctypes
import platform
from typing import Any

__all__ = ["keep_freed_memory", "use_allocator", "ALLOCATOR_CHOICES"]

ALLOCATOR_CHOICES = ("keep", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_THRESHOLD = 1 << 30  # 1 GiB
_state: dict[str, Any] | None = None


def keep_freed_memory() -> dict[str, Any]:
    """Set glibc's mmap and trim thresholds to 1 GiB (once per process); returns what was done.

    The record is ``{"allocator": "glibc", "tuned": True, "mmap_threshold": 1073741824,
    "trim_threshold": 1073741824}`` where it took effect, else ``{"allocator": <libc or "unknown">, "tuned": False, "why": ...}``."""
    global _state
    if _state is not None:
        return dict(_state)
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        _state = {"allocator": libc_name or "unknown", "tuned": False, "why": "not glibc: left as it is"}
        return dict(_state)
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1) and (libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1)
    except (OSError, AttributeError) as exc:
        _state = {"allocator": "glibc", "tuned": False, "why": f"mallopt unavailable: {exc}"}
        return dict(_state)
    if not ok:
        _state = {"allocator": "glibc", "tuned": False, "why": "mallopt refused the thresholds"}
    else:
        _state = {"allocator": "glibc", "tuned": True, "mmap_threshold": _THRESHOLD, "trim_threshold": _THRESHOLD}
    return dict(_state)


def use_allocator(choice: str) -> dict[str, Any]:
    """Apply an ``ALLOCATOR_CHOICES`` setting: ``"keep"`` calls :func:`keep_freed_memory`, ``"system"``
    leaves the allocator alone; returns the record to store with a measurement."""
    if choice not in ALLOCATOR_CHOICES:
        raise ValueError(f"allocator must be one of {ALLOCATOR_CHOICES}, got {choice!r}")
    return keep_freed_memory() if choice == "keep" else {"allocator": "system", "tuned": False}
