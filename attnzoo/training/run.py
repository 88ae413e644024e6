"""Programmatic runs for the ablation runner: ``run_fit_test(config, run_dir)`` and ``validate_config``.

A config is the same dict a fit YAML holds (keys ``seed_everything``, ``model``, ``data``,
``trainer``; optionally ``__base__: <base.yaml>`` to include base files and ``ckpt_path`` to resume)
and goes through the same parser as ``attnzoo fit`` (:func:`attnzoo.training.cli.build_cli`),
so there is one config vocabulary.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import weights_only_loading
from .callbacks import ComplexityLogger, EpochHistory, ThroughputMonitor
from .cli import BASE_KEY, build_cli, config_layers, original_error
from .complexity import complexity

__all__ = ["run_fit_test", "validate_config", "load_config"]

_TOP_KEYS = ("seed_everything", "model", "data", "trainer", BASE_KEY, "ckpt_path")


def load_config(path: str | Path) -> dict[str, Any]:
    """A fit YAML as a dict, its ``__base__`` paths made absolute (so the dict works from any folder).

    The bases stay bases: ``run_fit_test`` and ``validate_config`` merge them exactly as
    ``attnzoo fit --config`` does.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"fit config {str(path)!r} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a fit config must be a mapping with model/data/trainer keys, got {type(data).__name__}")
    base = data.get(BASE_KEY)
    if base is not None:
        bases = base if isinstance(base, list) else [base]
        resolved = [str(Path(b).expanduser()) if Path(b).expanduser().is_absolute() else str((path.parent / b).resolve())
                    for b in bases]
        data[BASE_KEY] = resolved if isinstance(base, list) else resolved[0]
    return data


def _check_top_keys(config: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise TypeError(f"a run config must be a dict (the content of a fit YAML), got {type(config).__name__}")
    unknown = [k for k in config if k not in _TOP_KEYS]
    if unknown:
        raise KeyError(
            f"unknown top-level config key(s) {unknown}; a fit config has only {list(_TOP_KEYS)}"
        )


def _args(config: dict[str, Any]) -> list[str]:
    """argv for the CLI parser: the ``__base__`` files first, then the dict itself as a YAML string."""
    args: list[str] = []
    for layer in config_layers(config):
        args += ["--config", layer]
    return args


def _build(config: dict[str, Any], instantiate_trainer: bool):
    _check_top_keys(config)
    try:
        return build_cli(_args(config), run=False, instantiate_trainer=instantiate_trainer, exit_on_error=False)
    except Exception as e:  # jsonargparse's ArgumentError is not a ValueError; say what the user can fix
        if type(e).__name__ == "ArgumentError":
            raise ValueError(f"invalid run config: {e}") from e
        inner = original_error(e)
        if inner is not e:  # a data set that is not there, unwrapped from jsonargparse's ValueError
            raise inner from None
        raise


def validate_config(config: dict[str, Any]) -> None:
    """Parse and instantiate ``config``'s model and data module without training; raise if it is wrong.

    Catches unknown keys and classes, unknown blocks, positions the backbone lacks, bad optimizer
    or schedule names, and data sets that are not on disk (data modules look for their files
    when constructed).
    """
    cfg = copy.deepcopy(config)
    cfg.pop("ckpt_path", None)
    _build(cfg, instantiate_trainer=False)


def _jsonable(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value)) if value is not None else None


def run_fit_test(config: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Fit ``config`` then test the final weights (never a best-val checkpoint); return the results.

    Logs, ``config.yaml`` (resolved), checkpoints, ``complexity.json`` and ``insert_report.txt`` go
    into ``run_dir`` (the config's logger is replaced by a CSVLogger writing there). Returns::

        {"test": {"acc1", "acc5", "loss"}, "epochs": [{"epoch", "train/loss", "train/acc1",
         "val/loss", "val/acc1", "val/acc5"}, ...], "params", "flops", "train_throughput",
         "infer_throughput", "wall_time_s", "insert_report", "config"}

    ``acc5`` is None with fewer than 5 classes; ``wall_time_s`` covers fit and test. Raises on any
    failure; a NaN/inf training loss raises ``FloatingPointError``.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(config)
    _check_top_keys(cfg)
    ckpt_path = cfg.pop("ckpt_path", None)
    trainer_cfg = dict(cfg.get("trainer") or {})
    trainer_cfg["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},
    }
    trainer_cfg["default_root_dir"] = str(run_dir)
    cfg["trainer"] = trainer_cfg

    cli = _build(cfg, instantiate_trainer=True)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    history = EpochHistory()
    trainer.callbacks.append(history)

    t0 = time.perf_counter()
    with weights_only_loading(ckpt_path):  # a resume checkpoint is read weights-only (attnzoo.checkpoint)
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    # the fit's callback instances (test() puts fresh ones from configure_callbacks in their place)
    throughput = next((c for c in trainer.callbacks if isinstance(c, ThroughputMonitor)), None)
    stats = next((c.stats for c in trainer.callbacks if isinstance(c, ComplexityLogger) and c.stats), None)
    tested = trainer.test(model, datamodule=data, verbose=False)  # the in-memory (final) weights
    wall = time.perf_counter() - t0

    test = tested[0] if tested else {}
    if stats is None:  # e.g. resumed from a finished checkpoint: fit did not run
        stats = complexity(model.model, model.input_size)
    report = getattr(model, "insert_report", None)

    def num(key: str) -> float | None:
        v = test.get(key)
        return None if v is None or not math.isfinite(float(v)) else float(v)

    return {
        "test": {"acc1": num("test/acc1"), "acc5": num("test/acc5"), "loss": num("test/loss")},
        "epochs": history.epochs,
        "params": int(stats["params"]),
        "flops": int(stats["flops"]),
        "train_throughput": throughput.train_throughput if throughput else None,
        "infer_throughput": throughput.infer_throughput if throughput else None,
        "wall_time_s": wall,
        "insert_report": report.to_dict() if report is not None else None,
        "config": _jsonable(yaml.safe_load(cli.parser.dump(cli.config, skip_check=True, skip_none=False))),
    }


# companions the ablation runner looks for on a run_fn (attnzoo.ablation.grid.run_fn_hook)
run_fit_test.validate = validate_config
