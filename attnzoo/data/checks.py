"""Data checks run once per data module, before the first training step.

* :func:`check_split`: a split's images have the channels and size the model is built for (the
  model's ``in_chans``/``input_size`` are linked from the data module's), and every label lies in
  ``[0, num_classes)``; the error names the split and the file(s) it came from.
* :func:`scan_image_files`: every file of an image folder opens and decodes completely; the result
  lists unreadable, truncated and non-image files by path, and is cached beside the data's other
  caches, keyed by each file's path, size and modification time, so a later run reads it back.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DataError

__all__ = ["check_split", "scan_image_files", "BAD_FILE_POLICIES", "DataError"]

BAD_FILE_POLICIES = ("fail", "skip")


def check_split(what: str, split: str, images: torch.Tensor, targets: torch.Tensor, num_classes: int,
                in_chans: int, image_size: int | None, source: str | Path) -> None:
    """Raise :class:`DataError` when ``images`` (N, C, H, W) or ``targets`` (N,) do not fit the model."""
    where = f"{what} {split} split ({source})"
    if images.dim() != 4:
        raise DataError(f"{where}: images have shape {tuple(images.shape)}, expected (N, {in_chans}, H, W)")
    n, c, h, w = images.shape
    if c != in_chans:
        raise DataError(f"{where}: images have {c} channels, the model is built for {in_chans}")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise DataError(f"{where}: images are {h}x{w}, but {what} images are {image_size}x{image_size} and the model "
                        f"(input_size, complexity.json) is built for that; the files are not {what} files, or damaged")
    if targets.dim() != 1 or len(targets) != n:
        raise DataError(f"{where}: {n} images but labels of shape {tuple(targets.shape)}; expected ({n},)")
    if n == 0:
        raise DataError(f"{where}: no images")
    bad = torch.nonzero((targets < 0) | (targets >= num_classes)).flatten()
    if len(bad):
        shown = ", ".join(f"#{int(i)}: {int(targets[i])}" for i in bad[:5])
        raise DataError(f"{where}: {len(bad)} label(s) outside 0..{num_classes - 1} (num_classes={num_classes}); "
                        f"first: {shown}. Fix the label file, or use the data module made for this many classes")


# first bytes of the formats torchvision's ImageFolder lists (PNG, JPEG, GIF, BMP, TIFF, PPM/PGM)
_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"P5", b"P6")


def _probe(path: str) -> str | None:
    """None when ``path`` decodes as an image; else why not, in a few words."""
    from PIL import Image, UnidentifiedImageError

    try:  # an empty file is named as such before any decoder (a PIL plugin may fail on it in its own way)
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except PermissionError:
        return "unreadable (permission denied)"
    except OSError as e:
        return f"unreadable ({type(e).__name__}: {e})"
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, ImportError):  # no decoder takes it (a plugin registered by another
        # package, e.g. ultralytics' HEIF opener, may raise ImportError for its missing library instead)
        try:
            with open(path, "rb") as f:
                head = f.read(12)
        except OSError:
            head = b""
        if not head:
            return "empty file (0 bytes)"
        if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            return "truncated or damaged (an image header that does not decode)"
        return "not an image file"
    except PermissionError:
        return "unreadable (permission denied)"
    except (OSError, SyntaxError, ValueError) as e:  # PIL: "image file is truncated", broken PNG chunks
        text = str(e).lower()
        return "truncated" if "truncat" in text else f"damaged ({type(e).__name__}: {e})"
    except Exception as e:  # noqa: BLE001  (any decoder failure: the file is bad, not the program)
        return f"damaged ({type(e).__name__}: {e})"
    return None


def scan_image_files(paths: Sequence[str], cache_dir: str | Path | None, workers: int = 4) -> dict[str, str]:
    """{path: why} for the files among ``paths`` that do not decode; cached in ``cache_dir`` (if given)."""
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((os.path.abspath(p), -1, -1))
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:20]
    cache = Path(cache_dir).expanduser() / f"imagefolder-scan-{key}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            return dict(json.loads(cache.read_text())["bad"])
        except (ValueError, KeyError, TypeError, OSError):
            pass  # an unreadable cache is scanned again
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decodes without the GIL
        reasons = list(pool.map(_probe, paths, chunksize=64))
    bad = {p: r for p, r in zip(paths, reasons) if r is not None}
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"files": len(paths), "bad": sorted(bad.items())}))
            os.replace(tmp, cache)  # atomic: a concurrent run reads the whole result or none
        except OSError:
            pass  # a read-only cache folder: the scan is simply not kept
    return bad
