"""ImageNet-style folder trees (``<root>/<class>/<image>``) and subsets of them.

For Imagenette (https://github.com/fastai/imagenette), ImageNet-100 (the 100-class subset of
Tian et al., "Contrastive Multiview Coding", 2019, https://arxiv.org/abs/1906.05849) or any
ImageNet-like tree (ImageNet: Deng et al., CVPR 2009; Russakovsky et al., IJCV 2015).

Layout: ``data_dir/train/<class>/*.jpg`` (or ``data_dir/<class>/*.jpg``); test images from
``test_dir`` if given, else from ``data_dir/val/<class>/`` when ``data_dir`` has both ``train/`` and
``val/`` (Imagenette's and ImageNet's layout: the official validation set serves as test set),
else the test loader uses the held-out validation split. ``data_dir`` that is not an existing path
is also looked for under ``$ATTNZOO_DATA`` and the cache folder (e.g. ``data_dir: imagenette2-160``).

Selection, in order: ``classes`` (a list of folder names, labelled in the order given; or an int n:
n classes evenly spaced over the sorted folder names, ``sorted[floor(i * K / n)]``, so the choice
is fixed, independent of ``seed``, and spans the whole tree instead of its first n synsets);
``max_per_class`` (seeded, per class); ``subset`` (seeded, per class or fraction); then the seeded,
class-stratified ``val_size`` hold-out. The test split is never subsampled (same classes only).

Per-image path (default): PIL decoding in ``num_workers`` worker processes; training:
RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip (Szegedy et al.,
"Going Deeper with Convolutions", 2015, the standard ImageNet recipe); val/test: Resize(int(image_size
/ 0.875)) + CenterCrop(image_size) (the 0.875 crop ratio of torchvision's and timm's evaluation).
Images leave the workers as uint8 and are normalised with the ImageNet mean/std (0.485, 0.456, 0.406)
/ (0.229, 0.224, 0.225) (torchvision's reference models, timm's IMAGENET_DEFAULT_MEAN/STD) on the
device.

Cached path (``cache_dir`` set): the selected images are decoded once, resized so the shorter side
is ``cache_resolution`` (default int(image_size / 0.875)), center-cropped square and saved as one
uint8 tensor file named by a hash of the file list, labels and resolution; later runs with the same
selection load that file and use the in-memory path. Val/test images are then resized to
int(image_size / 0.875) and center-cropped to image_size once, at setup; training batches get a
batched RandomResizedCrop on the device (``torchvision.ops.roi_align``, bilinear).

NOTE (cached path, approximations): (1) crops are taken from the cached center square, not the full
original image, so the outer parts of non-square images are never seen; (2) the crop is sampled from
the cached resolution, so large upscaled crops are blurrier than from the original; (3) roi_align
averages ceil(crop/size)^2 bilinear samples per output pixel instead of PIL's antialiased resize; (4) up to 10
(scale, ratio) draws per image as in torchvision, then the whole image. Use the per-image path for
numbers that must follow the standard recipe exactly.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .inmemory import InMemoryDataModule, TensorImageDataset, collate_batch
from .paths import ENV_VAR, DataNotFoundError, cache_root
from .splits import select_subset, split_train_val

__all__ = ["ImageFolderDataModule", "IMAGENET_MEAN", "IMAGENET_STD", "batched_random_resized_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875


def _resolve_dir(path: str, what: str) -> Path:
    """An existing folder: ``path`` as given, else under $ATTNZOO_DATA, else under the cache folder."""
    given = Path(path).expanduser()
    candidates = [given]
    if not given.is_absolute():
        env = os.environ.get(ENV_VAR)
        if env:
            candidates.append(Path(env).expanduser() / given)
        candidates.append(cache_root() / given)
    for c in candidates:
        if c.is_dir():
            return c
    tried = "\n".join(f"  - {c}" for c in candidates)
    raise DataNotFoundError(
        f"{what} {path!r} not found. Looked in:\n{tried}\nTo get it: download and extract the image tree "
        f"(e.g. Imagenette: https://github.com/fastai/imagenette) and set data_dir to its folder "
        f"(the one holding train/ and val/), or to a name under ${ENV_VAR}.",
        candidates,
    )


def _class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


class _FileDataset(Dataset):
    """(path, target) samples decoded with PIL (RGB) and passed through ``transform``."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, target = self.samples[index]
        return self.transform(default_loader(path)), target


