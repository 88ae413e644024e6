"""A synthetic image classification set for smoke tests only (never for reported numbers).

Each class c has a fixed random low-frequency pattern P_c (an 4x4 grid of random values upsampled
bilinearly to the image size, per channel). An image of class c is

    x = clip(128 + amplitude * P_c + noise * N(0, 1), 0, 255)  as uint8,

so the class is learnable from a few batches (a smoke run's accuracy rises well above chance) yet
not trivially from a single pixel. Everything is generated from ``seed``; the class patterns from
``seed`` alone, so train, val and test share them.
"""
from __future__ import annotations

import torch

from .inmemory import InMemoryDataModule

__all__ = ["SyntheticDataModule", "make_synthetic"]


def make_synthetic(
    n: int, num_classes: int, in_chans: int, image_size: int, seed: int, split_seed: int,
    amplitude: float = 48.0, noise: float = 48.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images (n, in_chans, image_size, image_size) and balanced int64 targets."""
    g = torch.Generator().manual_seed(int(seed))
    grid = torch.randn(num_classes, in_chans, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=False)
    patterns = patterns / patterns.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)  # unit std per class
    gs = torch.Generator().manual_seed(int(seed) * 7919 + int(split_seed))
    targets = torch.arange(n) % num_classes
    targets = targets[torch.randperm(n, generator=gs)]
    x = 128.0 + amplitude * patterns[targets] + noise * torch.randn(n, in_chans, image_size, image_size, generator=gs)
    return x.round().clamp(0, 255).to(torch.uint8), targets


class SyntheticDataModule(InMemoryDataModule):
    """Random images with a planted per-class pattern, for smoke tests of the harness.

    Args:
        data_dir: ignored (nothing is read); kept so every data module has the same arguments.
        batch_size: images per batch.
        num_workers: DataLoader workers.
        subset: training pool restricted per class (int) or by fraction (float), seeded.
        val_size: held out of the training pool (fraction or count); 0: validate on the test split.
        seed: seeds the images, the split, the shuffle and the augmentation.
        augment: random crop + flip on training batches (off by default: the planted pattern is
            not flip-symmetric).
        download: ignored.
        crop_padding: zero padding (pixels) of the random crop.
        hflip: random horizontal flip when ``augment``.
        num_classes: number of classes.
        in_chans: image channels.
        image_size: image height and width.
        num_train: images in the training pool (before ``subset`` and ``val_size``).
        num_test: images in the test split.
    """

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        subset: int | float | None = None,
        val_size: int | float = 0.2,
        seed: int = 0,
        augment: bool = False,
        download: bool = False,
        crop_padding: int = 2,
        hflip: bool = False,
        num_classes: int = 4,
        in_chans: int = 3,
        image_size: int = 32,
        num_train: int = 256,
        num_test: int = 64,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, subset, val_size, seed, augment, download, crop_padding, hflip
        )
        for name, value, low in (("num_classes", num_classes, 2), ("in_chans", in_chans, 1),
                                 ("image_size", image_size, 4), ("num_train", num_train, 1), ("num_test", num_test, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"SyntheticDataModule: {name} must be an int >= {low}, got {value!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.image_size = image_size
        self.num_train = num_train
        self.num_test = num_test
        # pixels are ~ 128 + N(0, amplitude^2 + noise^2): mean 0.5, std about 0.27 of the range
        self.mean = (0.5,) * in_chans
        self.std = (0.27,) * in_chans

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_train if split == "train" else self.num_test
        return make_synthetic(n, self.num_classes, self.in_chans, self.image_size, self.seed, 0 if split == "train" else 1)
