"""A catalogue of bad inputs across the API, the CLI, configs, data files and checkpoints.

Each case is one wrong input and the words its error must contain (the block, parameter, file or
key at fault). A case passes when the call raises one of the expected exception types (API) or
exits with status 2 and no traceback (CLI), with every expected word in the message. Cases are
generated from the registries (every block x every kind of bad argument), so a new block is
covered the moment it is registered. ``benchmarks/bad_inputs.py`` runs the same catalogue and
writes the counts the README's "Reliability" section shows.
"""
from __future__ import annotations

import contextlib
import gzip
import inspect
import io
import os
import pickle
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """``call()`` must raise one of ``raises`` (or, for CLI cases, return (2, stderr)) naming ``words``."""

    area: str
    name: str
    call: Callable[[], Any]
    words: tuple[str, ...]
    raises: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, FileNotFoundError)
    cli: bool = False
    extra: dict = field(default_factory=dict)


def run_case(case: Case) -> tuple[bool, str]:
    """(passed, what happened) for one case; never raises."""
    if case.cli:
        try:
            rc, err = case.call()
        except SystemExit as e:  # argparse / jsonargparse exit themselves
            rc, err = e.code, ""
        except BaseException as e:  # noqa: BLE001
            return False, f"raised {type(e).__name__}: {e}"
        if rc != 2:
            return False, f"exit status {rc}, expected 2; stderr: {err[-400:]}"
        if "Traceback" in err:
            return False, f"printed a traceback: {err[-400:]}"
        missing = [w for w in case.words if w.lower() not in err.lower()]
        return (not missing), (f"stderr lacks {missing}: {err[-400:]}" if missing else "ok")
    try:
        case.call()
    except case.raises as e:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        missing = [w for w in case.words if w.lower() not in text.lower()]
        return (not missing), (f"message lacks {missing}: {text[:400]}" if missing else "ok")
    except BaseException as e:  # noqa: BLE001
        return False, f"raised {type(e).__name__} (expected {[t.__name__ for t in case.raises]}): {str(e)[:400]}"
    return False, "accepted the bad input silently"


# --------------------------------------------------------------------------------------------
# API: every registered block x every kind of bad argument
# --------------------------------------------------------------------------------------------

def _numeric_params(factory) -> dict[str, Any]:
    """{name: annotation} of the block's int/float/bool keyword parameters."""
    from attnzoo.registry import _signature_target

    target = _signature_target(factory)
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001
        return {}
    fixed = set(getattr(factory, "keywords", {}) or {})
    out = {}
    for k, h in hints.items():
        if k in ("channels", "return", "device", "dtype") or k in fixed:
            continue
        if h in (int, float, bool) or h == (int | None) or h == (float | None):
            out[k] = h
    return out


