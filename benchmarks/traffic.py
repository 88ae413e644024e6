"""Load-independent cost measures of a forward + backward: aten ops, bytes they touch, bytes saved.

Timings on a shared machine are noisy; these counts are not. ``measure(module, x)`` runs one
forward + backward (gradient of ``sum(y * 1)``) and returns

* ``ops``: aten operators dispatched (forward and backward; views and other metadata-only ops
  such as ``view``/``permute``/``expand`` are counted separately in ``view_ops`` -- they move no data),
* ``traffic_mb``: the sum over the data-moving ops of the bytes of their tensor inputs and outputs,
  a proxy for memory traffic (each op reads its inputs and writes its outputs once),
* ``saved_mb``: bytes of the distinct tensors autograd saved for backward (the activation memory
  the block holds between forward and backward), counted once per storage.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["measure"]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = self.view_ops = self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.is_mutable or not any(a.alias_info for a in func._schema.returns):
            self.ops += 1
            ts = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.bytes += sum(_nbytes(t) for t in ts)
        else:
            self.view_ops += 1
        return out


def measure(module, x: torch.Tensor) -> dict:
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    saved: dict[int, int] = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    counter = _Count()
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
        y.backward(torch.ones_like(y))
    # the input itself (and parameters) are held anyway; only count what the block created
    held = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in module.parameters()}
    return dict(ops=counter.ops, view_ops=counter.view_ops, traffic_mb=counter.bytes / 2**20,
                saved_mb=sum(v for k, v in saved.items() if k not in held) / 2**20)
