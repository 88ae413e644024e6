"""Write the README's generated sections from the registry and the measurements in benchmarks/results/.

    python benchmarks/blocks.py --json benchmarks/results/blocks_cpu.json              # slow: measure
    python benchmarks/blocks.py --blocks se eca ese cbam coord ela gc sk nonlocal --pair-repeats 21 --threads 2 \
        --json benchmarks/results/blocks_vs_timm_cpu.json                               # vs timm
    python benchmarks/fmnist_resnet20.py --json benchmarks/results/fmnist_resnet20_cpu.json
    python benchmarks/harness_overhead.py --json benchmarks/results/harness_overhead_cpu.json
    python benchmarks/data_inmemory.py --json benchmarks/results/data_inmemory_cpu.json
    python benchmarks/blocks_vs_reference.py --json benchmarks/results/blocks_vs_reference_cpu.json
    python benchmarks/overhead_floor.py --modes eager compiled --compiled-blocks se eca cbam simam coord sge lcbam \
        --json benchmarks/results/overhead_floor_cpu.json
    python benchmarks/pooling.py --json benchmarks/results/pooling_cpu.json
    python benchmarks/layouts.py --json benchmarks/results/layouts_cpu.json
    python benchmarks/allocator.py --json benchmarks/results/allocator_cpu.json
    python benchmarks/native.py --breakdown --json benchmarks/results/native_cpu.json
    python benchmarks/native_revision.py --rev REV --blocks ... --hosts resnet20 \
        --json benchmarks/results/native_revision_cpu.json
    python benchmarks/native_revision.py --rev 0e6a0c9 --blocks cbam cbam_channel cbam_spatial lcbam triplet coord \
        ela strip scoord --hosts resnet20 --json benchmarks/results/small_graphs_revision_cpu.json
    python benchmarks/small_conv.py --json benchmarks/results/small_conv_cpu.json
    python benchmarks/native_revision.py --rev 63bd4ae --blocks cbam cbam_spatial lcbam triplet bam ema \
        --hosts resnet20 --pairs 9 --json benchmarks/results/small_conv_revision_cpu.json
    python benchmarks/native_revision.py --rev 0e56403 --blocks ema --hosts resnet20 resnet56 --pairs 7 \
        --json benchmarks/results/ema_revision_cpu.json
    python benchmarks/native_revision.py --rev 0c2e6d0 --blocks se eca ceca ecam --hosts resnet20 --pairs 5 \
        --json benchmarks/results/channel_conv_revision_cpu.json
    python benchmarks/native_revision.py --rev f582152 --blocks sk --hosts resnet20 resnet56 --pairs 5 \
        --json benchmarks/results/sk_revision_cpu.json
    python benchmarks/native_revision.py --rev f582152 --blocks sk bam lka lska ge_theta ge_theta_plus \
        --hosts resnet20 --pairs 5 --json benchmarks/results/branch_ops_revision_cpu.json
    python benchmarks/native_revision.py --rev 9e84788 --blocks sge psa psa_s bam ema cbam cbam_channel cbam_spatial \
        lcbam ge_theta ge_theta_plus --hosts resnet20 --pairs 5 --json benchmarks/results/round_ops_revision_cpu.json
    python benchmarks/readme.py                                                        # rewrite README parts

Sections (between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers):

* ``zoo-table``: name, family, scope / hardness / score (self-attention taxonomy), paper and year, parameters and FLOPs at C=256 on a 32x32 map (batch 1,
  FLOPs counted by torch.utils.flop_counter: convolutions and matmuls, 1 multiply-add = 2 FLOPs,
  elementwise ops not counted), forward+backward time relative to SE (benchmarks/blocks.py), and
  whether the block exports to ONNX (registry metadata, checked by tests/test_blocks.py). A block with no
  timing in blocks_cpu.json yet shows "—" and is named in the note as not timed yet.
* ``fit-numbers`` and ``benchmarks``: the measured numbers of the other scripts, with their setup.
* ``timm-slots``: the timm families whose models take a block class in an ``attn_layer`` /
  ``se_layer`` slot, from ``attnzoo.timm_slots.TIMM_SLOTS`` (the parameter list of
  tests/test_timm_slots.py, which builds every registered block in each of them).
* ``ablation-results``: a compact view of experiments/fmnist_zoo's table from its results store and
  cost pass (the full table is what ``attnzoo report`` writes into that folder's README), and a
  headline read off the numbers: which differences are significant after Holm, their range, the MDE.

A measurement that has not been made is shown as "not measured"; nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from attnzoo import create_attn, list_attn
from attnzoo.factory import attn_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def block_cost(name: str, channels: int = 256, size: int = 32) -> tuple[int, int]:
    block = create_attn(name, channels).eval()
    params = sum(p.numel() for p in block.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        block(torch.randn(1, channels, size, size))
    return params, counter.get_total_flops()


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def zoo_table(timings: dict | None) -> str:
    blocks = (timings or {}).get("blocks", {})
    head = ("| name | family | scope, hardness, score | paper | year | params @C=256 | FLOPs @C=256, 32x32 "
            "| fwd+bwd time vs SE | ONNX |\n"
            "|---|---|---|---|---|---:|---:|---:|---|")
    rows, uncounted, untimed = [], [], []
    for name in list_attn():
        meta = attn_info(name).metadata
        params, flops = block_cost(name)
        if flops == 0:
            uncounted.append(name)
        rel = blocks.get(name, {}).get("rel_se")
        if not rel:
            untimed.append(name)
        onnx = "yes" if meta["onnx"] else f"no ({meta.get('onnx_note', '')})"
        rows.append(f"| `{name}` | {meta['family']} | {_taxonomy(meta)} | [{meta['paper']}]({meta['link']}) | "
                    f"{meta['year']} | {_fmt(params)} | {_fmt(flops)} | {f'{rel:.2f}' if rel else '—'} | {onnx} |")
    note = ("\n\nFLOPs: `torch.utils.flop_counter` at batch 1, convolutions and matmuls only (2 FLOPs per "
            "multiply-add); pooling and elementwise work is not counted, so blocks made only of it ("
            + ", ".join(uncounted) + ") show 0. Use the time column for their cost.")
    if timings:
        shape = "x".join(map(str, timings["input_shape"]))
        note += (f" Times: forward+backward on a {shape} float32 tensor in train mode, {timings['threads']} CPU "
                f"threads ({timings.get('cpu') or timings.get('processor') or timings.get('machine')}), torch "
                f"{timings['torch']}, {timings.get('stat', 'median')} of {timings['repeats']} interleaved rounds, divided by `se`'s time "
                f"({blocks['se']['ms']:.0f} ms; identity {timings['identity_ms']:.0f} ms); "
                "measured by `benchmarks/blocks.py`.")
    if untimed:
        note += (" — in the time column: not timed yet (" + ", ".join(untimed) + "; run `benchmarks/blocks.py`).")
    note += (" Scope, hardness, score: registry metadata of the self-attention blocks (where a query looks, "
             "soft or top-k weights, the default alignment-score function; \"score n/d\": not declared); "
             "— for the other families, to which the terms do not apply.")
    return head + "\n" + "\n".join(rows) + note


def _taxonomy(meta: dict) -> str:
    if meta.get("scope") is None and meta.get("hardness") is None and meta.get("score") is None:
        return "—"
    score = f"`{meta['score']}`" if meta.get("score") else "score n/d"
    return f"{meta.get('scope') or '—'}, {meta.get('hardness') or '—'}, {score}"


def fit_numbers(cmds: dict | None, baseline: dict | None) -> str:
    """The README commands' measured times (benchmarks/readme_commands.py), each with its machine."""
    lines = []
    for name, what in (("main", "Main job"), ("smoke", "Smoke variant")):
        r = (cmds or {}).get(name)
        if not r:
            lines.append(f"- {what}: not measured yet (`python benchmarks/readme_commands.py --only {name}`).")
            continue
        m = r["machine"]
        load = max(m["load_avg_1min_before"], m["load_avg_1min_after"])
        busy = (" The machine was busy (1-minute load average up to "
                f"{load:.1f} on {m['cores']} cores), so expect less on an idle one.") if load > m["cores"] + 0.5 else ""
        lines.append(
            f"- {what} (`{r['command']}`): **{r['wall_time_s'] / 60:.1f} min** wall time, test top-1 "
            f"**{100 * r['test_acc1']:.2f}%** on the official 10k test split, {r['epochs']} epoch(s), the block "
            f"adding {r['attn_params']:,} parameters to {r['params'] - r['attn_params']:,}; on {m['cores']} CPU "
            f"cores ({m['cpu']}), torch {m['torch']}.{busy}"
        )
    if baseline:
        hw = baseline["hardware"]
        lines.append(
            f"- The plain ResNet-20 (`--model.attn null`) reached {100 * baseline['test_acc1']:.2f}% in "
            f"{baseline['wall_time_s'] / 60:.1f} min on an otherwise idle machine ({hw['visible_cores']} cores, "
            f"{hw['cpu']}; `benchmarks/fmnist_resnet20.py`). One seed each: differences of a few tenths are "
            f"within seed-to-seed noise."
        )
    return "Measured by `benchmarks/readme_commands.py`, which runs the commands above as a user would:\n\n" + \
        "\n".join(lines)


