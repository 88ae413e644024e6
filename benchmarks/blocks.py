"""Forward+backward time of every attention block, beside an identity baseline and timm's version.

    python benchmarks/blocks.py                      # (32, 64, 56, 56) float32, every block
    python benchmarks/blocks.py --blocks se eca cbam --repeats 5
    python benchmarks/blocks.py --json benchmarks/results/blocks_cpu.json

Runs are interleaved: each round times every variant once, in a fresh random order, so drift in
machine load hits all variants alike. The reported time is the minimum over rounds (``--stat min``,
the default: interference only ever adds time, so the fastest round is the least disturbed) or the
median (``--stat median``). With ``--pair-repeats N`` each block is also timed against its timm twin
back to back, N times in ABBA order, and the attnzoo/timm ratio comes from that paired loop (the
minimum of each), which drifts least.
Printed: ms per forward+backward, the time added over the identity baseline, and the ratio to
timm's block of the same name (< 1.0: attnzoo is faster). Blocks that timm also has are compared
with timm's default configuration of that block.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import attnzoo
from attnzoo import create_attn, list_attn
from attnzoo.ablation.runner import cpu_model
from attnzoo.training.allocator import use_allocator

# attnzoo name -> timm.layers.create_attn name of the same block (timm:<name> in create_attn).
# NOTE: timm 1.0.31's 'ge' (GatherExcite) cannot be built with its defaults (a TypeError in its
# ConvMlp call), so ge has no timm twin here.
# Each twin is timm's block with timm's defaults, except sk: timm's SelectiveKernel defaults to a
# different architecture (dense convs on a split input), so it is configured as attnzoo's default sk
# (grouped convs, groups=32, on the whole input, 3x3 and 3x3 dilated 2) to compare implementations; and
# nonlocal: timm's NonLocalAttn defaults to an embedding of C/8 channels, the paper (and attnzoo) to C/2,
# which makes every product 4x larger, so timm's is built with rd_ratio=0.5.
TIMM_TWIN = {
    "se": ("se", {}), "ese": ("ese", {}), "eca": ("eca", {}), "cbam": ("cbam", {}), "gc": ("gc", {}),
    "coord": ("coord", {}), "ela": ("ela", {}), "nonlocal": ("nl", {"rd_ratio": 0.5}),
    "sk": ("sk", {"kernel_size": [3, 5], "split_input": False, "groups": 32}),
}



def time_fwd_bwd(block: nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward + backward (gradient w.r.t. input and parameters)."""
    x = x.detach().requires_grad_(True)
    block.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    y = block(x)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t0


def build_variants(names: list[str], channels: int, with_timm: bool) -> dict[str, nn.Module]:
    variants: dict[str, nn.Module] = {"identity": nn.Identity()}
    for name in names:
        variants[name] = create_attn(name, channels).train()
        if with_timm and name in TIMM_TWIN:
            timm_name, timm_kwargs = TIMM_TWIN[name]
            variants[f"timm:{name}"] = create_attn(f"timm:{timm_name}", channels, **timm_kwargs).train()
    return variants


def paired(block, twin, x, repeats: int) -> tuple[float, float]:
    """attnzoo block vs timm twin timed back to back in ABBA order (so drift hits both alike);
    returns the minimum time of each (seconds)."""
    a, b = [], []
    for i in range(repeats):
        order = [(block, a), (twin, b)] if i % 2 == 0 else [(twin, b), (block, a)]
        for module, out in order:
            out.append(time_fwd_bwd(module, x))
    return min(a), min(b)


