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

Cells whose ``model.attn`` is null (the plain backbone) drop the attention-only keys
(``model.position``, ``model.stages``, ``model.blocks``, ``model.init``, ``model.attn_kwargs``) and
are deduplicated, so ``attn x position`` grids hold one baseline per remaining context. A cell's
baseline is the baseline cell whose non-attention overrides (backbone, data, trainer, ...) equal
its own, so ``Δ`` always compares like with like.

Each cell has a stable ``key``: a hash of the parsed base files and the cell's full config
(seed included), so an edited recipe runs again and an unchanged one is never run twice.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

__all__ = [
    "Cell", "Grid", "GridError", "load_grid", "expand_grid", "validate_grid", "cell_complexity",
    "ATTN_KEYS", "KEEP_CHECKPOINTS", "DEFAULT_RUN_FN",
]

BASE_KEY = "__base__"
ATTN_KEYS = ("model.position", "model.stages", "model.blocks", "model.init", "model.attn_kwargs")
KEEP_CHECKPOINTS = ("first_seed", "all", "none")
DEFAULT_RUN_FN = "attnzoo.training:run_fit_test"
DEFAULT_SEED_KEYS = ("seed_everything", "data.init_args.seed")
GRID_KEYS = (
    "name", "description", "base", "overrides", "axes", "variants", "baseline", "seeds", "seed_keys",
    "store", "workers", "keep_checkpoints", "run_fn",
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

    @property
    def variants(self) -> list[str]:
        """Variant labels in grid order (each once)."""
        return list(dict.fromkeys(c.label for c in self.cells))

    @property
    def runs_dir(self) -> Path:
        return self.store.parent / "runs"

    def run_dir(self, cell: Cell) -> Path:
        return self.runs_dir / slug(cell.label) / f"seed{cell.seed}"


def slug(label: str) -> str:
    """A folder name for a label: "se(rd_ratio=0.25) backbone=resnet56" -> "se_rd_ratio-0.25_backbone-resnet56"."""
    s = re.sub(r"[=]", "-", label)
    s = re.sub(r"[^A-Za-z0-9@.+-]+", "_", s).strip("_")
    return s or "cell"


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


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"{path}: {what} is not valid YAML ({e})") from e


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


def load_grid(path: str | Path, store: str | Path | None = None, workers: int | str | None = None) -> Grid:
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
    return expand_grid(raw, path, store=store, workers=workers)


def expand_grid(raw: dict[str, Any], path: Path, store: str | Path | None = None, workers: int | str | None = None) -> Grid:
    """Cells of a parsed grid file ``raw`` read from ``path`` (relative paths resolve against its folder)."""
    where = str(path)
    grid_dir = path.parent
    name = str(raw.get("name") or path.stem)

    base = raw.get("base")
    if base is None:
        raise GridError(f"{where}: 'base' is missing; give the fit config(s) the cells start from, e.g. base: ../fit/fmnist_resnet20.yaml")
    base_list = base if isinstance(base, list) else [base]
    if not base_list or not all(isinstance(b, str) for b in base_list):
        raise GridError(f"{where}: 'base' must be a path or a list of paths, got {base!r}")
    bases = [_find_base(b, grid_dir) for b in base_list]
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
    seed_keys = [_canonical_key(k) for k in raw.get("seed_keys", DEFAULT_SEED_KEYS)]

    keep = raw.get("keep_checkpoints", "first_seed")
    if keep not in KEEP_CHECKPOINTS:
        raise GridError(f"{where}: keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got {keep!r}")
    run_fn = raw.get("run_fn", DEFAULT_RUN_FN)
    if not isinstance(run_fn, str) or ":" not in run_fn:
        raise GridError(f"{where}: run_fn must be 'module:function', got {run_fn!r}")
    n_workers = workers if workers is not None else raw.get("workers", 1)
    if not (n_workers == "auto" or (isinstance(n_workers, int) and not isinstance(n_workers, bool) and n_workers >= 1)):
        raise GridError(f"{where}: workers must be an int >= 1 or 'auto', got {n_workers!r}")
    store_path = Path(store if store is not None else raw.get("store") or f"{name}.sqlite").expanduser()
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
    for label, ov in expanded:
        for seed in seeds:
            config: dict[str, Any] = {BASE_KEY: [str(b) for b in bases]}
            for k, v in ov.items():
                _set_dotted(config, k, v, f"{where}: cell {label!r}")
            for k in seed_keys:
                _set_dotted(config, k, seed, f"{where}: seed_keys")
            payload = json.dumps({"bases": base_layers, "config": {k: v for k, v in config.items() if k != BASE_KEY}},
                                 sort_keys=True, default=str)
            key = hashlib.sha256(payload.encode()).hexdigest()[:16]
            cells.append(Cell(label, seed, ov, config, key, base_of[label], is_base[label]))
    return Grid(path=path, name=name, bases=bases, cells=cells, seeds=list(seeds), store=store_path.resolve(),
                workers=n_workers, keep_checkpoints=keep, run_fn=run_fn, raw=raw)


def _first_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{type(exc).__name__}: {str(text).strip()}"


def validate_grid(grid: Grid, validate: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Check every variant's config (one seed each: the seed does not change validity) before any run.

    ``validate`` defaults to :func:`attnzoo.training.validate_config`. Raises one :class:`GridError`
    listing every bad cell with its error.
    """
    if validate is None:
        from attnzoo.training import validate_config as validate
    errors: list[str] = []
    checked: set[str] = set()
    for cell in grid.cells:
        if cell.label in checked:
            continue
        checked.add(cell.label)
        try:
            validate(copy.deepcopy(cell.config))
        except Exception as e:  # every config error names the cell; the user fixes them all at once
            errors.append(f"  cell {cell.label!r}: {_first_line(e)}")
    if errors:
        raise GridError(f"{grid.path}: {len(errors)} of {len(checked)} cells are invalid (nothing was run):\n" + "\n".join(errors))


def cell_complexity(cell: Cell) -> dict[str, Any]:
    """Parameters and FLOPs (batch 1, the data's image size) of a cell's network, without training."""
    from attnzoo.training import complexity
    from attnzoo.training.cli import build_cli, config_layers

    args: list[str] = []
    for layer in config_layers(copy.deepcopy(cell.config)):
        args += ["--config", layer]
    cli = build_cli(args, run=False, instantiate_trainer=False, exit_on_error=False)
    model = cli.model
    return dict(complexity(model.model, model.input_size))

