"""Run a grid's missing cells, one after another or in N parallel worker processes.

Every run happens in a child process (``multiprocessing`` with the ``spawn`` start method), never in
the sweep's own process, so an exception, a NaN loss, an out-of-memory kill or a segfault in one
run cannot corrupt the store or stop the sweep: the child sends its result (or its error) back, the
parent writes the finished row in one transaction (:class:`~attnzoo.ablation.store.ResultStore`),
and a child that dies without answering is recorded as failed with its exit code and replaced.

Workers: N processes, each running cells until none is left. With GPUs, worker i sees only GPU
i mod (number of GPUs) (``CUDA_VISIBLE_DEVICES``), so ``workers: auto`` = one worker per GPU. On CPU
each worker gets cores // N torch threads. On Linux workers are killed with the sweep
(``PR_SET_PDEATHSIG``), so ``kill -9`` of the sweep leaves no orphan training.

Restarting: cells whose key is stored as 'ok' are skipped; cells stored as 'failed' are skipped
too unless ``retry_failed`` (``attnzoo ablate --retry-failed``), so a deterministic error is not
re-run on every restart; a retried cell replaces its row.

Each run's console output (Lightning's messages, warnings, tracebacks) goes to
``runs/<label>/seed<k>/output.log``; the sweep prints one line per finished run.

Checkpoints: ``keep_checkpoints: first_seed`` (default) keeps the final checkpoint of the first
seed of each variant (``runs/<label>/seed<k>/checkpoints/last.ckpt``, for ``attnzoo explain``),
``all`` keeps every run's, ``none`` keeps none; logs and the resolved config.yaml are always kept.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .grid import Cell, Grid
from .store import ResultStore

__all__ = ["run_grid", "pending_cells", "environment", "resolve_run_fn", "cpu_model"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def resolve_run_fn(spec: str | Callable[..., Any]) -> Callable[..., Any]:
    """``"module:function"`` (or a callable) -> the callable."""
    if callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"run_fn {spec!r} is not callable")
    return obj


def _run_fn_spec(fn: str | Callable[..., Any]) -> str:
    if isinstance(fn, str):
        return fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname:
        raise TypeError(f"run_fn must be a module-level function (workers import it by name), got {fn!r}")
    return f"{module}:{qualname}"


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "attnzoo"],
                               cwd=root, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where a run ran: versions, CPU, GPU, torch threads, git commit of attnzoo."""
    from importlib import metadata

    import torch

    versions = {}
    for pkg in ("torch", "torchvision", "timm", "lightning", "torchmetrics", "attnzoo"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if gpu else "cpu",
        "gpu": gpu,
        "cuda": torch.version.cuda if gpu else None,
        **_git_commit(),
    }


def _die_with_parent() -> None:
    """Linux: this process receives SIGKILL when its parent (the sweep) dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def _error_text(exc: BaseException) -> str:
    head = f"{type(exc).__name__}: {exc}".strip()
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    return f"{head}\n\n{tb}"


def _log_to(path: Path) -> None:
    """Send this process's stdout and stderr (Python's and C's) to ``path``, so parallel runs do not mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _worker_main(worker_id: int, run_fn: str, threads: int, gpu: int | None, tasks: Any, results: Any) -> None:
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    torch.set_num_threads(threads)
    fn = resolve_run_fn(run_fn)
    env = environment()
    results.put((worker_id, ("ready",)))
    while True:
        task = tasks.get()
        if task is None:
            return
        key, config, run_dir = task
        started = _now()
        try:
            shutil.rmtree(run_dir, ignore_errors=True)  # leftovers of a killed attempt
            _log_to(Path(run_dir) / "output.log")
            result = fn(config, run_dir)
            msg = ("ok", key, result, env, started, _now())
        except BaseException as e:  # noqa: BLE001  (the sweep records every failure and goes on)
            msg = ("failed", key, _error_text(e), env, started, _now())
        results.put((worker_id, msg))


