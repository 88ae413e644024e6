"""Detection ablation cells: ``run_fn: attnzoo.integrations.ultralytics.ablation:run_detection``.

A cell's config (a grid's ``base`` file plus its dotted overrides)::

    model:
      cfg: yolo11n.yaml        # stock name (the letter picks the scale) or a model-YAML path
      attn: ema                # null = the stock model (the baseline)
      position: bottleneck     # bottleneck | block | c3k | sppf | psa (insert_attn inside blocks), or
                               # row:C3k2 / row:SPPF,C2PSA (AttnZoo rows after those rows, see yamlgen)
      where: all               # backbone | head | all
      blocks: all              # insert_attn's blocks= within each row (positions only)
      init: default            # default | identity
    train:                     # ultralytics train arguments, unchanged (data, epochs, imgsz, batch, device, ...)
      data: VOC.yaml
      seed: 0                  # the grid puts each cell's seed here (seed_keys: [train.seed])

The model is trained by ultralytics' own trainer, writing into ``run_dir/train``. The metrics are
the validation metrics of the final epoch (``results.csv``'s last row: the weights saved as
``last.pt``), never those of the best epoch (``best.pt``), so the number reported was not also used to
pick the checkpoint. The result has ``map50_95`` and ``map50`` (fractions, 0..1) at the top level and in
``test``, with ``test.acc1 = None`` (a detection run has no top-1), and ``metric: "map50_95"``.
"""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path
from typing import Any

import yaml

from .modules import ATTNZOO_KEY, last_reports
from .yamlgen import _slug, dump_model_yaml, load_model_dict, yolo_yaml

__all__ = ["run_detection", "build_cell_yaml", "DETECTION_METRICS"]

