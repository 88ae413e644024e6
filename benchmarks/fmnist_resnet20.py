"""Fashion-MNIST x ResNet-20, the README's main job: test accuracy and wall time of a full run.

Runs configs/fit/fmnist_resnet20.yaml through ``attnzoo.training.run_fit_test`` (the parser and
code path of ``attnzoo fit``): full 60k training set, 5 epochs, tested on the official 10k test
split with the final weights. Target: >= 92% test top-1.

    python benchmarks/fmnist_resnet20.py                      # the real measurement (minutes on CPU)
    python benchmarks/fmnist_resnet20.py --epochs 1 --limit-batches 5   # a smoke run of the script

Prints one JSON object: test accuracy, wall time (fit + test), images/s, hardware and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hardware() -> dict:
    import torch

    from attnzoo.ablation.runner import cpu_model

    info = {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "visible_cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import lightning

    info["lightning"] = lightning.__version__
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fit" / "fmnist_resnet20.yaml"))
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs (config: 5)")
    parser.add_argument("--limit-batches", type=int, default=None, help="cap train/val/test batches (smoke runs)")
    parser.add_argument("--attn", default=None, help="insert this block (default: the plain ResNet-20)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the README reports 2)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--run-dir", default=None, help="where the run's logs go (default: a temporary folder)")
    parser.add_argument("--target", type=float, default=0.92, help="test top-1 to reach at full length")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from attnzoo.training import load_config, run_fit_test

    config = load_config(args.config)
    trainer = config.setdefault("trainer", {})
    trainer.update(accelerator=args.accelerator, devices=1, enable_progress_bar=False)
    if args.epochs is not None:
        trainer["max_epochs"] = args.epochs
    if args.limit_batches is not None:
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            trainer[key] = args.limit_batches
    if args.attn:
        config.setdefault("model", {})["attn"] = args.attn

    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="attnzoo-fmnist-"))
    result = run_fit_test(config, run_dir)
    full = args.limit_batches is None and (args.epochs is None or args.epochs >= 5)
    out = {
        "benchmark": "fmnist_resnet20",
        "test_acc1": result["test"]["acc1"],
        "test_loss": result["test"]["loss"],
        "epochs": len(result["epochs"]),
        "wall_time_s": round(result["wall_time_s"], 1),
        "train_images_per_s": result["train_throughput"],
        "infer_images_per_s": result["infer_throughput"],
        "params": result["params"],
        "flops": result["flops"],
        "full_length": full,
        "target_acc1": args.target,
        "reached": (result["test"]["acc1"] or 0) >= args.target if full else None,
        "run_dir": str(run_dir),
        "hardware": hardware(),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["reached"] in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
