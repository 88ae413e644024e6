"""Ablation grid files: load, expand into cells (variant x seed), validate every cell before any run.

A grid file (``configs/ablation/*.yaml``)::

    name: fmnist_resnet20            # optional; default: the file's stem
    base: ../fit/fmnist_resnet20.yaml  # fit config(s), relative to this file (or the cwd / repo root)
    overrides:                       # dotted keys applied to every cell
      trainer.max_epochs: 3
      data.subset: 1000              # data.X is data.init_args.X
    axes:                            # dotted key -> values; the cells are the cross product
      model.attn: [null, se, eca, "se(rd_ratio=0.25)"]
      model.backbone: [resnet20, resnet56]
    variants:                        # optional extra cells, each crossed with the axes it does not set
      - {label: mhsa@stage3, model.attn: mhsa, model.stages: [3]}
    baseline: {model.attn: null}     # or a variant label; default {model.attn: null}
    seeds: [0, 1, 2]
    seed_keys: [seed_everything, data.init_args.seed]   # keys that receive the seed (default)
    store: results.sqlite            # relative to this file (default: <name>.sqlite beside it)
    workers: 1                       # parallel runs (one per GPU; on CPU they split the cores)
    keep_checkpoints: first_seed     # first_seed | all | none
    run_fn: attnzoo.training:run_fit_test   # "module:function" (config, run_dir) -> results dict
    threads: 1                       # torch threads per run, whatever the number of workers (default 1)

Cells whose ``model.attn`` is null (the plain backbone) drop the attention-only keys
(``model.position``, ``model.stages``, ``model.blocks``, ``model.init``, ``model.attn_kwargs``) and
are deduplicated, so ``attn x position`` grids hold one baseline per remaining context. A cell's
baseline is the baseline cell whose non-attention overrides (backbone, data, trainer, ...) equal
its own, so ``Δ`` always compares like with like.

Each cell has a stable ``key``: a hash of the parsed base files and the cell's full config
(seed included; ``threads`` too when it is not 1), so an edited recipe runs again and an unchanged
one is never run twice.

Run folders: ``runs/<label as a safe name>-<variant hash>/seed<k>``, where the variant hash covers
the bases and the variant's config (not the seed). Every label thus has its own folder, a folder
never lies outside ``runs/`` (``..``, ``/`` and other unsafe characters are replaced), labels that
sanitise alike (``a/b``, ``a b``) still get different folders, and editing a variant's recipe gives
it a new folder instead of deleting the previous version's checkpoints and logs. Two labels whose
configs resolve to the same run are refused, as is anything else that can be known before a run
(see :func:`validate_grid`).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

__all__ = [
    "Cell", "Grid", "GridError", "load_grid", "expand_grid", "validate_grid", "cell_complexity",
    "ATTN_KEYS", "KEEP_CHECKPOINTS", "DEFAULT_RUN_FN", "check_run_fn", "slug", "grid_metric_key", "run_fn_hook",
]

BASE_KEY = "__base__"
ATTN_KEYS = ("model.position", "model.stages", "model.blocks", "model.init", "model.attn_kwargs")
KEEP_CHECKPOINTS = ("first_seed", "all", "none")
DEFAULT_RUN_FN = "attnzoo.training:run_fit_test"
DEFAULT_SEED_KEYS = ("seed_everything", "data.init_args.seed")
GRID_KEYS = (
    "name", "description", "base", "overrides", "axes", "variants", "baseline", "seeds", "seed_keys",
    "store", "workers", "keep_checkpoints", "run_fn", "threads",
)
GRID_KEYS += ("metric",)  # the report's metric (attnzoo.ablation.report.metric_from_grid); no effect on the cells
# cells run in workers without a terminal: no progress bars or model summaries unless asked for
QUIET_TRAINER = {"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}
_DATA_CONTAINER_KEYS = ("class_path", "init_args", "dict_kwargs")


class GridError(ValueError):
    """A grid file or one of its cells is wrong; the message names the file or the cells."""


@dataclass
class Cell:
    """One run of the grid: a variant (label) with one seed."""

    label: str  # the variant, e.g. "se", "se backbone=resnet56", "mhsa@stage3"
    seed: int
    overrides: dict[str, Any]  # dotted key -> value, grid overrides + axis values + variant (seed excluded)
    config: dict[str, Any]  # the run config: {"__base__": [abs paths], model, data, trainer, seed_everything}
    key: str  # stable hash of the parsed bases + config
    baseline: str | None = None  # label of this cell's baseline variant; None for a baseline or when none matches
    is_baseline: bool = False
    variant_key: str = ""  # hash of the parsed bases + config without the seed: names the run folder

    @property
    def name(self) -> str:
        return f"{self.label} seed={self.seed}"


@dataclass
class Grid:
    path: Path
    name: str
    bases: list[Path]
    cells: list[Cell]
    seeds: list[int]
    store: Path
    workers: int | str = 1
    keep_checkpoints: str = "first_seed"
    run_fn: str = DEFAULT_RUN_FN
    raw: dict[str, Any] = field(default_factory=dict)
    threads: int = 1

    @property
    def variants(self) -> list[str]:
        """Variant labels in grid order (each once)."""
        return list(dict.fromkeys(c.label for c in self.cells))

    @property
    def runs_dir(self) -> Path:
        return self.store.parent / "runs"

    def run_dir(self, cell: Cell) -> Path:
        """``runs/<slug(label)>-<variant hash>/seed<k>``: one folder per cell, always inside ``runs/``."""
        return self.runs_dir / f"{slug(cell.label)}-{cell.variant_key[:10]}" / f"seed{cell.seed}"


def slug(label: str) -> str:
    """A safe folder name for a label: "se(rd_ratio=0.25) backbone=resnet56" -> "se_rd_ratio-0.25_backbone-resnet56".

    Only ``A-Za-z0-9@+-_`` and single inner dots remain, so no slug is ``.``, ``..``, hidden, or a path."""
    s = re.sub(r"[=]", "-", label)
    s = re.sub(r"[^A-Za-z0-9@.+-]+", "_", s)
    s = re.sub(r"\.{2,}", "_", s).strip("._")
    return s[:80] or "cell"


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def _is_no_attn(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "none")


def _canonical_key(key: str) -> str:
    """``data.subset`` -> ``data.init_args.subset`` (the data module is a subclass-mode section)."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[0] == "data" and parts[1] not in _DATA_CONTAINER_KEYS:
        return ".".join(["data", "init_args", *parts[1:]])
    return key