DETECTION_METRICS = {"map50_95": "metrics/mAP50-95(B)", "map50": "metrics/mAP50(B)"}
_MODEL_KEYS = ("cfg", "attn", "position", "where", "blocks", "init", "attn_kwargs", "stages")
# ultralytics settings a run in a sweep needs: no plots (they fetch a font), no prompts, its own folder
_RUN_DEFAULTS = {"plots": False, "verbose": False, "exist_ok": True, "deterministic": True}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _resolve(config: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for base in config.get("__base__") or []:
        layer = yaml.safe_load(Path(base).read_text()) or {}
        cfg = _merge(cfg, layer)
    cfg = _merge(cfg, {k: v for k, v in config.items() if k != "__base__"})
    model, train = cfg.get("model") or {}, cfg.get("train") or {}
    unknown = [k for k in model if k not in _MODEL_KEYS]
    if unknown:
        raise ValueError(f"detection cell: unknown model key(s) {unknown}; known: {', '.join(_MODEL_KEYS)}")
    if "stages" in model and model["stages"] not in (None, "all"):
        raise ValueError("detection cell: model.stages is not used for YOLO models; choose rows with "
                         "model.where (backbone/head/all) or model.position row:<module>")
    if not model.get("cfg"):
        raise ValueError("detection cell: model.cfg is missing (e.g. yolo11n.yaml)")
    if not train.get("data"):
        raise ValueError("detection cell: train.data is missing (a YOLO-format data.yaml)")
    for k in ("project", "name", "model"):
        if k in train:
            raise ValueError(f"detection cell: train.{k} is set by the runner (the run folder); remove it")
    return {"model": model, "train": train}


def build_cell_yaml(model: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the cell's model YAML into ``out_dir`` (its name keeps the scale letter) and return it."""
    d, scale, stem = load_model_dict(model["cfg"])
    attn = model.get("attn")
    out_dir = Path(out_dir)
    if attn is None or (isinstance(attn, str) and attn.strip().lower() in ("", "none")):
        return dump_model_yaml(d, out_dir / f"{stem}.yaml", scale, note=f"{stem} (no attention)")
    position = str(model.get("position") or "bottleneck")
    where = model.get("where", "all")
    if position.startswith("row:"):
        v = yolo_yaml(d, attn, position[len("row:"):], where)
        return dump_model_yaml(v.d, out_dir / f"{stem}-{_slug(attn)}.yaml", scale, stock_of=v.stock_of,
                               note=f"{stem} with {attn} rows after {position[4:]} ({where})")
    entry: dict[str, Any] = {"attn": attn, "position": position, "where": where}
    for k in ("blocks", "init", "attn_kwargs"):
        if model.get(k) is not None:
            entry[k] = model[k]
    d[ATTNZOO_KEY] = [entry]
    return dump_model_yaml(d, out_dir / f"{stem}-{_slug(attn)}.yaml", scale, note=f"{stem} with {attn} at {position}")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def run_detection(config: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Train one YOLO cell with ultralytics' trainer; return its final-epoch mAP50-95 / mAP50 and costs."""
    from ultralytics import YOLO

    from ...training import complexity

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _resolve(config)
    model_cfg, train = cfg["model"], {**_RUN_DEFAULTS, **cfg["train"]}
    path = build_cell_yaml(model_cfg, run_dir)
    yolo = YOLO(str(path))
    reports = [(row, r.to_dict()) for row, r in last_reports]
    t0 = time.perf_counter()
    yolo.train(**train, project=str(run_dir), name="train")
    wall = time.perf_counter() - t0
    save_dir = Path(yolo.trainer.save_dir)
    with open(save_dir / "results.csv", newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        raise RuntimeError(f"{save_dir / 'results.csv'} has no epoch rows")
    final = rows[-1]
    metrics = {key: _num(final.get(col)) for key, col in DETECTION_METRICS.items()}
    if metrics["map50_95"] is None:
        raise ValueError(f"the final epoch of {save_dir} has no finite mAP50-95 (row {final})")
    for r in rows:
        for loss in ("train/box_loss", "train/cls_loss", "train/dfl_loss"):
            if loss in r and _num(r[loss]) is None:
                raise FloatingPointError(f"{loss} is not finite at epoch {r.get('epoch')} ({save_dir / 'results.csv'})")
    net = YOLO(str(save_dir / "weights" / "last.pt")).model.float()
    imgsz = int(train.get("imgsz", 640))
    stats = complexity(net, (int(net.yaml.get("channels", 3)), imgsz, imgsz))
    return {
        "test": {"acc1": None, "acc5": None, "loss": None, **metrics},
        **metrics,
        "metric": "map50_95",
        "epochs": [{k: (_num(v) if k != "epoch" else int(float(v))) for k, v in r.items()} for r in rows],
        "params": int(stats["params"]),
        "flops": int(stats["flops"]),
        "train_throughput": None,
        "infer_throughput": None,
        "wall_time_s": wall,
        "insert_report": {"rows": [{"row": row, **rep} for row, rep in reports]} if reports else None,
        "config": {"model": model_cfg, "train": cfg["train"], "model_yaml": str(path)},
        "weights": str(save_dir / "weights" / "last.pt"),
    }


def _built_model(config: dict[str, Any]):
    """The cell's network, built from its YAML the way the run builds it (no data read, no training)."""
    import tempfile

    from ultralytics import YOLO

    cfg = _resolve(config)
    with tempfile.TemporaryDirectory(prefix="attnzoo-cell-") as tmp:
        net = YOLO(str(build_cell_yaml(cfg["model"], tmp))).model.float()
    return cfg, net


def validate_detection(config: dict[str, Any]) -> None:
    """Refuse a detection cell before any run: unknown keys, a block or position the model lacks, a
    data.yaml that is not there. Builds the network once; trains nothing."""
    cfg, _ = _built_model(config)
    data = Path(str(cfg["train"]["data"])).expanduser()
    if not data.is_file():
        raise FileNotFoundError(f"detection cell: train.data {str(data)!r} is not a file (a YOLO-format data.yaml)")


def detection_complexity(config: dict[str, Any]) -> dict[str, Any]:
    """Parameters and FLOPs (batch 1, at train.imgsz) of a detection cell's network, for ``--dry-run``."""
    from ...training import complexity

    cfg, net = _built_model(config)
    imgsz = int(cfg["train"].get("imgsz", 640))
    return dict(complexity(net, (int(net.yaml.get("channels", 3)), imgsz, imgsz)))


# companions the ablation runner looks for on a run_fn (attnzoo.ablation.grid.run_fn_hook)
run_detection.validate = validate_detection
run_detection.complexity = detection_complexity