def pending_cells(grid: Grid, store: ResultStore, retry_failed: bool = False) -> list[Cell]:
    """Cells without an 'ok' row (and without a 'failed' one unless ``retry_failed``)."""
    done = store.status()
    return [c for c in grid.cells if done.get(c.key) != "ok" and (retry_failed or done.get(c.key) != "failed")]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path.resolve())


def _tidy_checkpoints(run_dir: Path, keep: bool) -> Path | None:
    """Keep only the final checkpoint (last.ckpt, else the newest) when ``keep``; else remove them all."""
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
    return final


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _row(grid: Grid, cell: Cell, msg: tuple, store_root: Path) -> dict[str, Any]:
    status, _, payload, env, started, finished = msg
    run_dir = grid.run_dir(cell)
    row: dict[str, Any] = {
        "key": cell.key, "grid": grid.name, "label": cell.label, "seed": cell.seed, "is_baseline": int(cell.is_baseline),
        "baseline": cell.baseline, "overrides": cell.overrides, "config": cell.config, "env": env,
        "run_dir": _rel(run_dir, store_root), "started_at": started, "finished_at": finished,
    }
    if status == "ok":
        result = payload if isinstance(payload, dict) else {}
        test = result.get("test") or {}
        acc1 = _num(test.get("acc1"))
        if acc1 is None:
            status, payload = "failed", f"ValueError: the run returned no finite test accuracy (test = {test!r})"
        else:
            keep = grid.keep_checkpoints == "all" or (grid.keep_checkpoints == "first_seed" and cell.seed == grid.seeds[0])
            ckpt = _tidy_checkpoints(run_dir, keep)
            row.update({
                "status": "ok", "config": result.get("config") or cell.config, "epochs": result.get("epochs"),
                "acc1": acc1, "acc5": _num(test.get("acc5")), "loss": _num(test.get("loss")),
                "params": result.get("params"), "flops": result.get("flops"),
                "train_throughput": _num(result.get("train_throughput")),
                "infer_throughput": _num(result.get("infer_throughput")),
                "wall_time_s": _num(result.get("wall_time_s")), "insert_report": result.get("insert_report"),
                "checkpoint": _rel(ckpt, store_root) if ckpt else None,
            })
            return row
    _tidy_checkpoints(run_dir, keep=False)
    row.update({"status": "failed", "error": str(payload)})
    return row


class _Worker:
    def __init__(self, ctx: Any, wid: int, run_fn: str, threads: int, gpu: int | None, results: Any) -> None:
        self.wid = wid
        self.tasks = ctx.Queue()
        self.proc = ctx.Process(target=_worker_main, args=(wid, run_fn, threads, gpu, self.tasks, results),
                                name=f"attnzoo-ablate-{wid}", daemon=True)
        self.proc.start()
        self.cell: Cell | None = None
        self.since = 0.0
        self.ready = False

    def stop(self, now: bool = False) -> None:
        if self.proc.is_alive():
            if now:
                self.proc.kill()
            else:
                self.tasks.put(None)
        self.proc.join(timeout=None if not now else 10)


