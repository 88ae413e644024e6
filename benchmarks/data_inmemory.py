"""In-memory batched augmentation vs torchvision's per-image PIL transforms, on CIFAR-sized data.

    python benchmarks/data_inmemory.py [--n 5000] [--batch-size 256] [--repeats 3] [--workers 0,2] [--device cpu]

Both sides produce the same thing for every training image: a random 32x32 crop of the image
zero-padded by 4, a random horizontal flip, conversion to float and per-channel normalisation,
delivered as (B, 3, 32, 32) float32 batches on ``--device``.

- torchvision: a map-style data set returning ``PIL.Image.fromarray(HWC uint8)`` (what
  ``torchvision.datasets.CIFAR10`` does) through ``RandomCrop(32, padding=4), RandomHorizontalFlip(),
  ToTensor(), Normalize(mean, std)``, a DataLoader with ``num_workers`` in ``--workers``, then ``.to(device)``.
- attnzoo: :class:`attnzoo.data.inmemory.InMemoryDataModule`'s loader (uint8 batches fetched with one
  indexing call), ``.to(device)``, then its ``on_after_batch_transfer`` (batched crop/flip/normalise).

The data are random uint8 images (the pixel values do not change the cost). One epoch over ``--n``
images is timed per method, methods interleaved in each of ``--repeats`` rounds (so drifting machine
load hits all alike); the median images/s is printed with the ratio attnzoo / torchvision.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from attnzoo.data.inmemory import InMemoryDataModule

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PILDataset(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 -> PIL image -> transform."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, transform) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.data[i])), int(self.targets[i])


class RandomCIFAR(InMemoryDataModule):
    mean, std, num_classes, in_chans, image_size = MEAN, STD, 10, 3, 32

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, **kwargs) -> None:
        super().__init__(val_size=0, **kwargs)
        self._images, self._targets = images, targets

    def load_split(self, split: str):
        return self._images, self._targets


def epoch_torchvision(loader: DataLoader, device: torch.device) -> int:
    n = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def epoch_inmemory(dm: RandomCIFAR, loader: DataLoader, device: torch.device) -> int:
    n = 0
    for x, y in loader:
        x, y = dm.on_after_batch_transfer((x.to(device, non_blocking=True), y.to(device, non_blocking=True)), 0)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="images per timed epoch")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="0,2", help="comma-separated num_workers for the torchvision loader")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = p.parse_args()
    device = torch.device(args.device)

    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(args.n, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, size=args.n)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    methods = {}
    for w in [int(v) for v in args.workers.split(",")]:
        loader = DataLoader(PILDataset(hwc, targets, tf), batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=w, persistent_workers=w > 0, pin_memory=device.type == "cuda")
        methods[f"torchvision PIL, num_workers={w}"] = lambda loader=loader: epoch_torchvision(loader, device)
    dm = RandomCIFAR(torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(targets),
                     batch_size=args.batch_size)
    dm.trainer = SimpleNamespace(training=True, current_epoch=0, global_rank=0)  # training batches: augment
    mem_loader = dm.train_dataloader()
    methods["attnzoo in-memory batched"] = lambda: epoch_inmemory(dm, mem_loader, device)

    for fn in methods.values():  # warm-up: worker start-up, first-call overheads
        fn()
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t0))

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"torch threads {torch.get_num_threads()}, n={args.n}, batch {args.batch_size}, repeats {args.repeats} (median)")
    ours = statistics.median(rates["attnzoo in-memory batched"])
    for name, r in rates.items():
        med = statistics.median(r)
        ratio = "" if name.startswith("attnzoo") else f"   in-memory is {ours / med:.1f}x faster"
        print(f"  {name:<36} {med:>10,.0f} images/s{ratio}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "data_inmemory", "torch": torch.__version__, "device": str(device),
            "torch_threads": torch.get_num_threads(), "n": args.n, "batch_size": args.batch_size,
            "repeats": args.repeats, "images_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "speedup": {k: ours / statistics.median(v) for k, v in rates.items() if not k.startswith("attnzoo")},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