def batched_random_resized_crop(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop for a whole batch (B, C, H, W) at once -> float (B, C, size, size), same value range.

    Per image: up to ``tries`` draws of area fraction ~ U(scale) and log aspect ~ U(log ratio);
    the first that fits is used, else the whole image. Crops are resampled with roi_align.
    """
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    area = torch.empty(b, tries).uniform_(*scale, generator=generator) * (h * w)
    logr = torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    cw = torch.sqrt(area * torch.exp(logr))  # (B, tries)
    ch = torch.sqrt(area / torch.exp(logr))
    fits = (cw <= w) & (ch <= h)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((b,), -1))
    pick = first.clamp_min(0)[:, None]
    cw = torch.where(first >= 0, cw.gather(1, pick)[:, 0], torch.full((b,), float(w)))
    ch = torch.where(first >= 0, ch.gather(1, pick)[:, 0], torch.full((b,), float(h)))
    x0 = torch.rand(b, generator=generator) * (w - cw)
    y0 = torch.rand(b, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)  # (B, 5)
    # sampling_ratio=-1: ceil(crop side / size) bilinear samples per output pixel and axis, averaged,
    # so downscaling is area-like (antialiased) and a crop of the whole image at its own size is exact
    return roi_align(images.float(), boxes.to(images.device), output_size=size, spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def _resize_center_crop(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """uint8 (B, C, H, W): shorter side -> ``resize`` (antialiased bilinear), then center crop ``crop``."""
    h, w = images.shape[-2:]
    if min(h, w) != resize:
        s = resize / min(h, w)
        images = torch.nn.functional.interpolate(
            images.float(), size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False
        ).round().clamp(0, 255).to(torch.uint8)
    h, w = images.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[..., top : top + crop, left : left + crop].contiguous()


class ImageFolderDataModule(InMemoryDataModule):
    """An ImageNet-style folder tree, with class subset, cap per class, seeded val split, optional cache.

    Args:
        data_dir: the tree (holding ``train/`` and optionally ``val/``, or the class folders
            directly); a relative name is also looked for under $ATTNZOO_DATA and the cache folder.
        batch_size: images per batch.
        num_workers: decoding worker processes.
        subset: training pool restricted to this many images per class (int) or this fraction of
            each class (float), seeded, after ``max_per_class``. None: all.
        val_size: held out of the training pool for validation, class-stratified and seeded:
            fraction (float) or count (int). 0: validate on the test split (needs one).
        seed: seeds the per-class caps, the hold-out, the shuffle and the cached-path augmentation.
        augment: RandomResizedCrop + flip for training (else the val/test transform).
        download: not supported for folder trees (must be False).
        classes: folder names to use (labels follow this order), or a count n of classes evenly
            spaced over the sorted folder names, or None for all.
        max_per_class: at most this many training-pool images per class (seeded), or None.
        image_size: side of the square crops fed to the model.
        test_dir: folder of the test images (same class folders). None: ``data_dir/val`` when
            ``data_dir`` has ``train/`` and ``val/``, else the validation split.
        cache_dir: folder for a one-time uint8 cache of the selection; None: decode every epoch.
        cache_resolution: shorter-side resolution of the cache; None: int(image_size / 0.875).
        hflip: random horizontal flip for training.
        bad_files: what to do with files that do not decode (unreadable, truncated, not an image),
            found by a scan of every selected file before training (``attnzoo.data.checks``; its
            result is cached in ``cache_dir``, else the cache folder, keyed by path, size and
            mtime): "fail" (default) raises an error listing them by path; "skip" leaves them out
            and warns with their count (``skipped_files`` lists them).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    in_chans = 3

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        subset: int | float | None = None,
        val_size: int | float = 0.1,
        seed: int = 0,
        augment: bool = True,
        download: bool = False,
        classes: list[str] | int | None = None,
        max_per_class: int | None = None,
        image_size: int = 224,
        test_dir: str | None = None,
        cache_dir: str | None = None,
        cache_resolution: int | None = None,
        hflip: bool = True,
        bad_files: str = "fail",
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, subset, val_size, seed, augment, False, 0, hflip)
        from .checks import BAD_FILE_POLICIES

        if bad_files not in BAD_FILE_POLICIES:
            raise ValueError(f"bad_files must be one of {BAD_FILE_POLICIES}, got {bad_files!r}")
        self.bad_files = bad_files
        self.skipped_files: list[str] = []
        if download:
            raise ValueError("ImageFolderDataModule cannot download; download and extract the tree yourself and set data_dir")
        if data_dir is None:
            raise ValueError("ImageFolderDataModule needs data_dir: the folder holding train/ (and val/) or the class folders")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
            raise ValueError(f"max_per_class must be an int >= 1 or None, got {max_per_class!r}")
        if cache_resolution is not None and (not isinstance(cache_resolution, int) or cache_resolution < image_size):
            raise ValueError(f"cache_resolution must be an int >= image_size ({image_size}), got {cache_resolution!r}")
        self.image_size = image_size
        self.max_per_class = max_per_class
        self.cache_dir = cache_dir
        self.cache_resolution = cache_resolution or int(image_size / CROP_PCT)
        root = _resolve_dir(str(data_dir), "image folder data_dir")
        self.train_root = root / "train" if (root / "train").is_dir() else root
        if test_dir is not None:
            self.test_root: Path | None = _resolve_dir(str(test_dir), "test_dir")
        elif self.train_root != root and (root / "val").is_dir():
            self.test_root = root / "val"
        else:
            self.test_root = None
        if val_size == 0 and self.test_root is None:
            raise ValueError(f"val_size=0 needs a test split, but {root} has no val/ folder and no test_dir was given")
        self.classes = self._select_classes(classes)
        self.num_classes = len(self.classes)
        self.cache_file: Path | None = None

    # -- selection ----------------------------------------------------------
    def _select_classes(self, classes: list[str] | int | None) -> list[str]:
        available = _class_folders(self.train_root)
        if not available:
            raise DataNotFoundError(f"no class folders in {self.train_root} (expected <class>/<image> subfolders)", [self.train_root])
        if classes is None:
            return available
        if isinstance(classes, bool):
            raise TypeError(f"classes must be a list of folder names, an int or None, got {classes!r}")
        if isinstance(classes, int):
            if not 1 <= classes <= len(available):
                raise ValueError(f"classes={classes}: {self.train_root} has {len(available)} class folders")
            return [available[(i * len(available)) // classes] for i in range(classes)]
        names = list(classes)
        missing = [c for c in names if c not in available]
        if missing:
            import difflib

            hints = [f"{m!r} (did you mean {difflib.get_close_matches(m, available, n=1)[0]!r}?)"
                     if difflib.get_close_matches(m, available, n=1) else repr(m) for m in missing]
            raise ValueError(f"unknown classes {', '.join(hints)} in {self.train_root} ({len(available)} class folders there)")
        if len(set(names)) != len(names):
            raise ValueError(f"classes lists a folder twice: {names}")
        return names

    def _scan(self, root: Path) -> list[tuple[str, int]]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        missing = [c for c in self.classes if not (root / c).is_dir()]
        if missing:
            raise DataNotFoundError(f"{root} lacks the class folders {missing}", [root])
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        samples = self._drop_bad_files(root, samples)
        counts = torch.bincount(torch.tensor([t for _, t in samples], dtype=torch.long), minlength=len(self.classes))
        empty = [self.classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            raise DataNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {root} for classes {empty}", [root])
        return sorted(samples)

    def _drop_bad_files(self, root: Path, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Scan every file (attnzoo.data.checks); fail listing the bad ones, or skip them with a count."""
        from .checks import DataError, scan_image_files

        cache = Path(self.cache_dir).expanduser() if self.cache_dir is not None else cache_root() / "scans"
        bad = scan_image_files([p for p, _ in samples], cache, workers=max(1, self.num_workers))
        if not bad:
            return samples
        listing = "; ".join(f"{p} ({why})" for p, why in sorted(bad.items())[:20])
        more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
        if self.bad_files == "fail":
            raise DataError(f"{len(bad)} of {len(samples)} files in {root} do not decode as images: {listing}{more}. "
                            "Remove or replace them, or set data.bad_files: skip to train without them")
        import warnings

        self.skipped_files += sorted(bad)
        warnings.warn(f"skipping {len(bad)} of {len(samples)} files in {root} that do not decode as images "
                      f"(bad_files='skip'): {listing}{more}", UserWarning, stacklevel=2)
        return [(p, t) for p, t in samples if p not in bad]

    def _pool(self) -> list[tuple[str, int]]:
        """Training pool after max_per_class and subset (both seeded, per class)."""
        samples = self._scan(self.train_root)
        targets = torch.tensor([t for _, t in samples])
        if self.max_per_class is not None:
            keep = select_subset(targets, self.max_per_class, self.seed)
            samples, targets = [samples[i] for i in keep.tolist()], targets[keep]
        keep = select_subset(targets, self.subset, self.seed + 1)
        return [samples[i] for i in keep.tolist()]

    # -- transforms ---------------------------------------------------------
    def _train_transform(self):
        from torchvision import transforms as T

        if not self.augment:
            return self._eval_transform()
        ops = [T.RandomResizedCrop(self.image_size)] + ([T.RandomHorizontalFlip()] if self.hflip else [])
        return T.Compose(ops + [T.PILToTensor()])

    def _eval_transform(self):
        from torchvision import transforms as T

        return T.Compose([T.Resize(int(self.image_size / CROP_PCT)), T.CenterCrop(self.image_size), T.PILToTensor()])

    # -- setup --------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        pool = self._pool()
        test = self._scan(self.test_root) if self.test_root is not None else None
        targets = torch.tensor([t for _, t in pool])
        tr, va = split_train_val(targets, self.val_size, self.seed)
        if self.cache_dir is None:
            self.train_set = _FileDataset([pool[i] for i in tr.tolist()], self._train_transform())
            val = _FileDataset([pool[i] for i in va.tolist()], self._eval_transform()) if len(va) else None
            self.test_set = _FileDataset(test, self._eval_transform()) if test is not None else val
            self.val_set = val if val is not None else self.test_set
            return
        images, labels = self._cached(pool, "pool")
        crop = lambda x: _resize_center_crop(x, int(self.image_size / CROP_PCT), self.image_size)  # noqa: E731
        self.train_set = TensorImageDataset(images[tr], labels[tr])
        val = TensorImageDataset(_chunked(crop, images[va]), labels[va]) if len(va) else None
        if test is not None:
            timages, tlabels = self._cached(test, "test")
            self.test_set = TensorImageDataset(_chunked(crop, timages), tlabels)
        else:
            self.test_set = val
        self.val_set = val if val is not None else self.test_set

    def _cached(self, samples: list[tuple[str, int]], part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, R, R) and targets for ``samples``, from the cache file or decoded once into it."""
        key = hashlib.sha256(
            json.dumps(
                {"resolution": self.cache_resolution, "classes": self.classes,
                 "samples": [(os.path.abspath(p), t, os.path.getsize(p)) for p, t in samples]}
            ).encode()
        ).hexdigest()[:20]
        folder = Path(self.cache_dir).expanduser()
        path = folder / f"imagefolder-{part}-{self.cache_resolution}px-{key}.pt"
        if part == "pool":
            self.cache_file = path
        if path.is_file():
            blob = torch.load(path, weights_only=True)
            return blob["images"], blob["targets"]
        from torchvision import transforms as T

        r = self.cache_resolution
        decode = _FileDataset(samples, T.Compose([T.Resize(r), T.CenterCrop(r), T.PILToTensor()]))
        loader = DataLoader(decode, batch_size=64, num_workers=self.num_workers, shuffle=False)
        images = torch.empty(len(samples), 3, r, r, dtype=torch.uint8)
        targets = torch.empty(len(samples), dtype=torch.long)
        i = 0
        for x, y in loader:
            images[i : i + len(x)], targets[i : i + len(x)] = x, y
            i += len(x)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"images": images, "targets": targets}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent run sees the whole file or none
        return images, targets

    # -- loaders and batch transforms -----------------------------------------
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        tensor = isinstance(dataset, TensorImageDataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=not tensor and torch.cuda.is_available(),
            collate_fn=collate_batch if tensor else None,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def augment_batch(self, images: torch.Tensor, epoch: int = 0, rank: int = 0) -> torch.Tensor:
        """Cached path: batched RandomResizedCrop + flip of (B, 3, R, R) uint8 -> float (B, 3, S, S) in [0, 255].

        Per-image path: training batches were augmented in the workers; returned unchanged.
        """
        if self.cache_dir is None:
            return images
        last_epoch, count = self._aug_state
        count = count if epoch == last_epoch else 0
        self._aug_state = (epoch, count + 1)
        from .inmemory import _mix, random_crop_flip

        g = torch.Generator().manual_seed(_mix(self.seed, epoch, count, rank))
        if not self.augment:
            return _resize_center_crop(images, int(self.image_size / CROP_PCT), self.image_size)
        out = batched_random_resized_crop(images, self.image_size, g)
        return random_crop_flip(out, 0, self.hflip, g)


def _chunked(fn, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Apply ``fn`` to ``images`` in chunks (bounded float memory for large splits)."""
    return torch.cat([fn(images[i : i + chunk]) for i in range(0, len(images), chunk)])
