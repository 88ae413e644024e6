"""Fashion-MNIST from its idx files, held in memory.

Data set: H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", 2017, https://arxiv.org/abs/1708.07747. 60,000 training and 10,000
test images, 28x28 grey, 10 classes. Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``).

idx format (http://yann.lecun.com/exdb/mnist/): big-endian magic ``0x0000 <dtype> <ndim>``
(dtype 0x08 = unsigned byte), then ``ndim`` big-endian uint32 sizes, then the data row-major.

Looked for (first hit wins) in ``data_dir`` if given, else in ``$ATTNZOO_DATA``, the cache folder
and ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``); in
each, also in the subfolders ``fashion-mnist`` and ``FashionMNIST/raw`` (torchvision's layout).

Normalisation: mean 0.2860, std 0.3530 -- the mean and standard deviation of all pixels of the
60,000 training images scaled to [0, 1] (``tests/test_data.py`` recomputes them from the real files
when they are installed).

NOTE: training augmentation is a random crop with 4 px zero padding and a horizontal flip. The
flip is label-preserving for all ten classes (garments are left/right symmetric; shoes change
only the direction they point) and is used in the Random Erasing paper's Fashion-MNIST setup
(Zhong et al. 2020, https://arxiv.org/abs/1708.04896); set ``hflip=False`` to turn it off.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

from .inmemory import InMemoryDataModule
from .paths import download_root, find_first, search_roots

__all__ = ["FashionMNISTDataModule", "read_idx", "find_fashion_mnist", "SYSTEM_DIRS", "CLASSES"]

SYSTEM_DIRS = ["/usr/share/datasets/fashion-mnist"]
SUBFOLDERS = ["", "fashion-mnist", "FashionMNIST/raw"]
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
HOW_TO_GET = (
    "`apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist, needs root), "
    "or pass --data.init_args.data_dir FOLDER (or set $ATTNZOO_DATA) for a folder holding the four "
    "*-ubyte(.gz) idx files, or --data.init_args.download true on a machine with network access "
    "(download=True from Python; torchvision fetches it)."
)


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an idx file of unsigned bytes (raw or gzip, detected from its first bytes) as uint8."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip file ({e}); delete it and fetch it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex()!r}; expected 0000 08 0n)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: idx data type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: idx header says {dims} ({expected} bytes) but the file has {len(raw)} bytes; "
            "the file is truncated or corrupt, delete it and fetch it again"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy())


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST idx files; raises DataNotFoundError listing where it looked."""
    candidates = [r / s if s else r for r in search_roots(data_dir, SYSTEM_DIRS) for s in SUBFOLDERS]
    return find_first(
        candidates,
        lambda d: all(_file(d, n) is not None for n in FILES.values()),
        what="Fashion-MNIST (train-images-idx3-ubyte[.gz] and the other three idx files)",
        how_to_get=HOW_TO_GET,
    )


class FashionMNISTDataModule(InMemoryDataModule):
    """Fashion-MNIST (1x28x28, 10 classes), in memory, augmented in batches on the device.

    Args:
        data_dir: folder with the idx files (or a ``fashion-mnist`` / ``FashionMNIST/raw``
            subfolder). None: ``$ATTNZOO_DATA``, the cache folder, /usr/share/datasets/fashion-mnist.
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

    mean = (0.2860,)
    std = (0.3530,)
    num_classes = 10
    in_chans = 1
    image_size = 28
    classes = CLASSES

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
        self.root: Path | None = None if download else find_fashion_mnist(data_dir)

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            self.root = find_fashion_mnist(self.data_dir)
            return
        except FileNotFoundError:
            pass
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(download_root(self.data_dir)), train=True, download=True)
        FashionMNIST(str(download_root(self.data_dir)), train=False, download=True)

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.root is None:
            self.root = find_fashion_mnist(self.data_dir)
        image_file, label_file = _file(self.root, FILES[(split, "images")]), _file(self.root, FILES[(split, "labels")])
        images = read_idx(image_file)
        labels = read_idx(label_file)
        if images.ndim == 3 and tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"{image_file}: images are {images.shape[1]}x{images.shape[2]}; Fashion-MNIST images are "
                            "28x28 (the model and complexity.json assume it); this is not a Fashion-MNIST file")
        if labels.ndim == 1 and len(labels) and int(labels.max()) >= self.num_classes:
            bad = torch.nonzero(labels >= self.num_classes).flatten()
            raise DataError(f"{label_file}: {len(bad)} label(s) outside 0..{self.num_classes - 1} "
                            f"(first: #{int(bad[0])} = {int(labels[bad[0]])}); Fashion-MNIST has {self.num_classes} classes")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {split} files in {self.root} disagree: images {tuple(images.shape)}, "
                f"labels {tuple(labels.shape)}; expected (N, 28, 28) and (N,)"
            )
        return images.unsqueeze(1), labels.long()  # (N, 1, 28, 28)
