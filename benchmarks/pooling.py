"""The pooling the blocks use (attnzoo/blocks/_pool.py) against the Tensor methods it replaces.

    python benchmarks/pooling.py
    python benchmarks/pooling.py --json benchmarks/results/pooling_cpu.json

Forward + backward (gradient of ``(y * w).sum()``) of each reduction at three shapes, NCHW and
channels_last, float32; minimum over ``--repeats`` interleaved rounds. Printed: ms of the Tensor
method, ms of attnzoo's form, and their ratio (attnzoo / Tensor method; < 1: attnzoo faster).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

import attnzoo
from attnzoo.ablation.runner import cpu_model
from attnzoo.blocks._pool import pool_amax, pool_max, pool_max_along, pool_mean
from attnzoo.training.allocator import use_allocator

SHAPES = [(32, 64, 56, 56), (16, 64, 32, 32), (128, 16, 28, 28)]
# (what, Tensor method, attnzoo's form)
PAIRS = {
    "mean over (H, W)": (lambda x: x.mean((2, 3), keepdim=True), lambda x: pool_mean(x, (2, 3))),
    "mean over W": (lambda x: x.mean(3, keepdim=True), lambda x: pool_mean(x, 3)),
    "mean over C": (lambda x: x.mean(1, keepdim=True), lambda x: pool_mean(x, 1)),
    "max over (H, W)": (lambda x: x.amax((2, 3), keepdim=True), pool_max),
    "max over C": (lambda x: x.amax(1, keepdim=True), lambda x: pool_amax(x, 1)),
    "max over W": (lambda x: x.amax(3, keepdim=True), lambda x: pool_max_along(x, 3)),
}


def fwd_bwd(fn, x) -> float:
    x = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    y = fn(x)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--allocator", choices=["keep", "system"], default="keep",
                   help="keep (default): freed memory stays in the process, as in CPU fits; system: as it is")
    args = p.parse_args(argv)
    alloc = use_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = {}
    for shape in SHAPES:
        x = torch.randn(*shape)
        inputs[(shape, "nchw")] = x
        inputs[(shape, "channels_last")] = x.contiguous(memory_format=torch.channels_last)
    jobs = [(k, what, side) for k in inputs for what in PAIRS for side in (0, 1)]
    times: dict = {j: [] for j in jobs}
    for j in jobs:  # warm-up
        fwd_bwd(PAIRS[j[1]][j[2]], inputs[j[0]])
    rng = random.Random(0)
    for _ in range(args.repeats):
        rng.shuffle(jobs)
        for j in jobs:
            times[j].append(fwd_bwd(PAIRS[j[1]][j[2]], inputs[j[0]]))
    rows = []
    print(f"forward+backward, float32, {torch.get_num_threads()} threads, {cpu_model()}, torch {torch.__version__}, "
          f"min of {args.repeats} interleaved rounds")
    print(f"{'reduction':<18}{'shape':<14}{'format':<15}{'Tensor ms':>10}{'attnzoo ms':>11}{'ratio':>7}")
    for (shape, fmt) in inputs:
        for what in PAIRS:
            a, b = min(times[((shape, fmt), what, 0)]), min(times[((shape, fmt), what, 1)])
            rows.append(dict(reduction=what, shape=list(shape), format=fmt, tensor_ms=a * 1e3, attnzoo_ms=b * 1e3,
                             ratio=b / a))
            print(f"{what:<18}{'x'.join(map(str, shape)):<14}{fmt:<15}{a * 1e3:>10.2f}{b * 1e3:>11.2f}{b / a:>7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(threads=torch.get_num_threads(), repeats=args.repeats, cpu=cpu_model(),
                                             torch=torch.__version__, attnzoo=attnzoo.__version__, allocator=alloc,
                                             rows=rows), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
