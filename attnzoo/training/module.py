"""``AttnClassifier``: a backbone (attnzoo's, or any timm / torchvision classifier) with an attention
block inserted or swapped in, as a LightningModule.

Its ``__init__`` signature is the ``model:`` section of every ``attnzoo fit`` config; the network is
built in ``__init__`` (``create_backbone`` then ``insert_attn``), so a bad block name, a position the
backbone lacks or a bad optimizer fails while the config is instantiated, before any training, and
``AttnClassifier.load_from_checkpoint(path)`` rebuilds the same network from the saved
hyper-parameters.

Training recipe pieces, each the standard one:

* loss: cross-entropy with optional label smoothing (Szegedy et al., "Rethinking the Inception
  Architecture for Computer Vision", 2016, https://arxiv.org/abs/1512.00567), on training batches.
  NOTE: validation/test ``loss`` is plain cross-entropy (no smoothing), so it is comparable across runs.
* optimizer: SGD with Nesterov momentum, or AdamW (Loshchilov & Hutter, "Decoupled Weight Decay
  Regularization", 2019, https://arxiv.org/abs/1711.05101). Weight decay is applied to weights only,
  not to 1-D parameters (norm scales and shifts, biases): ``timm.optim.param_groups_weight_decay``.
* schedule, stepped after every optimizer step: ``cosine`` = linear warmup (``warmup_epochs``) then
  cosine decay to 0 (Loshchilov & Hutter, "SGDR", 2017, https://arxiv.org/abs/1608.03983);
  ``onecycle`` = ``torch.optim.lr_scheduler.OneCycleLR`` (Smith & Topin, "Super-Convergence", 2018,
  https://arxiv.org/abs/1708.07120) whose rising phase lasts ``warmup_epochs`` (0: OneCycleLR's
  default 30% of training); ``step`` = warmup then the rate times ``step_gamma`` at each epoch in
  ``step_milestones`` (default: 50% and 75% of training, as He et al. 2016 sec. 4.2 divide by 10 at
  32k and 48k of 64k iterations); ``constant`` = warmup then a constant rate.
  NOTE: one-cycle here does not cycle the momentum (``cycle_momentum=False``), so ``momentum``
  means what it says for every schedule.
* EMA of the weights (``ema_decay``, e.g. 0.999): ``timm.utils.ModelEmaV3``, updated after every
  optimizer step; validation and test then use the EMA weights.

Metrics (torchmetrics, one collection per stage, reduced across DDP processes by Lightning):
``{stage}/loss``, ``{stage}/acc1``, ``{stage}/acc5`` (top-5 only with >= 5 classes) for stage in
train, val, test, logged per epoch; ``train/loss_step`` and ``train/lr`` per step.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..backbones import create_backbone
from ..blocks import native_status
from .allocator import ALLOCATOR_CHOICES, keep_freed_memory
from .complexity import normalize_input_size

__all__ = ["AttnClassifier", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "constant")
STAGES = ("train", "val", "test")


# model.compile: auto compiles a fit on a CUDA device of at least this many optimizer steps. Not a
# measured GPU break-even (no GPU was available to measure one): the cold compile times measured on CPU
# (benchmarks/overhead_floor.py, benchmarks/results/overhead_floor_cpu.json: 30-157 s with a block) pay
# back at a saving of 20 ms per step only after 1500-7800 steps, so shorter fits stay eager.
COMPILE_MIN_STEPS = 5000


def compile_decision(device_type: str, steps: float, min_steps: int = COMPILE_MIN_STEPS) -> tuple[bool, str]:
    """Whether ``compile: auto`` compiles a fit of ``steps`` optimizer steps on ``device_type``, and why.

    Never on CPU, where whether it pays depends on the CPU and the block (benchmarks/overhead_floor.py):
    on an AMD EPYC inductor made the plain ResNet-20 and ResNet-56 training steps slower than eager; on an
    Intel Xeon it made them 1-23% faster over three runs, and since the whole-block kernels run as custom
    ops in a compiled graph (``blocks/_compiled.py``) every compiled block's step there beat its eager one,
    paying back after 435-2608 steps. ``compile: true`` forces it. On CUDA: when the fit has at least
    ``min_steps`` steps."""
    n = f"{int(steps)}" if math.isfinite(steps) else "an unknown number of"
    if device_type != "cuda":
        return False, (f"off: the fit runs on {device_type}, where compiling paid in the measured CPU benchmarks "
                       "only for some CPUs and blocks (compile: true forces it)")
    if not math.isfinite(steps) or steps < min_steps:
        return False, f"off: this fit has {n} optimizer steps, < model.compile_min_steps {min_steps}"
    return True, f"on: this fit has {n} optimizer steps, >= model.compile_min_steps {min_steps}"


def _choice(what: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {what} {value!r}{hint} (choose one of {', '.join(map(repr, choices))})")
    return value


class AttnClassifier(LightningModule):
    """Image classifier = attnzoo backbone + (optionally) an attention block at chosen sites.

    Args:
        backbone: registered backbone name (``attnzoo.list_backbones()``), e.g. "resnet20", or any
            timm / torchvision classification model as ``"timm:<name>"`` / ``"tv:<name>"``, e.g.
            "timm:convnext_atto", "tv:mobilenet_v3_small" (in_chans and num_classes are adapted).
        backbone_kwargs: extra keyword arguments of the backbone factory, e.g. ``{"stem": "cifar"}``
            (for timm / torchvision models: of ``timm.create_model`` / ``torchvision.models.get_model``).
        pretrained: load pretrained weights through timm or torchvision (timm / tv backbones only);
            for torchvision a string names the weights (e.g. "IMAGENET1K_V1"; true: "DEFAULT").
        pretrained_file: a local checkpoint to load instead of the hub (implies pretrained): timm's
            ``pretrained_cfg_overlay=dict(file=...)``; for torchvision a saved ``state_dict``.
            Fine-tuning with a new block: ``init: identity`` leaves the pretrained outputs unchanged
            at the start. NOTE: ``load_from_checkpoint`` rebuilds with these too; pass
            ``pretrained=False`` there if the file is gone (the checkpoint's weights replace them anyway).
        attn: attention block spec ("se", "cbam", "se(rd_ratio=0.25)"); None or "none": the plain backbone.
        position: where in a block the attention goes (see ``attnzoo.insertion``); ``"replace"``: in
            place of the backbone's own SE-like modules (``attnzoo.replace_attn``); None: the
            backbone's default position (``standard`` for timm / tv models).
        stages: "all", a 1-based stage number or a list of them.
        blocks: "all", "first", "last", an index or a list of indices (negative allowed) of the
            blocks within each selected stage.
        init: initialisation of the inserted blocks ("default" or "identity", see insert_attn).
        attn_kwargs: keyword arguments of the block, merged into the spec.
        num_classes, in_chans, input_size: linked from the data module by the CLI
            (``input_size``: image side H or (H, W); None: the backbone's own default).
        optimizer: "sgd" (momentum, Nesterov) or "adamw".
        lr: peak learning rate (after warmup).
        momentum: SGD momentum (AdamW ignores it).
        nesterov: Nesterov momentum for SGD.
        weight_decay: decoupled for AdamW, L2 for SGD; never applied to 1-D parameters.
        schedule: "cosine", "onecycle", "step" or "constant".
        step_milestones: epochs at which the ``step`` schedule multiplies the rate by ``step_gamma``
            (default: 50% and 75% of max_epochs).
        step_gamma: the factor of each ``step`` milestone.
        warmup_epochs: length of the linear warmup (fractions allowed), in epochs.
        label_smoothing: cross-entropy label smoothing for training batches, in [0, 1).
        ema_decay: decay of an exponential moving average of the weights; None: no EMA.
        channels_last: keep weights and inputs in channels-last memory format.
        compile: run the network through ``torch.compile``: ``True``, ``False``, or ``"auto"``, which
            compiles a fit on a CUDA device of at least ``compile_min_steps`` optimizer steps and
            never on CPU (see :func:`compile_decision`; compiling costs up to a minute or two up front
            and pays back a per-step saving, which ``benchmarks/overhead_floor.py --modes eager
            compiled`` measures). Validate/test/predict with ``"auto"`` stay eager. The decision is
            printed when the fit starts.
        compile_min_steps: the fit length (optimizer steps) from which ``compile: auto`` compiles on CUDA.
        cpu_allocator: ``"keep"`` (default): when the model runs on CPU, keep freed tensor memory in
            the process (glibc's mmap/trim thresholds raised, see :mod:`attnzoo.training.allocator`;
            eager ResNet-20 steps took 0.82-0.99 of their time here, benchmarks/allocator.py); ``"system"``: leave the allocator alone.
            Printed when it takes effect; it changes no result.
    """

    def __init__(
        self,
        backbone: str = "resnet20",
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool | str = False,
        pretrained_file: str | None = None,
        attn: str | None = None,
        position: str | None = None,
        stages: str | int | list[int] = "all",
        blocks: str | int | list[int] = "all",
        init: str = "default",
        attn_kwargs: dict[str, Any] | None = None,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: int | tuple[int, int] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        step_milestones: list[float] | None = None,
        step_gamma: float = 0.1,
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
        compile_min_steps: int = COMPILE_MIN_STEPS,
        cpu_allocator: str = "keep",
    ) -> None:
        super().__init__()
        _choice("optimizer", optimizer, OPTIMIZERS)
        _choice("schedule", schedule, SCHEDULES)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if optimizer == "sgd" and nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0; set model.momentum (e.g. 0.9) or model.nesterov false")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {ema_decay!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        if not (isinstance(compile, bool) or compile == "auto"):
            raise ValueError(f"compile must be true, false or 'auto', got {compile!r}")
        if isinstance(compile_min_steps, bool) or not isinstance(compile_min_steps, int) or compile_min_steps < 0:
            raise ValueError(f"compile_min_steps must be an int >= 0, got {compile_min_steps!r}")
        _choice("cpu_allocator", cpu_allocator, ALLOCATOR_CHOICES)
        self.save_hyperparameters()

        weights = {}
        if pretrained or pretrained_file:
            weights = {"pretrained": pretrained or True, "pretrained_file": pretrained_file}
        self.model = create_backbone(backbone, num_classes=num_classes, in_chans=in_chans, **weights,
                                     **(backbone_kwargs or {}))
        self.input_size = self._resolve_input_size(input_size, in_chans)
        self.insert_report = None
        if attn not in (None, "", "none"):
            from ..insertion import insert_attn

            self.insert_report = insert_attn(
                self.model, attn, position=position, stages=stages, blocks=blocks, init=init,
                input_size=self.input_size, **(attn_kwargs or {}),
            )
        elif attn_kwargs or position is not None or stages != "all" or blocks != "all":
            raise ValueError(
                "model.position / stages / blocks / attn_kwargs are set but model.attn is null; "
                "name a block (e.g. --model.attn se) or drop those keys"
            )
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        self.ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=ema_decay)

        def accuracies() -> MetricCollection:
            metrics = {"acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
            if num_classes >= 5:
                metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
            return MetricCollection(metrics)

        base = accuracies()
        # one collection per stage (train_metrics, val_metrics, test_metrics); keys "val/acc1", ...
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", base.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())
        # NOTE: no example_input_array: Lightning would push it through the data module's
        # on_after_batch_transfer, which expects (images, targets); FLOPs go to complexity.json instead
        self.__dict__["_compiled"] = None  # not a registered submodule: state_dict keys stay model.*

    # -- sizes ------------------------------------------------------------------
    def _resolve_input_size(self, input_size: Any, in_chans: int) -> tuple[int, int, int]:
        if input_size is None:
            default = getattr(self.model, "default_input_size", None)
            if default is not None:
                return (in_chans, *tuple(default)[-2:])
            return (in_chans, 224, 224)
        return normalize_input_size(input_size, in_chans)

    # -- forward ----------------------------------------------------------------
    def _compile_on(self) -> bool:
        mode = self.hparams.get("compile", False)
        return bool(self.__dict__.get("_auto_compile", False)) if mode == "auto" else bool(mode)

    def _tune_allocator(self) -> None:
        if self.device.type != "cpu" or self.hparams.get("cpu_allocator", "keep") != "keep":
            return
        state = keep_freed_memory()
        if not self.__dict__.get("_allocator_said") and self.trainer.is_global_zero:
            how = ("glibc keeps freed memory (mmap and trim thresholds 1 GiB)" if state.get("tuned")
                   else f"left as it is ({state.get('why')})")
            print(f"model.cpu_allocator: keep -> {how}", flush=True)
            print(f"native CPU kernels: {native_status()}", flush=True)
        self.__dict__["_allocator_said"] = True

    def on_test_start(self) -> None:
        self._tune_allocator()

    def on_validation_start(self) -> None:
        self._tune_allocator()

    def on_predict_start(self) -> None:
        self._tune_allocator()

    def on_fit_start(self) -> None:
        self._tune_allocator()
        if self.hparams.get("compile") != "auto":
            return
        on, why = compile_decision(self.device.type, float(self.trainer.estimated_stepping_batches),
                                   self.hparams.get("compile_min_steps", COMPILE_MIN_STEPS))
        self.__dict__["_auto_compile"] = on
        if self.trainer.is_global_zero:  # printed like the model summary line (the log goes to stdout)
            print(f"model.compile: auto -> {why}", flush=True)

    def on_fit_end(self) -> None:
        if self.hparams.get("compile") == "auto":
            self.__dict__["_auto_compile"] = False  # a later validate/test/predict stays eager

    def _net(self) -> nn.Module:
        if self._compile_on():
            if self._compiled is None:
                self.__dict__["_compiled"] = torch.compile(self.model)
            return self._compiled
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._net()(x)

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ema is None:
            return self(x)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.ema.module(x)

    # -- steps ------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self._update("train", logits.detach(), y, loss.detach())
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _eval_step(self, stage: str, batch: Any) -> None:
        x, y = batch
        logits = self._eval_forward(x)
        self._update(stage, logits, y, F.cross_entropy(logits, y))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self._eval_forward(x).float().softmax(dim=-1)
        return {"preds": probs.argmax(dim=-1), "probs": probs}

    def _update(self, stage: str, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        # epoch values: Lightning calls compute() at epoch end (synced across processes) and resets
        metrics, mean_loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        metrics.update(logits, y)
        mean_loss.update(loss, weight=y.shape[0])  # per-image mean over the epoch
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage == "val")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")

    # -- optimization -----------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: weight decay on weights, none on 1-D parameters (norms, biases)."""
        from timm.optim import param_groups_weight_decay

        return param_groups_weight_decay(self.model, self.hparams.weight_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.param_groups()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        total, per_epoch = self._stepping_batches()
        warmup = min(round(hp.warmup_epochs * per_epoch), max(total - 1, 0))
        milestones = hp.get("step_milestones")
        if milestones is None and hp.schedule == "step":
            milestones = [0.5 * total / per_epoch, 0.75 * total / per_epoch]
        sched = build_schedule(opt, hp.schedule, total_steps=total, warmup_steps=warmup, lr=hp.lr,
                               milestones=[round(m * per_epoch) for m in (milestones or [])],
                               gamma=hp.get("step_gamma", 0.1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def _stepping_batches(self) -> tuple[int, float]:
        """(optimizer steps in the whole fit, optimizer steps per epoch)."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                "cannot size the learning-rate schedule: the number of training steps is unknown; "
                "set trainer.max_epochs or trainer.max_steps"
            )
        total = int(total)
        batches = trainer.num_training_batches
        if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
            per_epoch = max(1.0, batches / trainer.accumulate_grad_batches)
        elif trainer.max_epochs and trainer.max_epochs > 0:
            per_epoch = total / trainer.max_epochs
        else:
            per_epoch = float(total)
        return total, per_epoch

    def configure_callbacks(self) -> list:
        from .callbacks import ComplexityLogger, NonFiniteLossCheck, ThroughputMonitor

        return [NonFiniteLossCheck(), ComplexityLogger(), ThroughputMonitor()]


def build_schedule(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_steps: int, lr: float,
    milestones: Sequence[int] = (), gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule (see the module docstring); ``milestones`` are optimizer
    steps (from the start of training) where the ``step`` schedule multiplies the rate by ``gamma``."""
    from torch.optim.lr_scheduler import (ConstantLR, CosineAnnealingLR, LinearLR, MultiStepLR, OneCycleLR,
                                          SequentialLR)

    _choice("schedule", schedule, SCHEDULES)
    if schedule == "onecycle":
        # OneCycleLR needs each phase to span more than one step; tiny runs (fast_dev_run) get a
        # schedule sized for 4 steps, of which they use the first ones
        total = max(total_steps, 4)
        pct = warmup_steps / total if warmup_steps > 0 else 0.3
        pct = min(max(pct, 1.5 / total), 1.0 - 1.5 / total)
        return OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=pct, anneal_strategy="cos",
                          cycle_momentum=False)
    if schedule == "cosine":
        after = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=0.0)
    elif schedule == "step":
        # SequentialLR restarts the second schedule's count at the warmup's end
        after = MultiStepLR(optimizer, milestones=[max(m - warmup_steps, 1) for m in milestones], gamma=gamma)
    else:
        after = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup_steps <= 0:
        return after
    # linear ramp: lr/warmup at the first step, lr at step `warmup_steps`
    warm = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warm, after], milestones=[warmup_steps])
