"""Training-step overhead of each channel/spatial block in a host network, next to its memory floor.

    python benchmarks/overhead_floor.py --blocks se eca cbam --modes eager            # resnet20 + resnet56
    python benchmarks/overhead_floor.py --blocks se --modes eager compiled --hosts resnet20
    python benchmarks/overhead_floor.py --json benchmarks/results/overhead_floor_cpu.json   # everything, eager
    python benchmarks/overhead_floor.py --modes eager compiled --compiled-blocks se eca cbam --compiled-hosts resnet20

Hosts: ``resnet20`` on Fashion-MNIST shapes (1x28x28) and ``resnet56`` on CIFAR shapes (3x32x32),
batch 128, channels_last, SGD (lr 0.1, momentum 0.9, weight decay 5e-4), cross-entropy on random
inputs and labels (data loading is not part of a step). Each block is inserted at the host's
default position (one per residual block). Modes: ``eager``, and ``compiled`` (``torch.compile``,
inductor, default options; the first step, which compiles, is timed separately and reported as
compile time). A mode's baseline is the host without attention in the same mode.

Timing: every (host, block, mode) model is built once; ``--rounds`` rounds each run every model for
``--steps`` steps in a fresh random order (interleaved, so drift in machine load hits all alike); a
model's step time is the minimum over rounds of its mean step time in the round. Overhead =
t(host + block) - t(host).

Memory-traffic floor (per inserted block, float32 activations |x| = B*C*H*W*4 bytes). A block whose
output y (the size of x) depends on statistics of the whole map (pooled channels, pooled positions
or normalisation over the map) cannot do with fewer than these full-size passes in a training step:

* forward, 3|x|: read x once for the statistics; read x again and write y when applying the factor;
* backward, 5|x|: read dL/dy and x once to reduce the factor's gradient (sum over positions or
  channels); read dL/dy and x again and write dL/dx.

So floor bytes = 8 |x| per site, summed over the sites; memory floor time = floor bytes / the
machine's copy bandwidth, measured as (read + write bytes) / time of ``dst.copy_(src)`` on a 256 MiB
float32 tensor (minimum of 3) before every round: on this VM it moves between rounds (it read 34-97
GB/s on one day), so the floor uses the median over the rounds and the JSON keeps every reading.

Cache floor: the activations of these hosts are 0.4-6 MiB per site, which a block's passes find in the
L2/L3 cache, where a copy runs 2-3x faster than the 256 MiB copy above. So each round also times
``dst.copy_(src)`` on a map of every site's size, repeated (``cached_copy_bandwidth``), and the cache floor
is the same 8|x| per site at those rates (median over the rounds; the larger of it and the compute floor).
It is the stricter floor, printed with the ratio alone / cache floor; the targets are read against the
floor above, as issue 15 defines them.

A block with real arithmetic (large-kernel or full convolutions: lka, gam, sk, ...) cannot beat its
FLOPs either: compute floor = 3 x its forward FLOPs at the sites (torch.utils.flop_counter;
backward costs about twice the forward) / the machine's float32 matmul rate (a 2048^2 ``torch.mm``,
best of 3). The floor is the larger of the two. Everything a block does beyond that -- extra passes,
intermediates written and read back, saved tensors, per-op dispatch -- shows as overhead above the
floor. Printed: overhead in ms per step and in % of the host, the floor in ms, and overhead / floor.
Targets (issue 15): eager <= 2.0 x floor, compiled <= 1.3 x floor; the script prints whether each
is met.

Isolated (eager): the host-difference overhead carries the noise of two whole steps (a few ms on a
ResNet-56), as large as some blocks' floors. So each round also times the host's own inserted
blocks alone -- forward + backward of each block on a copy of the very input it saw at its site --
and prints that time / floor as well: the same cost without the rest of the network.

Break-even of compiling: with both modes of a model measured, compile time / (eager step -
compiled step) is the number of steps after which compiling has paid for itself (a 5-epoch
Fashion-MNIST run at batch 128 is 5 * 469 = 2345 steps).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo  # the compiled mode's settings (imported here: an import inside main() would shadow torch)
import torch._functorch.config
import torch._inductor.config
from torch import nn

import attnzoo
from attnzoo import create_backbone, list_attn
from attnzoo.ablation.runner import cpu_model
from attnzoo.factory import attn_info
from attnzoo.training.allocator import use_allocator

HOSTS = {"resnet20": (1, 28, 28), "resnet56": (3, 32, 32)}
FAMILIES = ("channel", "spatial", "channel+spatial")
FMNIST_5_EPOCH_STEPS = 5 * 469
TARGET = {"eager": 2.0, "compiled": 1.3}


def channel_spatial_blocks() -> list[str]:
    return [n for n in list_attn() if attn_info(n).metadata["family"] in FAMILIES]


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second moved by a large copy (read + write counted)."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def cached_copy_bandwidth(nbytes: int, repeats: int = 3, min_s: float = 0.02) -> float:
    """Bytes per second (read + write) of copying an ``nbytes`` float32 tensor again and again: a map of a
    site's size, which stays in the cache between passes as a block's own passes over it do."""
    src = torch.randn(max(nbytes // 4, 1))
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps = max(1, int(min_s * 50e9 / max(nbytes, 1)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * src.numel() * src.element_size() / best


def matmul_rate(n: int = 2048, repeats: int = 3) -> float:
    """float32 FLOP/s of an n x n matmul (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def forward_flops(sites: list[tuple[nn.Module, torch.Tensor]]) -> int:
    """FLOPs of the blocks' forwards at their sites (torch.utils.flop_counter: convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for mod, x in sites:
            mod(x)
    return counter.get_total_flops()


def attn_input_bytes(model: nn.Module, block_type: type, x: torch.Tensor) -> tuple[int, int]:
    """(number of inserted blocks, sum of their input sizes in bytes) from one forward."""
    sites = attn_sites(model, block_type, x)
    return len(sites), sum(t.numel() * t.element_size() for _, t in sites)


def attn_sites(model: nn.Module, block_type: type, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """(block, a copy of its input) for every inserted block, from one forward in train mode."""
    sites = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: sites.append((mod, inp[0].detach().clone(
        memory_format=torch.preserve_format)))) for m in model.modules() if type(m) is block_type]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sites


class Job:
    """One model in one mode, with its optimizer and a fixed batch."""

    def __init__(self, host: str, block: str | None, mode: str, batch: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        c, h, w = HOSTS[host]
        self.host, self.block, self.mode = host, block, mode
        self.model = create_backbone(host, num_classes=10, in_chans=c, attn=block).to(memory_format=torch.channels_last)
        self.x = torch.randn(batch, c, h, w).to(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch,))
        self.sites, self.attn_bytes, self.flops = (0, 0, 0)
        self.site_bytes: list[int] = []
        self.block_type = None
        if block is not None:
            factory = attn_info(block).factory
            self.block_type = getattr(factory, "func", factory)  # a class, or a functools.partial of one
            sites = attn_sites(self.model, self.block_type, self.x)
            self.sites = len(sites)
            self.site_bytes = [t.numel() * t.element_size() for _, t in sites]
            self.attn_bytes = sum(self.site_bytes)
            self.flops = forward_flops(sites)
        self.isolated: list[float] = []
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.loss = nn.CrossEntropyLoss()
        self.net = torch.compile(self.model) if mode == "compiled" else self.model
        self.compile_s = None
        self.times: list[float] = []

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.net(self.x), self.y).backward()
        self.opt.step()

    def warm(self, steps: int = 2) -> None:
        t0 = time.perf_counter()
        self.step()
        if self.mode == "compiled":
            self.compile_s = time.perf_counter() - t0
        for _ in range(steps):
            self.step()

    def run(self, steps: int) -> None:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.times.append((time.perf_counter() - t0) / steps)
        if self.mode == "eager" and self.block_type is not None:
            # the sites' inputs are captured afresh each round and dropped after (kept for all models at
            # once they would take gigabytes)
            sites = [(mod, t.requires_grad_()) for mod, t in attn_sites(self.model, self.block_type, self.x)]
            grads = [torch.randn_like(t) for _, t in sites]  # the blocks map (B, C, H, W) to the same shape
            self.blocks_alone(sites, grads, 1)
            t0 = time.perf_counter()
            self.blocks_alone(sites, grads, steps)
            self.isolated.append((time.perf_counter() - t0) / steps)

    @staticmethod
    def blocks_alone(sites, grads, steps: int) -> None:
        """Forward + backward of every inserted block on its own site's input, ``steps`` times."""
        for _ in range(steps):
            for (mod, x), g in zip(sites, grads):
                mod(x).backward(g)
                x.grad = None


def refloor(path: Path) -> int:
    """Recount each row's forward FLOPs (``forward_flops``, on the aten ops) and redo the floor fields."""
    data = json.loads(path.read_text())
    bandwidth, rate = data["copy_bandwidth_gbs"] * 1e9, data["matmul_gflops"] * 1e9
    flops: dict = {}
    for row in data["rows"]:
        if row["mode"] == "break_even" or row.get("block") in (None, "(none)"):
            continue
        key = (row["host"], row["block"])
        if key not in flops:
            job = Job(row["host"], row["block"], "eager", data["batch"])
            flops[key] = job.flops
        mem_floor = row["memory_floor_ms"] / 1e3
        flop_floor = 3 * flops[key] / rate
        floor = max(mem_floor, flop_floor)
        over, alone = row["overhead_ms"] / 1e3, row.get("alone_ms")
        ratio = over / floor if floor else None
        alone_ratio = alone / 1e3 / floor if alone is not None and floor else None
        before = row["forward_flops"]
        row.update(forward_flops=flops[key], compute_floor_ms=flop_floor * 1e3, floor_ms=floor * 1e3,
                   floor_bound="compute" if flop_floor > mem_floor else "memory", ratio_to_floor=ratio,
                   alone_ratio_to_floor=alone_ratio,
                   alone_target_met=None if alone_ratio is None else alone_ratio <= row["target"],
                   target_met=None if ratio is None or over < 0 else ratio <= row["target"])
        if before != flops[key]:
            print(f"{row['host']} {row['mode']} {row['block']}: forward FLOPs {before} -> {flops[key]}")
    data["refloored"] = "compute floors recounted on the aten ops (overhead_floor.py --refloor)"
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", nargs="*", default=None, help="default: every channel/spatial block")
    p.add_argument("--hosts", nargs="*", default=list(HOSTS), choices=list(HOSTS))
    p.add_argument("--modes", nargs="*", default=["eager"], choices=["eager", "compiled"])
    p.add_argument("--compiled-blocks", nargs="*", default=None,
                   help="blocks to time compiled (default: the same as --blocks); compiling costs about a minute "
                        "per model on a small CPU, so a subset keeps the run short")
    p.add_argument("--compiled-hosts", nargs="*", default=None, choices=list(HOSTS),
                   help="hosts to time compiled (default: the same as --hosts)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="steps per model per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--allocator", choices=["keep", "system"], default="keep",
                   help="keep (default): freed memory stays in the process, as in CPU fits "
                        "(attnzoo.training.allocator); system: the C allocator as it is")
    p.add_argument("--refloor", type=Path, default=None, metavar="JSON",
                   help="recompute the compute floors (FLOPs) of an existing results file from the current code, "
                        "keeping its timings, bandwidth and matmul rate; rewrites the file; no timing")
    args = p.parse_args(argv)
    if args.refloor:
        return refloor(args.refloor)
    alloc = use_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = args.blocks or channel_spatial_blocks()
    bad = [b for b in blocks if b not in list_attn()]
    if bad:
        p.error(f"unknown blocks {bad}")
    if "compiled" in args.modes:
        # every model here shares resnet's forward code object; dynamo recompiles it per model and, past
        # its recompile limit (8), silently runs the rest eagerly -- which would time eager as "compiled"
        n = len(blocks) + 1
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * n * len(args.hosts))
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                               16 * n * len(args.hosts))
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        # static shapes, as a fit compiles one model at one input size: with automatic dynamic shapes, the
        # second host's new map sizes made dynamo retrace coordinate attention with symbolic sizes, and
        # inductor (torch 2.14.1) failed on it ("cannot determine truth value of Relational")
        torch._dynamo.config.automatic_dynamic_shapes = False
        # cold compiles: inductor's and AOTAutograd's on-disk caches would make a re-run's compile time
        # that of a cache hit (about a second), not what a user's first run pays
        torch._inductor.config.fx_graph_cache = False
        torch._functorch.config.enable_autograd_cache = False
    bandwidths = [copy_bandwidth(repeats=3)]
    cached: dict[int, list[float]] = {}  # site size in bytes -> cached copy bandwidth per round

    def measure_cached(sizes) -> None:
        for n in sorted(set(sizes)):
            cached.setdefault(n, []).append(cached_copy_bandwidth(n))
    rate = matmul_rate()
    print(f"copy bandwidth: {bandwidths[0] / 1e9:.2f} GB/s (read + write), matmul {rate / 1e9:.0f} GFLOP/s, "
          f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}", file=sys.stderr)
    compiled_blocks = blocks if args.compiled_blocks is None else args.compiled_blocks
    compiled_hosts = args.hosts if args.compiled_hosts is None else args.compiled_hosts
    bad = [b for b in compiled_blocks if b not in blocks] + [h for h in compiled_hosts if h not in args.hosts]
    if bad:
        p.error(f"--compiled-blocks / --compiled-hosts must be among --blocks / --hosts: {bad}")

    def blocks_of(host: str, mode: str) -> list[str]:
        if mode == "compiled":
            return compiled_blocks if host in compiled_hosts else []
        return blocks

    def host_modes(host: str) -> list[str]:
        return [m for m in args.modes if m != "compiled" or host in compiled_hosts]

    jobs = [Job(h, b, m, args.batch) for h in args.hosts for m in host_modes(h) for b in [None, *blocks_of(h, m)]]
    for j in jobs:
        j.warm()
        if j.compile_s is not None:
            print(f"  compiled {j.host}+{j.block or 'none'} in {j.compile_s:.1f} s", file=sys.stderr)
    rng = random.Random(0)
    site_sizes = [n for j in jobs for n in j.site_bytes]
    for r in range(args.rounds):
        if r:
            bandwidths.append(copy_bandwidth(repeats=3))
        measure_cached(site_sizes)
        rng.shuffle(jobs)
        for j in jobs:
            j.run(args.steps)
        print(f"  round {r + 1}/{args.rounds} (copy bandwidth {bandwidths[-1] / 1e9:.1f} GB/s)", file=sys.stderr)
    bandwidth = statistics.median(bandwidths)
    cached_bw = {n: statistics.median(v) for n, v in cached.items()}
    t = {(j.host, j.block, j.mode): min(j.times) for j in jobs}
    by_key = {(j.host, j.block, j.mode): j for j in jobs}
    rows = []
    print(f"\ntraining step, batch {args.batch}, channels_last, SGD; min over {args.rounds} rounds of "
          f"{args.steps}-step means; floor = max(8|x| per site at {bandwidth / 1e9:.2f} GB/s (median of "
          f"{min(bandwidths) / 1e9:.1f}-{max(bandwidths) / 1e9:.1f}), 3 x forward FLOPs at {rate / 1e9:.0f} GFLOP/s)")
    if cached_bw:
        print("cache floor: the same bytes at the copy bandwidth of a map of each site's size, "
              + ", ".join(f"{n / 2**20:.1f} MiB {v / 1e9:.0f} GB/s" for n, v in sorted(cached_bw.items())))
    print(f"{'host':<9}{'mode':<9}{'block':<14}{'step ms':>9}{'over ms':>9}{'over %':>8}{'floor ms':>9}"
          f"{'over/floor':>11}{'alone ms':>9}{'alone/fl':>9}{'cache fl':>9}{'alone/cfl':>10}  target")
    for host in args.hosts:
        for mode in host_modes(host):
            base = t[(host, None, mode)]
            print(f"{host:<9}{mode:<9}{'(none)':<14}{base * 1e3:>9.1f}")
            for b in blocks_of(host, mode):
                j = by_key[(host, b, mode)]
                step = t[(host, b, mode)]
                over = step - base
                mem_floor, flop_floor = 8 * j.attn_bytes / bandwidth, 3 * j.flops / rate
                floor = max(mem_floor, flop_floor)
                cache_floor = max(sum(8 * n / cached_bw[n] for n in j.site_bytes), flop_floor)
                ratio = over / floor if floor else None
                alone = min(j.isolated) if j.isolated else None
                alone_cache = alone / cache_floor if alone is not None and cache_floor else None
                alone_ratio = alone / floor if alone is not None and floor else None
                # a negative overhead is timing noise (the block cannot make the host faster): no verdict
                met = None if ratio is None or over < 0 else ratio <= TARGET[mode]
                row = dict(host=host, mode=mode, block=b, step_ms=step * 1e3, base_ms=base * 1e3,
                           overhead_ms=over * 1e3, overhead_pct=100 * over / base, floor_ms=floor * 1e3,
                           floor_mb=8 * j.attn_bytes / 2**20, sites=j.sites, ratio_to_floor=ratio,
                           memory_floor_ms=mem_floor * 1e3, compute_floor_ms=flop_floor * 1e3,
                           forward_flops=j.flops, floor_bound="compute" if flop_floor > mem_floor else "memory",
                           alone_ms=None if alone is None else alone * 1e3, alone_ratio_to_floor=alone_ratio,
                           alone_target_met=None if alone_ratio is None else alone_ratio <= TARGET[mode],
                           cache_floor_ms=cache_floor * 1e3, alone_ratio_to_cache_floor=alone_cache,
                           target=TARGET[mode], target_met=met, compile_s=j.compile_s)
                rows.append(row)
                print(f"{host:<9}{mode:<9}{b:<14}{step * 1e3:>9.1f}{over * 1e3:>9.1f}{100 * over / base:>7.1f}%"
                      f"{floor * 1e3:>9.2f}{(f'{ratio:.2f}' if ratio is not None else '-'):>11}"
                      f"{(f'{alone * 1e3:.1f}' if alone is not None else '-'):>9}"
                      f"{(f'{alone_ratio:.2f}' if alone_ratio is not None else '-'):>9}"
                      f"{cache_floor * 1e3:>9.2f}{(f'{alone_cache:.2f}' if alone_cache is not None else '-'):>10}  "
                      f"<= {TARGET[mode]} {dict([(True, 'met'), (False, 'NOT met'), (None, 'noise: rerun quieter')])[met]}")
    if "eager" in args.modes and "compiled" in args.modes:
        print("\ncompile break-even (steps after which compiling has paid off; 5 FMNIST epochs = "
              f"{FMNIST_5_EPOCH_STEPS} steps):")
        for host in compiled_hosts:
            for b in [None, *compiled_blocks]:
                e, c = t[(host, b, "eager")], t[(host, b, "compiled")]
                cs = by_key[(host, b, "compiled")].compile_s
                saving = e - c
                steps = cs / saving if saving > 0 else None
                verdict = ("pays" if steps is not None and steps < FMNIST_5_EPOCH_STEPS else "does not pay")
                print(f"  {host}+{b or 'none'}: compile {cs:.1f} s, saves {saving * 1e3:.1f} ms/step -> "
                      f"break-even {f'{steps:.0f} steps' if steps else 'never'}; {verdict} in a 5-epoch FMNIST run")
                rows.append(dict(host=host, block=b, mode="break_even", compile_s=cs, saving_ms=saving * 1e3,
                                 break_even_steps=steps, pays_in_5_fmnist_epochs=verdict == "pays"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            batch=args.batch, steps=args.steps, rounds=args.rounds, threads=torch.get_num_threads(),
            cpu=cpu_model(), cpu_count=os.cpu_count(), torch=torch.__version__, attnzoo=attnzoo.__version__,
            copy_bandwidth_gbs=bandwidth / 1e9, copy_bandwidth_gbs_rounds=[b / 1e9 for b in bandwidths],
            cached_copy_bandwidth_gbs={str(n): v / 1e9 for n, v in sorted(cached_bw.items())},
            cached_copy_bandwidth_gbs_rounds={str(n): [b / 1e9 for b in v] for n, v in sorted(cached.items())},
            matmul_gflops=rate / 1e9, allocator=alloc, cold_compile=True, rows=rows,
        ), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
