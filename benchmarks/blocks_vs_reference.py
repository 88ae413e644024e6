"""attnzoo's blocks against renderings of the authors' released code, forward + backward, one run.

    python benchmarks/blocks_vs_reference.py                           # every block in REFERENCES
    python benchmarks/blocks_vs_reference.py --blocks shuffle cbam --rounds 3 --pairs 4
    python benchmarks/blocks_vs_reference.py --json benchmarks/results/blocks_vs_reference_cpu.json

The references are in ``benchmarks/reference_impls.py``: op-for-op renderings, written for this
benchmark, of the published forwards (SA-Net ``sa_layer``, the embedded-Gaussian non-local block,
Jongchan's CBAM, DANet's ``PAM_Module``, A^2-Net's double attention). Each reference is built from
the attnzoo block's own (randomised) weights, and the two outputs and input gradients are asserted
equal before anything is timed.

Measured: one forward + backward (gradients to the input and every parameter), train mode, float32,
``torch.get_num_threads()`` threads. Shapes (B, C, H, W): channel/spatial blocks at the README's
benchmark shape 32x64x56x56 and at 16x64x32x32; self-attention blocks (whose N x N attention at
56x56 would need ~5 GB at batch 32) at 8x64x32x32 and 8x64x16x16 (``--selfattn-shapes``).

Two estimates of each attnzoo/reference ratio, both from one interleaved run:

* rounds: every (block, shape, side) is timed once per round in a fresh random order, ``--rounds``
  times; ratio = min over rounds (attnzoo) / min over rounds (reference). Interference only adds
  time, so the minimum is the least disturbed value.
* ABBA pairs: for each (block, shape), ``--pairs`` quadruples attnzoo, ref, ref, attnzoo timed back
  to back; ratio = median over quadruples of (a1 + a2) / (b1 + b2). Drift within a quadruple cancels
  to first order.

< 1.0 means attnzoo is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attnzoo  # noqa: E402
from attnzoo import create_attn  # noqa: E402
from attnzoo.ablation.runner import cpu_model  # noqa: E402
from attnzoo.training.allocator import use_allocator  # noqa: E402
from reference_impls import REFERENCES  # noqa: E402

SPATIAL_SHAPES = [(32, 64, 56, 56), (16, 64, 32, 32)]
SELFATTN_SHAPES = [(8, 64, 32, 32), (8, 64, 16, 16)]


def randomize_(block, seed=0):
    """Non-trivial values for every parameter (zero-initialised scales would hide a branch)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=g) * fan_in ** -0.5)
    return block


def fwd_bwd(module, x):
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(torch.ones_like(y))
    return y, x.grad


def time_once(module, x) -> float:
    t0 = time.perf_counter()
    fwd_bwd(module, x)
    return time.perf_counter() - t0


def build_pair(name, channels, seed=0):
    torch.manual_seed(seed)
    block = randomize_(create_attn(name, channels), seed).train()
    ref_cls, label, kind = REFERENCES[name]
    ref = ref_cls.from_attnzoo(block).train()
    return block, ref, label, kind


def check_equal(name, block, ref, shape):
    x = torch.randn(*shape[:2], min(shape[2], 12), min(shape[3], 12), generator=torch.Generator().manual_seed(1))
    ya, ga = fwd_bwd(block, x)
    yb, gb = fwd_bwd(ref, x)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: outputs differ from the reference: {m}")
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: input gradients differ: {m}")


