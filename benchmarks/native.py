"""Every channel/spatial block with the native CPU kernels (attnzoo/blocks/_native.c) against the same block
on its PyTorch paths (``ATTNZOO_NATIVE=0``).

    python benchmarks/native.py
    python benchmarks/native.py --blocks cbam triplet --json benchmarks/results/native_cpu.json

Shapes: ResNet-20's three stages on Fashion-MNIST (batch 128: 16x28x28, 32x14x14, 64x7x7) and
32x64x56x56; channels_last (as the harness trains), float32, train mode, forward + backward of
``(y * g).sum()``. Each (block, shape, side) is built once with the same weights on both sides; the
outputs and input gradients are checked equal first; ``--repeats`` interleaved rounds in a fresh
random order, each job timing ``--steps`` passes after one untimed pass on the same input (warm, as a block
in a network finds its input in cache); the minimum over the rounds is reported. Printed: ms on the PyTorch paths, ms with the kernels, their
ratio (< 1: the kernels are faster), and which native ops the block ran. Blocks that run none are
listed as such (their two sides are the same code).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

import attnzoo
from attnzoo.ablation.runner import cpu_model
from attnzoo.blocks import _native
from attnzoo.training.allocator import use_allocator

sys.path.insert(0, str(Path(__file__).parent))
from overhead_floor import channel_spatial_blocks  # noqa: E402

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


def _set(native: bool) -> None:
    os.environ["ATTNZOO_NATIVE"] = "1" if native else "0"


def step(block, x, g, native: bool, steps: int = 1) -> float:
    """Mean time of ``steps`` forward+backward passes, after one untimed pass on the same input (a block in a
    network finds its input in cache, just written by the layer before it; the first pass after another
    job's would not)."""
    _set(native)
    for k in range(steps + 1):
        if k == 1:
            t = time.perf_counter()
        y = block(x)
        (y * g).sum().backward()
        x.grad = None
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
    args = p.parse_args(argv)
    alloc = use_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    _set(True)
    if _native.kernels() is None:
        print(f"native kernels unavailable: {_native.build_error()}")
        return 1
    names = args.blocks or channel_spatial_blocks()
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
                (y * g).sum().backward()
                outs.append((y.detach(), x.grad.clone()))
                if native:
                    ops[(name, shape)] = native_ops(y)
                x.grad = None
            for a, b in zip(*outs):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max())))
            models[(name, shape)] = (block, x, g)
            jobs += [(name, shape, True), (name, shape, False)]
    times = {j: [] for j in jobs}
    rng = random.Random(0)
    for _ in range(args.repeats):
        rng.shuffle(jobs)
        for name, shape, native in jobs:
            block, x, g = models[(name, shape)]
            times[(name, shape, native)].append(step(block, x, g, native, args.steps))
    _set(True)
    print(f"forward+backward, float32, channels_last, {torch.get_num_threads()} threads, {cpu_model()}, "
          f"torch {torch.__version__}, allocator {alloc.get('allocator')}, min of {args.repeats} rounds of "
          f"{args.steps} passes after one untimed")
    print(f"{'block':<16}{'shape':<16}{'pytorch ms':>11}{'native ms':>10}{'ratio':>7}  native ops")
    rows = []
    for name in names:
        for shape in SHAPES:
            a, b = min(times[(name, shape, False)]), min(times[(name, shape, True)])
            o = ops[(name, shape)]
            rows.append(dict(block=name, shape=list(shape), pytorch_ms=a * 1e3, native_ms=b * 1e3, ratio=b / a, ops=o))
            print(f"{name:<16}{'x'.join(map(str, shape)):<16}{a * 1e3:>11.2f}{b * 1e3:>10.2f}{b / a:>7.2f}  "
                  f"{', '.join(o) or '(none)'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(threads=torch.get_num_threads(), repeats=args.repeats, steps=args.steps,
                                             cpu=cpu_model(),
                                             torch=torch.__version__, attnzoo=attnzoo.__version__, allocator=alloc,
                                             shapes=[list(s) for s in SHAPES], rows=rows), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
