"""Insert attention blocks into existing networks: ``insert_attn(model, "se", position="standard")``.

See ``insert.py`` for the steps (plan, probe, build, apply), ``positions.py`` for what each position
means, ``adapters.py`` for how host blocks are described and registered, ``hosts/`` for the host families
known without user-written adapters (one file each), ``glob.py`` for the
``after:<glob>`` fallback, ``replace.py`` for ``replace_attn`` (swap a network's own SE modules for
any block) and ``report.py`` for the ``InsertReport``.
"""
from __future__ import annotations

from .adapters import HostAdapter, adapter_for, host_adapters, register_host_adapter
from . import hosts  # noqa: F401,E402  (registers the adapters of every host family)
from .insert import insert_attn
from .positions import POSITIONS, IdentityInit, register_position
from .replace import SE_LIKE, replace_attn
from .report import InsertReport, SiteRecord

__all__ = ["insert_attn", "replace_attn", "SE_LIKE", "InsertReport", "SiteRecord", "IdentityInit", "POSITIONS", "HostAdapter",
           "adapter_for", "host_adapters", "register_host_adapter", "register_position"]
