"""Opening checkpoints safely: weights-only unpickling, everywhere attnzoo reads a ``.ckpt``.

A checkpoint is a pickle, and a pickle can name any Python function to call while it is read
(``os.system``, say). attnzoo therefore opens every checkpoint with ``torch.load(...,
weights_only=True)``: only tensors, numbers, strings, containers and the few classes listed in
:data:`SAFE_GLOBALS` may appear in it. A file asking for anything else is refused with
:class:`~attnzoo.errors.UnsafeCheckpointError` before any of it runs.

The places that open checkpoints and go through here: ``attnzoo explain`` and
:func:`attnzoo.explain.load_models` (:func:`load_lightning_checkpoint`), the attention figure of
``attnzoo report`` (which also keeps store paths inside the experiment's folder,
:func:`checkpoint_in_folder`), ``attnzoo fit|validate|test|predict --ckpt_path`` and a grid run's
``ckpt_path`` resume (``Trainer`` calls with ``weights_only=True`` inside :func:`weights_only_loading`).

Checkpoints written by ``attnzoo fit`` (with EMA, every schedule, resumable loop and optimizer
state) contain nothing beyond torch's default allow-list; :data:`SAFE_GLOBALS` adds the path
classes, so a hyper-parameter given as a ``pathlib.Path`` still loads.
"""
from __future__ import annotations

import contextlib
import pathlib
import pickle
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import AttnzooError, UnsafeCheckpointError

__all__ = ["SAFE_GLOBALS", "load_checkpoint", "load_lightning_checkpoint", "weights_only_loading",
           "checkpoint_in_folder", "not_plain_message", "strip_to_weights", "WEIGHTS_KEYS"]

# what a kept checkpoint needs to be rebuilt and evaluated (AttnClassifier.load_from_checkpoint,
# attnzoo explain): the weights and the constructor arguments; no optimizer, scheduler or loop state
WEIGHTS_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "epoch", "global_step", "pytorch-lightning_version")

# classes a weights-only load may rebuild, on top of torch's own allow-list: all are plain values
SAFE_GLOBALS: list[Any] = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def not_plain_message(path: str | Path, exc: BaseException) -> str:
    """One paragraph: which file, what it asked for, why it is refused, what to do instead."""
    text = str(exc)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    wanted = f" (it asks for the Python object {m.group(1)!r} while it is read)" if m else ""
    return (f"{path} is not a plain checkpoint{wanted}: attnzoo opens checkpoints weights-only, so that a file "
            "cannot run code, and this one holds more than tensors, numbers, strings and containers. Use a "
            "checkpoint written by `attnzoo fit` or Lightning's Trainer; if you made this file yourself and "
            "trust it, load it once with torch.load(path, weights_only=False) and save only its plain parts "
            "(state_dict, hyper_parameters as plain values) with torch.save.")


def _not_a_checkpoint(path: str | Path, exc: BaseException) -> AttnzooError:
    return AttnzooError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
                        "it may be truncated or not written by torch.save; point to a .ckpt file that `attnzoo fit` wrote")


@contextlib.contextmanager
def weights_only_loading(path: str | Path | None = None) -> Iterator[None]:
    """Within this block, weights-only loads may rebuild :data:`SAFE_GLOBALS`, and a file that is
    not plain data raises :class:`UnsafeCheckpointError` naming ``path`` (e.g. around
    ``trainer.fit(..., ckpt_path=path, weights_only=True)``)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            yield
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(not_plain_message(path if path is not None else "the checkpoint", e)) from e


def _check_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; give the path of a .ckpt file")
    if not p.is_file():
        raise IsADirectoryError(f"checkpoint {str(path)!r} is a folder, not a file; give the path of a .ckpt file inside it")
    return p


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint's contents (a dict), read weights-only; see the module docstring."""
    p = _check_file(path)
    with weights_only_loading(p):
        try:
            data = torch.load(p, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            raise
        except Exception as e:  # noqa: BLE001  (whatever a damaged file makes the unpickler raise)
            raise _not_a_checkpoint(p, e) from e
    if not isinstance(data, dict):
        raise AttnzooError(f"{p} holds a {type(data).__name__}, not a checkpoint dict; point to a .ckpt file that `attnzoo fit` wrote")
    return data


def load_lightning_checkpoint(cls: type, path: str | Path, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``cls.load_from_checkpoint(path, weights_only=True)``, with the errors of :func:`load_checkpoint`."""
    p = _check_file(path)
    data = load_checkpoint(p, map_location)  # refuses a file that is not plain data, names a damaged one
    if "state_dict" not in data:
        raise AttnzooError(f"{p} has no 'state_dict'; it is not a Lightning checkpoint (keys: {sorted(map(str, data))[:8]})")
    del data
    with weights_only_loading(p):
        return cls.load_from_checkpoint(str(p), map_location=map_location, weights_only=True, **kwargs)


def checkpoint_in_folder(folder: str | Path, relative: str | Path) -> Path:
    """``folder / relative`` when it lies inside ``folder`` (symbolic links resolved), else an error.

    For paths read from a results store: a store names its runs' checkpoints relative to its own
    folder; a path leaving it (``../``, an absolute path, a link out) is refused rather than opened.
    """
    root = Path(folder).expanduser().resolve()
    target = (root / Path(relative)).resolve()
    if not target.is_relative_to(root):
        raise AttnzooError(f"the results store names checkpoint {str(relative)!r}, which lies outside the experiment's "
                           f"folder {root}; a store only refers to checkpoints inside its own folder, so this one is "
                           "not opened (re-run the grid, or move the checkpoint under the folder and fix the store)")
    return target


def strip_to_weights(path: str | Path) -> Path:
    """Rewrite a Lightning checkpoint in place with only :data:`WEIGHTS_KEYS` (atomically: a temporary
    file, then ``os.replace``). The weights and hyper-parameters are what explain, test and a report's
    figure use; the optimizer's momentum buffers alone are as large as the weights. The result can no
    longer resume training. Returns the path."""
    import os

    path = Path(path)
    ckpt = load_checkpoint(path)
    missing = [k for k in ("state_dict", "hyper_parameters") if k not in ckpt]
    if missing:
        raise AttnzooError(f"{path}: not a Lightning checkpoint of attnzoo fit (no {missing}); nothing stripped")
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: ckpt[k] for k in WEIGHTS_KEYS if k in ckpt}, tmp)
    os.replace(tmp, path)
    return path
