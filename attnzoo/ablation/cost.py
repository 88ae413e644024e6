"""The cost pass: training step time and inference throughput of every variant, measured quietly.

The throughputs a sweep logs while training are taken with several runs sharing the cores (two
workers on two cores, data loading, evaluation), so their ratios say little. ``attnzoo cost GRID``
measures instead, in one process, after (or before, or without) training:

* each variant's network is built exactly as its run builds it (the cell's resolved config, first
  seed; the weights are a fresh initialisation, which does not change the cost);
* with the CPU allocator as CPU fits run it (``allocator="keep"``: freed memory stays in the process,
  :func:`attnzoo.training.allocator.keep_freed_memory`; ``"system"`` leaves it alone), recorded;
* one thing at a time, with every core (``torch.set_num_threads(os.cpu_count())`` unless told);
* ``rounds`` interleaved rounds: each round visits every variant once, in an order rotated by one
  per round, so slow drift of the machine (thermal, other load) lands on all variants alike;
* per visit: ``warmup`` untimed training steps, then ``train_steps`` timed ones (forward,
  cross-entropy, backward, SGD-with-momentum step on random images of the data's shape at the
  recipe's batch size, in the recipe's memory format), then one untimed and ``infer_batches`` timed
  no-grad forward passes in eval mode;
* the reported number is the median over rounds (of the mean step time within a visit); the
  per-round values are kept.

NOTE: random images and an SGD step stand in for the data pipeline and the recipe's optimiser and
schedule: the pass measures the network, not data loading (which is the same for every variant).

Results go to a JSON file beside the store (``results.sqlite`` -> ``results.cost.json``, written
atomically), never into the store, so the pass can run while nothing else does, independently of
the sweep. The file records the machine, the settings and the 1-minute load average before and
after, so a reader can judge whether the machine was quiet.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["cost_path", "load_costs", "matching_costs", "measure_costs", "write_costs"]

VERSION = 1


def cost_path(store: str | Path) -> Path:
    """Where the cost pass of the grid whose store is ``store`` lives: ``<store stem>.cost.json``."""
    store = Path(store)
    return store.with_name(store.stem + ".cost.json")


def load_costs(path: str | Path) -> dict[str, Any] | None:
    """The cost pass's JSON, or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise ValueError(f"{path} is not a cost-pass file (no 'variants' mapping); re-run `attnzoo cost GRID`")
    return data


