"""Ablation grids, results store, runner, statistics and report (attnzoo.ablation).

The end-to-end sweep trains real (tiny) runs through attnzoo.training.run_fit_test on synthetic
8x8 images; the kill test uses ``fake_run`` below (a run_fn importable by the spawned workers), so
it is about the sweep's bookkeeping, not about training.
"""
from __future__ import annotations

import csv
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from attnzoo.ablation import GridError, ResultStore, load_grid, run_grid, validate_grid
from attnzoo.ablation.report import BEGIN, END, summarize, write_report

FIT = {
    "seed_everything": 0,
    "model": {"backbone": "resnet20", "attn": None, "lr": 0.05, "schedule": "constant"},
    "data": {"class_path": "attnzoo.data.SyntheticDataModule",
             "init_args": {"batch_size": 4, "image_size": 8, "num_train": 8, "num_test": 8, "val_size": 0}},
    "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 2, "logger": False},
}


def _write_grid(folder: Path, grid: dict, fit: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fit.yaml").write_text(yaml.safe_dump(fit or FIT))
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": "fit.yaml", **grid}, sort_keys=False))
    return path


def fake_run(config: dict, run_dir: str) -> dict:
    """A stand-in for run_fit_test: top-1 from (attn, seed), optional sleep/raise driven by env vars."""
    attn = config["model"].get("attn")
    seed = config["seed_everything"]
    log = os.environ.get("ABLATION_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{attn} {seed}\n")
    if attn == "raise":
        raise RuntimeError("this cell always fails")
    if os.environ.get("ABLATION_TEST_SLOW") and (attn, seed) != (None, 0):
        time.sleep(60)
    ckpt = Path(run_dir) / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "last.ckpt").write_text("weights")
    acc = 0.5 + (0.02 if attn else 0.0) + 0.01 * seed
    return {"test": {"acc1": acc, "acc5": None, "loss": 1.0}, "epochs": [{"epoch": 0, "train/loss": 1.0}],
            "params": 1000 + (10 if attn else 0), "flops": 2000, "train_throughput": 100.0,
            "infer_throughput": 400.0 if attn is None else 320.0, "wall_time_s": 0.1, "insert_report": None,
            "config": config}


# stats: tests/test_stats.py


# ------------------------------------------------------------------------------------------------ grid


def test_grid_crosses_axes_and_variants_with_one_baseline_per_backbone(tmp_path):
    path = _write_grid(tmp_path, {
        "overrides": {"data.subset": 4},
        "axes": {"model.attn": [None, "se"], "model.position": ["standard", "post"], "model.backbone": ["resnet20", "resnet32"]},
        "variants": [{"label": "mhsa@stage3", "model.attn": "mhsa", "model.stages": [3]}],
        "seeds": [0, 1],
    })
    grid = load_grid(path)
    labels = grid.variants
    # the plain backbone has no position: one baseline per backbone, not one per position
    assert labels == [
        "baseline backbone=resnet20", "baseline backbone=resnet32",
        "se position=standard backbone=resnet20", "se position=standard backbone=resnet32",
        "se position=post backbone=resnet20", "se position=post backbone=resnet32",
        "mhsa@stage3 position=standard backbone=resnet20", "mhsa@stage3 position=standard backbone=resnet32",
        "mhsa@stage3 position=post backbone=resnet20", "mhsa@stage3 position=post backbone=resnet32",
    ]
    assert len(grid.cells) == 2 * len(labels)
    by = {(c.label, c.seed): c for c in grid.cells}
    cell = by[("se position=post backbone=resnet32", 1)]
    assert cell.baseline == "baseline backbone=resnet32" and not cell.is_baseline
    assert by[("baseline backbone=resnet20", 0)].is_baseline
    assert "model.position" not in by[("baseline backbone=resnet20", 0)].overrides
    # seeds reach the weights and the data module; data.X means data.init_args.X
    assert cell.config["seed_everything"] == 1 and cell.config["data"]["init_args"] == {"subset": 4, "seed": 1}
    assert cell.config["model"] == {"attn": "se", "position": "post", "backbone": "resnet32"}
    assert cell.config["__base__"] == [str(tmp_path / "fit.yaml")]
    assert len({c.key for c in grid.cells}) == len(grid.cells)
    assert grid.store == tmp_path / "grid.sqlite"


