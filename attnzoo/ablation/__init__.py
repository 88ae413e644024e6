"""Ablations: grids of blocks x positions x backbones x seeds, a SQLite results store, honest reports.

* :mod:`.grid` -- grid files (``configs/ablation/*.yaml``): load, expand into cells, validate all first.
* :mod:`.runner` -- run missing cells in child processes (N workers), one store transaction per run.
* :mod:`.store` -- the SQLite store (:class:`ResultStore`).
* :mod:`.stats` -- mean ± std, paired Δ with t intervals and p-values, Holm, power and MDE (scipy).
* :mod:`.report` -- Markdown/CSV/LaTeX tables with the recipe header, PNG plots.
* :mod:`.cli` -- ``attnzoo ablate`` and ``attnzoo report``.

"""
from __future__ import annotations

from .grid import Cell, Grid, GridError, load_grid, validate_grid
from .report import summarize, write_report
from .runner import run_grid
from .stats import mean_std, paired_difference, t_quantile_975
from .store import ResultStore

__all__ = [
    "Cell", "Grid", "GridError", "load_grid", "validate_grid", "run_grid", "ResultStore", "summarize",
    "write_report", "mean_std", "paired_difference", "t_quantile_975",
]
