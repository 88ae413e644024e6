"""Where data sets are looked for, and the error raised when they are not there.

Order of the roots a data set is looked for under:

1. ``data_dir`` when it is given explicitly -- then *only* there, so a mistyped path is an error
   instead of a silent fall-back to some other copy;
2. otherwise ``$ATTNZOO_DATA``, then the cache folder (``$XDG_CACHE_HOME/attnzoo`` or
   ``~/.cache/attnzoo``), then system folders a data set module names (Debian's
   ``dataset-fashion-mnist`` package installs ``/usr/share/datasets/fashion-mnist``).

Downloads (only in ``prepare_data`` and only with ``download=True``) go to :func:`download_root`:
``data_dir``, else ``$ATTNZOO_DATA``, else the cache folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = [
    "ENV_VAR",
    "DataNotFoundError",
    "cache_root",
    "download_root",
    "search_roots",
    "find_first",
]

ENV_VAR = "ATTNZOO_DATA"


class DataNotFoundError(FileNotFoundError):
    """A data set was not found in any of the folders it was looked for in.

    ``.searched`` holds those folders, in the order they were tried.
    """

    def __init__(self, message: str, searched: Sequence[Path]) -> None:
        super().__init__(message)
        self.searched = list(searched)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/attnzoo`` if XDG_CACHE_HOME is set, else ``~/.cache/attnzoo``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "attnzoo"


def search_roots(data_dir: str | os.PathLike | None, system_dirs: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The roots to look under, in order (see the module docstring)."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    roots.append(cache_root())
    roots.extend(Path(d) for d in system_dirs)
    out: list[Path] = []
    for r in roots:  # keep order, drop duplicates
        if r not in out:
            out.append(r)
    return out


def download_root(data_dir: str | os.PathLike | None) -> Path:
    """Where a download is written: ``data_dir``, else ``$ATTNZOO_DATA``, else the cache folder."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else cache_root()


def find_first(
    candidates: Sequence[Path], accept: Callable[[Path], bool], *, what: str, how_to_get: str
) -> Path:
    """The first folder in ``candidates`` for which ``accept(folder)`` is true.

    Raises :class:`DataNotFoundError` listing every folder tried and ``how_to_get``.
    """
    for c in candidates:
        if c.is_dir() and accept(c):
            return c
    tried = "\n".join(f"  - {c}" for c in candidates)
    raise DataNotFoundError(
        f"{what} not found. Looked in:\n{tried}\nTo get it: {how_to_get}", candidates
    )
