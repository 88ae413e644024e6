"""In-memory fast path for small images (CIFAR, Fashion-MNIST, cached ImageFolder subsets).

The whole split is one uint8 tensor (N, C, H, W) plus int64 targets. A batch is fetched with one
advanced-indexing call (``Dataset.__getitems__``), never image by image through Python or PIL;
it travels to the device as uint8 (4x fewer bytes than float32) and is augmented there, as one
batch, in :meth:`InMemoryDataModule.on_after_batch_transfer`:

    train:       pad by ``crop_padding`` with zeros -> per-sample random crop back to (H, W)
                 -> per-sample random horizontal flip (``hflip``) -> float / 255 -> (x - mean) / std
    val/test:    float / 255 -> (x - mean) / std

This matches torchvision's ``RandomCrop(size, padding=p)`` (fill 0, before normalisation) and
``RandomHorizontalFlip(0.5)`` in distribution (the per-image pipeline that ``benchmarks/
data_inmemory.py`` compares against), as in the ResNet paper's CIFAR recipe (He et al., "Deep
Residual Learning for Image Recognition", 2016, sec. 4.2, https://arxiv.org/abs/1512.03385) and
the batched-on-GPU style of K. Jordan's airbench (https://github.com/KellerJordan/cifar10-airbench).

Determinism: the crop offsets and flips of a training batch come from a ``torch.Generator``
seeded from (seed, epoch, batch index in the epoch, global rank), so a run is repeatable given
``seed`` and independent of how many batches other stages drew. The shuffle order comes from a
generator seeded from ``seed``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from .splits import check_subset, check_val_size, select_subset, split_train_val

__all__ = [
    "TensorImageDataset",
    "InMemoryDataModule",
    "random_crop_flip",
    "normalize_uint8",
    "collate_batch",
]


class TensorImageDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 targets (N,), fetched a batch at a time.

    ``__getitems__`` (used by ``DataLoader`` for map-style data sets) returns the stacked batch
    ``(images[idx], targets[idx])`` with one indexing call; use it with :func:`collate_batch`.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        targets = torch.as_tensor(targets, dtype=torch.long)
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images.contiguous()
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.targets[idx]


def collate_batch(batch: Any) -> Any:
    """Collate for :class:`TensorImageDataset`: the batch is already stacked, pass it through."""
    return batch


def random_crop_flip(
    images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample random crop after zero padding, and per-sample horizontal flip, vectorised.

    ``images``: (B, C, H, W), any dtype, any device. Random numbers come from ``generator`` (a CPU
    generator; the few per-sample numbers are moved to the images' device), drawn in this order:
    row offsets, column offsets (both U{0..2*padding}, only if padding > 0), flips (U[0, 1) < 0.5).
    Crop and flip are two ``gather`` calls: rows, then columns (reversed for flipped samples).
    """
    b, c, h, w = images.shape
    dev = images.device
    oy = ox = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev) if hflip else None
    x = images
    if oy is not None:
        x = torch.nn.functional.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
        rows = oy[:, None] + torch.arange(h, device=dev)  # (B, H)
        x = x.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * padding))  # (B, C, H, W+2p)
    if ox is None and flip is None:
        return x.contiguous()
    cols = torch.arange(w, device=dev).expand(b, w)  # (B, W)
    if flip is not None:
        cols = torch.where(flip[:, None], w - 1 - cols, cols)  # crop then flip: column j <- w-1-j
    if ox is not None:
        cols = cols + ox[:, None]
    return x.gather(3, cols.reshape(b, 1, 1, w).expand(b, c, h, w))  # (B, C, H, W)


