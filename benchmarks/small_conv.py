"""The native small convolution's two kernel families on the maps the gates convolve: rows in a padded
pitch (one sample at a time) against batch tiles (16 samples in the lanes of each vector), and the one
``_native.c`` picks by its cost model.

    python benchmarks/small_conv.py
    python benchmarks/small_conv.py --json benchmarks/results/small_conv_cpu.json

Shapes: the 2 -> 1 channel 7x7 convolution (padding 3) of CBAM's, LCBAM's and triplet's spatial branches at
batch 128, on ResNet-20's Fashion-MNIST stages (28x28, 14x14, 7x7), triplet's rotated maps at the 7x7 stage
(H x C = 7 x 64 and C x W = 64 x 7), a 56x56 map (ResNet-50's first stage at 224 px), and two small batches
where the rows should win. Each of forward, dL/dx and dL/dweight is timed on its own (``_layout``'s Python
around the kernels included, as the blocks call it); ``--rounds`` rounds, each timing ``--calls`` calls of
every (shape, pass, path) in a fresh random order; printed: the median over rounds in microseconds and the
ratio tiles / rows. The two paths' outputs are checked against each other first (float32 rounding).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

import attnzoo
from attnzoo.ablation.runner import cpu_model
from attnzoo.blocks import _layout, _native

PATHS = {"rows": 1, "tiles": 2}
SHAPES = [(128, 2, 28, 28), (128, 2, 14, 14), (128, 2, 7, 7), (128, 2, 7, 64), (128, 2, 64, 7), (128, 2, 56, 56),
          (16, 2, 7, 7), (4, 2, 28, 28)]
PAD, DIL = (3, 3), (1, 1)


def _chosen(lib, x, w) -> str:
    import ctypes

    got = ctypes.c_int32()
    lib.conv_small_path(*_layout._conv_dims(x, w, PAD, DIL), ctypes.addressof(got))
    return {v: k for k, v in PATHS.items()}[got.value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lib = _native.kernels()
    if lib is None:
        raise SystemExit(f"the native kernels are not built here: {_native.build_error()}")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 2, 7, 7, generator=g)
    cases = {}
    for shape in SHAPES:
        x = torch.randn(*shape, generator=g)
        xx, ww, y = _layout.small_conv_forward(x, w, None, PAD, DIL)
        dy = torch.randn(y.shape, generator=g)
        outs = {}
        for path, mode in PATHS.items():
            lib.conv_small_set_path(mode)
            outs[path] = (_layout.small_conv_forward(x, w, None, PAD, DIL)[2],
                          *_layout.small_conv_backward(xx, ww, dy, PAD, DIL, (True, True), False)[:2])
        lib.conv_small_set_path(0)
        for a, b in zip(outs["rows"], outs["tiles"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        cases[shape] = {
            "forward": lambda x=x: _layout.small_conv_forward(x, w, None, PAD, DIL),
            "grad_input": lambda xx=xx, ww=ww, dy=dy: _layout.small_conv_backward(xx, ww, dy, PAD, DIL, (True, False), False),
            "grad_weight": lambda xx=xx, ww=ww, dy=dy: _layout.small_conv_backward(xx, ww, dy, PAD, DIL, (False, True), False),
            "chosen": _chosen(lib, x, w),
        }
    jobs = [(shape, what, path) for shape in SHAPES for what in ("forward", "grad_input", "grad_weight") for path in PATHS]
    times = {job: [] for job in jobs}
    rng = random.Random(0)
    try:
        for r in range(args.rounds + 1):  # round 0 warms up
            rng.shuffle(jobs)
            for shape, what, path in jobs:
                lib.conv_small_set_path(PATHS[path])
                fn = cases[shape][what]
                t = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                if r:
                    times[(shape, what, path)].append((time.perf_counter() - t) / args.calls * 1e6)
    finally:
        lib.conv_small_set_path(0)
    print(f"small conv 2 -> 1, 7x7, float32, {args.threads} threads, {cpu_model()}; us per call (median of "
          f"{args.rounds} rounds), tiles / rows")
    rows = []
    for shape in SHAPES:
        row = {"shape": list(shape), "chosen": cases[shape]["chosen"]}
        cells = []
        for what in ("forward", "grad_input", "grad_weight"):
            a, b = (statistics.median(times[(shape, what, p)]) for p in ("rows", "tiles"))
            row[what] = {"rows_us": a, "tiles_us": b, "ratio": b / a}
            cells.append(f"{what} {a:.0f} -> {b:.0f} ({b / a:.2f})")
        rows.append(row)
        print(f"  {'x'.join(map(str, shape)):>12s} [{row['chosen']:>5s}]  " + ", ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rounds": args.rounds, "calls": args.calls, "cpu": cpu_model(),
                       "torch": torch.__version__, "attnzoo": attnzoo.__version__, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