def test_cell_key_is_stable_and_follows_the_base_recipe(tmp_path):
    path = _write_grid(tmp_path, {"axes": {"model.attn": [None, "se"]}, "seeds": [0]})
    keys = [c.key for c in load_grid(path).cells]
    assert keys == [c.key for c in load_grid(path).cells]
    fit = {**FIT, "trainer": {**FIT["trainer"], "max_epochs": 2}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    assert set(keys).isdisjoint(c.key for c in load_grid(path).cells)


@pytest.mark.parametrize("grid, message", [
    ({"axes": {"model.attn": "se"}}, "non-empty list"),
    ({"seeds": [0, 0]}, "repeats a seed"),
    ({"sedes": [0]}, "unknown grid key"),
    ({"keep_checkpoints": "some"}, "keep_checkpoints"),
    ({"baseline": "plain", "axes": {"model.attn": [None, "se"]}}, "not a cell label"),
    ({"variants": [{"model.attn": "se"}]}, "label"),
])
def test_grid_file_mistakes_are_reported(tmp_path, grid, message):
    with pytest.raises(GridError, match=message):
        load_grid(_write_grid(tmp_path, grid))


def test_grid_validation_names_every_bad_cell_before_any_run(tmp_path):
    path = _write_grid(tmp_path, {
        "axes": {"model.attn": [None, "se", "sse"]},
        "variants": [{"label": "nowhere", "model.attn": "se", "model.position": "nowhere"},
                     {"label": "typo", "model.atn": "se"}],
        "seeds": [0, 1],
    })
    grid = load_grid(path)
    with pytest.raises(GridError) as e:
        validate_grid(grid)
    text = str(e.value)
    assert "3 of 5 cells are invalid" in text
    assert "'sse'" in text and "did you mean" in text
    assert "cell 'nowhere'" in text and "unknown position 'nowhere'" in text
    assert "cell 'typo'" in text and "atn" in text
    assert "cell 'se'" not in text and "cell 'baseline'" not in text
    from attnzoo.ablation.cli import ablate_main

    assert ablate_main([str(path)]) == 2
    assert not grid.store.exists()  # nothing ran, nothing was written


# ------------------------------------------------------------------------------------------------ store + report


def _row(label, seed, acc, status="ok", baseline="baseline", tp=100.0, params=1000, error=None):
    return {"key": f"{label}-{seed}", "grid": "g", "label": label, "seed": seed, "status": status, "error": error,
            "is_baseline": int(label == "baseline"), "baseline": None if label == "baseline" else baseline,
            "acc1": acc if status == "ok" else None, "params": params, "flops": 2_000_000,
            "train_throughput": tp, "infer_throughput": tp * 4, "wall_time_s": 1.0,
            "config": {"model": {"backbone": "resnet20", "optimizer": "sgd", "lr": 0.1, "schedule": "cosine"},
                       "data": {"class_path": "attnzoo.data.FashionMNISTDataModule", "init_args": {"subset": 100}},
                       "trainer": {"max_epochs": 3}},
            "env": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 1, "versions": {"torch": "9.9"}, "commit": "abc"},
            "started_at": "2026-01-01T00:00:00+00:00", "finished_at": f"2026-01-01T00:0{seed}:00+00:00"}


