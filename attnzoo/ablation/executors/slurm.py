"""The SLURM executor: one job per cell through submitit (``pip install attnzoo[slurm]``).

    attnzoo ablate GRID --executor slurm --partition gpu --gpus-per-run 1 --time-limit 240

Each job runs :func:`attnzoo.ablation.executors.execute_cell` on a compute node: it writes the run
folder and its ``result.json`` on the shared file system and returns the result message to the
driver (the ``attnzoo ablate`` process), which alone writes the store -- keep the store on the
driver's local disk. The running job touches its claim file, so its cell stays claimed even if the
driver dies; a job that ends without a result (cancelled, timed out, node failure) is a failed run
with submitit's explanation. ``cluster="local"`` runs the jobs as local processes (submitit's
LocalExecutor), which is how CI tests this without SLURM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import execute_cell, failed_message

__all__ = ["SlurmExecutor"]


class SlurmExecutor:
    name = "slurm"
    pid_rule = False  # jobs outlive the driver; their heartbeat keeps the claim

    def __init__(self, folder: str | Path, max_jobs: int = 64, partition: str | None = None, gpus_per_run: int = 0,
                 time_limit_min: int | None = None, threads: int = 1, cluster: str | None = None,
                 mem_gb: int | None = None, account: str | None = None) -> None:
        try:
            import submitit
        except ImportError:
            raise ImportError("--executor slurm needs submitit: pip install 'attnzoo[slurm]'") from None
        self.folder = Path(folder)
        self.executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=cluster)
        params: dict[str, Any] = {"name": "attnzoo-ablate", "nodes": 1, "tasks_per_node": 1, "cpus_per_task": threads}
        if gpus_per_run:
            params["gpus_per_node"] = int(gpus_per_run)
        if time_limit_min:
            params["timeout_min"] = int(time_limit_min)
        if mem_gb:
            params["mem_gb"] = int(mem_gb)
        if partition:
            params["slurm_partition"] = partition
        if account:
            params["slurm_account"] = account
        self.executor.update_parameters(**params)
        self.cluster = self.executor.cluster
        self.max_jobs = int(max_jobs)
        self.params = params
        self.jobs: dict[str, tuple[Any, dict[str, Any]]] = {}

    def describe(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("name", "nodes", "tasks_per_node")}
        return f"submitit ({self.cluster}) jobs, at most {self.max_jobs} at a time, {shown}; job files in {self.folder}"

    def capacity(self) -> int:
        return self.max_jobs

    def free(self) -> int:
        return self.max_jobs - len(self.jobs)

    def submit(self, task: dict[str, Any]) -> None:
        job = self.executor.submit(execute_cell, task)
        self.jobs[task["key"]] = (job, task)

    def poll(self, timeout: float = 0.5) -> list[tuple[str, dict[str, Any]]]:
        import time

        deadline = time.monotonic() + timeout
        out: list[tuple[str, dict[str, Any]]] = []
        while True:
            for key, (job, task) in list(self.jobs.items()):
                if not job.done():
                    continue
                del self.jobs[key]
                try:
                    out.append((key, job.result()))
                except Exception as e:  # noqa: BLE001  (cancelled, timed out, node failure, ...)
                    text = str(e).strip().splitlines()
                    out.append((key, failed_message(task, f"JobFailed: {self.cluster} job {job.job_id} ended without a "
                                                          f"result: {text[-1] if text else type(e).__name__}")))
            if out or time.monotonic() >= deadline or not self.jobs:
                return out
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def shutdown(self, now: bool = False) -> None:
        if now:
            for job, _ in self.jobs.values():
                try:
                    job.cancel(check=False)
                except Exception:  # noqa: BLE001
                    pass
        self.jobs.clear()
