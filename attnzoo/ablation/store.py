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

The store is the index; the durable record of a run is its ``result.json``
(:mod:`attnzoo.ablation.results`), written before the row. The file belongs on a local disk and
has one writer at a time (``BEGIN IMMEDIATE``); never share a live store over NFS (see the README).
A store that cannot be opened or written raises :class:`StoreError`, naming the file and how to
rebuild it from the run folders (``attnzoo collect GRID``). Opening a store never changes it;
columns added in later versions are added (``ALTER TABLE``) on the first write only.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ResultStore", "StoreError", "COLUMNS"]

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
    "test_metrics": "TEXT",  # JSON: every test metric the run_fn returned (e.g. map50_95 of a detection run)
}
_JSON_COLUMNS = ("overrides", "config", "epochs", "env", "insert_report", "test_metrics")
_REQUIRED = ("key", "label", "seed", "status")


class StoreError(ValueError):
    """The results store cannot be opened, read or written; the message names the file."""


def _hint(path: Path) -> str:
    return (f"finished runs are also kept as result.json files in {path.parent / 'runs'}, so nothing is lost: fix the "
            "file's folder or permissions, or move the file aside, then run `attnzoo collect GRID` to (re)build the "
            "store from them")


class ResultStore:
    """A results database; ``ResultStore(path)`` creates the file and its table when missing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self._migrated = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"results store {self.path}: cannot create its folder ({e})") from None
        existed = self.path.exists()
        try:
            conn = self._connect()
            try:
                if existed:
                    have = self._columns(conn)
                    if have and not all(c in have for c in _REQUIRED):
                        raise StoreError(f"results store {self.path}: its 'runs' table lacks the column(s) "
                                         f"{[c for c in _REQUIRED if c not in have]}; this is not an attnzoo results "
                                         f"store. {_hint(self.path)}")
                    if have:
                        return
                cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
                conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
                conn.execute("CREATE INDEX IF NOT EXISTS runs_label_seed ON runs (label, seed)")
                self._migrated = True
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise self._error("open", e) from None

    def _error(self, action: str, e: BaseException) -> StoreError:
        what = "is not a readable SQLite database" if isinstance(e, sqlite3.DatabaseError) and "not a database" in str(e) \
            else f"cannot {action} it ({type(e).__name__}: {e})"
        return StoreError(f"results store {self.path}: {what}. {_hint(self.path)}")

    @staticmethod
    def _columns(conn: sqlite3.Connection) -> list[str]:
        return [r[1] for r in conn.execute("PRAGMA table_info(runs)")]

    def _connect(self) -> sqlite3.Connection:
        # isolation_level None + explicit BEGIN/COMMIT: one transaction per write, nothing implicit
        try:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as e:
            raise self._error("open", e) from None
        conn.row_factory = sqlite3.Row
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Add columns that this version has and the file lacks (older stores keep their rows)."""
        if self._migrated:
            return
        have = set(self._columns(conn))
        for name, decl in COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl.replace('PRIMARY KEY', '').replace('NOT NULL', '')}")
        self._migrated = True

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
            self._migrate(conn)
            conn.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", values)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise self._error(f"write the run {row['key']} to", e) from None
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
        except sqlite3.Error as e:
            raise self._error("read", e) from None
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
        except sqlite3.Error as e:
            raise self._error("read", e) from None
        finally:
            conn.close()

    def finished_at(self) -> dict[str, str | None]:
        """key -> finished_at for every stored run."""
        conn = self._connect()
        try:
            return {k: f for k, f in conn.execute("SELECT key, finished_at FROM runs")}
        except sqlite3.Error as e:
            raise self._error("read", e) from None
        finally:
            conn.close()

    def _decode(self, row: dict[str, Any]) -> dict[str, Any]:
        for k in _JSON_COLUMNS:
            if row.get(k) is not None:
                try:
                    row[k] = json.loads(row[k])
                except (TypeError, ValueError) as e:
                    raise StoreError(f"results store {self.path}: run {row.get('key')!r} has a damaged {k} column "
                                     f"({e}). {_hint(self.path)}") from None
        row["is_baseline"] = bool(row.get("is_baseline"))
        return row
