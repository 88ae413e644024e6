"""``attnzoo explain``: attention maps and Grad-CAM of trained checkpoints, as PNG files.

    attnzoo explain --ckpt runs/attnzoo/version_3/checkpoints/last.ckpt --out explain/
    attnzoo explain --ckpt se=runs/se/last.ckpt --ckpt cbam=runs/cbam/last.ckpt --dataset cifar10 \
        --data-dir data/ --num-images 6 --out explain/
    attnzoo explain --ckpt run.ckpt --images my_photos/ --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --out explain/

Writes ``OUT/<label>/<NN>_<image>.png`` for every image and checkpoint (input, Grad-CAM of the
predicted class, each site's spatial attention at input resolution, self-attention weights of the
query position, bar charts of the strongest channel weights) and ``OUT/grid.png`` (the checkpoints
side by side on the same images). Images: ``--images`` (a folder of image files), ``--dataset``
(its first ``--num-images`` test images), or by default the run's own data (config.yaml beside the
checkpoint, as ``attnzoo fit`` saves it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .images import DATASETS

__all__ = ["main", "build_parser", "parse_ckpt"]


def parse_ckpt(arg: str) -> tuple[str | None, str]:
    """``PATH`` or ``LABEL=PATH`` -> (label or None, path). An existing path wins, so a checkpoint
    named ``epoch=4-step=100.ckpt`` is not split at its ``=``."""
    if Path(arg).exists() or "=" not in arg:
        return None, arg
    label, path = arg.split("=", 1)
    if not label or not path:
        raise ValueError(f"--ckpt {arg!r}: expected PATH or LABEL=PATH")
    return label, path


def _query(text: str) -> tuple[float, float]:
    try:
        fy, fx = (float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--query expects FY,FX (fractions of height and width, e.g. 0.5,0.5), got {text!r}") from e
    if not (0 <= fy <= 1 and 0 <= fx <= 1):
        raise argparse.ArgumentTypeError(f"--query fractions must lie in [0, 1], got {text!r}")
    return fy, fx


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnzoo explain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--ckpt", action="append", required=True, metavar="[LABEL=]PATH",
                   help="AttnClassifier checkpoint; repeat for a side-by-side grid (label: default the block spec)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="DIR", help="folder (or file) of images to explain")
    src.add_argument("--dataset", metavar="NAME",
                     help=f"take test images from a data set: {', '.join(sorted(DATASETS))} or an attnzoo.data class")
    p.add_argument("--data-dir", help="where the --dataset lives (as the data module's data_dir)")
    p.add_argument("--num-images", type=int, default=8, help="images to explain (default 8)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="data set split (default test)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the PNG files")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean per channel for --images")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std per channel for --images")
    p.add_argument("--query", type=_query, default=(0.5, 0.5), metavar="FY,FX",
                   help="query position of self-attention maps, as fractions of height,width (default 0.5,0.5)")
    p.add_argument("--cam-layer", help="module path of the Grad-CAM layer (default: the backbone's last stage)")
    p.add_argument("--top-k", type=int, default=12, help="channels shown per bar chart (default 12)")
    p.add_argument("--sites", nargs="+", metavar="GLOB", help="draw only sites matching these patterns, e.g. 'layer3.*'")
    p.add_argument("--no-grid", action="store_true", help="skip grid.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .api import explain_checkpoints
    from .images import load_classifier

    try:
        if args.num_images < 1:
            raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
        if (args.mean is None) != (args.std is None):
            raise ValueError("--mean and --std go together (one value per channel each)")
        # unlabelled checkpoints are labelled by their block spec; repeated labels get #2, #3
        checkpoints = [load_classifier(path, label) for label, path in map(parse_ckpt, args.ckpt)]
        written = explain_checkpoints(
            checkpoints, args.images, args.out, grid=not args.no_grid, query=args.query,
            cam_layer=args.cam_layer, top_k=args.top_k, sites=args.sites, dataset=args.dataset,
            data_dir=args.data_dir, num_images=args.num_images, split=args.split, mean=args.mean, std=args.std,
        )
    except (ValueError, TypeError, KeyError, FileNotFoundError, IndexError) as e:
        from ..errors import debug_enabled

        if debug_enabled():  # --debug / ATTNZOO_DEBUG=1: the traceback
            raise
        print(f"attnzoo explain: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"wrote {len(written)} PNG files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
