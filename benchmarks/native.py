"""Every channel/spatial block with the native CPU kernels (attnzoo/blocks/_native.c) against the same block
on its PyTorch paths (``ATTNZOO_NATIVE=0``).

    python benchmarks/native.py
    python benchmarks/native.py --blocks cbam triplet --json benchmarks/results/native_cpu.json
    python benchmarks/native.py --breakdown --json benchmarks/results/native_breakdown_cpu.json

Shapes: ResNet-20's three stages on Fashion-MNIST (batch 128: 16x28x28, 32x14x14, 64x7x7) and
32x64x56x56; channels_last (as the harness trains), float32, train mode, forward + backward (``y.backward(g)``, no
loss ops around the block). Each (block, shape, side) is built once with the same weights on both sides; the
outputs and input gradients are checked equal first; ``--repeats`` interleaved rounds in a fresh
random order, each job timing ``--steps`` passes after one untimed pass on the same input (warm, as a block
in a network finds its input in cache); the minimum over the rounds is reported. Printed: ms on the PyTorch paths, ms with the kernels, their
ratio (< 1: the kernels are faster), and which native ops the block ran. Blocks that run none are
listed as such (their two sides are the same code).

``--breakdown`` adds a third side for the blocks that run native ops: the same block with every kernel
replaced by a call that returns at once (``NoKernels``). What it spends is everything outside the kernels --
its small graphs on the pooled tensors (MLPs, convs, BatchNorm, gates), the ops' Python and autograd
work, allocations -- so native - outside is the kernels' share. Next to them, the block's memory floor at
that shape: 8 |x| at the copy bandwidth of a 256 MiB tensor (DRAM) and of a tensor the size of x (in cache),
as in ``overhead_floor.py``. Where the outside share alone exceeds 2x the floor, no kernel can bring the
block to issue 15's eager target: the small graphs would have to be fused (compiled, or written as
kernels). Denormals are flushed in this mode (the kernels' outputs are left uninitialised on that side).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import attnzoo
from attnzoo.ablation.runner import cpu_model
from attnzoo.blocks import _native
from attnzoo.training.allocator import use_allocator

sys.path.insert(0, str(Path(__file__).parent))
from overhead_floor import cached_copy_bandwidth, channel_spatial_blocks, copy_bandwidth  # noqa: E402

SHAPES = [(128, 16, 28, 28), (128, 32, 14, 14), (128, 64, 7, 7), (32, 64, 56, 56)]
CL = torch.channels_last


def native_ops(y: torch.Tensor) -> list[str]:
    """Names of the native autograd ops in y's graph."""
    seen, stack, found = set(), [y.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        name = type(fn).__name__
        if name.startswith("_") and name.endswith("Backward") and getattr(fn, "lib", None) is not None:
            found.add(name[1:-len("Backward")])
        elif name in ("_SmallConvBackward", "_DepthwiseConvBackward"):
            found.add(name[1:-len("Backward")])
        stack.extend(f for f, _ in fn.next_functions)
    return sorted(found)


class NoKernels:
    """Stands in for the kernel library: every kernel returns at once and writes nothing."""

    _name = "no kernels (--breakdown)"

    def __getattr__(self, name):
        return _nothing


def _nothing(*args) -> None:
    return None


def _set(side) -> None:
    """side: True (the kernels), False (the PyTorch paths) or "outside" (the native ops with NoKernels)."""
    os.environ["ATTNZOO_NATIVE"] = "0" if side is False else "1"
    if "real" not in _STATE:
        _STATE["real"] = _native.kernels()
    _native._state["lib"] = _NO_KERNELS if side == "outside" else _STATE["real"]


_STATE: dict = {}
_NO_KERNELS = NoKernels()


def step(block, x, g, native, steps: int = 1) -> float:
    """Mean time of ``steps`` forward+backward passes, after one untimed pass on the same input (a block in a
    network finds its input in cache, just written by the layer before it; the first pass after another
    job's would not)."""
    _set(native)
    try:
        for k in range(steps + 1):
            if k == 1:
                t = time.perf_counter()
            block(x).backward(g)
            x.grad = None
    finally:
        _set(True)
    return (time.perf_counter() - t) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", nargs="*", default=None, help="default: every channel/spatial block")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--steps", type=int, default=3, help="timed passes per job and round, after one untimed pass")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--allocator", choices=["keep", "system"], default="keep",
                   help="keep (default): freed memory stays in the process, as in CPU fits; system: as it is")
    p.add_argument("--breakdown", action="store_true",
                   help="also time each native block with its kernels returning at once, next to its memory floor")
    args = p.parse_args(argv)
    alloc = use_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    _set(True)
    if _native.kernels() is None:
        print(f"native kernels unavailable: {_native.build_error()}")
        return 1
    names = args.blocks or channel_spatial_blocks()
    if args.breakdown:
        torch.set_flush_denormal(True)
    bandwidth: list[float] = []
    cached: dict = {}

    def measure_floors() -> None:
        bandwidth.append(copy_bandwidth())
        for shape in SHAPES:
            cached.setdefault(shape, []).append(cached_copy_bandwidth(4 * shape[0] * shape[1] * shape[2] * shape[3]))

    jobs, ops, models = [], {}, {}
    for name in names:
        for shape in SHAPES:
            torch.manual_seed(0)
            block = attnzoo.create_attn(name, shape[1]).train()
            x = torch.randn(shape).contiguous(memory_format=CL).requires_grad_(True)
            g = torch.randn(shape).contiguous(memory_format=CL)
            outs = []
            for native in (True, False):  # the same function both ways, checked before it is timed
                _set(native)
                y = block(x)
                y.backward(g)
                outs.append((y.detach(), x.grad.clone()))
                if native:
                    ops[(name, shape)] = native_ops(y)
                x.grad = None
            for a, b in zip(*outs):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max())))
            models[(name, shape)] = (block, x, g)
            jobs += [(name, shape, True), (name, shape, False)]
            if args.breakdown and ops[(name, shape)]:
                jobs.append((name, shape, "outside"))
    times = {j: [] for j in jobs}
    rng = random.Random(0)
    for _ in range(args.repeats):
        if args.breakdown:
            measure_floors()
        rng.shuffle(jobs)
        for name, shape, native in jobs:
            block, x, g = models[(name, shape)]
            times[(name, shape, native)].append(step(block, x, g, native, args.steps))
    _set(True)
    print(f"forward+backward, float32, channels_last, {torch.get_num_threads()} threads, {cpu_model()}, "
          f"torch {torch.__version__}, allocator {alloc.get('allocator')}, min of {args.repeats} rounds of "
          f"{args.steps} passes after one untimed")
    floors = {}
    if args.breakdown:
        bw = statistics.median(bandwidth)
        print(f"breakdown: 'outside' = the native ops with kernels that return at once; floor = 8 |x| at the copy "
              f"bandwidth, DRAM {bw / 1e9:.1f} GB/s (median of {len(bandwidth)}) / in cache (a copy of x's size)")
        for shape in SHAPES:
            nbytes = 8 * 4 * shape[0] * shape[1] * shape[2] * shape[3]
            floors[shape] = (nbytes / bw, nbytes / statistics.median(cached[shape]))
    head = f"{'block':<16}{'shape':<16}{'pytorch ms':>11}{'native ms':>10}{'ratio':>7}"
    if args.breakdown:
        head += f"{'outside':>9}{'floor':>7}{'cache fl':>9}{'out/floor':>10}"
    print(head + "  native ops")
    rows = []
    for name in names:
        for shape in SHAPES:
            a, b = min(times[(name, shape, False)]), min(times[(name, shape, True)])
            o = ops[(name, shape)]
            row = dict(block=name, shape=list(shape), pytorch_ms=a * 1e3, native_ms=b * 1e3, ratio=b / a, ops=o)
            line = f"{name:<16}{'x'.join(map(str, shape)):<16}{a * 1e3:>11.2f}{b * 1e3:>10.2f}{b / a:>7.2f}"
            if args.breakdown and o:
                out = min(times[(name, shape, "outside")])
                dram, cache = floors[shape]
                row.update(outside_ms=out * 1e3, kernels_ms=(b - out) * 1e3, floor_ms=dram * 1e3,
                           cache_floor_ms=cache * 1e3, native_ratio_to_floor=b / dram, outside_ratio_to_floor=out / dram)
                line += f"{out * 1e3:>9.2f}{dram * 1e3:>7.2f}{cache * 1e3:>9.2f}{out / dram:>10.2f}"
            elif args.breakdown:
                line += " " * 35
            rows.append(row)
            print(f"{line}  {', '.join(o) or '(none)'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(threads=torch.get_num_threads(), repeats=args.repeats, steps=args.steps,
                                             cpu=cpu_model(),
                                             torch=torch.__version__, attnzoo=attnzoo.__version__, allocator=alloc,
                                             shapes=[list(s) for s in SHAPES], breakdown=args.breakdown,
                                             copy_bandwidth_gbs_rounds=[v / 1e9 for v in bandwidth],
                                             cached_copy_bandwidth_gbs_rounds={"x".join(map(str, k)): [v / 1e9 for v in vs]
                                                                               for k, vs in cached.items()},
                                             rows=rows), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
