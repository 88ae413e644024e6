"""Variants of stock ultralytics model YAMLs with attention rows, every ``from`` index renumbered.

``yolo_yaml(d, "ema", after="C3k2", where="backbone")`` puts ``[-1, 1, AttnZoo, [ema]]`` right after
each matching row. A row that read stock layer ``k`` (``[-1, 6]`` in a Concat, Detect's
``[16, 19, 22]``) then reads the row that now carries ``k``'s output -- the attention row after ``k``
if there is one, else ``k`` itself -- so the head sees the same layers (with attention applied), with
the same shapes. ``-1`` stays ``-1``: the row before is the one carrying the previous stock layer's output.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .modules import ATTNZOO_KEY, check_attnzoo_key

__all__ = ["YamlVariant", "load_model_dict", "yolo_yaml", "write_yolo_yaml", "dump_model_yaml", "main"]

_HEADS = {"Detect", "Segment", "Pose", "OBB", "Classify", "v10Detect", "RTDETRDecoder", "WorldDetect", "YOLOEDetect",
          "Segment26", "Pose26", "OBB26", "YOLOESegment", "YOLOESegment26", "Depth", "SemanticSegment"}
WHERE = ("backbone", "head", "all")


@dataclass
class YamlVariant:
    """A model dict with inserted rows; ``index_map[k]`` = the new row carrying stock row ``k``'s output."""

    d: dict[str, Any]
    index_map: dict[int, int]
    inserted: list[int] = field(default_factory=list)  # new indices of the AttnZoo rows
    stock_of: dict[int, int] = field(default_factory=dict)  # new row -> the stock row it is (or follows)


def load_model_dict(cfg: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """(model dict, scale letter or '', stem) of a stock name (``yolo11n.yaml``) or a YAML path."""
    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)
        return d, str(d.pop("scale", "") or ""), Path(str(d.pop("yaml_file", "model.yaml"))).stem
    from ultralytics.nn.tasks import yaml_model_load

    try:
        d = yaml_model_load(cfg)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model YAML {str(cfg)!r} not found, neither as a path nor among ultralytics' "
                                f"stock models (ultralytics/cfg/models/, e.g. yolo11n.yaml, yolov8s.yaml)") from e
    scale = str(d.pop("scale", "") or "")
    d.pop("yaml_file", None)
    return d, scale, Path(str(cfg)).stem


def _rows(d: dict[str, Any]) -> list[tuple[str, list]]:
    return [(s, list(r)) for s in ("backbone", "head") for r in d.get(s) or []]


def _matches(row: list, i: int, after: Sequence[str | int]) -> bool:
    return any((isinstance(a, int) and a == i) or (isinstance(a, str) and row[2] == a) for a in after)


def yolo_yaml(cfg: str | Path | dict[str, Any], attn: str, after: str | int | Sequence[str | int] = "C3k2",
              where: str = "backbone") -> YamlVariant:
    """The model dict of ``cfg`` with ``[-1, 1, AttnZoo, [attn]]`` after each row matching ``after`` in ``where``.

    ``after``: module names (``"C3k2"``, ``"SPPF"``, ``"C3k2,SPPF"``) and/or stock row indices.
    """
    from .modules import _check_attn_rows

    d, _, _ = load_model_dict(cfg)
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    if isinstance(after, str):
        after = [a.strip() for a in after.split(",") if a.strip()]
    elif isinstance(after, int):
        after = [after]
    after = [int(a) if isinstance(a, str) and re.fullmatch(r"-?\d+", a) else a for a in after]
    if not after:
        raise ValueError("after must name at least one module (e.g. 'C3k2') or row index")
    rows = _rows(d)
    after = [a % len(rows) if isinstance(a, int) else a for a in after]
    for a in after:
        if isinstance(a, str) and not any(r[2] == a for _, r in rows):
            names = sorted({r[2] for _, r in rows})
            raise ValueError(f"no row of this model is a {a!r}; its modules are {', '.join(names)}")
    picked = [i for i, (s, r) in enumerate(rows) if _matches(r, i, after) and (where == "all" or s == where)]
    heads = [i for i in picked if rows[i][1][2] in _HEADS]
    if heads:
        raise ValueError(f"rows {heads} are output heads ({rows[heads[0]][1][2]}); attention goes before them, not after")
    if not picked:
        raise ValueError(f"no {'/'.join(map(str, after))} row in the {where} of this model")

    new_pos: dict[int, int] = {}  # stock row -> its new index
    index_map: dict[int, int] = {}  # stock row -> new row carrying its output
    k = 0
    for i in range(len(rows)):
        new_pos[i] = k
        k += 2 if i in picked else 1
        index_map[i] = k - 1

    def remap(f: Any, i: int) -> Any:
        if isinstance(f, list):
            return [remap(x, i) for x in f]
        if f == -1:
            return -1
        src = i + f if f < 0 else f
        if not 0 <= src < i:
            raise ValueError(f"stock row {i} reads row {f}, which is not an earlier row")
        return index_map[src] - new_pos[i] if f < 0 else index_map[src]

    out = {"backbone": [], "head": []}
    inserted, stock_of = [], {}
    for i, (section, row) in enumerate(rows):
        new = [remap(row[0], i), *row[1:]]
        out[section].append(new)
        stock_of[new_pos[i]] = i
        if i in picked:
            out[section].append([-1, 1, "AttnZoo", [attn]])
            inserted.append(new_pos[i] + 1)
            stock_of[new_pos[i] + 1] = i
    variant = {k2: v for k2, v in d.items() if k2 not in ("backbone", "head")}
    variant["backbone"], variant["head"] = out["backbone"], out["head"]
    _check_attn_rows(variant)
    return YamlVariant(variant, index_map, inserted, stock_of)


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_") or "attn"


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()


