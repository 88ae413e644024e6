"""Data modules for attnzoo's training harness (LightningDataModules; the ``data:`` section of the CLI).

- :class:`FashionMNISTDataModule`, :class:`CIFAR10DataModule`, :class:`CIFAR100DataModule`: held
  in memory as uint8 tensors, augmented in batches on the training device (``inmemory.py``).
- :class:`ImageFolderDataModule`: ImageNet-style folder trees (Imagenette, ImageNet-100, ...) with
  a class subset, a cap per class, a seeded val split, worker decoding, and an optional one-time
  resized cache that switches to the in-memory path.
- :class:`SyntheticDataModule`: planted-signal random images, for smoke tests only.

Every module takes ``data_dir, batch_size, num_workers, subset, val_size, seed, augment, download``
and exposes ``num_classes``, ``in_chans``, ``image_size``. Where data is looked for: ``paths.py``.
"""
from __future__ import annotations

from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagefolder import ImageFolderDataModule
from .inmemory import InMemoryDataModule, TensorImageDataset
from .paths import DataNotFoundError, cache_root
from .synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "InMemoryDataModule",
    "TensorImageDataset",
    "DataNotFoundError",
    "cache_root",
]
