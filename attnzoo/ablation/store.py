"""The results store: one SQLite file per grid, one row per finished run, written in one transaction.

Only the sweep's parent process writes, and only when a run has finished (successfully or not),
with ``INSERT OR REPLACE`` inside a single transaction; SQLite's rollback journal makes that
atomic, so killing the sweep at any moment leaves each run either absent or complete. The
primary key is the cell's stable key (hash of its resolved config and seed), so a cell is held
once however often the sweep is restarted.

Table ``runs`` (JSON columns hold text):

    key, grid, label, seed, status ('ok' | 'failed'), error, is_baseline, baseline (label),
    overrides (JSON), config (JSON, the resolved config of the run), epochs (JSON, per-epoch metrics),
    acc1, acc5, loss (final-epoch test metrics, fractions), params, flops,
    train_throughput, infer_throughput (images/s), wall_time_s, env (JSON: versions, device, git commit),
    run_dir, checkpoint (paths relative to the store's folder), insert_report (JSON),
    started_at, finished_at (ISO 8601, UTC)
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ResultStore", "COLUMNS"]

COLUMNS: dict[str, str] = {
    "key": "TEXT PRIMARY KEY",
    "grid": "TEXT",
    "label": "TEXT NOT NULL",
    "seed": "INTEGER NOT NULL",
    "status": "TEXT NOT NULL CHECK (status IN ('ok', 'failed'))",
    "error": "TEXT",
    "is_baseline": "INTEGER NOT NULL DEFAULT 0",
    "baseline": "TEXT",
    "overrides": "TEXT",
    "config": "TEXT",
    "epochs": "TEXT",
    "acc1": "REAL",
    "acc5": "REAL",
    "loss": "REAL",
    "params": "INTEGER",
    "flops": "INTEGER",
    "train_throughput": "REAL",
    "infer_throughput": "REAL",
    "wall_time_s": "REAL",
    "env": "TEXT",
    "run_dir": "TEXT",
    "checkpoint": "TEXT",
    "insert_report": "TEXT",
    "started_at": "TEXT",
    "finished_at": "TEXT",
}
_JSON_COLUMNS = ("overrides", "config", "epochs", "env", "insert_report")


class ResultStore:
    """A results database; ``ResultStore(path)`` creates the file and its table when missing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
            conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
            conn.execute("CREATE INDEX IF NOT EXISTS runs_label_seed ON runs (label, seed)")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level None + explicit BEGIN/COMMIT: one transaction per write, nothing implicit
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def write(self, row: dict[str, Any]) -> None:
        """Insert (or replace) one finished run, whole, in a single transaction."""
        unknown = [k for k in row if k not in COLUMNS]
        if unknown:
            raise KeyError(f"unknown result column(s) {unknown}; the store has {list(COLUMNS)}")
        for k in ("key", "label", "seed", "status"):
            if row.get(k) is None:
                raise ValueError(f"a result row needs {k!r}")
        values = {k: (json.dumps(v, default=str) if k in _JSON_COLUMNS and v is not None else v) for k, v in row.items()}
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", values)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def rows(self, status: str | None = None, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Runs as dicts (JSON columns decoded), oldest first; optionally only one status or some keys."""
        conn = self._connect()
        try:
            query, args = "SELECT * FROM runs", []
            where = []
            if status is not None:
                where.append("status = ?")
                args.append(status)
            if where:
                query += " WHERE " + " AND ".join(where)
            query += " ORDER BY finished_at, rowid"
            out = [self._decode(dict(r)) for r in conn.execute(query, args)]
        finally:
            conn.close()
        if keys is not None:
            wanted = set(keys)
            out = [r for r in out if r["key"] in wanted]
        return out

    def status(self) -> dict[str, str]:
        """key -> 'ok' | 'failed' for every stored run."""
        conn = self._connect()
        try:
            return {k: s for k, s in conn.execute("SELECT key, status FROM runs")}
        finally:
            conn.close()

    @staticmethod
    def _decode(row: dict[str, Any]) -> dict[str, Any]:
        for k in _JSON_COLUMNS:
            if row.get(k) is not None:
                row[k] = json.loads(row[k])
        row["is_baseline"] = bool(row.get("is_baseline"))
        return row