def run(names, batch, channels, size, repeats, warmup, with_timm, seed=0, stat="min", pair_repeats=0):
    torch.manual_seed(seed)
    x = torch.randn(batch, channels, size, size)
    variants = build_variants(names, channels, with_timm)
    for block in variants.values():  # warm-up (allocator, first-call overheads)
        for _ in range(warmup):
            time_fwd_bwd(block, x)
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(seed)
    for r in range(repeats):
        order = list(variants)
        rng.shuffle(order)
        for key in order:
            times[key].append(time_fwd_bwd(variants[key], x))
        print(f"  round {r + 1}/{repeats} done", file=sys.stderr)
    reduce = min if stat == "min" else statistics.median
    out = {k: reduce(v) for k, v in times.items()}
    if pair_repeats:  # the timm ratio from a paired A/B loop per twin, not from the shuffled rounds
        for name in names:
            if f"timm:{name}" in variants:
                out[name], out[f"timm:{name}"] = paired(variants[name], variants[f"timm:{name}"], x, pair_repeats)
                print(f"  {name} vs timm: {pair_repeats} paired repeats done", file=sys.stderr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", nargs="*", default=None, help="block names (default: every registered block)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--stat", choices=["min", "median"], default="min", help="how rounds are combined")
    p.add_argument("--pair-repeats", type=int, default=0,
                   help="time each block against its timm twin back to back (ABBA) this many times and take "
                        "the attnzoo/timm ratio from that paired loop (default 0: from the shuffled rounds)")
    p.add_argument("--small", type=lambda v: tuple(map(int, v.split("x"))), default=(16, 64, 14, 14),
                   help="BxCxHxW of the small-map shape at which the timm pairs are timed again in the same run "
                        "(with --pair-repeats; default 16x64x14x14, a late-stage map)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    p.add_argument("--allocator", choices=["keep", "system"], default="system",
                   help="system (default; the committed blocks_cpu.json was measured so): the C allocator as it "
                        "is; keep: freed memory stays in the process, as in CPU fits (attnzoo.training.allocator). "
                        "Either way the global self-attention blocks at 56x56 take up to about 20 GB")
    args = p.parse_args(argv)
    alloc = use_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.blocks or list_attn()
    unknown = [n for n in names if n not in list_attn()]
    if unknown:
        p.error(f"unknown blocks {unknown}; attnzoo.list_attn() lists {len(list_attn())}")

    med = run(names, args.batch, args.channels, args.size, args.repeats, args.warmup, not args.no_timm,
              stat=args.stat, pair_repeats=args.pair_repeats)
    base = med["identity"]
    shape = (args.batch, args.channels, args.size, args.size)
    print(f"\nforward+backward, input {shape} float32, {torch.get_num_threads()} threads, "
          f"{cpu_model()}, torch {torch.__version__}, {args.stat} of {args.repeats} rounds")
    print(f"{'block':<14}{'ms':>10}{'added ms':>10}{'vs SE':>8}{'timm ms':>10}{'attnzoo/timm':>14}")
    rows = {}
    for name in names:
        t = med[name]
        twin = med.get(f"timm:{name}")
        ratio = t / twin if twin else None
        rel_se = t / med["se"] if "se" in med else None
        rows[name] = dict(ms=t * 1e3, added_ms=(t - base) * 1e3, rel_se=rel_se,
                          timm_ms=twin * 1e3 if twin else None, ratio_timm=ratio)
        print(f"{name:<14}{t * 1e3:>10.1f}{(t - base) * 1e3:>10.1f}"
              f"{(f'{rel_se:.2f}' if rel_se else '-'):>8}"
              f"{(f'{twin * 1e3:.1f}' if twin else '-'):>10}{(f'{ratio:.2f}' if ratio else '-'):>14}")
    print(f"{'identity':<14}{base * 1e3:>10.1f}")
    small = {}
    if args.pair_repeats and not args.no_timm:  # the same pairs at a small map, same run
        xs = torch.randn(*args.small)
        for name in names:
            if name in TIMM_TWIN:
                block = create_attn(name, args.small[1]).train()
                twin = create_attn(f"timm:{TIMM_TWIN[name][0]}", args.small[1], **TIMM_TWIN[name][1]).train()
                for m in (block, twin):
                    time_fwd_bwd(m, xs)
                a, b = paired(block, twin, xs, args.pair_repeats)
                small[name] = dict(ms=a * 1e3, timm_ms=b * 1e3, ratio_timm=a / b)
        print(f"\nsmall map {'x'.join(map(str, args.small))}: attnzoo/timm " +
              ", ".join(f"{n} {r['ratio_timm']:.2f}" for n, r in small.items()))
    slower = {n: r["ratio_timm"] for n, r in rows.items() if r["ratio_timm"] and r["ratio_timm"] > 1.0}
    print("\nslower than timm's version:", ", ".join(f"{n} ({r:.2f}x)" for n, r in slower.items()) or "none")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            input_shape=shape, threads=torch.get_num_threads(), repeats=args.repeats, cpu=cpu_model(), stat=args.stat,
            pair_repeats=args.pair_repeats,
            machine=platform.machine(), processor=platform.processor(), cpu_count=__import__("os").cpu_count(),
            torch=torch.__version__, attnzoo=attnzoo.__version__, allocator=alloc, identity_ms=base * 1e3, blocks=rows,
            small_shape=list(args.small) if small else None, small=small or None,
        ), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
