"""What the Lightning harness costs: AttnClassifier + Trainer vs a plain PyTorch loop, images/s.

Both train the same network from the same initial weights on the same batches: the batches are
drawn once from the data module (its shuffle order, its batched crop/flip augmentation and
normalisation, as ``on_after_batch_transfer`` applies them) and kept in memory, so data loading is
identical and excluded from both. Both use the same optimizer and schedule (SGD Nesterov with
AttnClassifier's parameter groups, ``build_schedule`` stepped per batch). The harness run has
everything a user gets from ``attnzoo fit`` except the progress bar and checkpoints: torchmetrics
per stage, ``self.log`` of loss/lr, CSV logger, the complexity/throughput/NaN callbacks.

Timing: the window from the end of batch ``warmup`` to the end of the last batch, in both (the
harness figure is ThroughputMonitor's, which measures that window); rounds alternate plain and
harness (interleaved) and the medians are reported. Fit start/end work (FLOP count, inference
timing, Trainer setup) is outside the window and reported separately as total wall time.

    python benchmarks/harness_overhead.py                          # Fashion-MNIST, resnet20, batch 128
    python benchmarks/harness_overhead.py --batches 10 --rounds 1  # a smoke run of the script

Target: harness images/s >= 0.95 x plain images/s (<= 5% overhead).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def draw_batches(data, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` training batches as the harness sees them: shuffled, augmented, normalised."""
    data.setup("fit")
    out = []
    for i, (images, targets) in enumerate(data.train_dataloader()):
        if i == n:
            break
        out.append((data.normalize(data.augment_batch(images, epoch=0, rank=0)), targets))
    if len(out) < n:
        raise ValueError(f"the training set has only {len(out)} batches; ask for --batches <= {len(out)}")
    return out


def plain_loop(model, batches, lr, warmup, weight_decay, label_smoothing) -> tuple[float, float]:
    """(images/s in the timed window, total seconds) of a hand-written loop."""
    from attnzoo.training.module import build_schedule
    from timm.optim import param_groups_weight_decay

    net = model.model.train()
    opt = torch.optim.SGD(param_groups_weight_decay(net, weight_decay), lr=lr, momentum=0.9, nesterov=True)
    sched = build_schedule(opt, "cosine", total_steps=len(batches), warmup_steps=0, lr=lr)
    t_start = time.perf_counter()
    t0, images = None, 0
    for i, (x, y) in enumerate(batches):
        loss = F.cross_entropy(net(x), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if i + 1 == warmup:
            t0 = time.perf_counter()
        elif i + 1 > warmup:
            images += len(x)
    end = time.perf_counter()
    return images / (end - t0), end - t_start


def harness(model, batches, warmup, run_dir: Path) -> tuple[float, float]:
    """(images/s in the timed window, total seconds of trainer.fit) through Lightning."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from attnzoo.training.callbacks import ComplexityLogger, NonFiniteLossCheck, ThroughputMonitor

    # the module's own callbacks, with the timed window set to the plain loop's
    model.configure_callbacks = lambda: [NonFiniteLossCheck(), ComplexityLogger(),  # noqa: E731
                                         ThroughputMonitor(warmup_batches=warmup, infer_repeats=1)]
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(str(run_dir)),
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    t0 = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    total = time.perf_counter() - t0
    monitor = next(c for c in trainer.callbacks if isinstance(c, ThroughputMonitor))
    return monitor.train_throughput, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fmnist", choices=["fmnist", "synthetic"])
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--attn", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=60, help="training batches per round")
    parser.add_argument("--warmup", type=int, default=5, help="batches left out of the timed window")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved plain/harness rounds (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.95, help="harness/plain ratio to reach")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.batches <= args.warmup:
        parser.error("--batches must exceed --warmup")

    torch.set_num_threads(args.threads)
    from lightning.pytorch import seed_everything

    from attnzoo.data import FashionMNISTDataModule, SyntheticDataModule
    from attnzoo.training import AttnClassifier

    seed_everything(0, verbose=False)
    if args.data == "fmnist":
        data = FashionMNISTDataModule(batch_size=args.batch_size, val_size=0)
    else:
        data = SyntheticDataModule(batch_size=args.batch_size, num_classes=10, in_chans=1, image_size=28,
                                   num_train=args.batch_size * args.batches, augment=True)
    batches = draw_batches(data, args.batches)
    lr, wd, ls = 0.1, 5e-4, 0.0
    template = AttnClassifier(args.backbone, attn=args.attn, num_classes=data.num_classes, in_chans=data.in_chans,
                              input_size=data.image_size, lr=lr, weight_decay=wd, label_smoothing=ls,
                              schedule="cosine", warmup_epochs=0)
    initial = copy.deepcopy(template.state_dict())

    def fresh() -> AttnClassifier:
        model = copy.deepcopy(template)
        model.load_state_dict(initial)
        return model

    plain, ours, plain_total, ours_total = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="attnzoo-overhead-") as tmp:
        for r in range(args.rounds):
            ips, total = plain_loop(fresh(), batches, lr, args.warmup, wd, ls)
            plain.append(ips)
            plain_total.append(total)
            ips, total = harness(fresh(), batches, args.warmup, Path(tmp) / f"round{r}")
            ours.append(ips)
            ours_total.append(total)
    p, h = statistics.median(plain), statistics.median(ours)
    out = {
        "benchmark": "harness_overhead",
        "data": args.data, "backbone": args.backbone, "attn": args.attn, "batch_size": args.batch_size,
        "timed_batches": args.batches - args.warmup, "rounds": args.rounds, "threads": args.threads,
        "plain_images_per_s": round(p, 1),
        "harness_images_per_s": round(h, 1),
        "ratio": round(h / p, 4),
        "overhead_pct": round(100 * (1 - h / p), 2),
        "per_round": {"plain": [round(v, 1) for v in plain], "harness": [round(v, 1) for v in ours]},
        "total_wall_s": {"plain": round(statistics.median(plain_total), 2),
                         "harness_fit": round(statistics.median(ours_total), 2)},
        "target_ratio": args.target,
        "reached": h / p >= args.target,
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
