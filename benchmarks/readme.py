"""Write the README's generated sections from the registry and the measurements in benchmarks/results/.

    python benchmarks/blocks.py --json benchmarks/results/blocks_cpu.json              # slow: measure
    python benchmarks/blocks.py --blocks se eca ese cbam coord ela gc sk nonlocal --repeats 21 \
        --json benchmarks/results/blocks_vs_timm_cpu.json                               # vs timm
    python benchmarks/fmnist_resnet20.py --json benchmarks/results/fmnist_resnet20_cpu.json
    python benchmarks/harness_overhead.py --json benchmarks/results/harness_overhead_cpu.json
    python benchmarks/data_inmemory.py --json benchmarks/results/data_inmemory_cpu.json
    python benchmarks/blocks_vs_reference.py --json benchmarks/results/blocks_vs_reference_cpu.json
    python benchmarks/overhead_floor.py --modes eager compiled --json benchmarks/results/overhead_floor_cpu.json
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
* ``ablation-results``: the table of experiments/fmnist_resnet20 from its results store (the same
  table ``attnzoo report`` writes into that folder's README), and which differences are significant.

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
               "scatter around 1 by a few percent from run to run on this shared 2-core machine (se's two "
               "versions run the same operations in the same order), so ratios within that band are parity, "
               "not a measured difference." if slower
               else ". No attnzoo block is slower than timm's version of it.")
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


def speed_lines(reference: dict | None, floor: dict | None) -> str:
    """Lines for benchmarks/blocks_vs_reference.py and benchmarks/overhead_floor.py (issue 15); a
    missing JSON gives a 'not measured yet' line."""
    out = []
    if reference:
        rows = reference["rows"]
        cells = ", ".join(
            f"`{r['block']}` {'x'.join(map(str, r['shape']))} {r['ratio_abba_median']:.3f}" for r in rows
            if r.get("ratio_abba_median") is not None)
        refs = "; ".join(sorted({f"`{r['block']}`: {r['reference']}" for r in rows}))
        out.append(
            f"- `benchmarks/blocks_vs_reference.py` (forward+backward in train mode, float32, {reference['threads']} "
            f"CPU threads, same weights on both sides, median of {reference['pairs']} ABBA quadruples): attnzoo time / "
            f"reference time: {cells}. References ({refs}) are op-for-op renderings of the authors' published "
            "forwards written for the benchmark (`benchmarks/reference_impls.py`).")
    else:
        out.append("- `benchmarks/blocks_vs_reference.py`: not measured yet.")
    if floor:
        rows = [r for r in floor["rows"] if r.get("mode") in ("eager", "compiled")]
        by = {}
        for r in rows:
            ratio = r["ratio_to_floor"]
            by.setdefault((r["host"], r["mode"]), []).append(
                f"`{r['block']}` {r['overhead_pct']:+.0f}% ({ratio:.1f}x floor)" if ratio is not None and r["overhead_ms"] >= 0
                else f"`{r['block']}` {r['overhead_pct']:+.0f}% (noise)")
        parts = [f"{host} {mode}: " + ", ".join(v) for (host, mode), v in by.items()]
        out.append(
            f"- `benchmarks/overhead_floor.py` (training step, batch {floor['batch']}, channels_last, SGD, "
            f"{floor['threads']} threads, copy bandwidth {floor['copy_bandwidth_gbs']:.1f} GB/s; overhead over the "
            "host without attention, and overhead / memory-traffic floor of 8 |x| per block, targets eager <= 2x, "
            "compiled <= 1.3x): " + "; ".join(parts) + ".")
    else:
        out.append("- `benchmarks/overhead_floor.py`: not measured yet.")
    return "\n".join(out)


EXPERIMENT = ROOT / "experiments" / "fmnist_resnet20"


def ablation_results(exp: Path = EXPERIMENT) -> str:
    from attnzoo.ablation.grid import load_grid
    from attnzoo.ablation.report import _md_table, recipe, summarize
    from attnzoo.ablation.store import ResultStore

    grid = load_grid(exp / "grid.yaml")
    if not grid.store.exists():
        return f"`{exp.relative_to(ROOT)}`: not run yet."
    rows = ResultStore(grid.store).rows(keys=[c.key for c in grid.cells])
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return f"`{exp.relative_to(ROOT)}`: no finished run yet."
    summaries = summarize(rows, grid.variants)
    header = dict(recipe(rows))
    base = next(s for s in summaries if s.is_baseline)
    sig = [s for s in summaries if s.significant]  # Holm-adjusted p < 0.05
    n = sorted({s.n for s in summaries})
    lines = [
        f"First real experiment, [`{exp.relative_to(ROOT)}`]({exp.relative_to(ROOT)}/README.md) (grid, SQLite "
        f"store, table, plots and attention figure committed there): {len(ok)} runs of "
        f"{len(grid.cells)}, {header.get('wall time', '')}, on {header.get('hardware', '?')}.",
        "",
        _md_table(summaries),
        "",
        f"What it shows: at this scale (Fashion-MNIST subset of 9000 training images, 5 epochs, n = "
        f"{'/'.join(map(str, n))} seeds) the baseline reaches {base.acc_mean_std[0]:.2f} ± "
        f"{base.acc_mean_std[1]:.2f}% top-1; "
        + (("differences significant after Holm's correction over the blocks compared with the baseline: "
            + ", ".join(f"`{s.label}` {s.diff.mean:+.2f} pp [{s.diff.low:+.2f}, {s.diff.high:+.2f}], Holm p {s.p_holm:.3f}"
                        for s in sig))
           if sig else "no block's difference is significant after Holm's correction, so none is shown to help or "
                       "hurt here")
        + ". What it does not show: with n = 3 the intervals are wide (the MDE column gives the smallest "
        "difference each comparison could detect with 80% power), 5 epochs are far from convergence "
        "(the ranking may change with longer training), and 28×28 grey images say little about ImageNet-scale "
        "networks. The GPU grids in `configs/ablation/` are the full-length versions of this question.",
    ]
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
    text = splice(text, "benchmarks", benchmark_lines(vs_timm, _load("harness_overhead_cpu.json"),
                                                      _load("data_inmemory_cpu.json"))
                  + "\n" + speed_lines(_load("blocks_vs_reference_cpu.json"), _load("overhead_floor_cpu.json")))
    args.readme.write_text(text)
    print(f"wrote the generated sections of {args.readme} ({len(list_attn())} blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