def dump_model_yaml(d: dict[str, Any], path: str | Path, scale: str = "", note: str = "",
                    stock_of: dict[int, int] | None = None) -> Path:
    """Write a model dict in ultralytics' layout (one row a line); the chosen scale is listed first.

    ultralytics reads the scale from the file name (``yolo11n-ema.yaml`` -> n) and takes the first listed
    one when the name has none, so either way the model gets ``scale``.
    """
    d = copy.deepcopy(d)
    scales = d.get("scales")
    if scale and isinstance(scales, dict) and scale in scales:
        d["scales"] = {scale: scales[scale], **{k: v for k, v in scales.items() if k != scale}}
    lines = [f"# {note}" if note else "# model YAML written by attnzoo",
             "# written by attnzoo.integrations.ultralytics; rows: [from, repeats, module, args]", ""]
    for key, value in d.items():
        if key in ("backbone", "head"):
            continue
        if key == "scales" and isinstance(value, dict):
            lines.append("scales:")
            lines += [f"  {k}: {_flow(v)}" for k, v in value.items()]
        elif key == ATTNZOO_KEY:
            lines.append(f"{ATTNZOO_KEY}:  # insert_attn on the built rows (attnzoo.integrations.ultralytics)")
            lines += [f"  - {_flow(e)}" for e in value]
        else:
            lines.append(yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False).rstrip())
    i = 0
    for section in ("backbone", "head"):
        lines += ["", f"{section}:"]
        for row in d.get(section) or []:
            comment = f"  # {i}"
            if stock_of is not None and i in stock_of:
                comment += f" (stock {stock_of[i]})" if row[2] != "AttnZoo" else f" (attention on stock {stock_of[i]})"
            lines.append(f"  - {_flow(row)}{comment}")
            i += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    back = yaml.safe_load(text)
    if back != d:  # the file must read back as the dict it was written from
        raise RuntimeError(f"attnzoo: the YAML written for {path} does not read back as its model dict")
    path.write_text(text)
    return path


def write_yolo_yaml(cfg: str | Path, attn: str, after: str | int | Sequence[str | int] = "C3k2",
                    where: str = "backbone", out: str | Path | None = None, position: str | None = None,
                    blocks: Any = "all") -> Path:
    """Write a variant of ``cfg`` (default ``<stem>-<attn>.yaml``); return its path.

    Without ``position``: AttnZoo rows after ``after`` (see :func:`yolo_yaml`). With ``position``
    (``bottleneck``, ``block``, ``c3k``, ``sppf``, ``psa``): the stock rows plus an ``attnzoo:`` key that
    inserts ``attn`` at that position inside the rows of ``where`` when the model is built.
    """
    d, scale, stem = load_model_dict(cfg)
    if position is None:
        v = yolo_yaml(d, attn, after, where)
        target = Path(out) if out is not None else Path(f"{stem}-{_slug(attn)}.yaml")
        return dump_model_yaml(v.d, target, scale, note=f"{stem} with {attn} after each {after} ({where})",
                               stock_of=v.stock_of)
    entry: dict[str, Any] = {"attn": attn, "position": position}
    if where != "all":
        entry["where"] = where
    if blocks != "all":
        entry["blocks"] = blocks
    d[ATTNZOO_KEY] = list(d.get(ATTNZOO_KEY) or []) + [entry]
    check_attnzoo_key(d)
    target = Path(out) if out is not None else Path(f"{stem}-{_slug(attn)}-{position}.yaml")
    return dump_model_yaml(d, target, scale, note=f"{stem} with {attn} at position {position} ({where})")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="attnzoo yolo-yaml",
        description="Write a variant of an ultralytics model YAML with an attnzoo block: AttnZoo rows after the "
                    "chosen rows (every 'from' index renumbered), or with --position an 'attnzoo:' key that inserts "
                    "the block inside the rows' blocks. Train it with 'attnzoo yolo train model=OUT data=...'.")
    p.add_argument("model", help="stock name (yolo11n.yaml, yolov8s.yaml: the letter picks the scale) or a YAML path")
    p.add_argument("--attn", required=True, help="block spec, e.g. ema, cbam, 'se(rd_ratio=0.25)'")
    p.add_argument("--after", default="C3k2", help="module name(s) or stock row indices, comma-separated "
                                                   "(default C3k2; e.g. SPPF, 'C3k2,SPPF', 16,19,22)")
    p.add_argument("--where", default="backbone", choices=WHERE, help="rows of the backbone, the head, or all")
    p.add_argument("--position", default=None,
                   help="instead of rows: insert inside blocks at this position (bottleneck, block, c3k, sppf, psa)")
    p.add_argument("-o", "--out", default=None, help="output file (default <stem>-<attn>[-<position>].yaml; keep the "
                                                      "scale letter in the name, ultralytics reads it from there)")
    args = p.parse_args(argv)
    try:
        path = write_yolo_yaml(args.model, args.attn, args.after, args.where, args.out, args.position)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"attnzoo yolo-yaml: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(path)
    return 0
