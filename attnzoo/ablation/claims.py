"""Claims: a cell is claimed, atomically, before it starts, so concurrent sweeps never run it twice.

A claim is the file ``runs/.claims/<cell key>.claim``, holding its owner (host, pid, the pid's
start time, a random token, the executor) as JSON; its modification time is the heartbeat. It is
created by writing a private temporary file and hard-linking it to the claim's name: ``link`` fails
when the name exists, on a local disk and on NFS alike (the classic NFS-safe lock; a link whose
reply was lost is recognised by the temporary file's link count of 2). SQLite locks are not used:
they are unreliable over NFS, and claims must work across machines that share the run folders.

A claim is stale, and is taken over, when

* its heartbeat (mtime) is older than ``timeout_s``, or
* its owner ran on this host, the claim says the owner's runs die with it (the local process pool
  and Ray), and the owner pid no longer exists (or is now another process: a different start time).

Takeover is serialised by a second exclusive file (``<key>.takeover``), so of two sweeps that find
the same stale claim only one replaces it. The owner touches its claims every ``heartbeat_s``
(and a running cell touches its own claim too, so a SLURM job whose driver died keeps its claim
while it runs); a finished cell's claim is removed after its ``result.json`` is written.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["ClaimBook", "process_start_time", "pid_alive"]

HOST = socket.gethostname()


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` exists here (and, when ``start`` is given, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if start is not None:
        now = process_start_time(pid)
        if now is not None and now != start:
            return False
    return True


class ClaimBook:
    """The claims this process holds on one grid's run folders."""

    def __init__(self, runs_dir: str | Path, timeout_s: float = 600.0, executor: str = "local",
                 pid_rule: bool = True, heartbeat_s: float | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"claim timeout must be > 0 seconds, got {timeout_s!r}")
        self.root = Path(runs_dir) / ".claims"
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.5, min(30.0, self.timeout_s / 4))
        self.token = uuid.uuid4().hex
        self.owner = {"host": HOST, "pid": os.getpid(), "pid_start": process_start_time(os.getpid()),
                      "token": self.token, "executor": executor, "pid_rule": bool(pid_rule)}
        self.held: dict[str, Path] = {}
        self._beat = 0.0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.claim"

    # ------------------------------------------------------------------ primitives
    def _create(self, path: Path, data: dict[str, Any]) -> bool:
        """Atomically create ``path`` with ``data``; False if it exists."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{path.name}.{self.token[:8]}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps({**data, "since": time.time()}))
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            try:  # NFS: the link may have been made although its reply was lost
                return os.stat(tmp).st_nlink == 2
            except OSError:
                return False
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, Any], float] | None:
        """(owner, mtime) of a claim; None if it vanished. An unreadable claim has owner {}."""
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(path.read_text())
            info = info if isinstance(info, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            info = {}
        return info, mtime

    def is_stale(self, info: dict[str, Any], mtime: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - mtime > self.timeout_s:
            return True
        if info.get("host") == HOST and info.get("pid_rule") and isinstance(info.get("pid"), int):
            return not pid_alive(info["pid"], info.get("pid_start"))
        return False

    # ------------------------------------------------------------------ API
    def holder(self, key: str) -> dict[str, Any] | None:
        """The live owner of ``key``'s claim, or None when it is free or stale."""
        got = self._read(self.path(key))
        if got is None or self.is_stale(*got):
            return None
        return got[0]

    def try_claim(self, key: str) -> bool:
        """Claim ``key``; True when this process now holds it (a stale claim is taken over)."""
        if key in self.held:
            return True
        path = self.path(key)
        for _ in range(3):
            if self._create(path, self.owner):
                self.held[key] = path
                return True
            got = self._read(path)
            if got is None:
                continue  # released meanwhile: try again
            info, mtime = got
            if not self.is_stale(info, mtime):
                return False
            lock = self.root / f"{key}.takeover"
            if not self._create(lock, self.owner):
                lk = self._read(lock)
                if lk is not None and time.time() - lk[1] > 60:  # a taker that died mid-takeover
                    try:
                        lock.unlink()
                    except OSError:
                        pass
                return False
            try:
                again = self._read(path)
                if again is not None and again[0].get("token") == info.get("token") and self.is_stale(*again):
                    path.unlink()
            except FileNotFoundError:
                pass
            finally:
                try:
                    lock.unlink()
                except OSError:
                    pass
        return False

    def release(self, key: str) -> None:
        """Remove ``key``'s claim if this process still holds it."""
        path = self.held.pop(key, None)
        if path is None:
            return
        got = self._read(path)
        if got is not None and got[0].get("token") == self.token:
            try:
                path.unlink()
            except OSError:
                pass

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def heartbeat(self, force: bool = False) -> None:
        """Touch every held claim (at most every ``heartbeat_s`` unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._beat < self.heartbeat_s:
            return
        self._beat = now
        for path in self.held.values():
            try:
                os.utime(path)
            except OSError:
                pass