def benchmark_lines(blocks: dict | None, harness: dict | None, data: dict | None) -> str:
    out = []
    if blocks:
        stat = blocks.get("stat", "median")
        rows = blocks["blocks"]
        pairs = {n: r["ratio_timm"] for n, r in rows.items() if r.get("ratio_timm")}
        slower = {n: r for n, r in pairs.items() if r > 1.0}
        shape = "x".join(map(str, blocks["input_shape"]))
        out.append(
            f"- `benchmarks/blocks.py` (forward+backward in train mode, {shape} float32, {blocks['threads']} CPU "
            + (f"threads, each block against its timm twin back to back, minimum of {blocks['pair_repeats']} ABBA "
               "pairs): " if blocks.get("pair_repeats") else
               f"threads, {stat} of {blocks['repeats']} interleaved rounds): ")
            + "attnzoo time / timm time for the blocks "
            "timm also has: " + ", ".join(f"`{n}` {r:.3f}" for n, r in sorted(pairs.items()))
            + (". Ratio > 1 (attnzoo slower): " + ", ".join(f"`{n}`" for n in slower)
               + ". Where both compute the same operations (se, eca, ese, cbam, coord, sk) the ratios "
               "scatter around 1 by a few percent from run to run on this 2-core machine (se's two "
               "versions run the same operations in the same order), so ratios within that band are parity, "
               "not a measured difference." if slower
               else ". No attnzoo block is slower than timm's version of it.")
            + (f" At the small map {'x'.join(map(str, blocks['small_shape']))} (same run, same pairing): "
               + ", ".join(f"`{n}` {r['ratio_timm']:.3f}" for n, r in sorted(blocks["small"].items())) + "."
               if blocks.get("small") else "")
        )
    else:
        out.append("- `benchmarks/blocks.py`: not measured yet.")
    if harness:
        out.append(
            f"- `benchmarks/harness_overhead.py` ({harness['backbone']}, {harness['data']}, batch "
            f"{harness['batch_size']}, {harness['timed_batches']} timed batches × {harness['rounds']} interleaved "
            f"rounds, {harness['threads']} threads): plain PyTorch loop {harness['plain_images_per_s']:.0f} images/s, "
            f"attnzoo harness (Lightning + torchmetrics + callbacks) {harness['harness_images_per_s']:.0f} images/s: "
            f"ratio {harness['ratio']:.3f}, overhead {harness['overhead_pct']:.1f}% (target ≤ 5%)."
        )
    else:
        out.append("- `benchmarks/harness_overhead.py`: not measured yet.")
    if data:
        ips = data["images_per_s"]
        ours = ips["attnzoo in-memory batched"]
        out.append(
            f"- `benchmarks/data_inmemory.py` (CIFAR-sized uint8 images, batch {data['batch_size']}, {data['n']} images "
            f"per timed epoch, {data['repeats']} repeats, {data['device']}): attnzoo in-memory batched crop+flip "
            f"{ours:,.0f} images/s vs "
            + ", ".join(f"{k} {v:,.0f} images/s (in-memory {data['speedup'][k]:.1f}× faster)"
                        for k, v in ips.items() if k in data["speedup"])
            + " (target ≥ 3×)."
        )
    else:
        out.append("- `benchmarks/data_inmemory.py`: not measured yet.")
    return "\n".join(out)


