"""``attnzoo fit | validate | test | predict``: Lightning's CLI over AttnClassifier and the data modules.

    attnzoo fit --config configs/fit/fmnist_resnet20.yaml
    attnzoo fit --config configs/fit/cifar10_resnet20.yaml --model.attn eca --trainer.max_epochs 5
    attnzoo fit --config configs/fit/fmnist_resnet20.yaml --print_config      # the resolved config
    attnzoo fit --config runs/attnzoo/version_3/config.yaml --ckpt_path runs/attnzoo/version_3/checkpoints/last.ckpt
    attnzoo test --config runs/attnzoo/version_3/config.yaml --ckpt_path .../epoch=4-step=1760.ckpt

The ``model:`` section is ``AttnClassifier.__init__``; ``data:`` is any LightningDataModule
(``class_path: attnzoo.data.CIFAR10DataModule`` or the short ``--data CIFAR10DataModule``);
``model.num_classes``, ``model.in_chans`` and ``model.input_size`` are linked from the data module.

Config files compose: a file with a top-level ``__base__: base.yaml`` key (a path relative to that
file, or a list of them) is read as ``--config base.yaml --config <the file without __base__>``, so
its keys override the base's, key by key, the way several ``--config`` flags merge in jsonargparse.
NOTE: jsonargparse's own nested ``config:`` key is not used: it replaces a whole section (e.g. all
of ``trainer:``) instead of merging it. The saved ``config.yaml`` is fully resolved (no ``__base__``).

Runs are written to ``runs/attnzoo/version_N/``: ``config.yaml`` (the resolved config), CSV logs
(``metrics.csv``), TensorBoard events when tensorboard is installed, ``checkpoints/``,
``complexity.json``, ``insert_report.txt``, ``throughput.json``.

Several GPUs or nodes: Lightning's DDP strategy, e.g. ``--trainer.strategy ddp --trainer.devices 4``
on one machine, ``--trainer.num_nodes 2`` under torchrun or SLURM (``srun attnzoo fit ...``); the
metrics are reduced across processes by torchmetrics, the in-memory data modules shard their
batches with Lightning's distributed sampler.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from .callbacks import run_folder
from .console import LogProgressBar, fit_summary, stream_is_terminal
from ..checkpoint import weights_only_loading
from ..errors import AttnzooError, debug_enabled
from .module import AttnClassifier

__all__ = ["AttnzooCLI", "build_cli", "main", "trainer_defaults", "expand_bases", "RUNS_DIR", "RUN_NAME"]

BASE_KEY = "__base__"

RUNS_DIR = "runs"
RUN_NAME = "attnzoo"

# errors a wrong config raises while it is parsed and instantiated; reported in one line
CONFIG_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError, ImportError, PermissionError)


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


def trainer_defaults() -> dict[str, Any]:
    """Trainer defaults under every config: CSV logs in runs/attnzoo/version_N (+ TensorBoard if installed).

    Lightning's own model summary is off: without an example input it prints ``FLOPs 0``; attnzoo
    prints its own line (parameters, FLOPs, what the attention block added) when a fit starts.
    """
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": RUNS_DIR, "name": RUN_NAME}}]
    if _tensorboard_available():
        loggers.append({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": RUNS_DIR, "name": RUN_NAME}})
    return {"logger": loggers, "enable_model_summary": False}


class _DropLitLoggerTip(logging.Filter):
    """Lines Lightning 2.6 prints on every run that tell a user nothing about it: an advert for a cloud
    logger, and the notice that AttnClassifier's own callbacks (complexity, throughput, NaN check)
    replace the Trainer's copies when testing after a fit."""

    NOISE = ("litlogger", "will override existing callbacks passed to Trainer")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        return not any(n in message for n in self.NOISE)


def _quiet_lightning_tips() -> None:
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropLitLoggerTip) for f in handler.filters):
                handler.addFilter(_DropLitLoggerTip())


def _read_yaml(path: Path) -> Any:
    from ..yamlio import read_yaml

    return read_yaml(path)  # strict: a key given twice is an error, not "the last one wins"


