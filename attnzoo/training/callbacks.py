"""Callbacks every ``AttnClassifier`` run gets (through ``AttnClassifier.configure_callbacks``).

* :class:`ComplexityLogger` -- at fit start: parameters, FLOPs at the data's input size
  (``attnzoo.training.complexity``) and the InsertReport; logged as ``model/*`` metrics and written as
  ``complexity.json`` and ``insert_report.txt`` into the run folder, beside ``config.yaml``.
* :class:`ThroughputMonitor` -- training images/s per epoch (``train/throughput``), the first
  ``warmup_batches`` batches of the fit excluded; inference images/s once at fit end
  (``throughput.json``).
* :class:`NonFiniteLossCheck` -- raises ``FloatingPointError`` as soon as a training loss is NaN/inf.
* :class:`EpochHistory` -- keeps each epoch's logged metrics in memory (used by ``run_fit_test``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from .complexity import complexity, count_params, inference_throughput

__all__ = ["ComplexityLogger", "ThroughputMonitor", "NonFiniteLossCheck", "EpochHistory", "run_folder", "model_line"]


def run_folder(trainer: Trainer) -> Path | None:
    """The run's folder (``trainer.log_dir``, where SaveConfigCallback writes config.yaml), or None
    for a run without a logger (e.g. fast_dev_run): such a run writes no files, rather than
    dropping them into the current directory.

    Collective under DDP (``trainer.log_dir`` broadcasts rank 0's value): call it on every rank.
    """
    if trainer.logger is None:
        return None
    log_dir = trainer.log_dir
    return Path(log_dir) if log_dir else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _batch_size(batch: Any) -> int:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(x.shape[0])


class ComplexityLogger(Callback):
    """Log params, FLOPs and the InsertReport at fit start; write them into the run folder."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = pl_module.model
        input_size = pl_module.input_size
        stats = complexity(model, input_size)
        report = getattr(pl_module, "insert_report", None)
        stats.update(
            input_size=list(input_size),
            trainable_params=count_params(model, trainable_only=True),
            attn_params=int(report.total_params) if report is not None else 0,
            attn_flops=int(report.total_flops) if report is not None else 0,
            attn_sites=len(report.sites) if report is not None else 0,
        )
        self.stats = stats
        pl_module.complexity_stats = stats
        folder = run_folder(trainer)
        if not trainer.is_global_zero:
            return
        print(model_line(pl_module, stats), flush=True)
        for logger in trainer.loggers:
            logger.log_metrics({f"model/{k}": float(v) for k, v in stats.items() if k != "input_size"}, step=0)
        if folder is not None:
            _write_json(folder / "complexity.json", stats)
            text = str(report) if report is not None else "no attention block inserted (model.attn is null)\n"
            (folder / "insert_report.txt").write_text(text if text.endswith("\n") else text + "\n")


def model_line(pl_module: LightningModule, stats: dict[str, Any]) -> str:
    """One line on what is trained: backbone, block, parameters and FLOPs (the block's share of each)."""
    hp = pl_module.hparams
    attn = hp.get("attn")
    what = f"{hp.get('backbone')}" + (f" + {attn} ({stats['attn_sites']} site(s))" if attn else " (no attention block)")
    return (f"model: {what}: {stats['params']:,} params (attention +{stats['attn_params']:,}), "
            f"{stats['flops'] / 1e6:,.2f} MFLOPs at {tuple(stats['input_size'])} (attention +{stats['attn_flops'] / 1e6:,.3f})")


def _sync(pl_module: LightningModule) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class ThroughputMonitor(Callback):
    """Training images/s (wall time between consecutive training batch ends, including data loading,
    excluding validation) and inference images/s at fit end.

    Args:
        warmup_batches: batches at the start of the fit left out of the training figure (compile,
            allocator and cache warmup). If the fit is shorter, all batches but the first count.
        infer_repeats: timed forward passes for the inference figure (median taken); 0 skips it.
    """

    def __init__(self, warmup_batches: int = 5, infer_repeats: int = 5) -> None:
        self.warmup_batches = warmup_batches
        self.infer_repeats = infer_repeats
        self.train_throughput: float | None = None
        self.infer_throughput: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._batches = 0
        self._batch_size = 0
        self._prev: float | None = None
        # [images, seconds] after warmup, and over every batch but the fit's first
        self._steady = [0, 0.0]
        self._all = [0, 0.0]
        self._epoch = [0, 0.0]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._prev = None  # the gap across validation/epoch boundaries is not training time
        self._epoch = [0, 0.0]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._prev is None:
            _sync(pl_module)
            self._prev = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        _sync(pl_module)
        now = time.perf_counter()
        n = _batch_size(batch) * trainer.world_size
        self._batch_size = _batch_size(batch)
        dt = now - self._prev if self._prev is not None else 0.0
        self._prev = now
        self._batches += 1
        if self._batches > 1:
            self._all[0] += n
            self._all[1] += dt
        if self._batches > self.warmup_batches:
            self._steady[0] += n
            self._steady[1] += dt
            self._epoch[0] += n
            self._epoch[1] += dt

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch[1] > 0:
            pl_module.log("train/throughput", self._epoch[0] / self._epoch[1], on_step=False, on_epoch=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for images, seconds in (self._steady, self._all):
            if seconds > 0:
                self.train_throughput = images / seconds
                break

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = run_folder(trainer)
        if not trainer.is_global_zero:
            return
        if self.infer_repeats > 0:
            self.infer_throughput = inference_throughput(
                pl_module.model, pl_module.input_size, batch_size=max(self._batch_size, 1),
                repeats=self.infer_repeats, channels_last=bool(pl_module.hparams.get("channels_last", False)),
            )
        data = {
            "train_images_per_s": self.train_throughput,
            "infer_images_per_s": self.infer_throughput,
            "infer_batch_size": self._batch_size,
            "device": str(pl_module.device),
            "world_size": trainer.world_size,
        }
        for logger in trainer.loggers:
            logger.log_metrics({f"throughput/{k}": float(v) for k, v in data.items()
                                if isinstance(v, (int, float)) and k != "world_size"}, step=trainer.global_step)
        if folder is not None:
            _write_json(folder / "throughput.json", data)


class NonFiniteLossCheck(Callback):
    """Stop the run with ``FloatingPointError`` when a training loss is NaN or infinite."""

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            raise FloatingPointError(
                f"training loss became {value} at epoch {trainer.current_epoch}, step {trainer.global_step} "
                f"(lr {lr:.3g}); lower model.lr, add model.warmup_epochs, or train with trainer.precision 32"
            )


class EpochHistory(Callback):
    """Each finished epoch's logged metrics, as plain floats: ``self.epochs[i]["val/acc1"]``.

    Lightning reduces the epoch-level training metrics after ``on_train_epoch_end``, so an epoch is
    recorded at the start of the next one and at the end of training.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._pending: int | None = None

    def _record(self, trainer: Trainer) -> None:
        if self._pending is None:
            return
        row: dict[str, float] = {"epoch": self._pending}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")) and not key.endswith(("_step", "/lr")):
                row[key] = float(value)
        self.epochs.append(row)
        self._pending = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer)
        self._pending = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer)
