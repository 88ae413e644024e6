"""Training-step time with glibc's allocator as it is and with ``keep_freed_memory()`` (attnzoo/training/allocator.py).

    python benchmarks/allocator.py
    python benchmarks/allocator.py --json benchmarks/results/allocator_cpu.json

The setting is per process, so every measurement is a fresh process: ResNet-20 on Fashion-MNIST
shapes (1x28x28, batch 128, channels_last), plain and with se / cbam at every residual block,
eager SGD steps on random data; per process the best of ``--rounds`` means of ``--steps`` steps
after warm-up. The processes alternate between the two settings, ``--repeats`` times each.
Printed: step ms per setting (min over processes) and keep / system.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, time
from attnzoo.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()["tuned"]
import torch
from attnzoo import create_backbone
torch.set_num_threads(int(sys.argv[5]) or torch.get_num_threads())
block = None if sys.argv[2] == "none" else sys.argv[2]
torch.manual_seed(0)
m = create_backbone("resnet20", num_classes=10, in_chans=1, attn=block).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
for _ in range(3):
    step()
best = float("inf")
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    for _ in range(int(sys.argv[4])):
        step()
    best = min(best, (time.perf_counter() - t0) / int(sys.argv[4]))
print(best * 1e3)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", nargs="*", default=["none", "se", "cbam"])
    p.add_argument("--repeats", type=int, default=3, help="processes per (network, setting)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    ms: dict = {(b, s): [] for b in args.blocks for s in ("system", "keep")}
    for r in range(args.repeats):
        for b in args.blocks:
            for s in (("system", "keep") if r % 2 == 0 else ("keep", "system")):
                out = subprocess.run([sys.executable, "-c", CHILD, s, b, str(args.rounds), str(args.steps), str(args.threads)],
                                     capture_output=True, text=True, check=True).stdout
                ms[(b, s)].append(float(out.strip().splitlines()[-1]))
    import torch

    from attnzoo.ablation.runner import cpu_model

    rows = []
    print(f"ResNet-20, 1x28x28, batch 128, channels_last, eager SGD; {cpu_model()}, torch {torch.__version__}; "
          f"min over {args.repeats} processes each")
    print(f"{'network':<16}{'system ms':>10}{'keep ms':>9}{'keep/system':>12}")
    for b in args.blocks:
        sys_ms, keep_ms = min(ms[(b, "system")]), min(ms[(b, "keep")])
        rows.append(dict(network="resnet20" + ("" if b == "none" else f"+{b}"), system_ms=sys_ms, keep_ms=keep_ms,
                         ratio=keep_ms / sys_ms, system_ms_all=ms[(b, "system")], keep_ms_all=ms[(b, "keep")]))
        print(f"{rows[-1]['network']:<16}{sys_ms:>10.1f}{keep_ms:>9.1f}{keep_ms / sys_ms:>12.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(cpu=cpu_model(), torch=torch.__version__, repeats=args.repeats,
                                             rounds=args.rounds, steps=args.steps, rows=rows), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