def test_store_keeps_each_cell_once_and_replaces_on_rewrite(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.write(_row("se", 0, 0.5, status="failed", error="boom"))
    store.write(_row("se", 0, 0.6))
    rows = store.rows()
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["acc1"] == 0.6
    assert rows[0]["config"]["trainer"]["max_epochs"] == 3  # JSON round trip
    with pytest.raises(KeyError, match="unknown result column"):
        store.write({**_row("se", 1, 0.6), "acc": 0.6})


def test_report_tables_hold_paired_deltas_and_recipe(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    for seed, (b, s, e) in enumerate([(0.78, 0.80, 0.77), (0.79, 0.82, 0.80), (0.80, 0.84, 0.80)]):
        store.write(_row("baseline", seed, b, tp=100.0))
        store.write(_row("se", seed, s, tp=80.0, params=1500))
        store.write(_row("eca", seed, e, tp=100.0, params=1003))
    store.write(_row("cbam", 0, None, status="failed", error="RuntimeError: out of memory\ntraceback..."))
    (tmp_path / "README.md").write_text("# My experiment\n\nNotes written by hand.\n")
    written = write_report(store.rows(), tmp_path, "test grid")
    assert "png2" not in written  # no cost pass: only the Δ top-1 vs Δ params figure
    for kind in ("md", "csv", "tex", "png"):
        assert written[kind].is_file() and written[kind].stat().st_size > 0
    rows = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    se = rows["se"]
    # se - baseline per seed: 2, 3, 4 pp -> 3 +- 4.3027/sqrt(3), paired t p = 0.0351; Holm over {se, eca}: x2
    assert float(se["delta_top1"]) == pytest.approx(3.0)
    assert float(se["delta_top1_ci_low"]) == pytest.approx(3 - 4.3027 / math.sqrt(3), abs=1e-4)
    assert float(se["p"]) == pytest.approx(1 - 3 * math.sqrt(3) / math.sqrt(29)) and float(se["p_holm"]) == pytest.approx(2 * float(se["p"]))
    assert se["significant"] == "0" and rows["eca"]["significant"] == "0"
    assert float(se["train_throughput_during_run"]) == pytest.approx(80.0)
    assert float(se["delta_params"]) == 500 and float(se["top1_mean"]) == pytest.approx(82.0)
    assert rows["cbam"]["n"] == "0" and rows["cbam"]["failed_runs"] == "1"
    md = (tmp_path / "README.md").read_text()
    assert md.startswith("# My experiment\n\nNotes written by hand.")
    assert "| se | 0.0015 | +0.0005 | 2.00 | +0.0% | 82.00 ± 2.00 | +3.00 [+0.52, +5.48] | 0.035 | 0.070 | no |" in md
    for item in ("**data set**: FashionMNIST", "**training pool**: 100 images per class (seeded)", "**epochs**: 3", "**backbone**: resnet20",
                 "Test CPU", "torch 9.9", "**final** epoch", "cbam seed 0: `RuntimeError: out of memory`"):
        assert item in md
    tex = (tmp_path / "results.tex").read_text()
    assert r"82.00 $\pm$ 2.00" in tex and r"\toprule" in tex
    # regenerating replaces the generated block only
    write_report(store.rows(), tmp_path, "test grid")
    md2 = (tmp_path / "README.md").read_text()
    assert md2.count(BEGIN) == 1 and md2.count(END) == 1 and "Notes written by hand." in md2


def test_summary_pairs_only_seeds_both_variants_finished():
    rows = [_row("baseline", 0, 0.5), _row("baseline", 1, 0.6), _row("se", 1, 0.7), _row("se", 2, 0.9)]
    s = {v.label: v for v in summarize(rows)}["se"]
    assert s.diff.n == 1 and s.diff.mean == pytest.approx(10.0) and s.diff.significant is None


# ------------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """baseline + se (+ a variant whose loss goes NaN) x 2 seeds, real run_fit_test on synthetic 8x8 images."""
    folder = tmp_path_factory.mktemp("sweep")
    path = _write_grid(folder, {
        "axes": {"model.attn": [None, "se"]},
        "variants": [{"label": "diverges", "model.attn": "eca", "model.lr": 1.0e30}],
        "seeds": [0, 1],
        "store": "results.sqlite",
    })
    grid = load_grid(path)
    validate_grid(grid)
    lines: list[str] = []
    counts = run_grid(grid, log=lines.append)
    return grid, counts, lines


def test_tiny_grid_runs_end_to_end_and_reports(tiny_sweep, tmp_path):
    grid, counts, _ = tiny_sweep
    assert counts == {"ok": 4, "failed": 2, "skipped": 0}
    rows = ResultStore(grid.store).rows(status="ok")
    assert sorted((r["label"], r["seed"]) for r in rows) == [("baseline", 0), ("baseline", 1), ("se", 0), ("se", 1)]
    for r in rows:
        assert 0 <= r["acc1"] <= 1 and r["params"] > 0 and r["flops"] > 0 and r["epochs"]
        assert r["train_throughput"] > 0 and r["infer_throughput"] > 0 and r["wall_time_s"] > 0
        assert r["env"]["versions"]["torch"] and r["env"]["device"] == "cpu"
        assert r["config"]["model"]["attn"] == (None if r["label"] == "baseline" else "se")
        assert (grid.store.parent / r["run_dir"] / "output.log").is_file()
        # keep_checkpoints: first_seed -> the final checkpoint of seed 0 only
        assert (r["checkpoint"] is not None) == (r["seed"] == 0)
        if r["checkpoint"]:
            assert list((grid.store.parent / r["checkpoint"]).parent.iterdir()) == [grid.store.parent / r["checkpoint"]]
    from attnzoo.ablation.cli import report_main

    assert report_main([str(grid.path), "--out", str(tmp_path)]) == 0
    for name in ("README.md", "results.csv", "results.tex", "delta_top1_vs_params.png"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "README.md").read_text()
    assert "| baseline |" in md and "| se |" in md and "**data set**: Synthetic" in md


def test_report_adds_the_attention_figure_of_every_kept_checkpoint(tiny_sweep, tmp_path):
    import matplotlib.image

    from attnzoo.ablation.cli import report_main

    grid, _, _ = tiny_sweep
    assert report_main([str(grid.path), "--out", str(tmp_path), "--formats", "md,attn"]) == 0
    png = tmp_path / "attention.png"
    assert png.stat().st_size > 0 and matplotlib.image.imread(png).ndim == 3
    assert "![attention.png](attention.png)" in (tmp_path / "README.md").read_text()


def test_cell_that_raises_is_recorded_failed_and_others_finish(tiny_sweep):
    grid, _, lines = tiny_sweep
    failed = ResultStore(grid.store).rows(status="failed")
    assert sorted((r["label"], r["seed"]) for r in failed) == [("diverges", 0), ("diverges", 1)]
    assert all(r["error"].startswith("FloatingPointError") and "nan" in r["error"] for r in failed)
    assert any("diverges seed=0: FAILED" in line for line in lines)


def test_rerun_skips_finished_and_failed_cells_unless_retry(tiny_sweep):
    grid, _, _ = tiny_sweep
    lines: list[str] = []
    assert run_grid(grid, log=lines.append) == {"ok": 0, "failed": 0, "skipped": 6}
    assert "nothing to run" in lines[0]


def test_killed_sweep_resumes_without_rerunning_finished_cells(tmp_path):
    path = _write_grid(tmp_path, {"axes": {"model.attn": [None, "se"]}, "seeds": [0, 1],
                                  "run_fn": "test_ablation:fake_run", "store": "results.sqlite"})
    log = tmp_path / "calls.txt"
    env = {**os.environ, "ABLATION_TEST_LOG": str(log), "ABLATION_TEST_SLOW": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    cmd = [sys.executable, "-m", "attnzoo.cli", "ablate", str(path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = tmp_path / "results.sqlite"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if db.exists():
                with sqlite3.connect(db) as conn:
                    if conn.execute("SELECT count(*) FROM runs").fetchone()[0] >= 1:
                        break
            assert proc.poll() is None, "the sweep ended before it was killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-run of the second cell
    finally:
        proc.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT key, label, seed, status, finished_at FROM runs").fetchall()
    assert [(r[1], r[2], r[3]) for r in first] == [("baseline", 0, "ok")]

    env.pop("ABLATION_TEST_SLOW")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, label, seed, status, finished_at FROM runs").fetchall()
    assert sorted((r[1], r[2], r[3]) for r in rows) == [("baseline", 0, "ok"), ("baseline", 1, "ok"),
                                                        ("se", 0, "ok"), ("se", 1, "ok")]
    assert len({r[0] for r in rows}) == 4
    assert first[0] in rows  # the finished run was kept as it was, not run again
    calls = log.read_text().splitlines()
    assert calls.count("None 0") == 1 and calls.count("se 1") == 1


# ------------------------------------------------------------------------------------------------ shipped grids

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(REPO.glob("configs/ablation/*.yaml")) + sorted(REPO.glob("experiments/*/grid.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_grids_expand_with_baselines_and_valid_models(path):
    """Every shipped grid expands, has a baseline for every block, and its model sections validate
    (data swapped for synthetic images: CIFAR/ImageNet are not on a CI machine)."""
    import copy

    from attnzoo.training import validate_config

    grid = load_grid(path)
    assert len(grid.seeds) >= 3 and grid.store.name.endswith(".sqlite")
    for label in grid.variants:
        cell = next(c for c in grid.cells if c.label == label)
        assert cell.is_baseline or cell.baseline == "baseline", label
        cfg = copy.deepcopy(cell.config)
        cfg["data"] = {"class_path": "attnzoo.data.SyntheticDataModule", "init_args": {"num_classes": 10, "image_size": 32}}
        validate_config(cfg)
