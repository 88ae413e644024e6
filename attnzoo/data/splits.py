"""Seeded, class-stratified subsets and train/val splits shared by every data module.

``subset``: an ``int`` n >= 1 keeps n images per class (all of a class if it has fewer); a
``float`` f in (0, 1] keeps round(f * count) images of each class (at least one). The choice is
a seeded random permutation within each class, so the same seed gives the same images, and a
smaller subset for the same seed is *not* guaranteed to be contained in a larger one.

``val_size``: a ``float`` in (0, 1) holds out that fraction of each class, an ``int`` >= 1 holds
out that many images in total (spread over classes in proportion to their size), ``0`` holds out
nothing (the data module then validates on the official test split).
"""
from __future__ import annotations

import torch

__all__ = ["check_subset", "check_val_size", "select_subset", "split_train_val"]


def check_subset(subset: int | float | None) -> None:
    if subset is None:
        return
    if isinstance(subset, bool) or not isinstance(subset, (int, float)):
        raise TypeError(f"subset must be an int (images per class), a float fraction in (0, 1] or None, got {subset!r}")
    if isinstance(subset, int) and subset < 1:
        raise ValueError(f"subset={subset}: an int subset is images per class and must be >= 1")
    if isinstance(subset, float) and not 0.0 < subset <= 1.0:
        raise ValueError(f"subset={subset}: a float subset is a fraction and must be in (0, 1]")


def check_val_size(val_size: int | float) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise TypeError(f"val_size must be a fraction in [0, 1) or a count >= 0, got {val_size!r}")
    if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise ValueError(f"val_size={val_size}: a float val_size is a fraction and must be in [0, 1)")
    if isinstance(val_size, int) and val_size < 0:
        raise ValueError(f"val_size={val_size}: an int val_size is a count and must be >= 0")


def _per_class(targets: torch.Tensor) -> list[torch.Tensor]:
    """Indices of each class present in ``targets``, in class order."""
    return [torch.nonzero(targets == c).flatten() for c in torch.unique(targets).tolist()]


def select_subset(targets: torch.Tensor, subset: int | float | None, seed: int) -> torch.Tensor:
    """Indices (sorted) of a seeded per-class subset of ``targets``; all indices for ``None``."""
    check_subset(subset)
    targets = torch.as_tensor(targets)
    if subset is None:
        return torch.arange(len(targets))
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for idx in _per_class(targets):
        n = subset if isinstance(subset, int) else max(1, round(subset * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[: min(n, len(idx))]])
    return torch.cat(keep).sort().values


def split_train_val(targets: torch.Tensor, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split of ``range(len(targets))`` into (train, val) index tensors.

    ``val_size=0`` returns (all, empty).
    """
    check_val_size(val_size)
    targets = torch.as_tensor(targets)
    n = len(targets)
    if val_size == 0:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    frac = val_size if isinstance(val_size, float) else val_size / n
    if isinstance(val_size, int) and val_size >= n:
        raise ValueError(f"val_size={val_size} leaves no training images (the training pool has {n})")
    g = torch.Generator().manual_seed(int(seed) + 1_000_003)  # independent of the subset's draw
    classes = _per_class(targets)
    # per-class counts by largest remainder, so an int val_size is met exactly
    exact = torch.tensor([frac * len(idx) for idx in classes], dtype=torch.float64)
    counts = exact.floor().long()
    total = round(frac * n)
    order = torch.argsort(exact - counts, descending=True, stable=True)
    for i in order[: max(0, total - int(counts.sum()))].tolist():
        counts[i] += 1
    train, val = [], []
    for idx, k in zip(classes, counts.tolist()):
        k = min(k, len(idx) - 1) if len(idx) > 1 else 0  # keep every class in training
        perm = idx[torch.randperm(len(idx), generator=g)]
        val.append(perm[:k])
        train.append(perm[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values