def layouts_line(lay: dict | None) -> str:
    if not lay:
        return "- `benchmarks/layouts.py`: not measured yet."
    cells = "; ".join(f"{r['case']} {r['ratio']:.2f}" for r in lay["rows"])
    return (f"- `benchmarks/layouts.py` (forward+backward, float32, {lay['threads']} CPU threads, min of {lay['repeats']} "
            "interleaved rounds): the blocks' CPU fast paths (`attnzoo/blocks/_layout.py` with the native small and "
            "depthwise convolutions, `_fused.py`) against the "
            f"plain PyTorch calls that compute the same, time ratio (< 1: faster): {cells}.")


def native_line(nat: dict | None) -> str:
    if not nat:
        return "- `benchmarks/native.py`: not measured yet."
    by: dict = {}
    for r in nat["rows"]:
        if r["ops"]:
            by.setdefault(r["block"], []).append(r["ratio"])
    cells = ", ".join(f"`{b}` {min(v):.2f}-{max(v):.2f}" for b, v in sorted(by.items()))
    shapes = ", ".join("x".join(map(str, s)) for s in nat["shapes"])
    return (f"- `benchmarks/native.py` (forward+backward in train mode, channels_last float32, {nat['threads']} CPU threads "
            f"of an {nat.get('cpu', 'unnamed CPU')}, "
            f"min of {nat['repeats']} interleaved rounds"
            + (f" of {nat['steps']} passes after an untimed one" if nat.get("steps") else "")
            + f", at {shapes}): each block with the native CPU kernels / the same "
            f"block on its PyTorch paths (`ATTNZOO_NATIVE=0`), range over the shapes (< 1: the kernels are faster): "
            f"{cells}. The other channel/spatial blocks run no native op."
            + breakdown_line(nat))


