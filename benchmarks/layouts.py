"""The CPU fast paths of attnzoo/blocks/_layout.py and _fused.py against the plain PyTorch calls they replace.

    python benchmarks/layouts.py
    python benchmarks/layouts.py --json benchmarks/results/layouts_cpu.json

Each case computes the same function both ways on the shapes the blocks meet in a ResNet-20 on
Fashion-MNIST (batch 128, 28x28 / 14x14 / 7x7) and at 32x64x56x56: forward + backward (gradient of
``y.sum()``; forward only where marked "fwd"), float32, minimum over ``--repeats`` interleaved rounds.
Printed: ms of the plain call, ms of attnzoo's, and their ratio (< 1: attnzoo faster).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.ablation.runner import cpu_model
from attnzoo.blocks._fused import _MaxOfGates, channel_stats
from attnzoo.blocks._layout import LayoutConv2d, combine_like
from attnzoo.training.allocator import use_allocator

CL = torch.channels_last


def _convs(cin, cout, k, dilation=1):
    torch.manual_seed(0)
    plain = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)
    fast = LayoutConv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def cases():
    """name -> (input builder, plain fn, attnzoo fn); inputs are lists of tensors (the first gets the gradient)."""
    out = {}
    for what, (cin, cout, k, d), shape in [
        ("conv 7x7 2->1 (cbam/triplet), NCHW map", (2, 1, 7, 1), (128, 2, 28, 28)),
        ("conv 7x7 2->1 (cbam/triplet), NCHW map", (2, 1, 7, 1), (32, 2, 56, 56)),
        ("conv 3x3 d4 1->1 (bam, C/r = 1)", (1, 1, 3, 4), (128, 1, 28, 28)),
        ("conv 3x3 1->1 (ema, C/G = 1)", (1, 1, 3, 1), (2048, 1, 28, 28)),
        ("conv 3x3 2->2 (ema, C/G = 2), NCHW map", (2, 2, 3, 1), (1024, 2, 28, 28)),
        ("conv 1x1 64->4 of pooled (B, C, 1, 1)", (64, 4, 1, 1), (128, 64, 1, 1)),
        ("conv 1x1 4->64 of pooled (B, C, 1, 1)", (4, 64, 1, 1), (128, 4, 1, 1)),
    ]:
        plain, fast = _convs(cin, cout, k, d)
        out[f"{what} {'x'.join(map(str, shape))}"] = (lambda s=shape: [torch.randn(*s)], plain, fast)
    for shape in [(128, 16, 28, 28), (16, 256, 14, 14), (32, 64, 56, 56)]:
        b, c = shape[:2]
        # forward only, as shuffle's custom op uses them (inside its forward, without autograd)
        out[f"per-channel mean, rstd (channels_last, fwd) {'x'.join(map(str, shape))}"] = (
            lambda s=shape: [torch.randn(*s).contiguous(memory_format=CL)],
            lambda x, b=b, c=c: [t.detach() for t in torch.native_group_norm(x, None, None, b, c, x.shape[2] * x.shape[3], c, 1e-5)[1:]],
            lambda x: [t.detach() for t in channel_stats(x, 1e-5)])
    for shape in [(128, 16, 28, 28), (32, 64, 56, 56)]:
        b, c, h, w = shape

        def gates(s=shape):
            b, c, h, w = s
            return [torch.randn(*s).contiguous(memory_format=CL), torch.rand(b, c, 1, 1), torch.rand(b, 1, h, w)]
        out[f"scse max(x*gc, x*gs) {'x'.join(map(str, shape))}"] = (
            gates, lambda x, gc, gs: torch.maximum(x * gc, x * gs), _MaxOfGates.apply)
        out[f"bam x * sigmoid(gc + gs) {'x'.join(map(str, shape))}"] = (
            gates, lambda x, gc, gs: x * torch.sigmoid(gc + gs), lambda x, gc, gs: x * torch.sigmoid(combine_like(gc, gs, x)))
    return out


def fwd_bwd(fn, tensors) -> float:
    tensors = [t.detach().requires_grad_(True) for t in tensors]
    t0 = time.perf_counter()
    y = fn(*tensors)
    ys = [v for v in (y if isinstance(y, (tuple, list)) else (y,)) if v.requires_grad]
    if ys:
        torch.autograd.backward(ys, [torch.ones_like(v) for v in ys])
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--allocator", choices=["keep", "system"], default="keep",
                   help="keep (default): freed memory stays in the process, as in CPU fits; system: as it is")
    args = p.parse_args(argv)
    alloc = use_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = cases()
    inputs = {name: build() for name, (build, _, _) in table.items()}
    for name, (_, plain, fast) in table.items():  # the same function, checked before it is timed
        with torch.no_grad():
            a, b = plain(*inputs[name]), fast(*inputs[name])
        for u, v in zip(a if isinstance(a, (tuple, list)) else [a], b if isinstance(b, (tuple, list)) else [b]):
            torch.testing.assert_close(v.reshape(u.shape), u, rtol=1e-4, atol=1e-4)
    jobs = [(name, side) for name in table for side in (1, 2)]
    times: dict = {j: [] for j in jobs}
    for name, side in jobs:
        fwd_bwd(table[name][side], inputs[name])
    rng = random.Random(0)
    for _ in range(args.repeats):
        rng.shuffle(jobs)
        for name, side in jobs:
            times[(name, side)].append(fwd_bwd(table[name][side], inputs[name]))
    print(f"forward+backward, float32, {torch.get_num_threads()} threads, {cpu_model()}, torch {torch.__version__}, "
          f"allocator {alloc.get('allocator')}{' (kept)' if alloc.get('tuned') else ''}, min of {args.repeats} rounds")
    print(f"{'case':<64}{'plain ms':>9}{'attnzoo ms':>11}{'ratio':>7}")
    rows = []
    for name in table:
        a, b = min(times[(name, 1)]), min(times[(name, 2)])
        rows.append(dict(case=name, plain_ms=a * 1e3, attnzoo_ms=b * 1e3, ratio=b / a))
        print(f"{name:<64}{a * 1e3:>9.2f}{b * 1e3:>11.2f}{b / a:>7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(threads=torch.get_num_threads(), repeats=args.repeats, cpu=cpu_model(),
                                             torch=torch.__version__, attnzoo=attnzoo.__version__, allocator=alloc,
                                             rows=rows), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
