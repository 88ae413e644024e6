"""What a run prints: plain progress lines when the output is not a terminal, and the closing summary.

On a terminal ``attnzoo fit`` shows Lightning's Rich progress bar. Into a file or a pipe
(``attnzoo fit ... > fit.log 2>&1``, a SLURM log, an ablation worker's ``output.log``) a bar draws
nothing useful, so :class:`LogProgressBar` takes its place and prints one flushed line:

* every ~10% of a long training epoch (50 batches or more): batches done, running loss, images/s,
  the epoch's and the whole fit's ETA;
* at the end of every epoch: train loss, the validation metrics, images/s, the epoch's time, ETA;
* at the end of a test / validate / predict pass: its metrics and time.

:func:`fit_summary` is the block ``attnzoo fit`` prints when it is done: test top-1, what the
attention block added (parameters, FLOPs), wall time, the run folder and checkpoint, and the commands
to run next.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar

__all__ = ["LogProgressBar", "fit_summary", "format_duration", "stream_is_terminal"]

MARK_EVERY = 0.10  # fraction of an epoch between progress lines
MIN_BATCHES_FOR_MARKS = 50  # shorter epochs print their end-of-epoch line only


def stream_is_terminal(stream: IO[str] | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` / ``m:ss``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _metric_text(metrics: dict[str, Any], prefix: str) -> str:
    parts = []
    for key in sorted(metrics):
        if not key.startswith(prefix) or key.endswith("_step"):
            continue
        value = metrics[key]
        value = float(value.item() if torch.is_tensor(value) else value)
        name = key[len(prefix):]
        parts.append(f"{name} {100 * value:.2f}%" if name.startswith("acc") else f"{name} {value:.4f}")
    return ", ".join(parts)


def _batch_len(batch: Any) -> int:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 0 else 0


class LogProgressBar(ProgressBar):
    """Progress as plain, flushed lines (for logs); see the module docstring for what is printed."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self._enabled = True
        self._stream = stream
        self._fit_start: float | None = None
        self._epochs_done = 0
        self._epoch_seconds = 0.0
        self._reset_epoch()
        self._eval_start: float | None = None

    # -- ProgressBar API --------------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _print(self, trainer: Trainer, text: str) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        stream = self._stream or sys.stdout
        print(text, file=stream, flush=True)

    # -- training ---------------------------------------------------------------------------------
    def _reset_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        self._images = 0
        self._loss_sum = 0.0
        self._loss_n = 0
        self._next_mark = MARK_EVERY

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._epochs_done = 0
        self._epoch_seconds = 0.0
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        self._print(trainer, f"fit: {epochs} epoch(s) of {self.total_train_batches} batches on {pl_module.device}")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_epoch()

    def _epochs_left(self, trainer: Trainer) -> int | None:
        if trainer.max_epochs in (None, -1):
            return None
        return max(trainer.max_epochs - trainer.current_epoch - 1, 0)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += _batch_len(batch) * trainer.world_size
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            value = float(loss.detach())
            if math.isfinite(value):
                self._loss_sum += value
                self._loss_n += 1
        total = self.total_train_batches
        if not isinstance(total, int) or total < MIN_BATCHES_FOR_MARKS:
            return
        done = batch_idx + 1
        if done / total + 1e-9 < self._next_mark or done >= total:
            return
        while self._next_mark <= done / total + 1e-9:
            self._next_mark += MARK_EVERY
        elapsed = time.perf_counter() - self._epoch_start
        epoch_eta = elapsed / done * (total - done)
        left = self._epochs_left(trainer)
        per_epoch = elapsed / done * total
        run_eta = None if left is None else epoch_eta + left * per_epoch
        self._print(trainer, (
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {100 * done / total:3.0f}% ({done}/{total}): "
            f"loss {self._running_loss():.4f}, {self._images / max(elapsed, 1e-9):,.0f} img/s, "
            f"ETA epoch {format_duration(epoch_eta)}, fit {format_duration(run_eta)}"
        ))

    def _running_loss(self) -> float:
        return self._loss_sum / self._loss_n if self._loss_n else float("nan")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        self._epochs_done += 1
        self._epoch_seconds += elapsed
        left = self._epochs_left(trainer)
        eta = None if left is None else left * self._epoch_seconds / self._epochs_done
        val = _metric_text(trainer.callback_metrics, "val/")
        self._print(trainer, (
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done in {format_duration(elapsed)}: "
            f"train loss {self._running_loss():.4f}" + (f"; val {val}" if val else "")
            + f"; {self._images / max(elapsed, 1e-9):,.0f} img/s; ETA {format_duration(eta)}"
        ))

    # -- evaluation -------------------------------------------------------------------------------
    def _eval_begin(self) -> None:
        self._eval_start = time.perf_counter()

    def _eval_end(self, trainer: Trainer, what: str, prefix: str) -> None:
        seconds = time.perf_counter() - (self._eval_start or time.perf_counter())
        metrics = _metric_text(trainer.callback_metrics, prefix)
        self._print(trainer, f"{what} done in {format_duration(seconds)}" + (f": {metrics}" if metrics else ""))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_begin()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.training and not trainer.sanity_checking:  # `attnzoo validate`; fit prints per epoch
            self._eval_end(trainer, "validate", "val/")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_begin()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer, "test", "test/")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_begin()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer, "predict", "predict/")