CONV_OPS = {"SmallConv", "DepthwiseConv"}
# blocks with a native op that still run full-size PyTorch ops outside it (bam: its spatial branch's 1x1
# reduction of the full map and that branch's BatchNorm and ReLU)
PARTLY_NATIVE = {"bam"}


def breakdown_line(nat: dict) -> str:
    """Where each native block's time goes (``native.py --breakdown``): outside the kernels vs its memory floor."""
    rows = [r for r in nat["rows"] if "outside_ms" in r]
    if not rows:
        return ""
    gates = [r for r in rows if set(r["ops"]) - CONV_OPS and r["block"] not in PARTLY_NATIVE]
    convs = sorted({r["block"] for r in rows if not set(r["ops"]) - CONV_OPS or r["block"] in PARTLY_NATIVE})
    over = sorted({r["block"] for r in gates if r["outside_ratio_to_floor"] > 2.0})
    small = [r for r in gates if r["shape"] == [128, 64, 7, 7]]
    cells = ", ".join(f"`{r['block']}` {r['native_ms']:.2f} ({r['outside_ms']:.2f} outside the kernels)"
                      for r in sorted(small, key=lambda r: r["block"]))
    floor = small[0]["floor_ms"] if small else float("nan")
    return ("\n  - Breakdown (`--breakdown`: the same blocks with kernels that return at once, in the same rounds), for "
            "the blocks whose full-size work is all in native ops, at 128x64x7x7 (DRAM floor "
            f"{floor:.2f} ms), ms per forward+backward: {cells}. The time outside the kernels alone (the small graphs' "
            "MLPs, 1x1 convs, norms and gates on the pooled tensors where they run as modules, and the ops' own Python "
            "and autograd work; the small convolutions' kernels and those of the small graphs that run as single ops, "
            "`_small_graphs.py`, return at once too) exceeds 2x the DRAM floor "
            f"at some stage for {', '.join(f'`{b}`' for b in over) or 'none'}: no kernel can bring these to the eager "
            "target there. "
            + (f"In {', '.join(f'`{b}`' for b in convs)} only the convolutions (and in `bam` its combination) are "
               "native, so their 'outside' time includes PyTorch full-size passes." if convs else ""))


def revision_line(rev: dict | None, what: str = "the native ops and kernels") -> str:
    if not rev:
        return f"- `benchmarks/native_revision.py` ({what}): not measured yet."
    by: dict = {}
    for r in rev["rows"]:
        if r["kind"] == "block":
            by.setdefault(r["block"], []).append(r["ratio_median"])
    cells = ", ".join(f"`{b}` {min(v):.2f}-{max(v):.2f}" for b, v in sorted(by.items()))
    hosts = ", ".join(f"{r['host']}+`{r['block']}` {r['ratio_median']:.3f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
                      for r in rev["rows"] if r["kind"] == "host")
    return (f"- `benchmarks/native_revision.py` ({what} at commit {rev['head']} against commit "
            f"{rev['rev']}, same blocks and inputs in one process, {rev['threads']} CPU threads of an "
            f"{rev.get('cpu', 'unnamed CPU')}, median of {rev['pairs']} "
            f"ABBA pairs of {rev['steps']} passes, < 1: faster now): blocks alone at ResNet-20's three stages, range over "
            f"the stages: {cells}"
            + (f"; whole training steps: {hosts} (median, range over the pairs)" if hosts else "") + ".")