def config_layers(config: str | Path | dict[str, Any], _seen: tuple[Path, ...] = ()) -> list[str]:
    """``--config`` values for one config (a file path or a dict), its ``__base__`` files first.

    A file without ``__base__`` stays a path (so jsonargparse records it); a file or dict with one
    becomes its bases' layers followed by its own keys as a YAML string.
    """
    if isinstance(config, dict):
        data, here, name = dict(config), Path.cwd(), "config dict"
    else:
        path = Path(config).expanduser()
        if not path.is_file():
            return [str(config)]  # not a file: jsonargparse reports it (or parses it as a YAML string)
        path = path.resolve()
        if path in _seen:
            chain = " -> ".join(str(p) for p in (*_seen, path))
            raise ValueError(f"config files include each other in a loop: {chain}")
        data, here, name = _read_yaml(path), path.parent, str(path)
        _seen = (*_seen, path)
        if not isinstance(data, dict) or BASE_KEY not in data:
            return [str(path)]
        data = dict(data)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    if isinstance(bases, (str, Path)):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, (str, Path)) for b in bases):
        raise ValueError(f"{name}: {BASE_KEY} must be a file path or a list of them, got {bases!r}")
    layers: list[str] = []
    for base in bases:
        base_path = Path(base).expanduser()
        base_path = base_path if base_path.is_absolute() else here / base_path
        if not base_path.is_file():
            raise FileNotFoundError(f"{name}: {BASE_KEY} file {str(base)!r} not found (looked for {base_path})")
        layers += config_layers(base_path, _seen)
    if data:
        layers.append(yaml.safe_dump(data, sort_keys=False))
    return layers


def expand_bases(argv: list[str]) -> list[str]:
    """argv with every ``--config FILE`` whose FILE has ``__base__`` replaced by its layers."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config") and i + 1 < len(argv):
            for layer in config_layers(argv[i + 1]):
                out += [arg, layer]
            i += 2
            continue
        if arg.startswith("--config="):
            for layer in config_layers(arg.split("=", 1)[1]):
                out += ["--config", layer]
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


def _share_log_version(trainer: Trainer) -> None:
    """Loggers writing under the same root get the first one's version (one run = one folder)."""
    loggers = trainer.loggers
    if len(loggers) < 2:
        return
    first = loggers[0]
    root = getattr(first, "root_dir", None)
    for other in loggers[1:]:
        if getattr(other, "root_dir", None) == root and getattr(other, "_version", 0) is None:
            other._version = first.version  # noqa: SLF001  (Lightning loggers' lazily computed version)