def _device_plan(n: int | str) -> tuple[int, list[int | None], int]:
    """(workers, gpu per worker, threads per worker)."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    workers = (gpus or 1) if n == "auto" else int(n)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    return workers, [i % gpus if gpus else None for i in range(workers)], threads


def run_grid(
    grid: Grid,
    store: ResultStore | None = None,
    workers: int | str | None = None,
    retry_failed: bool = False,
    run_fn: str | Callable[..., Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run every missing cell of ``grid``; returns counts {"ok", "failed", "skipped"} for this sweep.

    ``run_fn`` overrides the grid's (a module-level callable ``(config, run_dir) -> dict`` shaped like
    :func:`attnzoo.training.run_fit_test`'s result, or its ``"module:function"`` name).
    """
    store = store or ResultStore(grid.store)
    todo = pending_cells(grid, store, retry_failed)
    counts = {"ok": 0, "failed": 0, "skipped": len(grid.cells) - len(todo)}
    if not todo:
        log(f"all {len(grid.cells)} runs of {grid.name!r} are in {store.path}; nothing to run")
        return counts
    n, gpus, threads = _device_plan(workers if workers is not None else grid.workers)
    n = min(n, len(todo))
    fn = _run_fn_spec(run_fn if run_fn is not None else grid.run_fn)
    store_root = store.path.parent
    log(f"{grid.name}: {len(todo)} runs to do ({counts['skipped']} already stored) in {n} worker(s), "
        f"{threads} torch thread(s) each" + (f", GPUs {sorted(set(g for g in gpus if g is not None))}" if gpus[0] is not None else ""))

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pool: dict[int, _Worker] = {}
    next_id = 0
    todo_q = list(todo)
    done_n = 0

    def start(slot_gpu: int | None) -> _Worker:
        nonlocal next_id
        w = _Worker(ctx, next_id, fn, threads, slot_gpu, results)
        pool[next_id] = w
        next_id += 1
        return w

    def finish(w: _Worker, msg: tuple) -> None:
        nonlocal done_n
        cell = w.cell
        w.cell = None
        if cell is None:
            return
        row = _row(grid, cell, msg, store_root)
        store.write(row)
        done_n += 1
        counts[row["status"]] += 1
        took = time.monotonic() - w.since
        if row["status"] == "ok":
            log(f"[{done_n}/{len(todo)}] {cell.name}: ok, top-1 {100 * row['acc1']:.2f}% ({took:.1f} s)")
        else:
            log(f"[{done_n}/{len(todo)}] {cell.name}: FAILED ({took:.1f} s): {row['error'].splitlines()[0]}")

    try:
        gpu_of = {}
        for i in range(n):
            w = start(gpus[i])
            gpu_of[w.wid] = gpus[i]
        while todo_q or any(w.cell is not None for w in pool.values()):
            for w in list(pool.values()):
                if w.cell is None and todo_q and w.proc.is_alive():
                    cell = todo_q.pop(0)
                    w.cell, w.since = cell, time.monotonic()
                    w.tasks.put((cell.key, cell.config, str(grid.run_dir(cell))))
            try:
                wid, msg = results.get(timeout=0.5)
            except queue.Empty:
                for w in list(pool.values()):
                    if w.proc.is_alive():
                        continue
                    try:  # an answer may have arrived just before the worker exited
                        while True:
                            wid, msg = results.get_nowait()
                            if msg[0] == "ready":
                                pool[wid].ready = True
                            elif wid in pool:
                                finish(pool[wid], msg)
                    except queue.Empty:
                        pass
                    code = w.proc.exitcode
                    why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    if not w.ready:  # it never got to run anything: not the cell's fault
                        raise RuntimeError(
                            f"an ablation worker process failed to start ({why}); its error is printed above. "
                            f"If you call run_grid from a script, guard it with `if __name__ == '__main__':` "
                            f"(workers are started with multiprocessing's spawn method)")
                    hint = " (SIGKILL: often the out-of-memory killer)" if code == -signal.SIGKILL else ""
                    if w.cell is not None:
                        finish(w, ("failed", w.cell.key, f"WorkerDied: the run's process died ({why}){hint}",
                                   None, None, _now()))
                    del pool[w.wid]
                    if todo_q:
                        nw = start(gpu_of.get(w.wid))
                        gpu_of[nw.wid] = gpu_of.get(w.wid)
                continue
            if wid in pool:
                if msg[0] == "ready":
                    pool[wid].ready = True
                else:
                    finish(pool[wid], msg)
    except BaseException as e:
        for w in pool.values():
            w.stop(now=True)
        if isinstance(e, KeyboardInterrupt):
            log(f"interrupted: {counts['ok'] + counts['failed']} finished runs are in {store.path}; "
                "run the same command again to do the rest")
        raise
    for w in pool.values():
        w.stop()
    return counts