def native_table(before: dict | None, previous: dict | None, after: dict | None, nat: dict | None) -> str:
    """Blocks alone and step overhead in three training-step runs: before the native kernels, the previous run
    and the current one, for the blocks that run native ops now."""
    if not (before and previous and after and nat):
        return "(not measured yet)"

    def index(d):
        return {(r["host"], r["block"]): r for r in d["rows"] if r["mode"] == "eager" and r.get("alone_ms") is not None}

    runs = [index(d) for d in (before, previous, after)]
    changed = sorted({r["block"] for r in nat["rows"] if r["ops"]})
    out = ["| block | ResNet-20 alone (ms) | ResNet-56 alone (ms) | ResNet-20 step overhead | ResNet-56 step overhead |",
           "|---|---:|---:|---:|---:|"]
    for blk in changed:
        if not all((h, blk) in run for run in runs for h in ("resnet20", "resnet56")):
            continue
        cells = []
        for key, fmt in (("alone_ms", "{:.1f}"), ("overhead_pct", "{:+.0f}%")):
            for h in ("resnet20", "resnet56"):
                cells.append(" → ".join(fmt.format(run[(h, blk)][key]) for run in runs))
        out.append(f"| `{blk}` | " + " | ".join(cells) + " |")

    def base(d, h):
        return next(r["base_ms"] for r in d["rows"] if r["host"] == h and r["mode"] == "eager")

    steps = "; ".join(f"{h}: " + " → ".join(f"{base(d, h):.0f}" for d in (before, previous, after)) + " ms"
                      for h in ("resnet20", "resnet56"))
    bws = " → ".join(f"{d['copy_bandwidth_gbs']:.0f}" for d in (before, previous, after))
    cpus = " → ".join(d.get("cpu", "an unnamed CPU") for d in (before, previous, after))
    out.append("")
    out.append(f"Each cell: before the native kernels → the previous run → this run "
               "(`benchmarks/results/overhead_floor_cpu_before_native.json` → `overhead_floor_cpu_previous.json` → "
               f"`overhead_floor_cpu.json`), on {cpus} (2 threads each). The plain hosts' steps took {steps}, and the "
               f"copy bandwidth read {bws} GB/s "
               "(median of each run's readings): the machine was not equally fast in the three runs, so compare a "
               "block's time with the host's step in the same run. The step overhead is the difference of two whole "
               "steps and carries their noise, a few points; the alone times do not.")
    return "\n".join(out)


def small_conv_line(sc: dict | None) -> str:
    if not sc:
        return "- `benchmarks/small_conv.py`: not measured yet."
    cells = "; ".join(
        f"{'x'.join(map(str, r['shape']))} {r['conv']} [{r['chosen']}] "
        + "/".join(f"{r[w]['rows_us']:.0f}->{r[w]['tiles_us']:.0f}" for w in ("forward", "grad_input", "grad_weight"))
        for r in sc["rows"])
    return (f"- `benchmarks/small_conv.py` (the native small convolution's two kernel families, {sc['threads']} CPU "
            f"threads of an {sc.get('cpu', 'unnamed CPU')}, median of {sc['rounds']} interleaved rounds): us per call of "
            "forward/dL/dx/dL/dweight on rows in a padded pitch -> on tiles of 16 samples in a vector's lanes, and in "
            f"brackets the family the kernels' cost model picks: {cells}.")


def allocator_line(alloc: dict | None) -> str:
    if not alloc:
        return "- `benchmarks/allocator.py`: not measured yet."
    cells = ", ".join(f"{r['network']} {r['system_ms']:.1f} -> {r['keep_ms']:.1f} ms ({r['ratio']:.2f})" for r in alloc["rows"])
    return (f"- `benchmarks/allocator.py` (ResNet-20, 1x28x28, batch 128, channels_last, eager SGD steps, fresh processes, "
            f"min over {alloc['repeats']} each): step time with glibc's allocator as it is -> with "
            f"`keep_freed_memory()` (what `model.cpu_allocator: keep` does): {cells}.")


def pooling_line(pool: dict | None) -> str:
    if not pool:
        return "- `benchmarks/pooling.py`: not measured yet."
    by: dict = {}
    for r in pool["rows"]:
        by.setdefault((r["reduction"], r["format"]), []).append(r["ratio"])
    cells = "; ".join(f"{what} ({fmt}) {min(v):.2f}-{max(v):.2f}" for (what, fmt), v in by.items())
    return (f"- `benchmarks/pooling.py` (forward+backward, float32, {pool['threads']} CPU threads, min of {pool['repeats']} "
            "interleaved rounds, at 32x64x56x56, 16x64x32x32 and 128x16x28x28): the blocks' pooling "
            "(`attnzoo/blocks/_pool.py`: mean as sum / n (`Tensor.mean` itself for an NCHW mean over C), global max "
            "and max over W as `adaptive_max_pool2d`, "
            "max over C as `pool_amax`) against "
            f"`Tensor.mean` / `Tensor.amax`, time ratio (< 1: faster): {cells}.")


