"""The Ray executor: one Ray task per cell, with the GPUs it needs (``pip install attnzoo[ray]``).

    attnzoo ablate GRID --executor ray                          # a local Ray instance
    attnzoo ablate GRID --executor ray --ray-address auto       # the running cluster (ray start --head ...)

Each task runs :func:`attnzoo.ablation.executors.execute_cell` with ``num_gpus`` GPUs (Ray sets its
``CUDA_VISIBLE_DEVICES``) and ``threads`` CPUs; the result message travels back to the driver, which
writes ``result.json`` in its own copy of the run folder when the worker's disk is not shared, then
the store -- the driver is the only writer. Tasks are not retried by Ray (a failed run is a result);
Ray cancels the tasks of a driver that exits, so a claim whose driver pid is gone is stale at once.
"""
from __future__ import annotations

from typing import Any

from . import execute_cell, failed_message

__all__ = ["RayExecutor"]


def _run(task: dict[str, Any]) -> dict[str, Any]:
    return execute_cell(task)


class RayExecutor:
    name = "ray"
    pid_rule = True

    def __init__(self, max_tasks: int | None = None, address: str | None = None, gpus_per_run: int | None = None,
                 threads: int = 1, init_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("--executor ray needs ray: pip install 'attnzoo[ray]'") from None
        self.ray = ray
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                      **(init_kwargs or {})}
            ray.init(address=address, **kwargs)
        resources = ray.cluster_resources()
        if gpus_per_run is None:
            gpus_per_run = 1 if resources.get("GPU", 0) >= 1 else 0
        self.gpus_per_run, self.threads = gpus_per_run, int(threads)
        slots_cpu = int(resources.get("CPU", 1) // max(1, self.threads))
        slots_gpu = int(resources.get("GPU", 0) // gpus_per_run) if gpus_per_run else slots_cpu
        self.max_tasks = int(max_tasks) if max_tasks else max(1, min(slots_cpu, slots_gpu))
        self.remote = ray.remote(_run).options(num_cpus=self.threads, num_gpus=gpus_per_run, max_retries=0)
        self.refs: dict[Any, dict[str, Any]] = {}
        self.resources = resources

    def describe(self) -> str:
        return (f"Ray tasks ({int(self.resources.get('CPU', 0))} CPUs, {int(self.resources.get('GPU', 0))} GPUs in the "
                f"cluster), {self.max_tasks} at a time, {self.gpus_per_run} GPU(s) and {self.threads} CPU(s) per run")

    def capacity(self) -> int:
        return self.max_tasks

    def free(self) -> int:
        return self.max_tasks - len(self.refs)

    def submit(self, task: dict[str, Any]) -> None:
        task = {**task, "gpus": None}  # Ray assigns the GPUs
        self.refs[self.remote.remote(task)] = task

    def poll(self, timeout: float = 0.5) -> list[tuple[str, dict[str, Any]]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        out = []
        for ref in ready:
            task = self.refs.pop(ref)
            try:
                out.append((task["key"], self.ray.get(ref)))
            except Exception as e:  # noqa: BLE001  (worker crashed, node lost, ...)
                text = str(e).strip().splitlines()
                out.append((task["key"], failed_message(task, f"RayTaskFailed: {text[0] if text else type(e).__name__}")))
        return out

    def shutdown(self, now: bool = False) -> None:
        if now:
            for ref in self.refs:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass
        self.refs.clear()
        if self.started_ray:
            self.ray.shutdown()
