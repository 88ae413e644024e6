"""The local executor: N spawned worker processes on this machine, each running one cell at a time.

Every run happens in a child process (``multiprocessing``'s ``spawn``), never in the sweep's own,
so an exception, a NaN loss, an out-of-memory kill or a segfault in one run cannot corrupt the
store or stop the sweep. A worker that dies without answering yields a failed result for its
cell (with the exit code) and is replaced. Worker i gets GPU(s) from the parent's
``CUDA_VISIBLE_DEVICES`` list (indices or UUIDs; round robin), set before torch starts; every run
uses the same fixed torch thread count whatever the number of workers. On Linux workers are
killed with the sweep (``PR_SET_PDEATHSIG``), so ``kill -9`` of the sweep leaves no orphan training.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from typing import Any

from . import failed_message

__all__ = ["LocalExecutor"]


class WorkerStartError(RuntimeError):
    """A worker process could not start (its run_fn does not import, ...)."""


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def _worker_main(wid: int, run_fn: str, threads: int, gpus: list[str] | None, tasks: Any, results: Any) -> None:
    _die_with_parent()
    try:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch is imported
        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        from . import execute_cell, set_threads
        from ..runner import resolve_run_fn

        set_threads(threads)
        resolve_run_fn(run_fn)
    except BaseException as e:  # noqa: BLE001
        results.put((wid, ("start_failed", f"{type(e).__name__}: {e}\n\n{traceback.format_exc(limit=-6)}")))
        return
    results.put((wid, ("ready",)))
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            msg = execute_cell(task)
        except KeyboardInterrupt:
            return
        except Exception as e:  # noqa: BLE001  (e.g. the run folder's disk is full: result.json could not be written)
            msg = failed_message(task, f"{type(e).__name__}: {e} (while saving the run's result)")
        results.put((wid, ("done", task["key"], msg)))


class _Worker:
    def __init__(self, ctx: Any, wid: int, run_fn: str, threads: int, gpus: list[str] | None, results: Any) -> None:
        self.wid, self.gpus = wid, gpus
        self.tasks = ctx.Queue()
        self.proc = ctx.Process(target=_worker_main, args=(wid, run_fn, threads, gpus, self.tasks, results),
                                name=f"attnzoo-ablate-{wid}", daemon=True)
        self.proc.start()
        self.task: dict[str, Any] | None = None
        self.started: str | None = None
        self.ready = False

    def stop(self, now: bool = False) -> None:
        if self.proc.is_alive():
            if now:
                self.proc.kill()
            else:
                self.tasks.put(None)
        self.proc.join(timeout=10 if now else 60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)


class LocalExecutor:
    """``workers`` processes here; worker i sees ``gpus_of[i]`` (None: no GPU)."""

    name = "local"
    pid_rule = True  # workers die with the driver

    def __init__(self, workers: int, run_fn: str, threads: int = 1, gpus_of: list[list[str] | None] | None = None) -> None:
        self.n = int(workers)
        self.run_fn, self.threads = run_fn, int(threads)
        self.gpus_of = gpus_of or [None] * self.n
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.pool: dict[int, _Worker] = {}
        self._next = 0
        for i in range(self.n):
            self._start(self.gpus_of[i % len(self.gpus_of)])

    def _start(self, gpus: list[str] | None) -> _Worker:
        w = _Worker(self.ctx, self._next, self.run_fn, self.threads, gpus, self.results)
        self.pool[w.wid] = w
        self._next += 1
        return w

    def describe(self) -> str:
        used = [",".join(g) for g in self.gpus_of if g]
        return (f"{self.n} local worker(s), {self.threads} torch thread(s) per run"
                + (f", CUDA_VISIBLE_DEVICES per worker: {used}" if used else ""))

    def capacity(self) -> int:
        return self.n

    def free(self) -> int:
        return sum(1 for w in self.pool.values() if w.task is None and w.proc.is_alive())

    def submit(self, task: dict[str, Any]) -> None:
        from . import _now

        for w in self.pool.values():
            if w.task is None and w.proc.is_alive():
                w.task, w.started = task, _now()
                w.tasks.put(task)
                return
        raise RuntimeError("no free local worker")  # the driver only submits when free() > 0

    def _handle(self, wid: int, msg: tuple, out: list[tuple[str, dict[str, Any]]]) -> None:
        w = self.pool.get(wid)
        if w is None:
            return
        if msg[0] == "ready":
            w.ready = True
        elif msg[0] == "start_failed":
            raise WorkerStartError(f"an ablation worker could not start: {msg[1].splitlines()[0]}\n{msg[1]}")
        elif msg[0] == "done":
            w.task = None
            out.append((msg[1], msg[2]))

    def poll(self, timeout: float = 0.5) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        try:
            wid, msg = self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
            self._handle(wid, msg, out)
            while True:
                wid, msg = self.results.get_nowait()
                self._handle(wid, msg, out)
        except queue.Empty:
            pass
        if out:
            return out
        for w in list(self.pool.values()):
            if w.proc.is_alive():
                continue
            try:  # an answer may have arrived just before the worker exited
                time.sleep(0.05)
                while True:
                    wid, msg = self.results.get_nowait()
                    self._handle(wid, msg, out)
            except queue.Empty:
                pass
            code = w.proc.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            if not w.ready:  # it never got to run anything: not the cell's fault
                raise WorkerStartError(
                    f"an ablation worker process died while starting ({why}); its error is printed above. If you call "
                    "run_grid from a script, guard it with `if __name__ == '__main__':` (workers are started with "
                    "multiprocessing's spawn method, which imports the main script)")
            hint = " (SIGKILL: often the out-of-memory killer)" if code == -signal.SIGKILL else ""
            if w.task is not None:
                out.append((w.task["key"], failed_message(w.task, f"WorkerDied: the run's process died ({why}){hint}",
                                                          w.started)))
            del self.pool[w.wid]
            self._start(w.gpus)
        return out

    def shutdown(self, now: bool = False) -> None:
        for w in self.pool.values():
            w.stop(now=now)
        self.pool.clear()