def speed_lines(reference: dict | None, floor: dict | None) -> str:
    """Lines for benchmarks/blocks_vs_reference.py and benchmarks/overhead_floor.py (issue 15); a
    missing JSON gives a 'not measured yet' line."""
    out = []
    if reference:
        rows = reference["rows"]
        cells = ", ".join(
            f"`{r['block']}` {'x'.join(map(str, r['shape']))} {r['ratio_abba_median']:.3f} ({r['ratio_min']:.3f})"
            for r in rows if r.get("ratio_abba_median") is not None)
        refs = "; ".join(sorted({f"`{r['block']}`: {r['reference']}" for r in rows}))
        out.append(
            f"- `benchmarks/blocks_vs_reference.py` (forward+backward in train mode, float32, {reference['threads']} "
            f"CPU threads, same weights on both sides): attnzoo time / reference time, median of {reference['pairs']} "
            f"ABBA quadruples (in brackets: minimum over {reference['rounds']} interleaved rounds / minimum): {cells}. References ({refs}) are op-for-op renderings of the authors' published "
            "forwards written for the benchmark (`benchmarks/reference_impls.py`).")
    else:
        out.append("- `benchmarks/blocks_vs_reference.py`: not measured yet.")
    if floor:
        rows = [r for r in floor["rows"] if r.get("mode") in ("eager", "compiled")]
        by: dict = {}
        for r in rows:
            by.setdefault((r["host"], r["mode"]), []).append(r)
        parts = []

        def cell(r: dict) -> str:
            alone = (f", alone {r['alone_ratio_to_floor']:.1f}x" if r.get("alone_ratio_to_floor") is not None else "")
            if alone and r.get("alone_ratio_to_cache_floor") is not None:
                alone += f" / {r['alone_ratio_to_cache_floor']:.1f}x cache floor"
            bound = "; compute-bound floor" if r.get("floor_bound") == "compute" else ""
            if r.get("target_met") is None:
                return f"`{r['block']}` {r['overhead_pct']:+.0f}% (below timing noise{alone}{bound})"
            return f"`{r['block']}` {r['overhead_pct']:+.0f}% ({r['ratio_to_floor']:.1f}x{alone}{bound})"

        for (host, mode), rs in by.items():
            met = [r for r in rs if r.get("target_met") is True]
            noise = [r for r in rs if r.get("target_met") is None]
            alone_met = [r for r in rs if r.get("alone_target_met") is True]
            alone_part = (f"; blocks alone: met by {len(alone_met)}" if any(r.get("alone_ms") is not None for r in rs) else "")
            parts.append(f"{host} {mode} (host step {rs[0]['base_ms']:.0f} ms; target <= {rs[0]['target']}x floor met by "
                         f"{len(met)} of {len(rs)}" + (f", {len(noise)} within noise" if noise else "") + alone_part
                         + "): " + ", ".join(cell(r) for r in rs))
        bws = floor.get("copy_bandwidth_gbs_rounds") or [floor["copy_bandwidth_gbs"]]
        rate = (f", float32 matmul {floor['matmul_gflops']:.0f} GFLOP/s" if floor.get("matmul_gflops") else "")
        alloc = floor.get("allocator") or {}
        out.append(
            f"- `benchmarks/overhead_floor.py` (training step, batch {floor['batch']}, channels_last, SGD, "
            f"{floor['threads']} threads of an {floor.get('cpu', 'unnamed CPU')}, allocator {'keeping freed memory' if alloc.get('tuned') else 'as it is'}; copy bandwidth "
            f"{floor['copy_bandwidth_gbs']:.1f} GB/s (median of {len(bws)} readings, {min(bws):.0f}-{max(bws):.0f}){rate}; per block: "
            "step-time overhead over the host without attention, in brackets that overhead / the floor (the larger of "
            "8 |x| bytes per inserted block at that bandwidth and 3x the blocks' forward FLOPs at that matmul rate), and "
            "'alone': the inserted blocks' own forward+backward on their sites' inputs / the floor"
            + (" and / the cache floor (the same bytes at the copy rate of a map of each site's size, which stays in "
               "cache: " + ", ".join(f"{int(n) / 2**20:.1f} MiB {v:.0f} GB/s"
                                     for n, v in sorted(floor["cached_copy_bandwidth_gbs"].items(), key=lambda kv: int(kv[0])))
               + ")" if floor.get("cached_copy_bandwidth_gbs") else "") + "):")
        out += [f"  - {p}." for p in parts]
        even = [r for r in floor["rows"] if r.get("mode") == "break_even"]
        if even:
            out.append("  - compile break-even (compile time / per-step saving, in training steps; a 5-epoch Fashion-MNIST "
                       "run at batch 128 is 2345 steps): " + ", ".join(
                           f"{r['host']}+{r['block'] or 'none'} {r['compile_s']:.0f} s to compile, "
                           + (f"{r['break_even_steps']:.0f} steps" if r.get("break_even_steps") else "never (no saving)")
                           for r in even) + "."
                       + (" Compile times under 5 s in this run are hits in inductor's on-disk cache left by an earlier "
                          "run (the script now turns that cache off); the cold compiles took "
                          + ", ".join(f"{r['compile_s']:.0f}" for r in even if r["compile_s"] >= 5) + " s."
                          if not floor.get("cold_compile") and any(r["compile_s"] < 5 for r in even) else ""))
    else:
        out.append("- `benchmarks/overhead_floor.py`: not measured yet.")
    return "\n".join(out)