class AttnzooCLI(LightningCLI):
    """LightningCLI with the data -> model links, a Rich progress bar and one run folder per run.

    ``instantiate_trainer=False`` (used by :func:`attnzoo.training.validate_config`) stops after
    the model and data module are built.
    """

    def __init__(self, *args: Any, instantiate_trainer: bool = True, progress: dict | None = None, **kwargs: Any) -> None:
        self._build_trainer = instantiate_trainer
        # how far the CLI got: "parse" -> "instantiate" -> "run"; shared with the caller, who may
        # never get the object back when __init__ raises
        self.progress = progress if progress is not None else {}
        self.progress["phase"] = "parse"
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.input_size", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        self.progress["phase"] = "instantiate"

    def instantiate_trainer(self, **kwargs: Any) -> Trainer | None:
        if not self._build_trainer:
            return None
        cfg = self._get(self.config_init, "trainer", default={}) or {}
        if cfg.get("enable_progress_bar") is not False:
            given = cfg.get("callbacks") or []
            given = list(given) if isinstance(given, (list, tuple)) else [given]
            if not any(isinstance(c, ProgressBar) for c in given):
                # a bar on a terminal; plain lines into a file or pipe, where a bar shows nothing
                bar = RichProgressBar() if stream_is_terminal() else LogProgressBar()
                kwargs["callbacks"] = [*given, bar]
        _quiet_lightning_tips()
        trainer = super().instantiate_trainer(**kwargs)
        _share_log_version(trainer)
        return trainer

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        """Test the final weights on the data module's test split, then print the run's summary."""
        trainer, model, data = self.trainer, self.model, self.datamodule
        if trainer.interrupted:
            return
        tested: list[dict[str, float]] = []
        has_test = data is not None and type(data).test_dataloader is not LightningDataModule.test_dataloader
        if has_test:
            tested = trainer.test(model, datamodule=data, verbose=False)
        folder = run_folder(trainer)
        test_name = "test split"
        try:
            test_name = f"test split ({len(trainer.test_dataloaders.dataset):,} images)"
        except (AttributeError, TypeError):
            pass
        if trainer.is_global_zero:
            print(fit_summary(
                trainer, model, tested[0] if tested else None,
                time.perf_counter() - getattr(self, "_fit_started", time.perf_counter()), folder, test_name=test_name,
            ), flush=True)

    def after_instantiate_classes(self) -> None:
        self.progress["phase"] = "run"

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """Lightning's keyword arguments of ``trainer.<subcommand>``, with checkpoints read weights-only."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("weights_only") is False:
            raise AttnzooError(
                "weights_only: false is refused: attnzoo reads checkpoints weights-only, so that opening a file "
                "cannot run code (see attnzoo.checkpoint); drop the weights_only key or set it to true")
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
            kwargs["weights_only"] = True
        return kwargs

    def _parse_ckpt_path(self) -> None:
        """Lightning reads ``--ckpt_path``'s hyper-parameters into the model config (they win over the
        command line); here the file is read weights-only first, and a command-line value that
        contradicts the checkpoint is refused (network) or warned about (training settings)."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and Path(ckpt_path).is_file():
            from ..checkpoint import load_checkpoint

            saved = load_checkpoint(ckpt_path).get("hyper_parameters")
            if isinstance(saved, dict):
                given = self.config[sub].get("model")
                defaults = self._subcommand_parsers[sub].get_defaults().get("model")
                check_checkpoint_matches(ckpt_path, saved, _as_dict(given), _as_dict(defaults), sub)
        with weights_only_loading(ckpt_path):
            super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        ckpt_path = self._get(self.config, "ckpt_path")
        with weights_only_loading(ckpt_path):
            super()._run_subcommand(subcommand)


# hyper-parameters that decide the network's layers: a checkpoint that differs in one of them holds
# weights for another network; the others (optimizer, schedule, ...) only change how it is trained
ARCHITECTURE_KEYS = ("backbone", "backbone_kwargs", "attn", "position", "stages", "blocks", "init", "attn_kwargs",
                     "num_classes", "in_chans", "input_size", "ema_decay", "channels_last")


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def checkpoint_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, command line's value)} for the hyper-parameters both name and that differ."""
    out = {}
    for key in sorted(set(saved) & set(current)):
        if key.startswith("_"):
            continue
        if _plain(saved[key]) != _plain(current[key]):
            out[key] = (saved[key], current[key])
    return out


def _as_dict(ns: Any) -> dict[str, Any]:
    if ns is None:
        return {}
    return ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)


def check_checkpoint_matches(ckpt_path: str | Path, saved: dict[str, Any], given: dict[str, Any],
                             defaults: dict[str, Any], subcommand: str) -> None:
    """Refuse a ``--ckpt_path`` whose network contradicts the command line; warn about other contradictions.

    ``given``: the parsed ``model:`` config; ``defaults``: its defaults. Only values the command line
    or config changed from the defaults count (a default left alone is filled in from the checkpoint,
    Lightning's behaviour); NOTE: a value set explicitly to its default is not told apart from one
    left alone.
    """
    changed = {k: v for k, v in given.items() if k in defaults and _plain(v) != _plain(defaults[k])}
    diff = checkpoint_differences(saved, changed)
    if not diff:
        return

    def show(keys: list[str]) -> str:
        return "; ".join(f"model.{k}: checkpoint {diff[k][0]!r}, command line {diff[k][1]!r}" for k in keys)

    arch = [k for k in diff if k in ARCHITECTURE_KEYS]
    other = [k for k in diff if k not in ARCHITECTURE_KEYS]
    if arch:
        raise AttnzooError(
            f"--ckpt_path {ckpt_path} holds another network than the command line asks for ({show(arch)}); "
            f"`attnzoo {subcommand}` would quietly use the checkpoint's network. Drop the differing --model options "
            "(the checkpoint's own values are then used) or pass the checkpoint of the network you mean")
    warnings.warn(f"--ckpt_path {ckpt_path}: the checkpoint's hyper-parameters replace the command line's "
                  f"({show(other)}); drop these options to silence this warning", UserWarning, stacklevel=2)