def api_cases() -> list[Case]:
    from attnzoo import create_attn, get_attn, list_attn
    from attnzoo.factory import attn_info

    cases: list[Case] = []
    for name in list_attn():
        c = lambda *a, **k: (lambda: create_attn(*a, **k))  # noqa: E731
        cases += [
            Case("api", f"{name}: unknown argument", c(name, 64, nonsense_arg=1), (name, "nonsense_arg")),
            Case("api", f"{name}: channels=0", c(name, 0), ("channels=0",)),
            Case("api", f"{name}: channels='64'", c(name, "64"), ("channels", "'64'")),
            Case("api", f"{name}: channels=True", c(name, True), ("channels", "True")),
            Case("api", f"{name}: channels=10**9", c(name, 10**9), ("channels=1000000000", "2**16")),
            Case("api", f"{name}: channels=64.0", c(name, 64.0), ("channels", "64.0")),
            Case("api", f"{name}: misspelt name", c(name + "zz", 64), (f"{name}zz", "unknown attention block")),
            Case("api", f"{name}: argument given twice in the spec", c(f"{name}(a=1, a=2)", 64), ("'a'", "twice")),
            Case("api", f"{name}: get_attn with an unknown argument", lambda n=name: get_attn(f"{n}(nonsense_arg=1)"),
                 (name, "nonsense_arg")),
        ]
        for param, hint in _numeric_params(attn_info(name).factory).items():
            if hint is not bool:
                cases.append(Case("api", f"{name}: {param}=True", c(name, 64, **{param: True}), (name, param, "True")))
            cases.append(Case("api", f"{name}: {param}='a'", c(name, 64, **{param: "a"}), (name, param, "'a'")))
            if hint in (int, int | None):
                cases.append(Case("api", f"{name}: {param}=2.5", c(name, 64, **{param: 2.5}), (name, param, "2.5")))
    cases += [
        Case("api", "se: rd_channels=10**12", lambda: create_attn("se", 64, rd_channels=10**12), ("rd_channels", "2**16")),
        Case("api", "se: rd_ratio=0", lambda: create_attn("se(rd_ratio=0)", 64), ("rd_ratio",)),
        Case("api", "se: rd_ratio=2", lambda: create_attn("se(rd_ratio=2.0)", 64), ("rd_ratio",)),
        Case("api", "spec: unclosed", lambda: get_attn("se(rd_ratio=0.25"), ("missing closing",)),
        Case("api", "spec: positional argument", lambda: get_attn("se(0.25)"), ("keyword",)),
        Case("api", "spec: not a literal", lambda: get_attn("se(rd_ratio=foo)"), ("rd_ratio", "not a literal")),
        Case("api", "spec: expression", lambda: get_attn("se(rd_ratio=__import__('os'))"), ("rd_ratio", "not a literal")),
        Case("api", "spec: garbage after name", lambda: get_attn("se]"), ("expected '('",)),
        Case("api", "spec: empty name", lambda: get_attn("(rd_ratio=1)"), ("block name",)),
        Case("api", "spec: an int", lambda: get_attn(42), ("int",)),
        Case("api", "spec: a module for get_attn", lambda: get_attn(torch.nn.ReLU()), ("create_attn",)),
        Case("api", "create_attn without channels", lambda: create_attn("se"), ("channels",)),
        Case("api", "timm: unknown block", lambda: get_attn("timm:nonexistent"), ("nonexistent",)),
        Case("api", "list_attn: unknown family", lambda: list_attn(family="chanel"), ("chanel",)),
    ]
    return cases


def backbone_cases() -> list[Case]:
    from attnzoo import create_backbone, insert_attn, list_backbones

    cases: list[Case] = []
    for name in list_backbones():
        cb = lambda *a, **k: (lambda: create_backbone(*a, **k))  # noqa: E731
        cases += [
            Case("api", f"backbone {name}: num_classes=0", cb(name, num_classes=0), ("num_classes",)),
            Case("api", f"backbone {name}: num_classes=True", cb(name, num_classes=True), ("num_classes",)),
            Case("api", f"backbone {name}: in_chans='3'", cb(name, in_chans="3"), ("in_chans",)),
            Case("api", f"backbone {name}: unknown argument", cb(name, widht=2), (name, "widht")),
            Case("api", f"backbone {name}: misspelt", cb(name + "x"), (f"{name}x",)),
        ]
    model = lambda: create_backbone("resnet20", num_classes=4)  # noqa: E731
    cases += [
        Case("api", "insert_attn: unknown position", lambda: insert_attn(model(), "se", position="middle"), ("middle",)),
        Case("api", "insert_attn: stage 9", lambda: insert_attn(model(), "se", stages=9), ("9",)),
        Case("api", "insert_attn: stage 0", lambda: insert_attn(model(), "se", stages=0), ("0",)),
        Case("api", "insert_attn: blocks='some'", lambda: insert_attn(model(), "se", blocks="some"), ("some",)),
        Case("api", "insert_attn: unknown block", lambda: insert_attn(model(), "sse"), ("sse",)),
        Case("api", "insert_attn: bad kwarg", lambda: insert_attn(model(), "se", rd_ratio="a"), ("rd_ratio", "'a'")),
        Case("api", "insert_attn: unknown init", lambda: insert_attn(model(), "se", init="zeros"), ("zeros",)),
        Case("api", "insert_attn: not a model", lambda: insert_attn("resnet20", "se"), ("str",),
             raises=(TypeError, ValueError)),
    ]
    return cases


# --------------------------------------------------------------------------------------------
# configs (strict YAML) and checkpoints
# --------------------------------------------------------------------------------------------

