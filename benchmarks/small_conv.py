"""The native small convolution's two kernel families on the maps the gates convolve: rows in a padded
pitch (one sample at a time) against batch tiles (16 samples in the lanes of each vector), and the one
``_native.c`` picks by its cost model.

    python benchmarks/small_conv.py
    python benchmarks/small_conv.py --json benchmarks/results/small_conv_cpu.json

Cases: the 2 -> 1 channel 7x7 convolution (padding 3) of CBAM's, LCBAM's and triplet's spatial branches at
batch 128, on ResNet-20's Fashion-MNIST stages (28x28, 14x14, 7x7), triplet's rotated maps at the 7x7 stage
(H x C = 7 x 64 and C x W = 64 x 7), a 56x56 map (ResNet-50's first stage at 224 px), and two small batches
where the rows should win; BAM's dilated 3x3 convs (C/r = 1, 2, 4 channels at ResNet-20's stages) and EMA's
3x3 conv on its groups of 2 channels (batch x groups samples), where few taps make the tiles' transposes
count. Each of forward, dL/dx and dL/dweight is timed on its own (``_layout``'s Python
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
SEVEN = (7, 3, 1, 1)  # kernel, padding, dilation, output channels: the gates' 2 -> 1 7x7
CASES = [((128, 2, 28, 28), SEVEN), ((128, 2, 14, 14), SEVEN), ((128, 2, 7, 7), SEVEN), ((128, 2, 7, 64), SEVEN),
         ((128, 2, 64, 7), SEVEN), ((128, 2, 56, 56), SEVEN), ((16, 2, 7, 7), SEVEN), ((4, 2, 28, 28), SEVEN),
         ((128, 1, 28, 28), (3, 4, 4, 1)), ((128, 2, 14, 14), (3, 4, 4, 2)), ((128, 4, 7, 7), (3, 4, 4, 4)),  # bam
         ((2048, 2, 28, 28), (3, 1, 1, 2)), ((4096, 2, 7, 7), (3, 1, 1, 2))]  # ema's 3x3 on groups of 2 channels


def _chosen(lib, x, w, pad, dil) -> str:
    import ctypes

    got = ctypes.c_int32()
    lib.conv_small_path(*_layout._conv_dims(x, w, pad, dil), ctypes.addressof(got))
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
    cases = {}
    for shape, (k, p, d, co) in CASES:
        w = torch.randn(co, shape[1], k, k, generator=g)
        pad, dil = (p, p), (d, d)
        x = torch.randn(*shape, generator=g)
        xx, ww, y = _layout.small_conv_forward(x, w, None, pad, dil)
        dy = torch.randn(y.shape, generator=g)
        outs = {}
        for path, mode in PATHS.items():
            lib.conv_small_set_path(mode)
            outs[path] = (_layout.small_conv_forward(x, w, None, pad, dil)[2],
                          *_layout.small_conv_backward(xx, ww, dy, pad, dil, (True, True), False)[:2])
        lib.conv_small_set_path(0)
        for a, b in zip(outs["rows"], outs["tiles"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        key = (shape, k, d)
        cases[key] = {
            "forward": lambda x=x, w=w, pad=pad, dil=dil: _layout.small_conv_forward(x, w, None, pad, dil),
            "grad_input": lambda xx=xx, ww=ww, dy=dy, pad=pad, dil=dil: _layout.small_conv_backward(
                xx, ww, dy, pad, dil, (True, False), False),
            "grad_weight": lambda xx=xx, ww=ww, dy=dy, pad=pad, dil=dil: _layout.small_conv_backward(
                xx, ww, dy, pad, dil, (False, True), False),
            "chosen": _chosen(lib, x, w, pad, dil),
            "conv": f"{shape[1]} -> {co}, {k}x{k}" + (f" dilation {d}" if d > 1 else ""),
        }
    jobs = [(key, what, path) for key in cases for what in ("forward", "grad_input", "grad_weight") for path in PATHS]
    times = {job: [] for job in jobs}
    rng = random.Random(0)
    try:
        for r in range(args.rounds + 1):  # round 0 warms up
            rng.shuffle(jobs)
            for key, what, path in jobs:
                lib.conv_small_set_path(PATHS[path])
                fn = cases[key][what]
                t = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                if r:
                    times[(key, what, path)].append((time.perf_counter() - t) / args.calls * 1e6)
    finally:
        lib.conv_small_set_path(0)
    print(f"small convs, float32, {args.threads} threads, {cpu_model()}; us per call (median of "
          f"{args.rounds} rounds), tiles / rows")
    rows = []
    for key, case in cases.items():
        shape = key[0]
        row = {"shape": list(shape), "conv": case["conv"], "chosen": case["chosen"]}
        cells = []
        for what in ("forward", "grad_input", "grad_weight"):
            a, b = (statistics.median(times[(key, what, p)]) for p in ("rows", "tiles"))
            row[what] = {"rows_us": a, "tiles_us": b, "ratio": b / a}
            cells.append(f"{what} {a:.0f} -> {b:.0f} ({b / a:.2f})")
        rows.append(row)
        print(f"  {'x'.join(map(str, shape)):>12s} {case['conv']:>20s} [{row['chosen']:>5s}]  " + ", ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rounds": args.rounds, "calls": args.calls, "cpu": cpu_model(),
                       "torch": torch.__version__, "attnzoo": attnzoo.__version__, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
