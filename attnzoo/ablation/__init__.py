"""Ablations: grids of blocks x positions x backbones x seeds, a SQLite results store, honest reports.

* :mod:`.grid` -- grid files (``configs/ablation/*.yaml``): load, expand into cells, validate all first.
* :mod:`.runner` -- the sweep's driver: claims cells, runs them on an executor, one store transaction per run.
* :mod:`.executors` -- where runs happen: local processes, SLURM (submitit), Ray; optional extras.
* :mod:`.claims` -- atomic claim files with owner and heartbeat, so concurrent sweeps never run a cell twice.
* :mod:`.results` -- ``result.json`` per finished run (atomic) and ``collect`` into the store.
* :mod:`.store` -- the SQLite store (:class:`ResultStore`).
* :mod:`.stats` -- mean ± std, paired Δ with t intervals and p-values, Holm, power and MDE (scipy).
* :mod:`.report` -- Markdown/CSV/LaTeX tables with the recipe header, PNG plots.
* :mod:`.cli` -- ``attnzoo ablate``, ``attnzoo collect`` and ``attnzoo report``.

"""
from __future__ import annotations

from .grid import Cell, Grid, GridError, load_grid, validate_grid
from .report import summarize, write_report
from .results import collect
from .runner import run_grid
from .stats import mean_std, paired_difference, t_quantile_975
from .store import ResultStore, StoreError

__all__ = [
    "Cell", "Grid", "GridError", "load_grid", "validate_grid", "run_grid", "ResultStore", "StoreError", "collect",
    "summarize",
    "write_report", "mean_std", "paired_difference", "t_quantile_975",
]
