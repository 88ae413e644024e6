"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format, held in memory.

Data sets: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009,
https://www.cs.toronto.edu/~kriz/cifar.html. 50,000 training and 10,000 test images, 32x32 RGB;
10 classes, or 100 fine classes (the 20 coarse labels are not used).

On disk (the "python version", which torchvision downloads and extracts): ``<root>/cifar-10-batches-py/
{data_batch_1..5, test_batch, batches.meta}`` and ``<root>/cifar-100-python/{train, test, meta}``;
each file is a pickled dict whose ``data`` is (N, 3072) uint8 (R, G, B planes of 32x32) and whose
labels are ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). ``data_dir`` may be the ``<root>``
or the batches folder itself.

NOTE: the files are read here rather than through ``torchvision.datasets.CIFAR10``, because that
class checks the MD5 of every file and refuses anything but the exact official files (a trimmed
copy, or the tiny test fixtures). The layout read is the one torchvision writes; downloads go
through torchvision (``prepare_data`` with ``download=True``). Like torchvision, this unpickles
the files, so only point it at files you trust.

Normalisation: per-channel mean and standard deviation of all pixels of the training images
scaled to [0, 1]: CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616); CIFAR-100
mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762). (The often-copied CIFAR-10 std
(0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the pixel std.)

Training augmentation: 4 px zero padding, random 32x32 crop, horizontal flip (He et al., "Deep
Residual Learning for Image Recognition", 2016, sec. 4.2, https://arxiv.org/abs/1512.03385).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

from .inmemory import InMemoryDataModule
from .paths import download_root, find_first, search_roots

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "find_cifar"]

_LAYOUT = {
    10: {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
    },
    100: {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
    },
}


def find_cifar(num_classes: int, data_dir: str | Path | None = None) -> Path:
    """The folder holding CIFAR-``num_classes``'s batch files; raises DataNotFoundError listing where it looked."""
    layout = _LAYOUT[num_classes]
    candidates = []
    for root in search_roots(data_dir):
        candidates += [root / layout["folder"], root / f"cifar{num_classes}" / layout["folder"], root]
    torchvision_cls = f"CIFAR{num_classes}"
    return find_first(
        candidates,
        lambda d: all((d / f).is_file() for f in layout["train"] + layout["test"]),
        what=f"CIFAR-{num_classes} ({layout['folder']}/ with {', '.join(layout['train'] + layout['test'])})",
        how_to_get=(
            f"pass --data.init_args.download true (download=True from Python) on a machine with network access (torchvision.datasets.{torchvision_cls} "
            f"downloads it in prepare_data), or set data_dir (or ${{ATTNZOO_DATA}}) to the folder that "
            f"contains {layout['folder']}/ (extracted from {layout['archive']})."
        ),
    )


# what a CIFAR batch pickle may name: numpy's array rebuilding, nothing that runs code
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _CIFARUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a batch file naming anything else (os.system, ...)
    is refused before it runs (the CIFAR files are pickles, and a pickle can call any function)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a CIFAR batch holds plain data and numpy arrays, but this file asks for {module}.{name}")


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            return _CIFARUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if "asks for" in str(e):
                raise DataError(f"{path}: not a plain CIFAR batch file ({e}); it is not opened further. Delete it and "
                                "fetch CIFAR again (download=True, or the archive from cs.toronto.edu/~kriz/cifar.html)") from e
            raise ValueError(f"{path}: not a CIFAR batch file ({type(e).__name__}: {e}); delete it and fetch it again") from e
        except Exception as e:  # noqa: BLE001  (any unpickling failure means a bad file)
            raise ValueError(f"{path}: not a CIFAR batch file ({type(e).__name__}: {e}); delete it and fetch it again") from e


class _CIFARDataModule(InMemoryDataModule):
    num_classes = 10
    in_chans = 3
    image_size = 32

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        subset: int | float | None = None,
        val_size: int | float = 0.1,
        seed: int = 0,
        augment: bool = True,
        download: bool = False,
        crop_padding: int = 4,
        hflip: bool = True,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, subset, val_size, seed, augment, download, crop_padding, hflip
        )
        # fail at construction (before any training) when the files are missing and will not be fetched
        self.root: Path | None = None if download else find_cifar(self.num_classes, data_dir)
        self.classes: list[str] | None = None

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            self.root = find_cifar(self.num_classes, self.data_dir)
            return
        except FileNotFoundError:
            pass
        from torchvision import datasets

        cls = getattr(datasets, f"CIFAR{self.num_classes}")
        cls(str(download_root(self.data_dir)), train=True, download=True)

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.root is None:
            self.root = find_cifar(self.num_classes, self.data_dir)
        layout = _LAYOUT[self.num_classes]
        data, labels = [], []
        for name in layout[split]:
            entry = _load_pickle(self.root / name)
            if not isinstance(entry, dict) or "data" not in entry or layout["labels"] not in entry:
                raise ValueError(f"{self.root / name}: missing 'data' or {layout['labels']!r}; is this CIFAR-{self.num_classes}?")
            rows = np.asarray(entry["data"])
            if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32 or rows.dtype.kind not in "ui":
                raise DataError(f"{self.root / name}: 'data' has shape {rows.shape} ({rows.dtype}); a CIFAR batch holds "
                                "uint8 rows of 3072 = 3x32x32 values; the file is not a CIFAR batch or is damaged")
            file_labels = np.asarray(entry[layout["labels"]])
            if file_labels.ndim != 1 or len(file_labels) != len(rows):
                raise DataError(f"{self.root / name}: {len(rows)} images but {file_labels.size} labels; a CIFAR batch "
                                "has one label per image")
            out = np.nonzero((file_labels < 0) | (file_labels >= self.num_classes))[0]
            if len(out):
                raise DataError(f"{self.root / name}: {len(out)} label(s) outside 0..{self.num_classes - 1} "
                                f"(first: #{int(out[0])} = {int(file_labels[out[0]])}); CIFAR-{self.num_classes} has "
                                f"{self.num_classes} classes; is this CIFAR-{self.num_classes}?")
            if rows.min(initial=0) < 0 or rows.max(initial=0) > 255:
                raise DataError(f"{self.root / name}: pixel values outside 0..255; a CIFAR batch holds uint8 pixels")
            data.append(rows.astype(np.uint8))
            labels.extend(file_labels.tolist())
        images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32))  # (N, 3, 32, 32), planes R,G,B
        targets = torch.tensor(labels, dtype=torch.long)
        meta_file, key = layout["meta"]
        if self.classes is None and (self.root / meta_file).is_file():
            self.classes = list(_load_pickle(self.root / meta_file)[key])
        return images, targets


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (3x32x32, 10 classes), in memory, augmented in batches on the device.

    Args:
        data_dir: folder containing ``cifar-10-batches-py/`` (or that folder itself). None:
            ``$ATTNZOO_DATA``, then the cache folder (~/.cache/attnzoo).
        batch_size: images per batch.
        num_workers: DataLoader workers; 0 is fastest for in-memory data.
        subset: training pool restricted to this many images per class (int) or this fraction of
            each class (float), seeded; the test split stays whole. None: all.
        val_size: held out of the training pool for validation, class-stratified and seeded:
            fraction (float) or count (int). 0: validate on the official test split.
        seed: seeds the subset, the hold-out, the shuffle order and the augmentation.
        augment: random crop + flip on training batches.
        download: download through torchvision in ``prepare_data`` if not found.
        crop_padding: zero padding (pixels) of the random crop.
        hflip: random horizontal flip on training batches.
    """

    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    num_classes = 10


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (3x32x32, 100 fine classes), in memory, augmented in batches on the device.

    Args:
        data_dir: folder containing ``cifar-100-python/`` (or that folder itself). None:
            ``$ATTNZOO_DATA``, then the cache folder (~/.cache/attnzoo).
        batch_size: images per batch.
        num_workers: DataLoader workers; 0 is fastest for in-memory data.
        subset: training pool restricted to this many images per class (int) or this fraction of
            each class (float), seeded; the test split stays whole. None: all.
        val_size: held out of the training pool for validation, class-stratified and seeded:
            fraction (float) or count (int). 0: validate on the official test split.
        seed: seeds the subset, the hold-out, the shuffle order and the augmentation.
        augment: random crop + flip on training batches.
        download: download through torchvision in ``prepare_data`` if not found.
        crop_padding: zero padding (pixels) of the random crop.
        hflip: random horizontal flip on training batches.
    """

    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    num_classes = 100
