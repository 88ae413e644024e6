"""Run a grid's missing cells on an executor (local processes, SLURM, Ray), never losing or repeating a run.

The sweep's own process is the *driver*: it claims each cell before it starts
(:mod:`~attnzoo.ablation.claims`), hands it to an executor (:mod:`~attnzoo.ablation.executors`),
and, when the run's result comes back, makes sure ``result.json`` is in the run folder (the run
writes it first; :mod:`~attnzoo.ablation.results`), writes the store row in one transaction
(:class:`~attnzoo.ablation.store.ResultStore`), then releases the claim. The driver is the store's
only writer.

* Every sweep first collects result files the store lacks (runs that finished after a crash, in
  another sweep, or in a ``--shard`` job), then runs the cells that are neither 'ok' nor (unless
  ``retry_failed``) 'failed'. A cell claimed by another live sweep is left to it; this sweep waits
  for its result (or for its claim to go stale, then takes it over) before it returns.
* A run that fails (exception, NaN loss, out-of-memory kill, segfault) is a 'failed' result with
  its error; a failed cell is not re-run on restart unless ``retry_failed``. Ctrl-C records nothing
  for the interrupted runs and releases their claims.
* If the store cannot be written mid-sweep, the sweep goes on (every result is in its
  ``result.json``) and ends with an error naming the file; ``attnzoo collect GRID`` fills it later.
* ``shard=(i, n)`` runs only the cells at positions ``i, i+n, i+2n, ...`` of the grid (a job array
  index); with ``store=None`` results stay in the run folders until ``attnzoo collect``.
* Every run uses ``grid.threads`` torch threads (default 1), whatever the number of workers or the
  executor, so a cell's numbers do not depend on them. Local workers take GPUs from the parent's
  ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs), round robin; ``workers: auto`` = one per GPU.

Progress: one line per event (start, finish), plain text for log files: done / failed / running
(/ elsewhere) / total and an ETA from the durations of this sweep's finished runs.

Each run's console output goes to ``<run folder>/output.log``. Checkpoints: ``keep_checkpoints:
first_seed`` (default) keeps the final checkpoint of each variant's first seed
(``checkpoints/last.ckpt``, for ``attnzoo explain``), ``all`` keeps every run's, ``none`` none.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from .grid import Cell, Grid
from .store import ResultStore, StoreError

__all__ = ["run_grid", "pending_cells", "environment", "resolve_run_fn", "cpu_model", "shard_cells", "parse_shard"]


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

    from ..blocks import native_status

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
        "native_kernels": native_status(),
        **_git_commit(),
    }


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> (i, N)."""
    i, sep, n = str(text).partition("/")
    try:
        ii, nn = int(i), int(n)
    except ValueError:
        ii = nn = -1
    if not sep or nn < 1 or not 0 <= ii < nn:
        raise ValueError(f"shard must be 'i/N' with 0 <= i < N (e.g. 0/4 .. 3/4, a job array index), got {text!r}")
    return ii, nn


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of shard ``(i, n)``: grid positions i, i+n, ... (disjoint, together all)."""
    if shard is None:
        return list(cells)
    i, n = shard
    return [c for k, c in enumerate(cells) if k % n == i]


def _result_status(grid: Grid) -> dict[str, str]:
    from .results import find_results

    return {k: msg["status"] for k, (_, msg) in find_results(grid).items()}


def pending_cells(grid: Grid, store: ResultStore | None, retry_failed: bool = False,
                  shard: tuple[int, int] | None = None) -> list[Cell]:
    """Cells without an 'ok' row (and without a 'failed' one unless ``retry_failed``)."""
    done = store.status() if store is not None else _result_status(grid)
    return [c for c in shard_cells(grid.cells, shard)
            if done.get(c.key) != "ok" and (retry_failed or done.get(c.key) != "failed")]


def _fmt_s(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _Progress:
    """One plain line per event: done / failed / running / total, ETA from finished-run durations."""

    def __init__(self, total: int, done: int, failed: int, slots: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.failed, self.slots, self.log = total, done, failed, max(1, slots), log
        self.running = 0
        self.elsewhere = 0
        self.durations: list[float] = []

    def eta(self) -> str:
        left = self.total - self.done - self.failed
        if left <= 0:
            return "0s"
        if not self.durations:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        return _fmt_s(mean * left / min(self.slots, left))

    def line(self, what: str) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        other = f", {self.elsewhere} in another sweep" if self.elsewhere else ""
        self.log(f"[{stamp}] {self.done} done, {self.failed} failed, {self.running} running{other}, {self.total} total, "
                 f"ETA {self.eta()} | {what}")


def _print(line: str) -> None:
    print(line, flush=True)


def _device_plan(n: int | str, gpus_per_run: int = 1) -> tuple[int, list[list[str] | None]]:
    """(workers, CUDA_VISIBLE_DEVICES entries per worker) from the parent's GPU list."""
    from .executors import assign_gpus, visible_gpus

    gpus = visible_gpus()
    workers = (max(1, len(gpus) // max(1, gpus_per_run)) if gpus else 1) if n == "auto" else int(n)
    return workers, assign_gpus(gpus, workers, gpus_per_run)


def run_grid(
    grid: Grid,
    store: ResultStore | None | str = "default",
    workers: int | str | None = None,
    retry_failed: bool = False,
    run_fn: str | Callable[..., Any] | None = None,
    log: Callable[[str], None] = _print,
    executor: str | Any = "local",
    executor_options: dict[str, Any] | None = None,
    shard: tuple[int, int] | None = None,
    claim_timeout: float = 600.0,
    gpus_per_run: int = 1,
) -> dict[str, int]:
    """Run every missing cell of ``grid`` (of ``shard``); returns counts {"ok", "failed", "skipped"} for this sweep.

    ``store``: a :class:`ResultStore`, the grid's store by default, or None to leave results in the
    run folders only (``attnzoo collect`` gathers them). ``run_fn`` overrides the grid's (a
    module-level callable ``(config, run_dir) -> dict`` shaped like
    :func:`attnzoo.training.run_fit_test`'s result, or its ``"module:function"`` name). ``executor``:
    "local", "slurm", "ray" (built with ``executor_options``) or an executor object.
    Raises :class:`StoreError` at the end if the store could not be written (nothing is lost).
    """
    from .claims import ClaimBook
    from .executors import failed_message, make_executor
    from .results import collect, read_result, result_row, write_result

    if isinstance(store, str) and store == "default":
        store = ResultStore(grid.store)
    cells = shard_cells(grid.cells, shard)
    where = f"shard {shard[0]}/{shard[1]} of " if shard else ""
    if store is not None:
        got = collect(grid, store, log)
        if got["collected"]:
            log(f"collected {got['collected']} finished run(s) from result.json files into {store.path} "
                f"({got['ok']} ok, {got['failed']} failed)")
    todo = pending_cells(grid, store, retry_failed, shard)
    counts = {"ok": 0, "failed": 0, "skipped": len(cells) - len(todo)}
    if not todo:
        log(f"all {len(cells)} runs of {where}{grid.name!r} are done"
            + (f" and in {store.path}" if store is not None else "") + "; nothing to run")
        return counts
    old_failed = {}
    if retry_failed and store is not None:
        st, fin = store.status(), store.finished_at()
        old_failed = {k: fin.get(k) for k, v in st.items() if v == "failed"}
    fn = _run_fn_spec(run_fn if run_fn is not None else grid.run_fn)
    from .grid import check_run_fn, grid_metric_key

    metric = grid_metric_key(grid)

    check_run_fn(grid, fn)  # a typo fails here, naming the spec, not as a worker that dies while starting
    opts = dict(executor_options or {})
    if isinstance(executor, str):
        if executor == "local":
            n, gpus_of = _device_plan(workers if workers is not None else grid.workers, gpus_per_run)
            opts = {"workers": min(n, len(todo)), "run_fn": fn, "threads": grid.threads, "gpus_of": gpus_of, **opts}
        elif executor == "slurm":
            opts = {"folder": grid.runs_dir / ".submitit", "threads": grid.threads, "gpus_per_run": gpus_per_run,
                    **({"max_jobs": int(workers)} if isinstance(workers, int) else {}), **opts}
        elif executor == "ray":
            opts = {"threads": grid.threads, **({"max_tasks": int(workers)} if isinstance(workers, int) else {}), **opts}
        ex = make_executor(executor, **opts)
    else:
        ex = executor
    claims = ClaimBook(grid.runs_dir, timeout_s=claim_timeout, executor=ex.name, pid_rule=ex.pid_rule)
    store_root = store.path.parent if store is not None else grid.store.parent
    base_status = store.status() if store is not None else _result_status(grid)
    total = len(cells)
    todo_keys = {c.key for c in todo}
    prog = _Progress(total, sum(base_status.get(c.key) == "ok" for c in cells if c.key not in todo_keys),
                     sum(base_status.get(c.key) == "failed" for c in cells if c.key not in todo_keys), ex.capacity(), log)
    log(f"{where}{grid.name}: {len(todo)} runs to do ({counts['skipped']} already done) on {ex.describe()}")
    store_errors: list[str] = []
    queue_ = list(todo)
    inflight: dict[str, tuple[Cell, float]] = {}
    elsewhere: dict[str, Cell] = {}
    last_look = 0.0

    def fresh(cell: Cell) -> dict[str, Any] | None:
        """A result of ``cell`` that another sweep (or an earlier crash) finished, if any counts."""
        msg = read_result(grid.run_dir(cell), log)
        if msg is None or msg["key"] != cell.key:
            return None
        if msg["status"] == "failed" and retry_failed and cell.key in old_failed and \
                msg.get("finished_at") == old_failed[cell.key]:
            return None  # the old failure that --retry-failed asked to run again
        return msg

    def record(cell: Cell, msg: dict[str, Any], ran_here: bool) -> None:
        run_dir = grid.run_dir(cell)
        if ran_here and read_result(run_dir) is None:  # e.g. a Ray worker without the shared disk
            try:
                write_result(run_dir, msg)
            except OSError as e:
                log(f"error: cannot write {run_dir / 'result.json'} ({e}); the store row is the only record of "
                    f"{cell.name}")
        if store is not None:
            try:
                store.write(result_row(grid, cell, msg, store_root))
            except StoreError as e:
                if not store_errors:
                    log(f"error: {e}")
                store_errors.append(cell.name)
        claims.release(cell.key)
        status = msg["status"]
        if status == "ok":
            prog.done += 1
        else:
            prog.failed += 1
        if ran_here:
            counts[status] += 1
            if msg.get("duration_s"):
                prog.durations.append(float(msg["duration_s"]))
        else:
            counts["skipped"] += 1
        took = f" ({msg['duration_s']:.1f} s)" if msg.get("duration_s") else ""
        if status == "ok":
            value = ((msg.get("result") or {}).get("test") or {}).get(metric)
            shown = f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "?"
            what = f"{cell.name}: ok, {metric} {shown}{took}"
        else:
            what = f"{cell.name}: FAILED{took}: {str(msg.get('error')).splitlines()[0]}"
        prog.line(what if ran_here else f"{what} (finished by another sweep)")

    try:
        while queue_ or inflight or elsewhere:
            while queue_ and ex.free() > 0:
                cell = queue_.pop(0)
                msg = fresh(cell)
                if msg is not None:
                    record(cell, msg, ran_here=False)
                    continue
                if not claims.try_claim(cell.key):
                    elsewhere[cell.key] = cell
                    prog.elsewhere = len(elsewhere)
                    continue
                msg = fresh(cell)  # finished and released just before we claimed it
                if msg is not None:
                    record(cell, msg, ran_here=False)
                    continue
                keep = grid.keep_checkpoints == "all" or (grid.keep_checkpoints == "first_seed" and cell.seed == grid.seeds[0])
                task = {"key": cell.key, "grid": grid.name, "label": cell.label, "seed": cell.seed, "config": cell.config,
                        "run_dir": str(grid.run_dir(cell)), "run_fn": fn, "threads": grid.threads, "metric": metric,
                        "keep_checkpoint": keep, "claim_file": str(claims.path(cell.key)),
                        "heartbeat_s": claims.heartbeat_s}
                try:
                    ex.submit(task)
                except Exception as e:  # noqa: BLE001  (e.g. sbatch refused the job)
                    record(cell, failed_message(task, f"SubmitFailed: {type(e).__name__}: {e}"), ran_here=True)
                    continue
                inflight[cell.key] = (cell, time.monotonic())
                prog.running = len(inflight)
                prog.line(f"{cell.name}: started")
            for key, msg in ex.poll(timeout=0.5 if inflight else 0):
                cell, _ = inflight.pop(key, (None, 0.0))
                if cell is None:
                    continue
                prog.running = len(inflight)
                record(cell, msg, ran_here=True)
            claims.heartbeat()
            if elsewhere and time.monotonic() - last_look > 1.0:
                last_look = time.monotonic()
                for key, cell in list(elsewhere.items()):
                    msg = fresh(cell)
                    if msg is not None:
                        del elsewhere[key]
                        prog.elsewhere = len(elsewhere)
                        record(cell, msg, ran_here=False)
                    elif claims.holder(key) is None:  # released without a result, or stale: ours to take
                        del elsewhere[key]
                        prog.elsewhere = len(elsewhere)
                        queue_.insert(0, cell)
            if not inflight and not (queue_ and ex.free() > 0) and elsewhere:
                time.sleep(0.5)
    except BaseException as e:
        ex.shutdown(now=True)
        claims.release_all()
        if isinstance(e, KeyboardInterrupt):
            log(f"interrupted: {counts['ok'] + counts['failed']} finished runs are saved; "
                "run the same command again to do the rest")
        raise
    ex.shutdown()
    claims.release_all()
    if store_errors:
        raise StoreError(f"results store {store.path}: {len(store_errors)} finished run(s) could not be written to it "
                         f"({', '.join(store_errors[:5])}{', ...' if len(store_errors) > 5 else ''}); they are safe "
                         f"in their result.json files: fix the store, then run `attnzoo collect {grid.path}`")
    return counts
