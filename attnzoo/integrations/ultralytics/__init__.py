"""attnzoo blocks inside ultralytics YOLO models: YAML rows, insert_attn hosts, the ``attnzoo yolo`` CLI.

``import attnzoo.integrations.ultralytics`` (which unpickling a checkpoint that holds an attnzoo
module does by itself) makes these work with ultralytics' own Python API and CLI, with no edit to
ultralytics:

* a model-YAML row ``[-1, 1, AttnZoo, [cbam]]`` / ``[-1, 1, AttnZoo, ["se(rd_ratio=0.25)"]]``, no channel
  count, at any scale (``modules``);
* a model-YAML key ``attnzoo: [{attn: ema, position: bottleneck}]`` that runs ``insert_attn`` on the
  built rows, so the blocks are in every model ultralytics builds from that YAML: the trainer's, the
  DDP workers', the reloaded checkpoint's (``modules``);
* ``attnzoo.insert_attn(model, "ema", position="bottleneck")`` on ultralytics models (``hosts``);
* ``write_yolo_yaml`` / ``attnzoo yolo-yaml``: a stock YAML with attention rows inserted and every
  ``from`` index renumbered (``yamlgen``);
* ``run_detection``: an ablation ``run_fn`` that trains and validates one YOLO cell (``ablation``).

Multi-GPU: ultralytics' DDP launch writes a Python file that imports only ultralytics and then builds
the model from the YAML in a fresh process; :func:`install` wraps ``ultralytics.utils.dist.
generate_ddp_file`` so that file first imports this module.

ultralytics is AGPL-3.0; attnzoo does not vendor it, and a program that uses it is subject to its licence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ultralytics

from .hosts import ULTRALYTICS_POSITIONS, register_hosts
from .modules import ATTNZOO_KEY, AttnZoo, attn_rows, last_reports
from .modules import install as _install_modules
from .yamlgen import YamlVariant, load_model_dict, write_yolo_yaml, yolo_yaml

__all__ = [
    "AttnZoo", "ATTNZOO_KEY", "ULTRALYTICS_POSITIONS", "install", "yolo_with_attn", "yolo_main", "yolo_yaml_main",
    "write_yolo_yaml", "yolo_yaml", "YamlVariant", "load_model_dict", "attn_rows", "last_reports", "DDP_IMPORT_LINE",
    "TESTED_ULTRALYTICS",
]

TESTED_ULTRALYTICS = ">=8.4,<8.5"  # the range of the extra; CI tests 8.4.190 only
DDP_IMPORT_LINE = "import attnzoo.integrations.ultralytics  # registers AttnZoo (added by attnzoo)"


def _patch_ddp_file() -> None:
    from ultralytics.utils import dist

    if getattr(dist.generate_ddp_file, "_attnzoo", False):
        return
    original = dist.generate_ddp_file

    def generate_ddp_file(trainer: Any) -> str:
        path = original(trainer)
        text = Path(path).read_text(encoding="utf-8")
        marker = 'if __name__ == "__main__":\n'
        if DDP_IMPORT_LINE not in text:
            if marker not in text:
                raise RuntimeError(f"attnzoo: ultralytics {ultralytics.__version__}'s DDP file {path} has no "
                                   f"{marker.strip()!r} line to add the attnzoo import after; this version is "
                                   f"untested (attnzoo[ultralytics] needs ultralytics{TESTED_ULTRALYTICS})")
            # after sys.path is restored, so the import finds the same attnzoo as this process
            lines = text.split("\n")
            at = next((k + 1 for k, line in enumerate(lines) if line.strip().startswith("sys.path =")), None)
            if at is None:
                at = next(k + 1 for k, line in enumerate(lines) if line == marker.rstrip("\n"))
            lines.insert(at, "    " + DDP_IMPORT_LINE)
            Path(path).write_text("\n".join(lines), encoding="utf-8")
        return path

    generate_ddp_file._attnzoo = True  # type: ignore[attr-defined]
    dist.generate_ddp_file = generate_ddp_file


def install() -> None:
    """Register everything with ultralytics (done on import; calling it again changes nothing)."""
    _install_modules()
    register_hosts()
    _patch_ddp_file()


install()


def yolo_with_attn(cfg: str | Path, attn: str, position: str = "bottleneck", save_to: str | Path | None = None,
                   **entry: Any):
    """A ``YOLO`` model from stock/own YAML ``cfg`` with ``attnzoo: [{attn, position, **entry}]`` added.

    The YAML is written to ``save_to`` (default: ``<stem>-<attn>-<position>.yaml`` in the current folder)
    and the model is built from that file, so ``.train()`` -- which rebuilds the model from its YAML --
    and the trained ``best.pt`` keep the blocks. ``entry`` takes ``blocks``, ``init``, ``attn_kwargs``,
    ``layers`` and ``where`` (see ``modules.check_attnzoo_key``).
    """
    from ultralytics import YOLO

    from .yamlgen import dump_model_yaml, _slug

    d, scale, stem = load_model_dict(cfg)
    d.setdefault(ATTNZOO_KEY, [])
    d[ATTNZOO_KEY] = list(d[ATTNZOO_KEY]) + [{"attn": attn, "position": position, **entry}]
    out = Path(save_to) if save_to is not None else Path(f"{stem}-{_slug(attn)}-{position}.yaml")
    dump_model_yaml(d, out, scale, note=f"{stem} with attnzoo.insert_attn({attn!r}, position={position!r})")
    return YOLO(str(out))


def yolo_main(argv: list[str]) -> int:
    """``attnzoo yolo ARGS``: ultralytics' ``yolo ARGS``, with attnzoo's names registered."""
    import sys

    from ultralytics import cfg as ucfg

    argv_list = ["yolo", *argv]
    sys.argv[:] = argv_list  # ultralytics.cfg.ARGV is sys.argv's list object; keep it for other readers too
    ucfg.ARGV = sys.argv
    ucfg.entrypoint()
    return 0


def yolo_yaml_main(argv: list[str]) -> int:
    from .yamlgen import main

    return main(argv)
