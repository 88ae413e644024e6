"""``attnzoo ablate GRID`` and ``attnzoo report GRID_OR_DB``.

    attnzoo ablate configs/ablation/cifar100_resnet56.yaml --dry-run   # cells, params, FLOPs; no training
    attnzoo ablate experiments/fmnist_resnet20/grid.yaml               # run the missing cells
    attnzoo ablate experiments/fmnist_resnet20/grid.yaml --workers 2   # two runs at a time
    attnzoo ablate GRID --executor slurm --partition gpu --gpus-per-run 1 --time-limit 240
    attnzoo ablate GRID --executor ray --ray-address auto
    attnzoo ablate GRID --shard $SLURM_ARRAY_TASK_ID/8                 # one disjoint eighth of the cells
    attnzoo collect GRID                                               # result.json files -> the store
    attnzoo report experiments/fmnist_resnet20/grid.yaml               # README.md, results.csv/.tex, PNGs
    attnzoo report experiments/fmnist_resnet20/results.sqlite --out /tmp/report
    attnzoo cost experiments/fmnist_resnet20/grid.yaml                 # quiet step-time pass -> results.cost.json
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["ablate_main", "report_main", "cost_main", "collect_main"]


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"workers must be an int >= 1 or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"workers must be an int >= 1 or 'auto', got {value!r}")
    return n


def _fmt_count(x: float | None, unit: float) -> str:
    return "?" if x is None else f"{x / unit:.3f}"


def _dry_run(grid) -> int:
    from .grid import cell_complexity
    from .store import ResultStore

    status = ResultStore(grid.store).status() if grid.store.exists() else {}  # a dry run creates nothing
    first = {}
    for c in grid.cells:
        first.setdefault(c.label, c)
    rows = []
    for label, cell in first.items():
        cost = cell_complexity(cell, grid)
        cells = [c for c in grid.cells if c.label == label]
        done = sum(status.get(c.key) == "ok" for c in cells)
        failed = sum(status.get(c.key) == "failed" for c in cells)
        rows.append((label, "yes" if cell.is_baseline else (cell.baseline or "-"), ",".join(str(c.seed) for c in cells),
                     _fmt_count(cost["params"], 1e6), _fmt_count(cost["flops"], 1e6), f"{done} ok, {failed} failed"))
    head = ("cell", "baseline", "seeds", "params (M)", "MFLOPs", "in store")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print(f"{grid.name}: {len(first)} variants x {len(grid.seeds)} seeds = {len(grid.cells)} runs "
          f"(store {grid.store}); FLOPs at batch 1 at the data's image size")
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    return 0


def _positive(kind: type, what: str, minimum: float = 1):
    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number >= {minimum}, got {value!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {value!r}")
        return v
    return parse


def _shard(value: str) -> tuple[int, int]:
    from .runner import parse_shard

    try:
        return parse_shard(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _table_hint(grid, grid_arg: str) -> str:
    md = grid.store.parent / "README.md"
    return f"table:   {md} (written by `attnzoo report {grid_arg}`; also results.csv, results.tex, PNG plots there)"


def ablate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="attnzoo ablate",
        description="Run an ablation grid (configs/ablation/*.yaml): every block x position x backbone x seed cell "
                    "as a fit + test. Everything knowable is validated first. Each finished run writes result.json in "
                    "its run folder, then one row of the SQLite store. Re-running the same command runs only the "
                    "missing cells; cells recorded as failed are skipped unless --retry-failed. Two sweeps on one grid "
                    "(one machine or several sharing the run folders) never run a cell twice: cells are claimed first. "
                    "Ctrl-C or kill loses no finished run.",
    )
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("--dry-run", action="store_true", help="list the cells with parameters and FLOPs; train nothing")
    parser.add_argument("--workers", type=_workers, default=None,
                        help="runs at a time (default: the grid's 'workers', else 1; slurm/ray: as many as the "
                             "cluster takes); 'auto' = one per GPU of CUDA_VISIBLE_DEVICES")
    parser.add_argument("--threads", type=_positive(int, "--threads"), default=None,
                        help="torch threads per run (default: the grid's 'threads', else 1), the same whatever "
                             "--workers, so a cell's numbers do not depend on the worker count")
    parser.add_argument("--store", default=None,
                        help="SQLite results file (default: the grid's 'store'); keep it on a local disk")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also run again the cells recorded as failed (their rows are replaced)")
    parser.add_argument("--executor", choices=("local", "slurm", "ray"), default="local",
                        help="local: worker processes here (default); slurm: one job per cell through submitit "
                             "(pip install 'attnzoo[slurm]'); ray: one Ray task per cell (pip install 'attnzoo[ray]')")
    parser.add_argument("--gpus-per-run", type=_positive(int, "--gpus-per-run", 0), default=None,
                        help="GPUs each run gets (local default 1 where there are GPUs; slurm default 0; "
                             "ray default 1 if the cluster has GPUs)")
    parser.add_argument("--partition", default=None, help="slurm: the partition (sbatch --partition)")
    parser.add_argument("--account", default=None, help="slurm: the account (sbatch --account)")
    parser.add_argument("--time-limit", type=_positive(int, "--time-limit"), default=None,
                        help="slurm: the time limit per run, in minutes")
    parser.add_argument("--mem-gb", type=_positive(int, "--mem-gb"), default=None, help="slurm: memory per run (GB)")
    parser.add_argument("--ray-address", default=None,
                        help="ray: the cluster to join ('auto' = the running one; default: start a local instance)")
    parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                        help="run only shard I of N (cells I, I+N, ...; 0 <= I < N), e.g. a job array index. Results "
                             "stay in the run folders (no store is written unless --store is given); "
                             "`attnzoo collect GRID` gathers them")
    parser.add_argument("--claim-timeout", type=_positive(float, "--claim-timeout"), default=600.0,
                        help="seconds without a heartbeat after which another sweep's claim on a cell is stale and "
                             "taken over (default 600; claims of a dead sweep on this host are taken over at once)")
    args = parser.parse_args(argv)

    from .grid import GridError, load_grid, validate_grid
    from .runner import run_grid
    from .store import ResultStore, StoreError

    try:
        grid = load_grid(args.grid, store=args.store, workers=args.workers, threads=args.threads)
        validate_grid(grid)
    except (GridError, FileNotFoundError) as e:
        print(f"attnzoo ablate: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        try:
            return _dry_run(grid)
        except StoreError as e:
            print(f"attnzoo ablate: error: {e}", file=sys.stderr)
            return 2
    options: dict = {}
    if args.executor == "slurm":
        options = {k: v for k, v in {"partition": args.partition, "account": args.account,
                                     "time_limit_min": args.time_limit, "mem_gb": args.mem_gb}.items() if v is not None}
    elif args.executor == "ray":
        options = {"address": args.ray_address}
        if args.gpus_per_run is not None:
            options["gpus_per_run"] = args.gpus_per_run
    gpus_per_run = args.gpus_per_run if args.gpus_per_run is not None else (0 if args.executor == "slurm" else 1)
    try:
        store = None if args.shard is not None and args.store is None else ResultStore(grid.store)
        counts = run_grid(grid, store, workers=args.workers, retry_failed=args.retry_failed, executor=args.executor,
                          executor_options=options, shard=args.shard, claim_timeout=args.claim_timeout,
                          gpus_per_run=gpus_per_run)
    except KeyboardInterrupt:
        return 130
    except StoreError as e:
        print(f"attnzoo ablate: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an executor's optional dependency
        print(f"attnzoo ablate: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .executors.local import WorkerStartError

        if not isinstance(e, WorkerStartError):
            raise
        print(f"attnzoo ablate: error: {e}", file=sys.stderr)
        return 2
    from .runner import pending_cells, shard_cells

    cells = shard_cells(grid.cells, args.shard)
    if store is None:
        from .runner import _result_status

        total = _result_status(grid)
    else:
        total = store.status()
    ok = sum(total.get(c.key) == "ok" for c in cells)
    failed = [c.name for c in cells if total.get(c.key) == "failed"]
    left = len(pending_cells(grid, store, shard=args.shard))
    share = f"shard {args.shard[0]}/{args.shard[1]} of " if args.shard else ""
    print(f"{share}{grid.name}: {ok}/{len(cells)} runs ok" + (f", failed: {', '.join(failed)}" if failed else "")
          + (f", {left} not done" if left else ""), flush=True)
    if store is None:
        print(f"results: result.json files in {grid.runs_dir}; gather them with `attnzoo collect {args.grid}`")
    else:
        print(f"results: {store.path}")
    print(_table_hint(grid, args.grid), flush=True)
    return 1 if counts["failed"] else 0


def _grid_metric(path: Path):
    import yaml

    from .report import metric_from_grid

    raw = yaml.safe_load(path.read_text()) or {}
    return metric_from_grid(raw.get("metric") if isinstance(raw, dict) else None, str(path))


def collect_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="attnzoo collect",
        description="Write into the results store every finished run of a grid that is in a run folder's result.json "
                    "but not in the store: runs of --shard jobs, of a sweep whose store was unwritable, or to rebuild "
                    "a lost or corrupt store (move the damaged file aside first). Runs nothing.",
    )
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("--store", default=None, help="SQLite results file (default: the grid's 'store')")
    args = parser.parse_args(argv)

    from .grid import GridError, load_grid
    from .results import collect
    from .store import ResultStore, StoreError

    try:
        grid = load_grid(args.grid, store=args.store)
        store = ResultStore(grid.store)
        got = collect(grid, store, lambda line: print(line, file=sys.stderr))
        status = store.status()
    except (GridError, StoreError, FileNotFoundError) as e:
        print(f"attnzoo collect: error: {e}", file=sys.stderr)
        return 2
    ok = sum(status.get(c.key) == "ok" for c in grid.cells)
    failed = sum(status.get(c.key) == "failed" for c in grid.cells)
    print(f"{grid.name}: collected {got['collected']} run(s) ({got['ok']} ok, {got['failed']} failed) from "
          f"{grid.runs_dir} into {store.path}; the store now holds {ok} ok and {failed} failed of {len(grid.cells)} "
          f"cells")
    print(_table_hint(grid, args.grid))
    return 0


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="attnzoo report",
        description="Write the ablation report from a results store: Markdown (recipe, hardware, table), "
                    "results.csv, results.tex and PNG plots of Δ metric against Δ step time (from `attnzoo cost`) "
                    "and Δ parameters; also print the table. Statistics: paired Δ with 95% t intervals, paired "
                    "t-test p-values, Holm-adjusted across the variants sharing a baseline, MDE at 80% power.",
    )
    parser.add_argument("source", help="grid YAML (reports that grid's cells) or SQLite results file (all its runs)")
    parser.add_argument("--out", default=None, help="output folder (default: the results store's folder)")
    parser.add_argument("--markdown", default="README.md",
                        help="Markdown file in --out; its generated block is replaced, other text is kept")
    parser.add_argument("--title", default=None, help="report title (default: the grid's name)")
    parser.add_argument("--formats", default="md,csv,tex,png",
                        help="comma-separated subset of md,csv,tex,png,attn (attn: attention.png, each variant's "
                             "attention maps and Grad-CAM on the same test images, from the kept checkpoints)")
    parser.add_argument("--metric", default=None,
                        help="store column or final-epoch key to compare (default: the grid's 'metric', else acc1)")
    parser.add_argument("--costs", default=None,
                        help="cost-pass JSON (default: <store>.cost.json beside the store, written by `attnzoo cost`)")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)

    from .cost import cost_path, load_costs, matching_costs
    from .grid import GridError, load_grid
    from .report import metric_from_grid, summarize, terminal_table, write_report
    from .store import ResultStore

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in ("md", "csv", "tex", "png", "attn")]
    if bad or not formats:
        print(f"attnzoo report: error: unknown format(s) {bad}; choose from md, csv, tex, png, attn", file=sys.stderr)
        return 2
    src = Path(args.source)
    grid = None
    try:
        if src.suffix in (".yaml", ".yml"):
            grid = load_grid(src)
            if not grid.store.exists():
                raise FileNotFoundError(f"no results store at {grid.store}; run `attnzoo ablate {src}` first")
            store = ResultStore(grid.store)
            rows = store.rows(keys=[c.key for c in grid.cells])
            have = {c.key for c in grid.cells} & {r["key"] for r in rows if r["status"] == "ok"}
            missing = [c.name for c in grid.cells if c.key not in have and c.key not in {r["key"] for r in rows}]
            order, title, out = grid.variants, args.title or grid.name, args.out or grid.store.parent
            metric = _grid_metric(src)
        else:
            if not src.is_file():
                raise FileNotFoundError(f"{src} is neither a grid YAML nor an existing SQLite results file")
            store = ResultStore(src)
            rows = store.rows()
            names = list(dict.fromkeys(r["grid"] for r in rows if r.get("grid")))
            missing, order, title, out = None, None, args.title or (", ".join(names) or src.stem), args.out or src.parent
            metric = metric_from_grid(None)
        if args.metric:
            metric = metric_from_grid(args.metric, "--metric")
        costs_file = Path(args.costs) if args.costs else cost_path(store.path)
        if args.costs and not costs_file.is_file():
            raise FileNotFoundError(f"no cost-pass file at {costs_file}; run `attnzoo cost GRID` first")
        costs = load_costs(costs_file)
        if costs and grid is not None:
            fresh, stale = matching_costs(costs, grid)
            if stale:
                print(f"attnzoo report: warning: the cost pass measured {', '.join(stale)} with a different model "
                      "config than the grid's now; their timing is left out (re-run `attnzoo cost`)", file=sys.stderr)
            costs = {**costs, "variants": fresh}
        written = write_report(rows, out, title, order=order, missing=missing, markdown_name=args.markdown,
                               formats=formats, checkpoint_root=store.path.parent, metric=metric, costs=costs)
    except (GridError, FileNotFoundError, ValueError) as e:
        print(f"attnzoo report: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{title}: Δ {metric.name} in pp vs the baseline, paired by seed, 95% t interval; "
              "significant = Holm-adjusted p < 0.05")
        print(terminal_table(summarize(rows, order, metric, (costs or {}).get("variants") if costs else None), metric))
        print("cost pass: " + (f"{os.path.relpath(costs_file)} ({costs['measured_at']})" if costs else
                               "not run (no timing columns); `attnzoo cost GRID` measures step time and throughput"))
    for kind, path in written.items():
        print(f"{kind}: {os.path.relpath(path)}")
    return 0


def cost_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="attnzoo cost",
        description="The quiet cost pass: build every variant of a grid as its run does and measure its training "
                    "step time and inference throughput, one variant at a time with all cores, in interleaved "
                    "rounds (median over rounds). Writes <store>.cost.json beside the results store, which "
                    "`attnzoo report` uses. Run it when nothing else runs on the machine (not during a sweep).",
    )
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all variants (default 5)")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps per visit (default 10)")
    parser.add_argument("--infer-batches", type=int, default=10, help="timed inference batches per visit (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps before each visit (default 2)")
    parser.add_argument("--infer-batch-size", type=int, default=None, help="inference batch (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="JSON file (default: <store stem>.cost.json beside the store)")
    parser.add_argument("--allocator", choices=("keep", "system"), default="keep",
                        help="keep (default): keep freed memory in the process as CPU fits do (model.cpu_allocator); "
                             "system: leave the C allocator alone")
    args = parser.parse_args(argv)

    from .cost import cost_path, measure_costs, write_costs
    from .grid import GridError, load_grid, validate_grid

    try:
        grid = load_grid(args.grid)
        validate_grid(grid)
        load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
        if load > 0.5:
            print(f"attnzoo cost: warning: 1-min load average {load:.2f} on {cores} core(s): something else is running, "
                  "so the timings will be noisy; the load is recorded with them", file=sys.stderr)
        record = measure_costs(grid, rounds=args.rounds, train_steps=args.train_steps, infer_batches=args.infer_batches,
                               warmup=args.warmup, infer_batch_size=args.infer_batch_size, threads=args.threads,
                               allocator=args.allocator, log=lambda line: print(line, flush=True))
    except (GridError, FileNotFoundError, ValueError) as e:
        print(f"attnzoo cost: error: {e}", file=sys.stderr)
        return 2
    path = write_costs(record, args.out or cost_path(grid.store))
    base = next((c.label for c in grid.cells if c.is_baseline), None)
    ref = record["variants"].get(base) if base else None
    print(f"{grid.name}: {len(record['variants'])} variants, {record['seconds']:.0f} s, "
          f"{record['env']['torch_threads']} thread(s), load average before/after {record['load_average']}")
    for lab, v in record["variants"].items():
        rel = f" ({(v['train_step_ms'] / ref['train_step_ms'] - 1) * 100:+.1f}% vs {base})" if ref and lab != base else ""
        print(f"  {lab:<28} step {v['train_step_ms']:8.1f} ms{rel}   inference {v['infer_throughput']:8.0f} img/s")
    print(f"costs: {os.path.relpath(path)}\nreport: attnzoo report {args.grid}")
    return 0