def matching_costs(record: dict[str, Any], grid: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The cost record's variants whose network config still equals the grid's (label -> costs), and
    the labels measured with a different config (stale: the grid changed after the cost pass)."""
    first: dict[str, Any] = {}
    for c in grid.cells:
        first.setdefault(c.label, c)
    ok, stale = {}, []
    for lab, v in record.get("variants", {}).items():
        if lab not in first:
            continue
        if json.dumps(v.get("model"), sort_keys=True, default=str) == json.dumps(first[lab].config.get("model", {}),
                                                                                 sort_keys=True, default=str):
            ok[lab] = v
        else:
            stale.append(lab)
    return ok, stale


def _build(cell: Any) -> tuple[Any, tuple[int, ...], int, int, bool]:
    """(network, input size (C, H, W), batch size, classes, channels_last) of a cell, as its run builds it."""
    from attnzoo.training.cli import build_cli, config_layers

    args: list[str] = []
    for layer in config_layers(copy.deepcopy(cell.config)):
        args += ["--config", layer]
    cli = build_cli(args, run=False, instantiate_trainer=False, exit_on_error=False)
    import torch

    model = cli.model
    batch = int(cli.config["data"]["init_args"]["batch_size"])
    net, size = model.model, tuple(model.input_size)
    channels_last = bool(getattr(cli.config["model"], "channels_last", False))
    net.eval()
    with torch.no_grad():
        classes = int(net(torch.zeros(1, *size)).shape[1])  # the head's width (num_classes is linked from the data)
    return net, size, batch, classes, channels_last


def _time_visit(entry: dict[str, Any], train_steps: int, infer_batches: int, warmup: int) -> tuple[float, float]:
    """(seconds per training step, inference images per second) for one visit of one variant."""
    import torch
    import torch.nn.functional as F

    net, x, y, xi, opt = entry["net"], entry["x"], entry["y"], entry["xi"], entry["opt"]
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(train_steps):
        step()
    step_s = (time.perf_counter() - t0) / train_steps
    net.eval()
    with torch.no_grad():
        net(xi)
        t0 = time.perf_counter()
        for _ in range(infer_batches):
            net(xi)
        infer_tp = infer_batches * xi.shape[0] / (time.perf_counter() - t0)
    return step_s, infer_tp


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def measure_costs(grid: Any, rounds: int = 5, train_steps: int = 10, infer_batches: int = 10, warmup: int = 2,
                  infer_batch_size: int | None = None, threads: int | None = None, allocator: str = "keep",
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every variant of ``grid`` (an :class:`~attnzoo.ablation.grid.Grid`); returns the cost
    record (see the module docstring); ``write_costs`` stores it."""
    import torch

    for name, v in (("rounds", rounds), ("train_steps", train_steps), ("infer_batches", infer_batches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    from ..training.allocator import use_allocator

    alloc = use_allocator(allocator)
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    first: dict[str, Any] = {}
    for c in grid.cells:
        first.setdefault(c.label, c)
    labels = list(first)
    load_before = _load()
    entries: dict[str, dict[str, Any]] = {}
    batch_sizes = set()
    for lab in labels:
        torch.manual_seed(0)
        net, (c, h, w), batch, classes, cl = _build(first[lab])
        fmt = torch.channels_last if cl else torch.contiguous_format
        ib = infer_batch_size or batch
        batch_sizes.add(batch)
        entries[lab] = {
            "net": net, "opt": torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True),
            "x": torch.randn(batch, c, h, w).to(memory_format=fmt), "y": torch.randint(0, classes, (batch,)),
            "xi": torch.randn(ib, c, h, w).to(memory_format=fmt), "batch": batch, "infer_batch": ib,
        }
    per: dict[str, dict[str, list[float]]] = {lab: {"step_s": [], "infer": []} for lab in labels}
    t_start = time.perf_counter()
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for lab in order:
            step_s, infer_tp = _time_visit(entries[lab], train_steps, infer_batches, warmup)
            per[lab]["step_s"].append(step_s)
            per[lab]["infer"].append(infer_tp)
        log(f"cost round {r + 1}/{rounds} done ({time.perf_counter() - t_start:.0f} s)")
    load_after = _load()
    from ..blocks import native_status
    from .runner import cpu_model

    variants = {}
    for lab in labels:
        steps, inf = per[lab]["step_s"], per[lab]["infer"]
        variants[lab] = {
            "train_step_ms": 1e3 * statistics.median(steps),
            "infer_throughput": statistics.median(inf),
            "train_step_ms_rounds": [1e3 * s for s in steps],
            "infer_throughput_rounds": inf,
            "batch_size": entries[lab]["batch"],
            "model": first[lab].config.get("model", {}),
        }
    return {
        "version": VERSION, "grid": grid.name,
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"rounds": rounds, "train_steps": train_steps, "infer_batches": infer_batches, "warmup": warmup,
                     "batch_size": "/".join(map(str, sorted(batch_sizes))),
                     "infer_batch_size": infer_batch_size or "/".join(map(str, sorted(batch_sizes)))},
        "env": {"device": "cpu", "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": threads,
                "torch": torch.__version__, "python": platform.python_version(), "allocator": alloc,
                "native_kernels": native_status()},
        "load_average": None if load_before is None else [load_before, load_after],
        "seconds": time.perf_counter() - t_start,
        "variants": variants,
    }


def write_costs(record: dict[str, Any], path: str | Path) -> Path:
    """Write the cost record as JSON, atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