def _set_dotted(config: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise GridError(f"{where}: cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is {nxt!r}, not a section")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping (line {seen[key] + 1} and line "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key; the constructor reports it
            pass
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise GridError(f"{path}: {what} is not valid YAML ({e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise GridError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from e


def _find_base(entry: str, grid_dir: Path) -> Path:
    p = Path(entry).expanduser()
    candidates = [p] if p.is_absolute() else [grid_dir / p, Path.cwd() / p, Path(__file__).resolve().parents[2] / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise GridError(f"base fit config {entry!r} not found (looked for {looked})")


def _base_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[Any]:
    """The parsed YAML of a fit config and its ``__base__`` chain (for the cell key)."""
    if path in seen:
        raise GridError(f"fit configs include each other in a loop: {' -> '.join(map(str, (*seen, path)))}")
    data = _read_yaml(path, "fit config") or {}
    layers: list[Any] = []
    if isinstance(data, dict) and BASE_KEY in data:
        data = dict(data)
        bases = data.pop(BASE_KEY)
        for b in bases if isinstance(bases, list) else [bases]:
            bp = Path(b).expanduser()
            bp = bp if bp.is_absolute() else path.parent / bp
            if not bp.is_file():
                raise GridError(f"{path}: {BASE_KEY} file {str(b)!r} not found (looked for {bp})")
            layers += _base_layers(bp.resolve(), (*seen, path))
    layers.append(data)
    return layers


def _as_dotted_map(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{where} must be a mapping of dotted config keys to values, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or k.startswith(".") or k.endswith("."):
            raise GridError(f"{where}: {k!r} is not a dotted config key such as 'model.attn'")
        out[_canonical_key(k)] = v
    return out


def _context(overrides: dict[str, Any]) -> dict[str, Any]:
    """The non-attention part of a cell: what must match between a cell and its baseline."""
    return {k: v for k, v in overrides.items() if k != "model.attn" and k not in ATTN_KEYS}


def _axis_part(key: str, value: Any) -> str:
    return _fmt(value) if key == "model.attn" and value is not None else (
        "baseline" if key == "model.attn" else f"{key.rsplit('.', 1)[-1]}={_fmt(value)}")


def _label(parts: list[str]) -> str:
    return " ".join(p for p in parts if p) or "base"


def load_grid(path: str | Path, store: str | Path | None = None, workers: int | str | None = None,
              threads: int | None = None) -> Grid:
    """Read a grid file and expand it into cells (no validation of the fit configs; see ``validate_grid``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GridError(f"grid file {str(path)!r} not found")
    path = path.resolve()
    raw = _read_yaml(path, "grid file")
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file is a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = [k for k in raw if k not in GRID_KEYS]
    if unknown:
        raise GridError(f"{path}: unknown grid key(s) {unknown}; a grid file has {', '.join(GRID_KEYS)}")
    return expand_grid(raw, path, store=store, workers=workers, threads=threads)


def expand_grid(raw: dict[str, Any], path: Path, store: str | Path | None = None, workers: int | str | None = None,
                threads: int | None = None) -> Grid:
    """Cells of a parsed grid file ``raw`` read from ``path`` (relative paths resolve against its folder)."""
    where = str(path)
    grid_dir = path.parent
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not name.strip():
        raise GridError(f"{where}: 'name' must be a non-empty string, got {name!r}")

    base = raw.get("base")
    if base is None:
        raise GridError(f"{where}: 'base' is missing; give the fit config(s) the cells start from, e.g. base: ../fit/fmnist_resnet20.yaml")
    base_list = base if isinstance(base, list) else [base]
    if not base_list or not all(isinstance(b, str) for b in base_list):
        raise GridError(f"{where}: 'base' must be a path or a list of paths, got {base!r}")
    try:
        bases = [_find_base(b, grid_dir) for b in base_list]
    except GridError as e:
        raise GridError(f"{where}: {e}") from None
    base_layers = [layer for b in bases for layer in _base_layers(b)]

    overrides = {**QUIET_TRAINER, **_as_dotted_map(raw.get("overrides"), f"{where}: overrides")}
    axes_raw = raw.get("axes") or {}
    axes = _as_dotted_map(axes_raw, f"{where}: axes")
    for k, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{where}: axis {k!r} must be a non-empty list of values, got {values!r}")
    variants_raw = raw.get("variants") or []
    if not isinstance(variants_raw, list):
        raise GridError(f"{where}: 'variants' must be a list of {{label: ..., <dotted key>: value, ...}}")

    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise GridError(f"{where}: 'seeds' must be a list of ints, e.g. [0, 1, 2], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{where}: 'seeds' repeats a seed: {seeds}")
    if not all(0 <= s < 2 ** 32 for s in seeds):
        raise GridError(f"{where}: seeds must lie in [0, 2**32) (numpy's and Lightning's range), got {seeds}")
    seed_keys_raw = raw.get("seed_keys", list(DEFAULT_SEED_KEYS))
    if not isinstance(seed_keys_raw, list) or not all(isinstance(k, str) and k and "." not in (k[0], k[-1])
                                                      for k in seed_keys_raw):
        raise GridError(f"{where}: 'seed_keys' must be a list of dotted config keys, e.g. "
                        f"[seed_everything, data.init_args.seed], got {seed_keys_raw!r}")
    seed_keys = [_canonical_key(k) for k in seed_keys_raw]

    keep = raw.get("keep_checkpoints", "first_seed")
    if keep not in KEEP_CHECKPOINTS:
        raise GridError(f"{where}: keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got {keep!r}")
    run_fn = raw.get("run_fn", DEFAULT_RUN_FN)
    if not isinstance(run_fn, str) or ":" not in run_fn:
        raise GridError(f"{where}: run_fn must be 'module:function', got {run_fn!r}")
    n_threads = threads if threads is not None else raw.get("threads", 1)
    if not isinstance(n_threads, int) or isinstance(n_threads, bool) or n_threads < 1:
        raise GridError(f"{where}: threads (torch threads per run) must be an int >= 1, got {n_threads!r}")
    n_workers = workers if workers is not None else raw.get("workers", 1)
    if not (n_workers == "auto" or (isinstance(n_workers, int) and not isinstance(n_workers, bool) and n_workers >= 1)):
        raise GridError(f"{where}: workers must be an int >= 1 or 'auto', got {n_workers!r}")
    store_raw = store if store is not None else raw.get("store") or f"{name}.sqlite"
    if not isinstance(store_raw, (str, Path)):
        raise GridError(f"{where}: 'store' must be a file path such as results.sqlite, got {store_raw!r}")
    store_path = Path(store_raw).expanduser()
    if not store_path.is_absolute():
        store_path = (grid_dir if store is None else Path.cwd()) / store_path

    # variants (label, assignment) before seeds: the axis product, then explicit variants
    multi = [k for k, v in axes.items() if len(v) > 1]
    variants: list[tuple[str, dict[str, Any]]] = []
    for combo in itertools.product(*axes.values()) if axes else [()]:
        assign = dict(zip(axes, combo))
        variants.append((_label([_axis_part(k, assign[k]) for k in axes if k in multi or k == "model.attn"]), assign))
    if variants_raw and not axes:
        variants = []  # explicit variants only
    elif variants_raw and "model.attn" not in axes:
        variants = []  # axes then only give the contexts the variants are crossed with
    for i, v in enumerate(variants_raw):
        if not isinstance(v, dict) or not isinstance(v.get("label"), str) or not v["label"].strip():
            raise GridError(f"{where}: variants[{i}] must be a mapping with a 'label' and dotted keys, got {v!r}")
        v = dict(v)
        label = v.pop("label").strip()
        assign_v = _as_dotted_map(v, f"{where}: variant {label!r}")
        rest = {k: vals for k, vals in axes.items() if k not in assign_v and k != "model.attn"}
        for combo in itertools.product(*rest.values()) if rest else [()]:
            ctx = dict(zip(rest, combo))
            variants.append((_label([label, *[_axis_part(k, ctx[k]) for k in rest if k in multi]]), {**ctx, **assign_v}))

    # overrides per variant; the plain backbone drops attention-only keys and is deduplicated
    expanded: list[tuple[str, dict[str, Any]]] = []
    seen_labels: dict[str, dict[str, Any]] = {}
    for label, assign in variants:
        ov = {**overrides, **assign}
        if "model.attn" in ov and _is_no_attn(ov["model.attn"]):
            ov = {k: v for k, v in ov.items() if k not in ATTN_KEYS}
            label = _label([p for p in label.split(" ") if not any(p.startswith(k.rsplit(".", 1)[-1] + "=") for k in ATTN_KEYS)])
        if label in seen_labels:
            if seen_labels[label] == ov:
                continue
            raise GridError(f"{where}: two different cells are both labelled {label!r}; give the variants distinct labels")
        seen_labels[label] = ov
        expanded.append((label, ov))

    # baselines
    baseline = raw.get("baseline", {"model.attn": None})
    if isinstance(baseline, str):
        is_base = {label: label == baseline for label, _ in expanded}
        if not any(is_base.values()):
            raise GridError(f"{where}: baseline {baseline!r} is not a cell label; labels are {[l for l, _ in expanded]}")
    elif isinstance(baseline, dict):
        bmap = _as_dotted_map(baseline, f"{where}: baseline")
        is_base = {label: all(k in ov and (ov[k] == v or (k == "model.attn" and _is_no_attn(ov[k]) and _is_no_attn(v)))
                              for k, v in bmap.items()) for label, ov in expanded}
    elif baseline is None:
        is_base = {label: False for label, _ in expanded}
    else:
        raise GridError(f"{where}: baseline must be a label, a mapping such as {{model.attn: null}}, or null; got {baseline!r}")
    base_of: dict[str, str | None] = {}
    for label, ov in expanded:
        if is_base[label]:
            base_of[label] = None
            continue
        matches = [bl for bl, bov in expanded if is_base[bl] and _context(bov) == _context(ov)]
        base_of[label] = matches[0] if len(matches) == 1 else None

    cells: list[Cell] = []
    resolved_of: dict[str, str] = {}  # the variant's resolved config (bases merged, no seed) -> label
    for label, ov in expanded:
        plain: dict[str, Any] = {}
        for k, v in ov.items():
            _set_dotted(plain, k, v, f"{where}: cell {label!r}")
        variant_payload = json.dumps({"bases": base_layers, "config": plain, "threads": n_threads}, sort_keys=True,
                                     default=str)
        variant_key = hashlib.sha256(variant_payload.encode()).hexdigest()[:16]
        resolved = _merge_layers([*base_layers, plain])
        for k in seed_keys:  # the seed is the one thing the variants of a label may share
            _pop_dotted(resolved, k)
        resolved_text = json.dumps(resolved, sort_keys=True, default=str)
        if resolved_text in resolved_of:
            raise GridError(
                f"{where}: variants {resolved_of[resolved_text]!r} and {label!r} resolve to the same config (the same "
                "run under two labels, which would be trained twice and reported as two blocks); drop one of them "
                "or make their settings differ")
        resolved_of[resolved_text] = label
        for seed in seeds:
            config: dict[str, Any] = {BASE_KEY: [str(b) for b in bases]}
            for k, v in ov.items():
                _set_dotted(config, k, v, f"{where}: cell {label!r}")
            for k in seed_keys:
                _set_dotted(config, k, seed, f"{where}: seed_keys")
            body: dict[str, Any] = {"bases": base_layers, "config": {k: v for k, v in config.items() if k != BASE_KEY}}
            if n_threads != 1:  # a run's numbers depend (~1e-6) on its thread count; 1 keeps the keys of older stores
                body["threads"] = n_threads
            key = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
            cells.append(Cell(label, seed, ov, config, key, base_of[label], is_base[label], variant_key=variant_key))
    grid = Grid(path=path, name=name, bases=bases, cells=cells, seeds=list(seeds), store=store_path.resolve(),
                workers=n_workers, keep_checkpoints=keep, run_fn=run_fn, raw=raw, threads=n_threads)
    _check_run_dirs(grid)
    return grid


def _merge_layers(layers: list[Any]) -> dict[str, Any]:
    """Deep merge of parsed config layers (later wins), as ``--config a --config b`` does for mappings."""
    out: dict[str, Any] = {}

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = copy.deepcopy(v)

    for layer in layers:
        if isinstance(layer, dict):
            merge(out, {k: v for k, v in layer.items() if k != BASE_KEY})
    return out


def _get_dotted(config: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _pop_dotted(config: dict[str, Any], key: str) -> None:
    parts = key.split(".")
    node: Any = config
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def _check_run_dirs(grid: Grid) -> None:
    """Every cell has its own run folder, inside ``runs/`` (checked before any run)."""
    runs = grid.runs_dir.resolve()
    seen: dict[Path, Cell] = {}
    for cell in grid.cells:
        d = grid.run_dir(cell)
        resolved = Path(os.path.normpath(d))
        if resolved.parent.parent != runs:
            raise GridError(f"{grid.path}: the run folder of cell {cell.name!r} ({d}) would lie outside {runs}; "
                            "give the variant a plain label")
        if resolved in seen and seen[resolved].key != cell.key:
            raise GridError(f"{grid.path}: cells {seen[resolved].name!r} and {cell.name!r} would share the run folder "
                            f"{d}; give them distinct labels")
        seen[resolved] = cell


def _first_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{type(exc).__name__}: {str(text).strip()}"


# training pools of the data sets whose sizes are fixed by their format: class_path suffix -> (images, classes)
_KNOWN_POOLS = {
    "FashionMNISTDataModule": (60000, 10),
    "CIFAR10DataModule": (50000, 10),
    "CIFAR100DataModule": (50000, 100),
}


def _pool_error(data: Any) -> str | None:
    """What is wrong with ``subset`` / ``val_size`` against the training pool, if its size is known."""
    if not isinstance(data, dict):
        return None
    class_path = str(data.get("class_path") or "")
    args = data.get("init_args") or {}
    if not isinstance(args, dict):
        return None
    short = class_path.rsplit(".", 1)[-1]
    if short == "SyntheticDataModule":
        total, classes = args.get("num_train", 256), args.get("num_classes", 10)
    elif short in _KNOWN_POOLS:
        total, classes = _KNOWN_POOLS[short]
    else:
        return None  # e.g. an ImageFolder tree: its size is only known once it is scanned
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (total, classes)):
        return None
    subset = args.get("subset")
    val_size = args.get("val_size", 0.2 if short == "SyntheticDataModule" else 0.1)
    per_class = total // classes
    if isinstance(subset, int) and not isinstance(subset, bool) and subset >= 1:
        if subset > per_class:
            return (f"data.subset={subset} images per class, but {short} has only {per_class} training images per "
                    f"class; use a subset <= {per_class} (or a fraction such as 0.5)")
        pool = subset * classes
    elif isinstance(subset, float) and 0 < subset <= 1:
        pool = max(classes, round(subset * per_class) * classes)
    else:
        pool = total
    if isinstance(val_size, int) and not isinstance(val_size, bool) and val_size >= pool:
        return (f"data.val_size={val_size} holds out the whole training pool ({pool} images"
                + (f" = data.subset {subset} x {classes} classes" if isinstance(subset, int) else "")
                + f"); use a val_size < {pool}, a fraction such as 0.1, or 0 to validate on the test split")
    return None


def _epochs_error(trainer: Any) -> str | None:
    if not isinstance(trainer, dict) or "max_epochs" not in trainer:
        return None
    e = trainer["max_epochs"]
    if e is None:
        return None
    if isinstance(e, bool) or not isinstance(e, int) or e < 1:
        return f"trainer.max_epochs={e!r}; a run of the grid trains for an int >= 1 epochs"
    return None


def _writable_error(path: Path, what: str) -> str | None:
    """None when ``path`` (a file or folder, maybe not there yet) can be created or written."""
    node = path
    while not node.exists():
        if node.parent == node:
            break
        node = node.parent
    if node == path and path.is_file():
        return None if os.access(path, os.W_OK) else f"{what} {path} exists but is not writable"
    if not node.is_dir():
        return f"{what} {path} cannot be created: {node} is not a folder"
    if not os.access(node, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be {'written' if node == path else 'created'}: {node} is not writable"
    return None


def check_run_fn(grid: Grid, run_fn: Any = None) -> None:
    """Import the grid's ``run_fn`` here, so a typo fails before any worker starts (naming the spec)."""
    spec = run_fn if run_fn is not None else grid.run_fn
    if callable(spec):
        return
    from .runner import resolve_run_fn

    try:
        resolve_run_fn(spec)
    except ImportError as e:
        raise GridError(f"{grid.path}: run_fn {spec!r} cannot be imported ({type(e).__name__}: {e}); run_fn is "
                        "'module:function' with the module importable by this Python (installed, or on PYTHONPATH) "
                        "and the function taking (config, run_dir)") from None
    except AttributeError as e:
        raise GridError(f"{grid.path}: run_fn {spec!r}: the module has no such function ({e}); run_fn is "
                        "'module:function'") from None
    except TypeError as e:
        raise GridError(f"{grid.path}: {e}; run_fn must name a function (config, run_dir) -> results dict") from None


def grid_metric_key(grid: Grid) -> str:
    """The test metric a grid's runs are judged by: its ``metric`` entry (a key, or ``{key: ...}``), else acc1."""
    value = grid.raw.get("metric") if isinstance(grid.raw, dict) else None
    if isinstance(value, dict):
        value = value.get("key")
    return value if isinstance(value, str) and value.strip() else "acc1"


def run_fn_hook(grid: Grid, name: str, run_fn: Any = None) -> Callable[..., Any] | None:
    """A companion of the grid's ``run_fn``: ``run_fn.validate(config)`` (raise if a cell's config is
    wrong, without training) or ``run_fn.complexity(config)`` (``{"params", "flops"}`` of its network).

    attnzoo's own ``run_fit_test`` has both; a pluggable run_fn (e.g. the ultralytics integration's
    detection runs) brings its own, or goes without (then only the generic checks apply).
    """
    from .runner import resolve_run_fn

    fn = resolve_run_fn(run_fn if run_fn is not None else grid.run_fn)
    hook = getattr(fn, name, None)
    return hook if callable(hook) else None


def validate_grid(grid: Grid, validate: Callable[[dict[str, Any]], Any] | None = None,
                  run_fn: Any = None) -> None:
    """Check everything that can be known before a run; raise one :class:`GridError` listing it all.

    Per variant (one seed each: the seed does not change validity): ``validate`` (default
    :func:`attnzoo.training.validate_config`: unknown keys, blocks, positions, data not on disk),
    ``trainer.max_epochs >= 1``, ``data.subset`` / ``data.val_size`` against the training pool where
    its size is fixed (Fashion-MNIST, CIFAR, synthetic). For the grid: ``run_fn`` imports, and the
    store and the run folders can be written. Nothing is created.
    """
    check_run_fn(grid, run_fn)
    if validate is None:
        validate = run_fn_hook(grid, "validate", run_fn) or (lambda config: None)
    problems = [e for e in (_writable_error(grid.store, "the results store"),
                            _writable_error(grid.runs_dir, "the run folder")) if e]
    if problems:
        raise GridError(f"{grid.path}: " + "; ".join(problems) + " (choose another place with --store, "
                        "or fix the folder's permissions)")
    layers = [layer for b in grid.bases for layer in _base_layers(b)]
    errors: list[str] = []
    checked: set[str] = set()
    for cell in grid.cells:
        if cell.label in checked:
            continue
        checked.add(cell.label)
        resolved = _merge_layers([*layers, {k: v for k, v in cell.config.items() if k != BASE_KEY}])
        known = [e for e in (_epochs_error(resolved.get("trainer")), _pool_error(resolved.get("data"))) if e]
        if known:
            errors.append(f"  cell {cell.label!r}: " + "; ".join(known))
            continue
        try:
            validate(copy.deepcopy(cell.config))
        except Exception as e:  # every config error names the cell; the user fixes them all at once
            errors.append(f"  cell {cell.label!r}: {_first_line(e)}")
    if errors:
        raise GridError(f"{grid.path}: {len(errors)} of {len(checked)} cells are invalid (nothing was run):\n" + "\n".join(errors))


def cell_complexity(cell: Cell, grid: Grid | None = None) -> dict[str, Any]:
    """Parameters and FLOPs (batch 1, the data's image size) of a cell's network, without training.

    With ``grid``, its run_fn's own ``complexity`` hook is used when it has one (None values when it
    has none)."""
    if grid is not None and grid.run_fn != DEFAULT_RUN_FN:
        hook = run_fn_hook(grid, "complexity")
        return dict(hook(copy.deepcopy(cell.config))) if hook else {"params": None, "flops": None}
    from attnzoo.training import complexity
    from attnzoo.training.cli import build_cli, config_layers

    args: list[str] = []
    for layer in config_layers(copy.deepcopy(cell.config)):
        args += ["--config", layer]
    cli = build_cli(args, run=False, instantiate_trainer=False, exit_on_error=False)
    model = cli.model
    return dict(complexity(model.model, model.input_size))