def normalize_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 ((x / 255) - mean) / std per channel."""
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1))
    shift = -torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255.0 * scale
    return images.to(torch.float32, copy=True).mul_(scale).add_(shift)  # never modifies the input


class InMemoryDataModule(LightningDataModule):
    """Base for data modules whose splits fit in memory as uint8 tensors.

    Subclasses set ``mean``/``std``/``num_classes``/``in_chans``/``image_size`` and implement
    :meth:`load_split` (``"train"`` or ``"test"``, the official splits). This class applies
    ``subset`` (training pool only: the test split stays whole so test numbers stay comparable
    between subsets) and the ``val_size`` hold-out (taken from the subset training pool;
    ``val_size=0`` validates on the official test split), and builds the loaders.
    """

    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

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
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding must be an int >= 0 (pixels), got {crop_padding!r}")
        check_subset(subset)
        check_val_size(val_size)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.subset = subset
        self.val_size = val_size
        self.seed = int(seed)
        self.augment = augment
        self.download = download
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None
        self._aug_state = (-1, 0)  # (epoch, batches drawn in it)

    # -- what subclasses provide -------------------------------------------
    num_classes: int
    in_chans: int
    image_size: int

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, C, H, W) and int64 targets of the official ``split`` ("train" | "test")."""
        raise NotImplementedError

    # -- Lightning hooks ----------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, targets = self.load_split("train")
        self.check_split("train", images, targets)
        keep = select_subset(targets, self.subset, self.seed)
        images, targets = images[keep], targets[keep]
        tr, va = split_train_val(targets, self.val_size, self.seed)
        self.train_set = TensorImageDataset(images[tr], targets[tr])
        test_images, test_targets = self.load_split("test")
        self.check_split("test", test_images, test_targets)
        self.test_set = TensorImageDataset(test_images, test_targets)
        self.val_set = TensorImageDataset(images[va], targets[va]) if len(va) else self.test_set

    def check_split(self, split: str, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Channels, size and labels of a loaded split against what the model is built for (data.checks)."""
        from .checks import check_split

        check_split(type(self).__name__.replace("DataModule", ""), split, images, targets, self.num_classes,
                    self.in_chans, getattr(self, "image_size", None), getattr(self, "root", None) or self.data_dir)

    def _loader(self, dataset: TensorImageDataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if train else None,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, train=False)

    def _training_now(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return bool(trainer is not None and trainer.training)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training batches only) and normalise a uint8 batch on its device."""
        images, targets = batch
        if self._training_now():
            trainer = self.trainer
            epoch, rank = trainer.current_epoch, trainer.global_rank
            images = self.augment_batch(images, epoch=epoch, rank=rank)
        return self.normalize(images), targets

    # -- batched transforms, usable without a Trainer -----------------------
    def augment_batch(self, images: torch.Tensor, epoch: int = 0, rank: int = 0) -> torch.Tensor:
        """Random crop (zero padding ``crop_padding``) and flip (``hflip``) of a uint8 batch.

        The generator is seeded from (seed, epoch, batch index within the epoch, rank); the batch
        index counts the batches augmented since ``epoch`` began.
        """
        if not self.augment:
            return images
        last_epoch, count = self._aug_state
        count = count if epoch == last_epoch else 0
        self._aug_state = (epoch, count + 1)
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, count, rank))
        return random_crop_flip(images, self.crop_padding, self.hflip, g)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32 with this data set's mean/std."""
        return normalize_uint8(images, self.mean, self.std)

    # -- reporting ----------------------------------------------------------
    def split_sizes(self) -> dict[str, int]:
        """Number of images in each split after subset and hold-out (calls :meth:`setup`)."""
        self.setup()
        return {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set)}


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch, seeded from (seed, epoch) alone.

    Lightning calls ``set_epoch`` before every epoch (as for DistributedSampler), so epoch k has the
    same order whether the run got there directly or resumed from a checkpoint; a generator seeded
    once and advanced epoch by epoch would restart from epoch 0's order after a resume.
    Under DDP Lightning swaps in its DistributedSampler, which is seeded per epoch the same way.
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


def _mix(*parts: int) -> int:
    """A 63-bit seed from a few small ints (splitmix64-style), so nearby tuples do not collide."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF
