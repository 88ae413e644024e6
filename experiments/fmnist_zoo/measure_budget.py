"""CPU time of one training step and one inference batch of every variant of a grid, single-threaded.

Used to size experiments/fmnist_zoo/grid.yaml (see its comments): on a machine shared with other
work, wall time says little, so this measures ``time.process_time()`` (CPU seconds of this process)
with one torch thread, which is what each of the sweep's two workers gets. Per variant: the network
is built exactly as its run builds it (the cell's resolved config, first seed), ``--warmup`` untimed
steps, then ``--steps`` timed training steps (forward, cross-entropy, backward, SGD step) at the
recipe's batch size, then ``--infer`` timed no-grad forward passes at batch 256.

    python experiments/fmnist_zoo/measure_budget.py experiments/fmnist_zoo/grid.yaml --out budget.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from attnzoo.ablation.cost import _build
from attnzoo.ablation.grid import load_grid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--infer", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated variant labels (default: all)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    grid = load_grid(args.grid)
    first = {}
    for c in grid.cells:
        first.setdefault(c.label, c)
    only = set(args.only.split(",")) if args.only else None
    out = {}
    for lab, cell in first.items():
        if only and lab not in only:
            continue
        net, size, batch, classes, cl = _build(cell)
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.randn(batch, *size).to(memory_format=fmt)
        y = torch.randint(0, classes, (batch,))
        xi = torch.randn(256, *size).to(memory_format=fmt)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        net.train()
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0 = time.process_time()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
        train = (time.process_time() - t0) / (args.steps * batch)
        net.eval()
        with torch.no_grad():
            t0 = time.process_time()
            for _ in range(args.infer):
                net(xi)
        infer = (time.process_time() - t0) / (args.infer * 256)
        out[lab] = {"train_cpu_ms_per_image": 1e3 * train, "infer_cpu_ms_per_image": 1e3 * infer}
        print(f"{lab:<20} train {1e3 * train:6.3f} ms/img  infer {1e3 * infer:6.3f} ms/img", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"grid": grid.name, "threads": 1, "steps": args.steps, "variants": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