def run(names, rounds, pairs, warmup, spatial_shapes, selfattn_shapes, seed=0):
    cases = []  # (name, shape, block, ref, label)
    for name in names:
        block, ref, label, kind = build_pair(name, spatial_shapes[0][1], seed)
        shapes = spatial_shapes if kind == "spatial" else selfattn_shapes
        check_equal(name, block, ref, shapes[0])
        for shape in shapes:
            cases.append((name, tuple(shape), block, ref, label))
    inputs = {s: torch.randn(*s, generator=torch.Generator().manual_seed(2)) for s in {c[1] for c in cases}}
    for name, shape, block, ref, _ in cases:
        for _ in range(warmup):
            time_once(block, inputs[shape])
            time_once(ref, inputs[shape])
    times = {(n, s, side): [] for n, s, *_ in cases for side in ("attnzoo", "ref")}
    rng = random.Random(seed)
    for r in range(rounds):
        order = [(c, side) for c in cases for side in ("attnzoo", "ref")]
        rng.shuffle(order)
        for (name, shape, block, ref, _), side in order:
            times[(name, shape, side)].append(time_once(block if side == "attnzoo" else ref, inputs[shape]))
        print(f"  round {r + 1}/{rounds}", file=sys.stderr)
    rows = []
    for name, shape, block, ref, label in cases:
        x = inputs[shape]
        quads = []
        for _ in range(pairs):
            a1 = time_once(block, x)
            b1 = time_once(ref, x)
            b2 = time_once(ref, x)
            a2 = time_once(block, x)
            quads.append((a1 + a2) / (b1 + b2))
        ta, tb = times[(name, shape, "attnzoo")], times[(name, shape, "ref")]
        rows.append(dict(
            block=name, reference=label, shape=list(shape),
            attnzoo_ms_min=min(ta) * 1e3, ref_ms_min=min(tb) * 1e3,
            attnzoo_ms_median=statistics.median(ta) * 1e3, ref_ms_median=statistics.median(tb) * 1e3,
            ratio_min=min(ta) / min(tb), ratio_abba_median=statistics.median(quads) if quads else None,
        ))
        print(f"  {name} {shape}: {pairs} ABBA quadruples", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", nargs="*", default=list(REFERENCES), choices=list(REFERENCES))
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds (min and median over them)")
    p.add_argument("--pairs", type=int, default=11, help="ABBA quadruples per (block, shape)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--spatial-shapes", type=lambda s: tuple(map(int, s.split("x"))), nargs="*", default=SPATIAL_SHAPES,
                   help="BxCxHxW shapes for channel/spatial blocks (default 32x64x56x56 16x64x32x32)")
    p.add_argument("--selfattn-shapes", type=lambda s: tuple(map(int, s.split("x"))), nargs="*", default=SELFATTN_SHAPES,
                   help="BxCxHxW shapes for self-attention blocks (default 8x64x32x32 8x64x16x16)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--allocator", choices=["keep", "system"], default="keep",
                   help="keep (default): freed memory stays in the process, as in CPU fits "
                        "(attnzoo.training.allocator); system: the C allocator as it is")
    args = p.parse_args(argv)
    alloc = use_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.blocks, args.rounds, args.pairs, args.warmup, args.spatial_shapes, args.selfattn_shapes)
    print(f"\nforward+backward, train mode, float32, {torch.get_num_threads()} threads, {cpu_model()}, "
          f"torch {torch.__version__}; {args.rounds} interleaved rounds, {args.pairs} ABBA quadruples")
    print(f"{'block':<11}{'shape':<16}{'attnzoo ms':>11}{'ref ms':>9}{'ratio(min)':>11}{'ratio(ABBA)':>12}  reference")
    for r in rows:
        abba = f"{r['ratio_abba_median']:.3f}" if r["ratio_abba_median"] is not None else "-"
        print(f"{r['block']:<11}{'x'.join(map(str, r['shape'])):<16}{r['attnzoo_ms_min']:>11.2f}{r['ref_ms_min']:>9.2f}"
              f"{r['ratio_min']:>11.3f}{abba:>12}  {r['reference']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            threads=torch.get_num_threads(), rounds=args.rounds, pairs=args.pairs, cpu=cpu_model(),
            machine=platform.machine(), cpu_count=os.cpu_count(), torch=torch.__version__, allocator=alloc,
            attnzoo=attnzoo.__version__, rows=rows,
        ), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