def build_cli(
    args: Any, run: bool = True, instantiate_trainer: bool = True, exit_on_error: bool = True,
    progress: dict | None = None,
) -> AttnzooCLI:
    """The CLI object for ``args`` (argv list, or a config dict with ``run=False``)."""
    import attnzoo.data  # noqa: F401  (short class names such as --data CIFAR10DataModule resolve)

    # args are passed on purpose (bases inlined, or a run_fit_test config) while sys.argv holds
    # something else (the attnzoo command line, pytest's): not the mistake Lightning warns about
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Lightning 2.6.6 with torch 2.14 warns about its own use of a deprecated pytree API on every run
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

    return AttnzooCLI(
        AttnClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": exit_on_error} if not run else
        {c: {"exit_on_error": exit_on_error} for c in ("fit", "validate", "test", "predict")},
        args=args,
        run=run,
        instantiate_trainer=instantiate_trainer,
        progress=progress,
    )


def original_error(exc: BaseException) -> BaseException:
    """The data set's own FileNotFoundError when jsonargparse wrapped it in a ValueError, else ``exc``.

    jsonargparse reports a failing ``data:`` class (typed as a Union) as "Does not validate against
    any of the Union subtypes", with the data module's error as ``__cause__``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, FileNotFoundError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return exc


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return text if isinstance(exc, AttnzooError) else f"{type(exc).__name__}: {text}"


_HELP_FLAGS = ("-h", "--help", "--print_config", "--print-config")


def _missing_config(argv: list[str]) -> str | None:
    """Why a run without ``--config`` is refused (None when a config is given, or only help is asked).

    Without a config Lightning's own defaults apply: 1000 epochs, no ``last.ckpt``, and the model's
    224x224 input size whatever the data; no run should start that way by accident.
    """
    if not argv or argv[0] not in ("fit", "validate", "test", "predict"):
        return None
    rest = argv[1:]
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in rest):
        return None
    if any(a in _HELP_FLAGS or a.startswith("--print_config") for a in rest):
        return None
    return ("a config is needed: pass --config FILE, e.g. --config configs/fit/fmnist_resnet20.yaml "
            "(the files in configs/fit/ set the data, the epochs and the checkpointing); flags such as "
            "--model.attn eca or --trainer.max_epochs 2 then override it. For a run folder's saved config: "
            "--config runs/attnzoo/version_N/config.yaml")


def main(argv: list[str] | None = None) -> int:
    """``attnzoo fit|validate|test|predict ...``; argv starts with the subcommand. Returns the exit code.

    A config error (unknown block, position, key or class; a data set that is not there) is
    printed as one paragraph and returns 2, as is any :class:`attnzoo.errors.AttnzooError` raised
    later (an unsafe or mismatched checkpoint, a data check); ``--debug`` (``attnzoo``'s own flag) or
    ``ATTNZOO_DEBUG=1`` shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "attnzoo " + (argv[0] if argv else "")
    missing = _missing_config(argv)
    if missing:
        print(f"{prog}: error: {missing}", file=sys.stderr)
        return 2
    progress: dict[str, str] = {}
    try:
        expanded = expand_bases(argv)
        # args=None makes LightningCLI read sys.argv itself (no "args and sys.argv" warning)
        build_cli(None if expanded == sys.argv[1:] else expanded, progress=progress)
    except SystemExit as e:  # argument errors (printed by jsonargparse), --help, --print_config
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except CONFIG_ERRORS as e:
        # a described bad input (attnzoo.errors) is one paragraph and status 2, also once training
        # runs (a refused checkpoint, a data check); any other error there is a bug: traceback
        if debug_enabled() or (progress.get("phase") == "run" and not isinstance(e, AttnzooError)):
            raise
        print(f"{prog}: error: {_message(original_error(e))}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        if debug_enabled():
            raise
        print(f"{prog}: error: {_message(e)}", file=sys.stderr)
        return 1
    return 0