def config_cases(tmp: Path) -> list[Case]:
    from attnzoo.training.cli import config_layers
    from attnzoo.yamlio import load_yaml

    files = {
        "top": "lr: 0.1\nlr: 0.01\n",
        "nested": "model:\n  attn: se\n  lr: 0.1\n  attn: cbam\n",
        "deep": "trainer:\n  callbacks:\n  - class_path: X\n    init_args: {a: 1, a: 2}\n",
        "invalid": "model: [unclosed\n",
        "base_missing": "__base__: nowhere.yaml\nmodel: {attn: se}\n",
        "base_type": "__base__: 3\n",
        "loop": "__base__: loop.yaml\n",
    }
    paths = {}
    for k, text in files.items():
        paths[k] = tmp / f"{k}.yaml"
        paths[k].write_text(text)
    cases = [
        Case("config", "duplicate top-level key", lambda: config_layers(paths["top"]), ("'lr'", "twice", "line 1", "line 2")),
        Case("config", "duplicate nested key", lambda: config_layers(paths["nested"]), ("'attn'", "twice", "nested.yaml")),
        Case("config", "duplicate key in a flow mapping", lambda: config_layers(paths["deep"]), ("'a'", "twice")),
        Case("config", "invalid YAML", lambda: config_layers(paths["invalid"]), ("invalid.yaml", "not valid YAML")),
        Case("config", "missing __base__ file", lambda: config_layers(paths["base_missing"]), ("nowhere.yaml",)),
        Case("config", "__base__ not a path", lambda: config_layers(paths["base_type"]), ("__base__",)),
        Case("config", "__base__ loop", lambda: config_layers(paths["loop"]), ("loop",)),
        Case("config", "duplicate key in a YAML string", lambda: load_yaml("a: 1\nb: 2\na: 3\n", "grid.yaml"),
             ("grid.yaml", "'a'", "twice")),
    ]
    return cases


def checkpoint_cases(tmp: Path) -> list[Case]:
    from attnzoo.checkpoint import checkpoint_in_folder, load_checkpoint
    from attnzoo.errors import UnsafeCheckpointError
    from attnzoo.explain.images import load_classifier

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch '{tmp / 'PWNED'}'",))

    evil = tmp / "evil.ckpt"
    torch.save({"hyper_parameters": {"x": Evil()}, "state_dict": {}}, evil)
    cut = tmp / "cut.ckpt"
    cut.write_bytes(evil.read_bytes()[:40])
    text = tmp / "notes.ckpt"
    text.write_text("hello")
    listy = tmp / "list.ckpt"
    torch.save([1, 2, 3], listy)
    nostate = tmp / "nostate.ckpt"
    torch.save({"epoch": 1}, nostate)
    return [
        Case("checkpoint", "code in a pickle", lambda: load_checkpoint(evil), ("evil.ckpt", "not a plain checkpoint"),
             raises=(UnsafeCheckpointError,)),
        Case("checkpoint", "code in a pickle, via explain", lambda: load_classifier(evil), ("evil.ckpt", "not a plain"),
             raises=(UnsafeCheckpointError,)),
        Case("checkpoint", "truncated file", lambda: load_checkpoint(cut), ("cut.ckpt", "not a readable")),
        Case("checkpoint", "a text file", lambda: load_checkpoint(text), ("notes.ckpt", "not a readable")),
        Case("checkpoint", "not a dict", lambda: load_checkpoint(listy), ("list.ckpt", "list")),
        Case("checkpoint", "no state_dict", lambda: load_classifier(nostate), ("nostate.ckpt", "state_dict")),
        Case("checkpoint", "missing file", lambda: load_checkpoint(tmp / "gone.ckpt"), ("gone.ckpt", "does not exist")),
        Case("checkpoint", "a folder", lambda: load_checkpoint(tmp), ("is a folder",), raises=(IsADirectoryError,)),
        Case("checkpoint", "store path leaving the folder", lambda: checkpoint_in_folder(tmp / "exp", "../evil.ckpt"),
             ("../evil.ckpt", "outside")),
        Case("checkpoint", "absolute store path", lambda: checkpoint_in_folder(tmp / "exp", "/etc/passwd"),
             ("/etc/passwd", "outside")),
    ]


