"""Shared fixtures: tiny data sets written in the real on-disk formats.

Each fixture returns the folder to pass as ``data_dir``:

- ``cifar10_dir``: ``<dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``,
  torchvision's pickles; 10 classes, 10 training images per class (2 per batch file), 4 test
  images per class.
- ``cifar100_dir``: ``<dir>/cifar-100-python/{train, test, meta}``; 100 classes, 3 training and
  1 test image per class.
- ``fmnist_dir``: the four Fashion-MNIST idx files, gzipped (as Debian's dataset-fashion-mnist
  installs them); 10 classes, 10 training and 4 test images per class.
  ``fmnist_raw_dir``: the same files uncompressed, in torchvision's ``FashionMNIST/raw`` layout.
- ``imagefolder_dir``: ``<dir>/train/<class>/*.jpg`` (4 classes x 6 images, 40x48 px) and
  ``<dir>/val/<class>/*.jpg`` (2 images per class).

Images carry a class-dependent brightness plus noise, so a model can learn them. All are
session-scoped (written once) and must be treated as read-only.
"""
from __future__ import annotations

import gzip
import ipaddress
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

FIXTURE_CLASSES = ["bird", "cat", "dog", "fish"]

# -- nothing downloads: every test runs with TCP connections and name look-ups off this machine refused
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "", None, socket.gethostname()}
OUTSIDE_ATTEMPTS: list[str] = []


def _is_local(host) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """A test that tries to reach another machine (a weight, font or data download; a telemetry ping)
    fails, naming the address. Loopback (DDP's rendezvous, a local Ray instance) and UDP "connects"
    (which send nothing; Ray uses one to learn its own address) stay allowed."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo
    before = len(OUTSIDE_ATTEMPTS)

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM \
                and not _is_local(address[0]):
            OUTSIDE_ATTEMPTS.append(f"connect {address!r}")
            raise OSError(f"tests may not reach {address!r}: nothing in attnzoo downloads at run time")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            OUTSIDE_ATTEMPTS.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"tests may not look up {host!r}: nothing in attnzoo downloads at run time")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield OUTSIDE_ATTEMPTS
    assert OUTSIDE_ATTEMPTS[before:] == [], f"the test tried to reach another machine: {OUTSIDE_ATTEMPTS[before:]}"


def _images(rng: np.random.Generator, labels: np.ndarray, num_classes: int, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images with a per-class brightness (signal) plus uniform noise."""
    base = (40 + 170 * labels / max(1, num_classes - 1)).reshape(-1, *([1] * len(shape)))
    noise = rng.integers(-40, 41, size=(len(labels), *shape))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _balanced_labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Write a uint8 array in the idx format (magic 0x0000 0x08 ndim, big-endian sizes)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def write_fashion_mnist(folder: Path, compress: bool, per_class_train: int = 10, per_class_test: int = 4) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        labels = _balanced_labels(10, per_class, rng)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", _images(rng, labels, 10, (28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), compress)


def _cifar_rows(rng: np.random.Generator, labels: np.ndarray, num_classes: int) -> np.ndarray:
    # torchvision's layout: one row of 3072 bytes per image, R plane then G then B, each 32x32 row-major
    return _images(rng, labels, num_classes, (3, 32, 32)).reshape(len(labels), 3072)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_class_train: int = 10, per_class_test: int = 4) -> None:
    rng = np.random.default_rng(2)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = _balanced_labels(10, per_class_train, rng)
    rows = _cifar_rows(rng, labels, 10)
    for i, chunk in enumerate(np.array_split(np.arange(len(labels)), 5)):
        _dump(
            folder / f"data_batch_{i + 1}",
            {
                "batch_label": f"training batch {i + 1} of 5",
                "labels": labels[chunk].tolist(),
                "data": rows[chunk],
                "filenames": [f"img_{j}.png" for j in chunk],
            },
        )
    test_labels = _balanced_labels(10, per_class_test, rng)
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels.tolist(),
            "data": _cifar_rows(rng, test_labels, 10),
            "filenames": [f"test_{j}.png" for j in range(len(test_labels))],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"num_cases_per_batch": len(labels) // 5, "label_names": names, "num_vis": 3072})


def write_cifar100(root: Path, per_class_train: int = 3, per_class_test: int = 1) -> None:
    rng = np.random.default_rng(3)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        fine = _balanced_labels(100, per_class, rng)
        _dump(
            folder / split,
            {
                "filenames": [f"{split}_{j}.png" for j in range(len(fine))],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": _cifar_rows(rng, fine, 100),
            },
        )
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
        },
    )


def write_imagefolder(root: Path, per_class_train: int = 6, per_class_val: int = 2, size: tuple[int, int] = (40, 48)) -> None:
    from PIL import Image

    rng = np.random.default_rng(4)
    for split, per_class in (("train", per_class_train), ("val", per_class_val)):
        for c, name in enumerate(FIXTURE_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            pixels = _images(rng, np.full(per_class, c), len(FIXTURE_CLASSES), (size[0], size[1], 3))
            for i, img in enumerate(pixels):
                Image.fromarray(img).save(folder / f"{name}_{i:03d}.jpg", quality=90)


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, compress=True)
    return root


@pytest.fixture(scope="session")
def fmnist_raw_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist_raw")
    write_fashion_mnist(root / "FashionMNIST" / "raw", compress=False)
    return root


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar10")
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar100")
    write_cifar100(root)
    return root


@pytest.fixture(scope="session")
def imagefolder_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    write_imagefolder(root)
    return root
