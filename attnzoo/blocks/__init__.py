"""The block zoo. Every module in this package registers its blocks on import.

Modules are discovered, not listed, so adding a block is adding one file.

``native_status()`` says whether the native CPU kernels (``_native.c``) are in use: "on (<library>)",
"off (ATTNZOO_NATIVE=0)" or "unavailable: <why>".
"""
from __future__ import annotations

import importlib
import pkgutil

from ._native import status as native_status

__all__ = ["native_status"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")