EXPERIMENT = ROOT / "experiments" / "fmnist_zoo"


def _family(cell) -> str:
    attn = cell.config.get("model", {}).get("attn")
    return attn_info(attn).metadata["family"] if attn else "none"


def ablation_results(exp: Path = EXPERIMENT) -> str:
    """A compact view of the zoo experiment's table (its own README has every column), with the
    headline read off the numbers: what is significant after Holm, the range of Δ, the MDE."""
    from attnzoo.ablation.cost import cost_path, load_costs, matching_costs
    from attnzoo.ablation.grid import load_grid
    from attnzoo.ablation.report import recipe, summarize
    from attnzoo.ablation.store import ResultStore

    rel = exp.relative_to(ROOT)
    grid = load_grid(exp / "grid.yaml")
    if not grid.store.exists():
        return f"`{rel}`: not run yet."
    rows = ResultStore(grid.store).rows(keys=[c.key for c in grid.cells])
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return f"`{rel}`: no finished run yet."
    record = load_costs(cost_path(grid.store))
    costs = matching_costs(record, grid)[0] if record else None
    summaries = summarize(rows, grid.variants, costs=costs)
    header = dict(recipe(rows))
    first = {}
    for c in grid.cells:
        first.setdefault(c.label, c)
    base = next(s for s in summaries if s.is_baseline)
    tested = [s for s in summaries if not s.is_baseline and s.diff is not None and s.diff.n >= 2]
    sig = [s for s in tested if s.significant]
    n = sorted({s.n for s in summaries})
    epochs = header.get("epochs", "?")
    pool = header.get("training pool", "?")
    has_cost = any(s.step_ms is not None for s in summaries)
    head = ["variant", "family", "Δ params (k)"] + (["Δ step time"] if has_cost else []) + \
        ["top-1 (%)", "Δ top-1 (pp) [95% CI]", "p (Holm)", "MDE (pp)"]
    lines = [
        f"[`{rel}`]({rel}/README.md): {len(grid.variants) - 1} variants against one plain ResNet-20 under one "
        f"recipe (Fashion-MNIST, {pool}, {epochs} epochs), {len(ok)} of {len(grid.cells)} runs finished, on "
        f"{header.get('hardware', '?')}. Δ is paired by seed; p is Holm-adjusted over all {len(tested)} "
        "comparisons with the baseline; MDE is the difference each comparison could detect with 80% power "
        "at its seed-to-seed spread"
        + ("; Δ step time is the training step of the quiet cost pass (`attnzoo cost`)" if has_cost else "")
        + ". The experiment's README has the full table (params, FLOPs, throughput, unadjusted p, seeds needed).",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(head) - 2),
    ]
    for s in summaries:
        mean, std = s.acc_mean_std
        acc = f"{mean:.2f} ± {std:.2f}" if s.n > 1 else f"{mean:.2f}"
        if s.is_baseline:
            cells = [s.label, "none", ""] + ([""] if has_cost else []) + [acc, "(baseline)", "", ""]
        else:
            d = s.diff
            dacc = ("–" if d is None else f"{d.mean:+.2f} (n={d.n})" if d.n < 2
                    else f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]")
            dstep = [f"{s.d_step_pct:+.0f}%" if s.d_step_pct is not None else "–"] if has_cost else []
            ph = "–" if s.p_holm is None or s.p_holm != s.p_holm else f"{s.p_holm:.3f}" + (" *" if s.significant else "")
            cells = [s.label, _family(first[s.label]), f"{s.d_params / 1e3:+.1f}" if s.d_params is not None else "–",
                     *dstep, acc, dacc, ph, f"{s.mde:.2f}" if s.mde is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    deltas = sorted(tested, key=lambda s: s.diff.mean)
    mdes = sorted(s.mde for s in tested if s.mde is not None)
    text = (f"What it shows: the baseline reaches {base.acc_mean_std[0]:.2f} ± {base.acc_mean_std[1]:.2f}% top-1 "
            f"(n = {'/'.join(map(str, n))} seeds). ")
    if sig:
        text += ("Significant after Holm (marked *): " + ", ".join(
            f"`{s.label}` {s.diff.mean:+.2f} pp [{s.diff.low:+.2f}, {s.diff.high:+.2f}]" for s in sig) + ". ")
    else:
        text += "No variant's difference is significant after Holm's correction. "
    if deltas:
        text += (f"Δ top-1 ranges from {deltas[0].diff.mean:+.2f} pp (`{deltas[0].label}`) to "
                 f"{deltas[-1].diff.mean:+.2f} pp (`{deltas[-1].label}`); "
                 f"{sum(s.diff.mean < 0 for s in deltas)} of {len(deltas)} variants are below the baseline on average. ")
    if mdes:
        text += (f"What it does not show: with n = 3 the comparisons detect only differences of "
                 f"{mdes[0]:.2f} to {mdes[-1]:.2f} pp (median {mdes[len(mdes) // 2]:.2f}), so a \"not significant\" row is "
                 "\"not shown at this n\", not \"no effect\"; a short recipe far from convergence on 28×28 grey images "
                 "ranks how blocks change early training at this scale, not their worth on ImageNet-scale networks.")
    lines += ["", text]
    return "\n".join(lines)


def timm_slots_table() -> str:
    """The (timm family, slot) pairs that tests/test_timm_slots.py runs every block in."""
    from attnzoo.timm_slots import TIMM_SLOTS

    lines = [
        f"Every one of the {len(list_attn())} blocks, passed as `get_attn(name)`, builds, runs forward and "
        f"backward in a small model of each of these {len(TIMM_SLOTS)} timm families "
        "(tests/test_timm_slots.py; timm's own model classes and configs, shortened as the table says):",
        "",
        "| timm family | slot | model the test builds | what timm calls |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{s.family}` | `{s.slot}` | {s.model} | `{s.calls}` |" for s in TIMM_SLOTS]
    return "\n".join(lines)


def splice(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"README has no {start} ... {end} markers")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return before + start + "\n" + body + "\n" + end + after


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args(argv)
    blocks = _load("blocks_cpu.json")
    vs_timm = _load("blocks_vs_timm_cpu.json") or blocks  # the longer, focused timm comparison when made
    text = args.readme.read_text()
    text = splice(text, "zoo-table", zoo_table(blocks))
    text = splice(text, "fit-numbers", fit_numbers(_load("readme_commands_cpu.json"), _load("fmnist_resnet20_cpu.json")))
    text = splice(text, "ablation-results", ablation_results())
    text = splice(text, "timm-slots", timm_slots_table())
    text = splice(text, "native-table", native_table(_load("overhead_floor_cpu_before_native.json"),
                                                     _load("overhead_floor_cpu_previous.json"),
                                                     _load("overhead_floor_cpu.json"), _load("native_cpu.json")))
    text = splice(text, "benchmarks", benchmark_lines(vs_timm, _load("harness_overhead_cpu.json"),
                                                      _load("data_inmemory_cpu.json"))
                  + "\n" + speed_lines(_load("blocks_vs_reference_cpu.json"), _load("overhead_floor_cpu.json"))
                  + "\n" + pooling_line(_load("pooling_cpu.json"))
                  + "\n" + layouts_line(_load("layouts_cpu.json"))
                  + "\n" + native_line(_load("native_cpu.json"))
                  + "\n" + revision_line(_load("native_revision_cpu.json"))
                  + "\n" + revision_line(_load("small_graphs_revision_cpu.json"),
                                         "the small graphs as single ops, `_small_graphs.py`")
                  + "\n" + small_conv_line(_load("small_conv_cpu.json"))
                  + "\n" + revision_line(_load("small_conv_revision_cpu.json"),
                                         "the small convolution's batch tiles")
                  + "\n" + revision_line(_load("ema_revision_cpu.json"), "EMA's two native ops")
                  + "\n" + revision_line(_load("channel_conv_revision_cpu.json"),
                                         "ECA's conv over channels and its sigmoid as one op, se's MLP on `mlp_gate`")
                  + "\n" + revision_line(_load("sk_revision_cpu.json"),
                                         "sk's BatchNorms, ReLUs, fuse and select as two ops")
                  + "\n" + revision_line(_load("branch_ops_revision_cpu.json"),
                                         "sk's two ops with the grouped convolution; bam's BatchNorm + ReLU pairs as "
                                         "one op each; the depthwise kernels' register blocking (lka, lska); ge's "
                                         "upsampled gate as one op")
                  + "\n" + revision_line(_load("round_ops_revision_cpu.json"),
                                         "sge's per-sample kernels; psa's projections as matmuls and its output op; "
                                         "cbam, cbam_channel, cbam_spatial and lcbam as one op each; bam's reducing "
                                         "1x1 as a matmul; ema's cross op in channels_last; ge's strided depthwise "
                                         "gathers on the native kernel")
                  + "\n" + allocator_line(_load("allocator_cpu.json")))
    args.readme.write_text(text)
    print(f"wrote the generated sections of {args.readme} ({len(list_attn())} blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
