"""Run the catalogue of bad inputs (tests/test_bad_inputs.py) and write its counts.

    python benchmarks/bad_inputs.py                 # writes benchmarks/results/bad_inputs.json and
                                                    # the README's reliability section

Each case is one wrong input (an API call, a command line, a config, a data file, a checkpoint)
and the words its error must contain. Counted per area: cases, cases whose error names the thing
at fault (API: the expected exception type; CLI: exit status 2, no traceback), tracebacks, and
inputs accepted silently. The README section is written from the JSON, never typed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bad_inputs.json"
README = ROOT / "README.md"
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"


def _catalogue():
    spec = importlib.util.spec_from_file_location("bad_inputs_catalogue", ROOT / "tests" / "test_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure() -> dict:
    cat = _catalogue()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        cases = cat.all_cases(Path(tmp))
        outcomes = [(c, *cat.run_case(c)) for c in cases]
        wall = time.perf_counter() - t0
        ran_code = bool(list(Path(tmp).rglob("PWNED")))
    areas: dict[str, Counter] = {}
    failures = []
    for case, ok, why in outcomes:
        n = areas.setdefault(case.area, Counter())
        n["cases"] += 1
        n["named"] += ok
        n["traceback"] += (not ok) and ("traceback" in why or why.startswith("raised"))
        n["silent"] += (not ok) and why == "accepted the bad input silently"
        if not ok:
            failures.append({"area": case.area, "case": case.name, "what": why[:300]})
    total = Counter()
    for n in areas.values():
        total.update(n)
    return {"areas": {k: dict(v) for k, v in sorted(areas.items())}, "total": dict(total), "failures": failures,
            "crafted_file_ran_code": ran_code, "wall_time_s": round(wall, 1),
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"}


def section(res: dict) -> str:
    t = res["total"]
    names = {"api": "API (create_attn / get_attn / insert_attn / create_backbone, every registered block and "
                    "backbone x each kind of bad argument, spec strings)",
             "cli": "CLI (`attnzoo ...` in process, 3 of them as subprocesses)", "config": "YAML configs",
             "checkpoint": "checkpoints", "data": "data files in their real formats"}
    rows = "\n".join(f"| {names.get(a, a)} | {n['cases']} | {n.get('named', 0)} | {n.get('traceback', 0)} | "
                     f"{n.get('silent', 0)} |" for a, n in res["areas"].items())
    return (
        f"Measured by `benchmarks/bad_inputs.py`, which runs the catalogue of `tests/test_bad_inputs.py` "
        f"({t['cases']} bad inputs, {res['wall_time_s']:.0f} s on {res['machine']}): for each, the error must name "
        "the block, parameter, key or file at fault; on the command line it must be one paragraph with exit "
        "status 2 and no traceback (`--debug` or `ATTNZOO_DEBUG=1` shows it).\n\n"
        "| area | bad inputs | error names the culprit | traceback or wrong error | accepted silently |\n"
        "|---|---:|---:|---:|---:|\n" + rows + f"\n| **all** | **{t['cases']}** | **{t.get('named', 0)}** | "
        f"**{t.get('traceback', 0)}** | **{t.get('silent', 0)}** |\n\n"
        "Untrusted files run no code: checkpoints are opened weights-only everywhere (`attnzoo.checkpoint`), "
        "CIFAR batch pickles with an allow-list, and a checkpoint path from a results store only inside that "
        "experiment's folder; crafted files whose unpickling would run a command "
        + ("**ran it**." if res["crafted_file_ran_code"] else "were refused without running it (checked by the "
           "catalogue and `tests/test_untrusted.py`).")
        + " Data is checked before the first step: image folders are scanned for files that do not decode "
        "(`data.bad_files: fail`, or `skip` with a count), labels against `num_classes`, image size and channels "
        "against the model's input."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--no-readme", action="store_true", help="only write the JSON")
    args = p.parse_args()
    res = measure()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("total", "wall_time_s", "crafted_file_ran_code")}))
    for f in res["failures"]:
        print(f"FAILED {f['area']}: {f['case']}: {f['what']}")
    if not args.no_readme:
        text = README.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"README.md has no {START} ... {END} markers")
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{section(res)}\n{END}", text,
                      flags=re.S)
        README.write_text(text)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