def _relative(path: str | Path | None) -> str | None:
    if not path:
        return None
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def fit_summary(
    trainer: Trainer,
    pl_module: LightningModule,
    test_metrics: dict[str, float] | None,
    wall_seconds: float,
    run_dir: str | Path | None,
    test_name: str = "test split",
) -> str:
    """The closing block of ``attnzoo fit`` (plain text, reads the same in a log and on a terminal)."""
    hp = pl_module.hparams
    stats = getattr(pl_module, "complexity_stats", None) or {}
    attn = hp.get("attn")
    lines = ["", "== attnzoo fit: done =="]
    model = f"{hp.get('backbone')}" + (f" + {attn} at {hp.get('position') or 'default position'}" if attn else
                                       " (no attention block)")
    lines.append(f"model        {model}")
    if test_metrics:
        acc1 = test_metrics.get("test/acc1")
        acc5 = test_metrics.get("test/acc5")
        parts = []
        if acc1 is not None:
            parts.append(f"top-1 {100 * float(acc1):.2f}%")
        if acc5 is not None:
            parts.append(f"top-5 {100 * float(acc5):.2f}%")
        if test_metrics.get("test/loss") is not None:
            parts.append(f"loss {float(test_metrics['test/loss']):.4f}")
        lines.append(f"test         {', '.join(parts)} on the {test_name} (final weights)")
    else:
        lines.append("test         not run (the data module has no test split)")
    if stats:
        params, flops = int(stats.get("params", 0)), int(stats.get("flops", 0))
        a_params, a_flops, sites = int(stats.get("attn_params", 0)), int(stats.get("attn_flops", 0)), \
            int(stats.get("attn_sites", 0))
        base_flops = flops - a_flops
        rel = f" ({100 * a_flops / base_flops:+.2f}%)" if base_flops > 0 else ""
        lines.append(f"params       {params:,} (attention: +{a_params:,} at {sites} site(s))")
        lines.append(f"FLOPs        {flops:,} at input {tuple(stats.get('input_size', ()))} "
                     f"(attention: +{a_flops:,}{rel}; matmul/conv only)")
    lines.append(f"wall time    {format_duration(wall_seconds)} (fit + test), "
                 f"{trainer.current_epoch} epoch(s), {trainer.global_step} steps")
    folder = _relative(run_dir)
    ckpt_cb = trainer.checkpoint_callback
    ckpt = _relative(getattr(ckpt_cb, "last_model_path", None) or getattr(ckpt_cb, "best_model_path", None))
    if folder:
        lines.append(f"run folder   {folder}  (config.yaml, metrics.csv, complexity.json, insert_report.txt)")
    if ckpt:
        lines.append(f"checkpoint   {ckpt}")
    if folder and ckpt:
        lines += [
            "next:",
            f"  attnzoo explain --ckpt {ckpt} --out {folder}/explain        # attention maps + Grad-CAM",
            f"  attnzoo test --config {folder}/config.yaml --ckpt_path {ckpt}",
            "  attnzoo ablate experiments/fmnist_resnet20/grid.yaml --dry-run   # blocks x seeds, then run it",
            "  attnzoo report experiments/fmnist_resnet20/grid.yaml             # tables from its results store",
        ]
    return "\n".join(lines) + "\n"
