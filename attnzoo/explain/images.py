"""Inputs of ``attnzoo explain``: trained classifiers from checkpoints, and the images to explain.

Images come normalised exactly as the data module normalises its batches (``(x/255 - mean) / std``),
together with a [0, 1] copy for display, the true classes where known, and the class names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ExplainImages", "LoadedModel", "load_classifier", "load_dataset_images", "load_image_folder",
           "run_data_config", "DATASETS", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# --dataset NAME -> data module class (attnzoo.data)
DATASETS = {
    "fmnist": "FashionMNISTDataModule",
    "fashion_mnist": "FashionMNISTDataModule",
    "cifar10": "CIFAR10DataModule",
    "cifar100": "CIFAR100DataModule",
    "imagefolder": "ImageFolderDataModule",
    "synthetic": "SyntheticDataModule",
}


@dataclass
class ExplainImages:
    """``tensor`` (N, C, H, W) normalised model input; ``mean``/``std`` the normalisation (per channel);
    ``targets`` true class per image (None where unknown); ``names`` one caption per image;
    ``classes`` class names (None: shown as numbers)."""

    tensor: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    targets: list[int | None]
    names: list[str]
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.tensor.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.tensor.shape)}")
        n, c = self.tensor.shape[:2]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std need one value per channel ({c}), got mean={self.mean}, std={self.std}")
        if len(self.targets) != n or len(self.names) != n:
            raise ValueError(f"targets and names need one entry per image ({n})")

    @property
    def display(self) -> torch.Tensor:
        """(N, H, W, C) in [0, 1]: the images as the data set stored them, for drawing."""
        m = torch.tensor(self.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.tensor.detach().cpu().float() * s + m).clamp(0, 1).permute(0, 2, 3, 1)

    def class_name(self, index: int | None) -> str:
        if index is None:
            return "?"
        if self.classes is not None and 0 <= index < len(self.classes):
            return str(self.classes[index])
        return f"class {index}"

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    targets: Sequence[int | None] | None = None, classes: list[str] | None = None) -> "ExplainImages":
        """Wrap an already normalised batch; mean/std default to 0/1 (the batch is drawn as it is)."""
        c = tensor.shape[1]
        return cls(tensor, tuple(mean) if mean is not None else (0.0,) * c, tuple(std) if std is not None else (1.0,) * c,
                   list(targets) if targets is not None else [None] * len(tensor),
                   [f"image {i}" for i in range(len(tensor))], classes)


@dataclass
class LoadedModel:
    """A checkpoint's network (EMA weights where the run kept them), its label and what it is."""

    label: str
    network: nn.Module
    hparams: dict[str, Any]
    path: Path | None = None
    data_config: dict[str, Any] | None = field(default=None, repr=False)
    input_size: tuple[int, int, int] | None = None  # (C, H, W) the network was built for

    @property
    def description(self) -> str:
        hp = self.hparams
        attn = hp.get("attn") or "no attention"
        where = f" @ {hp['position']}" if hp.get("position") else ""
        return f"{hp.get('backbone', '?')} + {attn}{where}"


def run_data_config(ckpt: str | Path) -> dict[str, Any] | None:
    """The ``data:`` section of the run's resolved config.yaml (beside the checkpoint or one folder
    up, as ``attnzoo fit`` writes it), or None when there is none."""
    import yaml

    ckpt = Path(ckpt)
    for folder in (ckpt.parent, ckpt.parent.parent):
        cfg = folder / "config.yaml"
        if cfg.is_file():
            try:
                data = (yaml.safe_load(cfg.read_text()) or {}).get("data")
            except yaml.YAMLError:
                return None
            return data if isinstance(data, dict) else None
    return None


def load_classifier(path: str | Path, label: str | None = None) -> LoadedModel:
    """Rebuild an ``AttnClassifier`` from its checkpoint (hyper-parameters rebuild the backbone and
    the inserted blocks) on the CPU, in eval mode; its EMA weights when the run kept an EMA (what
    validation and test used).

    The file is read weights-only (:mod:`attnzoo.checkpoint`): a checkpoint that would run code
    when unpickled raises :class:`attnzoo.errors.UnsafeCheckpointError` and nothing of it runs.
    """
    from ..checkpoint import load_lightning_checkpoint
    from ..errors import AttnzooError
    from ..training import AttnClassifier

    path = Path(path)
    try:
        clf = load_lightning_checkpoint(AttnClassifier, path, map_location="cpu")
    except AttnzooError:
        raise
    except (KeyError, RuntimeError, TypeError) as e:
        raise ValueError(f"{path} is not an attnzoo AttnClassifier checkpoint ({type(e).__name__}: {e})") from e
    network = clf.ema.module if clf.ema is not None else clf.model
    network.eval()
    hparams = dict(clf.hparams)
    return LoadedModel(label or str(hparams.get("attn") or "none"), network, hparams, path, run_data_config(path),
                       tuple(clf.input_size))


