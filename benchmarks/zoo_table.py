"""Write the README's block table from the registry and the measured block timings.

    python benchmarks/blocks.py --json benchmarks/results/blocks_cpu.json   # measure (slow)
    python benchmarks/zoo_table.py                                          # rewrite the table

Columns: name, family, paper and year, parameters and FLOPs at C=256 on a 32x32 map (batch 1,
FLOPs counted by torch.utils.flop_counter: convolutions and matmuls, 1 multiply-add = 2 FLOPs,
elementwise ops not counted), forward+backward time relative to SE from the JSON that
benchmarks/blocks.py wrote, and whether the block exports to ONNX (registry metadata, checked by
tests/test_blocks.py). Nothing in the table is typed by hand.
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
START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


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


def table(timings: dict | None) -> str:
    blocks = (timings or {}).get("blocks", {})
    head = ("| name | family | paper | year | params @C=256 | FLOPs @C=256, 32x32 | fwd+bwd vs SE | ONNX |\n"
            "|---|---|---|---|---:|---:|---:|---|")
    rows = []
    for name in list_attn():
        meta = attn_info(name).metadata
        params, flops = block_cost(name)
        rel = blocks.get(name, {}).get("rel_se")
        onnx = "yes" if meta["onnx"] else f"no ({meta.get('onnx_note', '')})"
        rows.append(f"| `{name}` | {meta['family']} | [{meta['paper']}]({meta['link']}) | {meta['year']} | "
                    f"{_fmt(params)} | {_fmt(flops)} | {f'{rel:.2f}' if rel else 'not measured'} | {onnx} |")
    note = ""
    if timings:
        shape = "x".join(map(str, timings["input_shape"]))
        note = (f"\n\nTimes: forward+backward on a {shape} float32 tensor, {timings['threads']} CPU threads "
                f"({timings.get('processor') or timings.get('machine')}), torch {timings['torch']}, median of "
                f"{timings['repeats']} interleaved rounds, relative to `se`; measured by `benchmarks/blocks.py`.")
    return head + "\n" + "\n".join(rows) + note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timings", type=Path, default=ROOT / "benchmarks/results/blocks_cpu.json")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--print", action="store_true", help="print the table instead of writing the README")
    args = p.parse_args(argv)
    timings = json.loads(args.timings.read_text()) if args.timings.exists() else None
    text = table(timings)
    if args.print:
        print(text)
        return 0
    readme = args.readme.read_text()
    if START not in readme or END not in readme:
        p.error(f"{args.readme} has no {START} ... {END} markers to write the table between")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    args.readme.write_text(before + START + "\n" + text + "\n" + END + after)
    print(f"wrote the table of {len(list_attn())} blocks into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
