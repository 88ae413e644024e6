"""Time the README's own commands: the main job and its smoke variant, exactly as a user runs them.

Each command is ``attnzoo fit --config <file>`` started as a subprocess in a fresh temporary folder
(so it writes its run folder there), with output going to a pipe as it would into a log file; the
script reads test top-1 and the rest from the summary ``attnzoo fit`` prints at the end, and records
the machine (CPU model, cores, load average before and after) beside the wall time.

    python benchmarks/readme_commands.py                 # both (the main job takes ~10 min on 2 cores)
    python benchmarks/readme_commands.py --only smoke

Writes benchmarks/results/readme_commands_cpu.json; ``benchmarks/readme.py`` turns it into the
README's ``fit-numbers`` section.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "main": "configs/fit/fmnist_resnet20.yaml",
    "smoke": "configs/fit/fmnist_resnet20_smoke.yaml",
}


def _summary_value(text: str, pattern: str) -> str | None:
    m = re.search(pattern, text, flags=re.M)
    return m.group(1) if m else None


def run(name: str, config: str) -> dict:
    from attnzoo.ablation.runner import cpu_model

    with tempfile.TemporaryDirectory(prefix=f"attnzoo-{name}-") as tmp:
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "attnzoo", "fit", "--config", str(ROOT / config)], cwd=tmp,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
    out = proc.stdout
    if proc.returncode != 0:
        raise SystemExit(f"{name}: attnzoo fit exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    img_s = [float(v.replace(",", "")) for v in re.findall(r"done in [\d:]+: train loss .*?; ([\d,]+) img/s", out)]
    import torch

    return {
        "command": f"attnzoo fit --config {config}",
        "wall_time_s": wall,
        "test_acc1": float(_summary_value(out, r"^test +top-1 ([\d.]+)%") or "nan") / 100,
        "attn_params": int((_summary_value(out, r"^params .*attention: \+([\d,]+)") or "0").replace(",", "")),
        "params": int((_summary_value(out, r"^params +([\d,]+)") or "0").replace(",", "")),
        "train_images_per_s_last_epoch": img_s[-1] if img_s else None,
        "epochs": len(img_s),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_avg_1min_before": load_before[0], "load_avg_1min_after": load_after[0]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(COMMANDS), action="append", help="run only these (repeatable)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "readme_commands_cpu.json")
    args = parser.parse_args(argv)
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for name in args.only or list(COMMANDS):
        results[name] = run(name, COMMANDS[name])
        print(json.dumps({name: results[name]}, indent=2), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