def _data_class(name: str):
    import attnzoo.data as data

    key = name.lower().replace("-", "_")
    if key in DATASETS:
        return getattr(data, DATASETS[key])
    short = name.rsplit(".", 1)[-1]
    if hasattr(data, short) and isinstance(getattr(data, short), type):
        return getattr(data, short)
    raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(sorted(DATASETS))} "
                     f"or an attnzoo.data class name such as CIFAR10DataModule")


def load_dataset_images(
    dataset: str,
    data_dir: str | None = None,
    num_images: int = 8,
    split: str = "test",
    **init_args: Any,
) -> ExplainImages:
    """The first ``num_images`` images of a data module's ``split`` ("test" or "val"), normalised as
    the data module normalises them; ``dataset`` is a short name (``DATASETS``) or a class name of
    ``attnzoo.data``; ``init_args`` go to the data module (e.g. image_size for synthetic data)."""
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    cls = _data_class(dataset)
    dm = cls(data_dir=data_dir, num_workers=0, **init_args)
    dm.setup("test")
    ds = dm.test_set if split == "test" else dm.val_set
    if ds is None or len(ds) == 0:
        raise ValueError(f"{cls.__name__} has no {split} images")
    n = min(num_images, len(ds))
    if n < num_images:  # said, not silent: the figure shows fewer images than asked for
        import warnings

        warnings.warn(f"num_images={num_images} asked for, but the {cls.__name__} {split} split has {len(ds)} images; "
                      f"explaining all {n} (pass --num-images {n} or fewer to silence this)", UserWarning, stacklevel=2)
    items = [ds[i] for i in range(n)]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    targets = [int(y) for _, y in items]
    if images.dtype == torch.uint8:
        images = dm.normalize(images)
    classes = getattr(dm, "classes", None)
    return ExplainImages(images.float(), tuple(dm.mean), tuple(dm.std), targets,
                         [f"{split} #{i}" for i in range(n)], list(classes) if classes else None)


def data_module_norm(data_config: dict[str, Any] | None) -> tuple[tuple[float, ...], tuple[float, ...], list[str] | None] | None:
    """(mean, std, classes) of the data module a run's config names, without loading its data, or None."""
    if not data_config or "class_path" not in data_config:
        return None
    try:
        cls = _data_class(str(data_config["class_path"]))
    except ValueError:
        return None
    mean, std = tuple(getattr(cls, "mean", ())), tuple(getattr(cls, "std", ()))
    classes = getattr(cls, "classes", None)
    if not mean:  # set per instance (synthetic data); its constructor reads nothing from disk
        try:
            dm = cls(**(data_config.get("init_args") or {}))
        except Exception:  # noqa: BLE001  (any failure: no normalisation known from the run)
            return None
        mean, std, classes = tuple(dm.mean), tuple(dm.std), getattr(dm, "classes", None)
    return mean, std, list(classes) if isinstance(classes, (list, tuple)) else None


def load_image_folder(
    folder: str | Path,
    in_chans: int,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    num_images: int | None = None,
    classes: list[str] | None = None,
) -> ExplainImages:
    """Image files of ``folder`` (sorted by name; a single file also works), converted to grey or RGB
    as ``in_chans`` says, resized (shorter side) and centre-cropped to ``size`` and normalised."""
    from PIL import Image

    folder = Path(folder)
    if folder.is_file():
        files = [folder]
    elif folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    if in_chans not in (1, 3):
        raise ValueError(f"image files can feed models with 1 or 3 input channels, this one has {in_chans}")
    if num_images is not None:
        files = files[:num_images]
    h, w = size
    batch = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("L" if in_chans == 1 else "RGB")
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            x = x.view(im.size[1], im.size[0], in_chans).permute(2, 0, 1).float()  # (C, H0, W0)
        scale = max(h / x.shape[1], w / x.shape[2])
        rh, rw = max(h, round(x.shape[1] * scale)), max(w, round(x.shape[2] * scale))
        x = F.interpolate(x[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (rh - h) // 2, (rw - w) // 2
        batch.append(x[:, top : top + h, left : left + w].clamp(0, 255))  # (C, h, w)
    images = torch.stack(batch) / 255.0  # (N, C, H, W) in [0, 1]
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return ExplainImages((images - m) / s, tuple(mean), tuple(std), [None] * len(files), [f.name for f in files], classes)
