"""Executors: where a sweep's runs happen. Each only submits ``run_fn(config, run_dir)`` and hands results back.

* :mod:`.local` -- a pool of spawned processes on this machine (default).
* :mod:`.slurm` -- one SLURM job per cell through ``submitit`` (``pip install attnzoo[slurm]``).
* :mod:`.ray` -- one Ray task per cell, with the GPUs it needs (``pip install attnzoo[ray]``).

Every executor runs :func:`execute_cell` on a task dict and returns its result message; the sweep's
driver alone writes the store. ``execute_cell`` writes ``result.json`` in the run folder before it
returns, so a finished run is durable even when the driver never hears of it.

An executor has ``name``, ``pid_rule`` (whether its runs die with the driver: then a claim whose
owner pid is gone is stale at once), ``capacity()`` (runs at a time), ``submit(task)``,
``poll(timeout) -> [(key, msg)]``, ``shutdown(now)`` and ``describe()``. Neither submitit nor ray is
imported until its executor is built.
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

__all__ = ["execute_cell", "visible_gpus", "assign_gpus", "failed_message", "make_executor"]

_ENV: dict[str, Any] | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs).

    The parent's ``CUDA_VISIBLE_DEVICES`` when set (``"4,5"``, ``"GPU-8f2c...,GPU-1a9d..."``; like CUDA,
    the list ends at the first ``-1`` or empty entry); else every GPU torch sees."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        out = []
        for entry in environ["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry == "-1":
                break
            out.append(entry)
        return out
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def assign_gpus(gpus: list[str], workers: int, per_run: int = 1) -> list[list[str] | None]:
    """Worker i's ``CUDA_VISIBLE_DEVICES`` entries: ``per_run`` consecutive GPUs of the parent's list,
    round robin (None for every worker when there are no GPUs or ``per_run`` is 0)."""
    if not gpus or per_run <= 0:
        return [None] * workers
    return [[gpus[(i * per_run + j) % len(gpus)] for j in range(per_run)] for i in range(workers)]


def failed_message(task: Mapping[str, Any], error: str, started: str | None = None) -> dict[str, Any]:
    """A result message for a run that never reported (its process died, its job was cancelled)."""
    return {"key": task["key"], "grid": task.get("grid"), "label": task.get("label"), "seed": task.get("seed"),
            "status": "failed", "result": None, "error": error, "checkpoint": None, "env": None,
            "host": None, "started_at": started, "finished_at": _now(), "duration_s": None}


def _error_text(exc: BaseException) -> str:
    head = f"{type(exc).__name__}: {exc}".strip()
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    return f"{head}\n\n{tb}"


def _tidy_checkpoints(run_dir: Path, keep: bool) -> Path | None:
    """Keep only the final checkpoint (last.ckpt, else the newest), as weights only, when ``keep``;
    else remove them all. A kept checkpoint serves explain and the report's figures, never a resume
    (the run is finished), so its optimizer and loop state are dropped (:func:`strip_to_weights`)."""
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return None
    if not keep:
        shutil.rmtree(ckpts, ignore_errors=True)
        return None
    files = sorted(ckpts.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    final = ckpts / "last.ckpt" if (ckpts / "last.ckpt").exists() else files[-1]
    if final.is_symlink():
        target = final.resolve()
        final.unlink()
        shutil.copy2(target, final)
    for f in files:
        if f != final and f.exists():
            f.unlink()
    from ...checkpoint import strip_to_weights
    from ...errors import AttnzooError

    try:
        strip_to_weights(final)
    except AttnzooError:  # not a Lightning checkpoint (a custom run_fn's own file): kept as it was written
        pass
    return final


class _Redirect:
    """Send this process's stdout/stderr (Python's and C's) to a file for the run, then restore them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_Redirect":
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


def _heartbeat(path: str | None, every: float, stop: threading.Event) -> None:
    while path and not stop.wait(every):
        try:
            os.utime(path)
        except OSError:
            pass


def set_threads(threads: int) -> None:
    """The run's torch thread count (fixed per run, whatever runs beside it: numbers do not depend on it)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def execute_cell(task: dict[str, Any]) -> dict[str, Any]:
    """Run one cell where this process is: clear its folder, run ``run_fn``, keep or drop checkpoints,
    write ``result.json`` atomically, and return the result message.

    ``task``: key, grid, label, seed, config, run_dir, run_fn ("module:function"), threads,
    keep_checkpoint (bool), claim_file and heartbeat_s (optional: touched while running), gpus
    (optional list of ``CUDA_VISIBLE_DEVICES`` entries, set before torch starts CUDA).
    A run_fn exception is a failed result, not an exception; Ctrl-C is re-raised and writes nothing.
    """
    global _ENV
    from ..results import write_result
    from ..runner import environment, resolve_run_fn

    if task.get("gpus") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(task["gpus"])
    set_threads(int(task.get("threads") or 1))
    if _ENV is None:
        _ENV = environment()
    run_dir = Path(task["run_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)  # leftovers of a killed attempt of this same cell
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(task.get("claim_file"), float(task.get("heartbeat_s") or 30), stop),
                            daemon=True)
    beat.start()
    started, t0 = _now(), time.monotonic()
    msg: dict[str, Any] = {"key": task["key"], "grid": task.get("grid"), "label": task.get("label"),
                           "seed": task.get("seed"), "env": {**_ENV, "torch_threads": int(task.get("threads") or 1)},
                           "host": socket.gethostname(), "started_at": started, "checkpoint": None}
    try:
        with _Redirect(run_dir / "output.log"):
            try:
                result = resolve_run_fn(task["run_fn"])(task["config"], str(run_dir))
                test = (result.get("test") or {}) if isinstance(result, dict) else {}
                metric = task.get("metric") or "acc1"  # the grid's metric: top-1, or e.g. map50_95
                value = test.get(metric)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or abs(value) == float("inf"):
                    msg.update(status="failed", result=None,
                               error=f"ValueError: the run returned no finite test {metric} (test = {test!r})")
                else:
                    msg.update(status="ok", result=result, error=None)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001  (the sweep records every failure and goes on)
                print(_error_text(e), file=sys.stderr)
                msg.update(status="failed", result=None, error=_error_text(e))
    finally:
        stop.set()
    ckpt = _tidy_checkpoints(run_dir, keep=msg["status"] == "ok" and bool(task.get("keep_checkpoint")))
    msg["checkpoint"] = str(ckpt.relative_to(run_dir)) if ckpt else None
    msg["finished_at"] = _now()
    msg["duration_s"] = time.monotonic() - t0
    write_result(run_dir, msg)
    return msg


def make_executor(name: str, **options: Any) -> Any:
    """``local`` | ``slurm`` | ``ray`` -> an executor built with ``options``."""
    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor(**options)
    if name == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(**options)
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; choose local, slurm or ray")