# --------------------------------------------------------------------------------------------
# data files in their real formats
# --------------------------------------------------------------------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fmnist(folder: Path, side: int = 28, label_max: int = 9, n: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n // 2)):
        _write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, side, side)))
        labels = np.arange(count) % 10
        labels[0] = label_max
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
    return folder


def _cifar(folder: Path, row: int = 3072, label: int = 0, evil: bool = False) -> Path:
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(10)]
        labels[0] = label
        entry: dict[str, Any] = {"data": rng.integers(0, 256, (10, row)).astype(np.uint8), "labels": labels}
        if evil:
            class Evil:
                def __reduce__(self):
                    return (os.system, (f"touch '{folder / 'PWNED'}'",))
            entry["batch_label"] = Evil()
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return folder


def _imagefolder(folder: Path, bad: dict[str, bytes | None]) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = folder / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(d / f"{i}.png")
    good = (folder / "train" / "a" / "0.png").read_bytes()
    for rel, content in bad.items():
        p = folder / "train" / rel
        p.write_bytes(good[: len(good) // 2] if content is None else content)
    return folder


def data_cases(tmp: Path) -> list[Case]:
    from attnzoo.data import CIFAR10DataModule, FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule
    from attnzoo.errors import DataError

    def setup(cls, **kw):
        def go():
            cls(num_workers=0, val_size=0.2, **kw).setup("fit")
        return go

    f27 = _fmnist(tmp / "fm27", side=27)
    f200 = _fmnist(tmp / "fm200", label_max=200)
    fgz = _fmnist(tmp / "fmgz")
    raw = (fgz / "train-images-idx3-ubyte").read_bytes()
    (fgz / "train-images-idx3-ubyte").unlink()
    (fgz / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-20])
    fcut = _fmnist(tmp / "fmcut")
    (fcut / "t10k-images-idx3-ubyte").write_bytes((fcut / "t10k-images-idx3-ubyte").read_bytes()[:-7])
    fcount = _fmnist(tmp / "fmcount")
    _write_idx(fcount / "train-labels-idx1-ubyte", np.arange(7) % 10)
    c_row = _cifar(tmp / "c_row", row=3000)
    c_lab = _cifar(tmp / "c_lab", label=12)
    c_evil = _cifar(tmp / "c_evil", evil=True)
    trunc = _imagefolder(tmp / "if_trunc", {"a/cut.png": None})
    fake = _imagefolder(tmp / "if_fake", {"b/fake.jpg": b"this is not a jpeg"})
    empty = _imagefolder(tmp / "if_empty", {"a/empty.png": b""})
    many = _imagefolder(tmp / "if_many", {"a/x.jpg": b"no", "b/y.png": None})
    cache = tmp / "cache"
    return [
        Case("data", "Fashion-MNIST 27x27 files", setup(FashionMNISTDataModule, data_dir=str(f27)),
             ("train-images-idx3-ubyte", "27x27", "28x28"), raises=(DataError,)),
        Case("data", "Fashion-MNIST label 200", setup(FashionMNISTDataModule, data_dir=str(f200)),
             ("train-labels-idx1-ubyte", "200", "0..9"), raises=(DataError,)),
        Case("data", "Fashion-MNIST corrupt gzip", setup(FashionMNISTDataModule, data_dir=str(fgz)),
             ("train-images-idx3-ubyte.gz", "corrupt gzip")),
        Case("data", "Fashion-MNIST truncated idx", setup(FashionMNISTDataModule, data_dir=str(fcut)),
             ("t10k-images-idx3-ubyte", "truncated")),
        Case("data", "Fashion-MNIST label count", setup(FashionMNISTDataModule, data_dir=str(fcount)),
             ("disagree",)),
        Case("data", "Fashion-MNIST missing folder", setup(FashionMNISTDataModule, data_dir=str(tmp / "nope")),
             ("nope",)),
        Case("data", "CIFAR rows of 3000 values", setup(CIFAR10DataModule, data_dir=str(c_row)),
             ("data_batch_1", "3072")),
        Case("data", "CIFAR label 12", setup(CIFAR10DataModule, data_dir=str(c_lab)),
             ("data_batch_1", "12", "0..9"), raises=(DataError,)),
        Case("data", "CIFAR batch that runs code", setup(CIFAR10DataModule, data_dir=str(c_evil)),
             ("data_batch_1", "not a plain CIFAR batch", "system"), raises=(DataError,)),
        Case("data", "ImageFolder truncated PNG", setup(ImageFolderDataModule, data_dir=str(trunc), image_size=8,
                                                        cache_dir=str(cache)), ("cut.png", "truncated"), raises=(DataError,)),
        Case("data", "ImageFolder fake .jpg", setup(ImageFolderDataModule, data_dir=str(fake), image_size=8,
                                                    cache_dir=str(cache)), ("fake.jpg", "not an image"), raises=(DataError,)),
        Case("data", "ImageFolder empty file", setup(ImageFolderDataModule, data_dir=str(empty), image_size=8,
                                                     cache_dir=str(cache)), ("empty.png", "empty file"), raises=(DataError,)),
        Case("data", "ImageFolder two bad files", setup(ImageFolderDataModule, data_dir=str(many), image_size=8,
                                                        cache_dir=str(cache)), ("x.jpg", "y.png", "2 of"), raises=(DataError,)),
        Case("data", "ImageFolder bad policy", setup(ImageFolderDataModule, data_dir=str(many), bad_files="ignore"),
             ("bad_files", "ignore")),
        Case("data", "ImageFolder unknown class", setup(ImageFolderDataModule, data_dir=str(fake), classes=["a", "c"]),
             ("'c'",)),
        Case("data", "Synthetic num_classes=1", lambda: SyntheticDataModule(num_classes=1), ("num_classes",)),
        Case("data", "Synthetic image_size=0", lambda: SyntheticDataModule(image_size=0), ("image_size",)),
    ]


# --------------------------------------------------------------------------------------------
# the CLI, in process (and a few subprocesses)
# --------------------------------------------------------------------------------------------

# `attnzoo fit|test|...` refuse to run without a config; a one-line YAML string is one
CONFIG = ["--config", "seed_everything: 0"]
SYNTH = [*CONFIG, "--data", "SyntheticDataModule", "--data.num_classes", "4", "--data.image_size", "16",
         "--data.num_train", "8", "--data.num_test", "4", "--data.batch_size", "4",
         "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
         "--trainer.enable_checkpointing", "false", "--trainer.max_epochs", "1"]


def _in_process(argv: list[str], cwd: Path) -> Callable[[], tuple[int, str]]:
    def go() -> tuple[int, str]:
        from attnzoo.cli import main

        err = io.StringIO()
        old = os.getcwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = main(argv)
                except SystemExit as e:
                    rc = e.code
        finally:
            os.chdir(old)
        return rc, err.getvalue()
    return go


def _subprocess(argv: list[str], cwd: Path) -> Callable[[], tuple[int, str]]:
    def go() -> tuple[int, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("ATTNZOO_DEBUG", None)
        p = subprocess.run([sys.executable, "-m", "attnzoo", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=120)
        return p.returncode, p.stderr
    return go


def _cli_checkpoint(tmp: Path) -> Path:
    """A real checkpoint of resnet20 + se on the synthetic data (one tiny step)."""
    import lightning as L

    from attnzoo.data import SyntheticDataModule
    from attnzoo.training import AttnClassifier

    path = tmp / "se.ckpt"
    if not path.exists():
        dm = SyntheticDataModule(num_classes=4, image_size=16, num_train=8, num_test=4, batch_size=4)
        model = AttnClassifier(backbone="resnet20", attn="se", num_classes=4, in_chans=3, input_size=16)
        trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp)
        trainer.fit(model, dm)
        trainer.save_checkpoint(path)
    return path


def cli_cases(tmp: Path) -> list[Case]:
    tmp.mkdir(parents=True, exist_ok=True)
    dup = tmp / "dup.yaml"
    dup.write_text("model:\n  attn: se\n  attn: cbam\n")
    evil = tmp / "evil.ckpt"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch '{tmp / 'PWNED'}'",))

    torch.save({"hyper_parameters": {"x": Evil()}, "state_dict": {}}, evil)
    ckpt = _cli_checkpoint(tmp)
    fit = lambda *a: _in_process(["fit", *SYNTH, *a], tmp)  # noqa: E731
    cases = [
        Case("cli", "unknown command", _in_process(["fitt"], tmp), ("fitt", "did you mean 'fit'")),
        Case("cli", "list: unknown family", _in_process(["list", "--family", "chanel"], tmp), ("chanel",)),
        Case("cli", "fit: unknown block", fit("--model.attn", "sse"), ("sse", "did you mean")),
        Case("cli", "fit: block argument of the wrong type", fit("--model.attn", "se(rd_ratio='a')"), ("rd_ratio", "'a'")),
        Case("cli", "fit: block argument given twice", fit("--model.attn", "se(rd_ratio=0.5, rd_ratio=0.25)"),
             ("rd_ratio", "twice")),
        Case("cli", "fit: unknown backbone", fit("--model.backbone", "resnet21"), ("resnet21",)),
        Case("cli", "fit: unknown position", fit("--model.attn", "se", "--model.position", "middle"), ("middle",)),
        Case("cli", "fit: negative lr", fit("--model.lr", "-1"), ("lr",)),
        Case("cli", "fit: unknown optimizer", fit("--model.optimizer", "adamm"), ("adamm",)),
        Case("cli", "fit: unknown model key", fit("--model.attnn", "se"), ("attnn",)),
        Case("cli", "fit: unknown data class", _in_process(["fit", *CONFIG, "--data", "NopeDataModule"], tmp), ("NopeDataModule",)),
        Case("cli", "fit: missing config file", fit("--config", str(tmp / "missing.yaml")), ("missing.yaml",)),
        Case("cli", "fit: duplicate key in the config", fit("--config", str(dup)), ("'attn'", "twice", "dup.yaml")),
        Case("cli", "fit: no --config", _in_process(["fit", "--model.attn", "se"], tmp), ("--config",)),
        Case("cli", "fit: data set not there", _in_process(["fit", *CONFIG, "--data", "FashionMNISTDataModule",
                                                            "--data.data_dir", str(tmp / "nofmnist")], tmp), ("nofmnist",)),
        Case("cli", "fit: 27x27 Fashion-MNIST files", _in_process(
            ["fit", "--data", "FashionMNISTDataModule", "--data.data_dir", str(_fmnist(tmp / "fm27", side=27)),
             *CONFIG, *SYNTH[12:]], tmp), ("train-images-idx3-ubyte", "27x27")),
        Case("cli", "test: malicious --ckpt_path", _in_process(["test", *SYNTH, "--ckpt_path", str(evil)], tmp),
             ("evil.ckpt", "not a plain checkpoint")),
        Case("cli", "test: --ckpt_path of another network", _in_process(["test", *SYNTH, "--model.attn", "cbam",
                                                                          "--ckpt_path", str(ckpt)], tmp),
             ("se.ckpt", "model.attn", "'se'", "'cbam'")),
        Case("cli", "test: --weights_only false", _in_process(["test", *SYNTH, "--weights_only", "false"], tmp),
             ("weights_only",)),
        Case("cli", "explain: missing checkpoint", _in_process(["explain", "--ckpt", str(tmp / "no.ckpt"), "--out",
                                                                str(tmp / "o")], tmp), ("no.ckpt",)),
        Case("cli", "explain: malicious checkpoint", _in_process(["explain", "--ckpt", str(evil), "--out", str(tmp / "o")],
                                                                 tmp), ("evil.ckpt", "not a plain checkpoint")),
        Case("cli", "explain: --num-images 0", _in_process(["explain", "--ckpt", str(ckpt), "--num-images", "0", "--out",
                                                            str(tmp / "o")], tmp), ("--num-images",)),
        Case("cli", "explain: unknown dataset", _in_process(["explain", "--ckpt", str(ckpt), "--dataset", "mnistt", "--out",
                                                             str(tmp / "o")], tmp), ("mnistt",)),
        Case("cli", "subprocess: unknown block", _subprocess(["fit", *SYNTH, "--model.attn", "sse"], tmp), ("sse",)),
        Case("cli", "subprocess: malicious checkpoint", _subprocess(["explain", "--ckpt", str(evil), "--out",
                                                                     str(tmp / "o")], tmp), ("not a plain checkpoint",)),
        Case("cli", "subprocess: duplicate config key", _subprocess(["fit", *SYNTH, "--config", str(dup)], tmp),
             ("twice",)),
    ]
    for case in cases:
        case.cli = True
    return cases


def all_cases(tmp: Path) -> list[Case]:
    return (api_cases() + backbone_cases() + config_cases(_mk(tmp / "config")) + checkpoint_cases(_mk(tmp / "ckpt"))
            + data_cases(_mk(tmp / "data")) + cli_cases(_mk(tmp / "cli")))


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------

_API = api_cases() + backbone_cases()


@pytest.mark.parametrize("case", _API, ids=[c.name for c in _API])
def test_api_bad_input_gets_an_error_naming_the_culprit(case):
    ok, why = run_case(case)
    assert ok, f"{case.name}: {why}"


@pytest.fixture(scope="module")
def files_cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return {c.name: c for c in config_cases(_mk(tmp / "config")) + checkpoint_cases(_mk(tmp / "ckpt"))
            + data_cases(_mk(tmp / "data"))}, tmp


def test_config_checkpoint_and_data_bad_inputs_get_errors_naming_the_culprit(files_cases):
    cases, tmp = files_cases
    failed = {name: why for name, c in cases.items() for ok, why in [run_case(c)] if not ok}
    assert not failed, failed
    assert len(cases) >= 30
    assert not list(tmp.rglob("PWNED"))  # no crafted file ran its code


@pytest.mark.parametrize("kind", ["in process", "subprocess"])
def test_cli_bad_inputs_exit_2_with_one_paragraph_and_no_traceback(tmp_path, kind):
    cases = [c for c in cli_cases(tmp_path) if c.name.startswith("subprocess") == (kind == "subprocess")]
    failed = {c.name: why for c in cases for ok, why in [run_case(c)] if not ok}
    assert not failed, failed
    assert len(cases) >= 3
    assert not (tmp_path / "PWNED").exists()


def test_catalogue_has_at_least_300_cases_in_every_area(tmp_path):
    n_api = len(_API)
    assert n_api + 30 + 20 >= 300 and n_api >= 250, n_api


def test_skip_policy_drops_bad_files_and_counts_them(tmp_path):
    from attnzoo.data import ImageFolderDataModule

    root = _imagefolder(tmp_path / "tree", {"a/x.jpg": b"no", "b/y.png": None})
    dm = ImageFolderDataModule(data_dir=str(root), image_size=8, num_workers=0, val_size=0.2, bad_files="skip",
                               cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="skipping 2 of 8 files"):
        dm.setup("fit")
    assert sorted(Path(p).name for p in dm.skipped_files) == ["x.jpg", "y.png"]
    assert len(dm.train_set) + len(dm.val_set) == 6
    assert list((tmp_path / "cache").glob("imagefolder-scan-*.json"))  # the scan is cached with the data


def test_scan_result_is_read_back_from_the_cache(tmp_path, monkeypatch):
    from attnzoo.data import checks

    root = _imagefolder(tmp_path / "tree", {"a/x.jpg": b"no"})
    files = sorted(str(p) for p in (root / "train").rglob("*.*"))
    first = checks.scan_image_files(files, tmp_path / "c")
    monkeypatch.setattr(checks, "_probe", lambda p: pytest.fail("scanned again"))
    assert checks.scan_image_files(files, tmp_path / "c") == first and len(first) == 1


def test_numpy_integer_channels_are_accepted():
    from attnzoo import create_attn

    block = create_attn("se", np.int64(64))
    assert block(torch.randn(1, 64, 4, 4)).shape == (1, 64, 4, 4)


def test_ckpt_path_with_only_training_settings_changed_warns_and_lists_them(tmp_path):
    ckpt = _cli_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match=r"model\.lr: checkpoint 0\.1, command line 0\.5"):
        rc, _ = _in_process(["test", *SYNTH, "--model.lr", "0.5", "--ckpt_path", str(ckpt)], tmp_path)()
    assert rc == 0


def test_explain_says_when_fewer_images_exist_than_asked(tmp_path):
    from attnzoo.explain.images import load_dataset_images

    with pytest.warns(UserWarning, match="num_images=100000 asked for.*has 4 images"):
        imgs = load_dataset_images("synthetic", num_images=100000, num_classes=4, image_size=8, num_test=4)
    assert len(imgs.tensor) == 4


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch):
    from attnzoo.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        main(["explain", "--debug", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path)])
