"""Neighborhood attention: the efficient paths (blocked, the default, and gather) against the naive
(dense N x N, masked) path.

    python benchmarks/neighborhood.py                          # C=64, 7x7 neighbourhood, maps 14..56
    python benchmarks/neighborhood.py --sizes 28 56 --repeats 5 --json benchmarks/results/neighborhood_cpu.json

All paths compute the same function (tests/test_local_attention.py checks outputs and gradients).
For each map size they are timed in interleaved rounds (a fresh random order each round, so
load drift hits both alike); the minimum over rounds of forward+backward is reported, with the
ratios blocked / naive and gather / naive (< 1: faster than naive). The naive path's cost grows
with N^2, the others' with N, so the ratios fall as the map grows.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

from attnzoo import create_attn


def time_fwd_bwd(block, x) -> float:
    x = x.detach().requires_grad_(True)
    block.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    y = block(x)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--kernel-size", type=int, default=7)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56])
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per size (after one warm-up)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = create_attn("neighborhood", args.channels, kernel_size=args.kernel_size, impl="naive").train()
    variants = {"naive": ref}
    for impl in ("blocked", "gather"):
        variants[impl] = create_attn("neighborhood", args.channels, kernel_size=args.kernel_size, impl=impl).train()
        variants[impl].load_state_dict(ref.state_dict())
    rows = {}
    for size in args.sizes:
        x = torch.randn(args.batch, args.channels, size, size)
        for block in variants.values():
            time_fwd_bwd(block, x)  # warm-up
        times = {k: [] for k in variants}
        for _ in range(args.repeats):
            order = list(variants)
            random.shuffle(order)
            for k in order:
                times[k].append(time_fwd_bwd(variants[k], x))
        best = {k: min(v) * 1e3 for k, v in times.items()}
        rows[size] = {f"{k}_ms": v for k, v in best.items()}
        rows[size].update(ratio=best["blocked"] / best["naive"], ratio_gather=best["gather"] / best["naive"])
        print(f"{args.batch}x{args.channels}x{size}x{size}, k={args.kernel_size}: blocked {best['blocked']:.1f} ms, "
              f"gather {best['gather']:.1f} ms, naive {best['naive']:.1f} ms; efficient (blocked) / naive = "
              f"{rows[size]['ratio']:.3f}, gather / naive = {rows[size]['ratio_gather']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "channels": args.channels, "kernel_size": args.kernel_size, "batch": args.batch,
            "repeats": args.repeats, "stat": "min", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
            "sizes": {str(k): v for k, v in rows.items()},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
