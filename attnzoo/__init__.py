"""attnzoo: drop-in attention blocks for CNNs, insertion into backbones, and honest ablations.

The public API: the block factory (``register_attn``, ``create_attn``, ``get_attn``, ``list_attn``),
the backbones (``create_backbone``, ``list_backbones``), ``insert_attn`` and ``replace_attn``. The Lightning harness
lives in ``attnzoo.training``, ablations in ``attnzoo.ablation``, pictures in ``attnzoo.explain``.
"""
from __future__ import annotations

from . import blocks as _blocks  # noqa: F401  (registers every block)
from .backbones import create_backbone, list_backbones
from .factory import create_attn, get_attn, list_attn, register_attn
from .insertion import insert_attn, replace_attn

__version__ = "0.1.0"

__all__ = [
    "create_attn", "get_attn", "list_attn", "register_attn",
    "create_backbone", "list_backbones", "insert_attn", "replace_attn",
    "__version__",
]
