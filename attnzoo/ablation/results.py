"""``result.json``: the durable record of a finished run, in its own run folder; ``collect`` into the store.

A run that finishes (successfully or not) first writes ``<run_dir>/result.json`` -- to a temporary
file in the same folder, flushed and fsynced, then moved over the final name with ``os.replace``,
which is atomic on POSIX file systems (NFS included) -- and only then is the store row written by
the sweep's driver. So a result file is either absent or whole, and a store that is lost, corrupt
or unwritable can be rebuilt from the run folders: every sweep starts by collecting result files
that the store lacks, and ``attnzoo collect GRID`` does only that.

A result file holds ``format`` (1), ``key``, ``grid``, ``label``, ``seed``, ``status`` ('ok' |
'failed'), ``result`` (the run_fn's dict, or None), ``error`` (text, or None), ``checkpoint`` (path
relative to the run folder, or None), ``env``, ``host``, ``started_at``, ``finished_at``,
``duration_s``.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from .grid import Cell, Grid

__all__ = ["RESULT_FILE", "write_result", "read_result", "result_row", "find_results", "collect"]

RESULT_FILE = "result.json"
FORMAT = 1


def write_result(run_dir: str | Path, msg: dict[str, Any]) -> Path:
    """Write ``msg`` to ``run_dir/result.json`` atomically (temporary file + fsync + ``os.replace``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / RESULT_FILE
    tmp = run_dir / f".{RESULT_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, **msg}, f, default=str, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return final


def read_result(path: str | Path, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """A result file's content (``path`` is the file or its run folder); None when absent or unreadable."""
    path = Path(path)
    if path.is_dir() or path.name != RESULT_FILE:
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if warn:
            warn(f"warning: {path} is not a readable result file ({type(e).__name__}: {e}); its cell will run again")
        return None
    if not isinstance(data, dict) or data.get("status") not in ("ok", "failed") or not isinstance(data.get("key"), str):
        if warn:
            warn(f"warning: {path} is not an attnzoo result file (no key/status); its cell will run again")
        return None
    return data


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def result_row(grid: Grid, cell: Cell, msg: dict[str, Any], store_root: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """The store row of a finished run's result message (``run_dir``: where it ran; default the cell's folder)."""
    run_dir = Path(run_dir) if run_dir is not None else grid.run_dir(cell)
    row: dict[str, Any] = {
        "key": cell.key, "grid": grid.name, "label": cell.label, "seed": cell.seed, "is_baseline": int(cell.is_baseline),
        "baseline": cell.baseline, "overrides": cell.overrides, "config": cell.config, "env": msg.get("env"),
        "run_dir": _rel(run_dir, store_root), "started_at": msg.get("started_at"), "finished_at": msg.get("finished_at"),
    }
    if msg.get("status") == "ok":
        result = msg.get("result") if isinstance(msg.get("result"), dict) else {}
        test = result.get("test") or {}
        ckpt = msg.get("checkpoint")
        row.update({
            "status": "ok", "config": result.get("config") or cell.config, "epochs": result.get("epochs"),
            "acc1": _num(test.get("acc1")), "acc5": _num(test.get("acc5")), "loss": _num(test.get("loss")),
            "test_metrics": {k: _num(v) for k, v in test.items()} or None,
            "params": result.get("params"), "flops": result.get("flops"),
            "train_throughput": _num(result.get("train_throughput")),
            "infer_throughput": _num(result.get("infer_throughput")),
            "wall_time_s": _num(result.get("wall_time_s")), "insert_report": result.get("insert_report"),
            "checkpoint": _rel(run_dir / ckpt, store_root) if ckpt else None,
        })
        return row
    row.update({"status": "failed", "error": str(msg.get("error"))})
    return row


def find_results(grid: Grid, warn: Callable[[str], None] | None = None) -> dict[str, tuple[Path, dict[str, Any]]]:
    """key -> (result file, content) for every cell of ``grid`` with a result file under ``runs/``.

    Looks in each cell's own folder and, for cells whose label changed but whose config did not,
    in every ``runs/*/seed*/result.json`` (matched by key)."""
    keys = {c.key for c in grid.cells}
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    candidates = [grid.run_dir(c) / RESULT_FILE for c in grid.cells]
    if grid.runs_dir.is_dir():
        candidates += sorted(grid.runs_dir.glob(f"*/seed*/{RESULT_FILE}"))
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        msg = read_result(path, warn)
        if msg is None or msg["key"] not in keys:
            continue
        old = found.get(msg["key"])
        # an ok result beats a failed one; between equals the newer one wins
        rank = (msg["status"] == "ok", str(msg.get("finished_at")))
        if old is None or rank > (old[1]["status"] == "ok", str(old[1].get("finished_at"))):
            found[msg["key"]] = (path, msg)
    return found


def collect(grid: Grid, store: Any, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Write into ``store`` every result file of ``grid`` that the store lacks (or holds as failed where the
    file says ok). Returns {"collected", "ok", "failed", "in_store"}."""
    status = store.status()
    counts = {"collected": 0, "ok": 0, "failed": 0, "in_store": 0}
    cells = {c.key: c for c in grid.cells}
    for key, (path, msg) in find_results(grid, log).items():
        have = status.get(key)
        if have == "ok" or (have == "failed" and msg["status"] == "failed"):
            counts["in_store"] += 1
            continue
        store.write(result_row(grid, cells[key], msg, store.path.parent, path.parent))
        counts["collected"] += 1
        counts[msg["status"]] += 1
    return counts
