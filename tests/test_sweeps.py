"""Sweeps that never lose or repeat a run: run folders, result.json + collect, claims, shards, GPUs,
determinism, progress, executors (submitit's local executor, a local Ray instance), grid validation.

Most tests use ``fake_run`` (importable by spawned workers, submitit jobs and Ray tasks through
PYTHONPATH), so they are about the sweep's bookkeeping; the determinism test trains real tiny runs.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from attnzoo.ablation import GridError, ResultStore, load_grid, run_grid, validate_grid
from attnzoo.ablation.claims import ClaimBook
from attnzoo.ablation.executors import assign_gpus, visible_gpus
from attnzoo.ablation.results import RESULT_FILE, collect, read_result
from attnzoo.ablation.runner import parse_shard, shard_cells
from attnzoo.ablation.store import StoreError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIT = {
    "seed_everything": 0,
    "model": {"backbone": "resnet20", "attn": None, "lr": 0.05, "schedule": "constant"},
    "data": {"class_path": "attnzoo.data.SyntheticDataModule",
             "init_args": {"batch_size": 4, "image_size": 8, "num_train": 8, "num_test": 8, "val_size": 0}},
    "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 2, "logger": False},
}
FAKE = "test_sweeps:fake_run"


def fake_run(config: dict, run_dir: str) -> dict:
    """top-1 from (attn, lr, seed); logs each call; sleeps SWEEP_TEST_SLEEP seconds; records its GPUs."""
    attn = config["model"].get("attn")
    seed = config["seed_everything"]
    log = os.environ.get("SWEEP_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{attn} {config['model'].get('lr')} {seed}\n")
    time.sleep(float(os.environ.get("SWEEP_TEST_SLEEP", "0")))
    if attn == "raise":
        raise RuntimeError("this cell always fails")
    ckpt = Path(run_dir) / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    import torch

    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"attn": attn}, "epoch": 0,
                "optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(2)}}}], "loops": {}},
               ckpt / "last.ckpt")
    acc = 0.5 + (0.02 if attn else 0.0) + 0.01 * seed
    return {"test": {"acc1": acc, "acc5": None, "loss": 1.0}, "epochs": [], "params": 1000, "flops": 2000,
            "train_throughput": 100.0, "infer_throughput": 400.0, "wall_time_s": 0.1, "insert_report": None,
            "config": config, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_threads": __import__("torch").get_num_threads()}


def _grid(folder: Path, grid: dict, fit: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fit.yaml").write_text(yaml.safe_dump(fit or FIT))
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": "fit.yaml", "store": "results.sqlite", "run_fn": FAKE, **grid},
                                   sort_keys=False))
    return path


@pytest.fixture
def pypath(monkeypatch):
    """Spawned workers, submitit jobs and Ray workers import fake_run from this folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), *sys.path]),
            **extra}


# ------------------------------------------------------------------------------------------------ run folders


UUIDS = "GPU-8f2c1a3e-0000-0000-0000-000000000001,GPU-1a9d2b4f-0000-0000-0000-000000000002"


def test_run_folders_are_one_to_one_inside_runs_and_edits_keep_old_files(tmp_path, pypath, monkeypatch):
    """Also: with a (simulated) parent list of two GPU UUIDs, workers=auto starts one worker per GPU, each
    seeing its own UUID."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UUIDS)
    path = _grid(tmp_path, {"variants": [{"label": "..", "model.attn": "se"},
                                         {"label": "a/b", "model.attn": "eca"},
                                         {"label": "a b", "model.attn": "cbam"},
                                         {"label": ".hidden/../x", "model.attn": "se", "model.lr": 0.1}]})
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "mine.txt").write_text("a user file")
    grid = load_grid(path)
    dirs = [grid.run_dir(c) for c in grid.cells]
    assert len(set(dirs)) == 4
    for d in dirs:
        assert d.parent.parent == grid.runs_dir and not d.parent.name.startswith(".")
    assert run_grid(grid, workers="auto", log=lambda s: None) == {"ok": 4, "failed": 0, "skipped": 0}
    assert (tmp_path / "seed0" / "mine.txt").read_text() == "a user file"
    seen = {read_result(grid.run_dir(c))["result"]["cuda_visible_devices"] for c in grid.cells}
    assert seen == set(UUIDS.split(","))
    for d in dirs:
        assert read_result(d)["status"] == "ok" and (d / "checkpoints" / "last.ckpt").is_file()
        kept = torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        assert "optimizer_states" not in kept and "loops" not in kept and "state_dict" in kept  # weights only
    # edit one variant's recipe: it gets a new folder; the old version's files stay where the store row points
    raw = yaml.safe_load(path.read_text())
    raw["variants"][1]["model.lr"] = 0.2
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    grid2 = load_grid(path)
    assert run_grid(grid2, log=lambda s: None) == {"ok": 1, "failed": 0, "skipped": 3}
    for d in dirs:
        assert (d / RESULT_FILE).is_file() and (d / "checkpoints" / "last.ckpt").is_file()
    assert len({p.parent for p in grid.runs_dir.glob(f"*/seed0/{RESULT_FILE}")}) == 5


def test_same_resolved_config_under_two_labels_is_refused(tmp_path):
    with pytest.raises(GridError, match="'se' and 'se again' resolve to the same config"):
        load_grid(_grid(tmp_path, {"variants": [{"label": "se", "model.attn": "se"},
                                                {"label": "se again", "model.attn": "se"}]}))
    # an override that restates the base's value is the same run too
    with pytest.raises(GridError, match="resolve to the same config"):
        load_grid(_grid(tmp_path, {"variants": [{"label": "se", "model.attn": "se"},
                                                {"label": "se lr", "model.attn": "se", "model.lr": 0.05}]}))


# ------------------------------------------------------------------------------------------------ result.json, collect, store errors


class _BreaksAfterOne(ResultStore):
    def __init__(self, path):
        super().__init__(path)
        self.writes = 0

    def write(self, row):
        self.writes += 1
        if self.writes > 1:
            raise StoreError(f"results store {self.path}: cannot write it (disk I/O error)")
        super().write(row)


def test_store_failure_mid_sweep_loses_nothing_and_collect_rebuilds(tmp_path, pypath, capsys):
    path = _grid(tmp_path, {"axes": {"model.attn": [None, "se", "raise"]}, "seeds": [0]})
    grid = load_grid(path)
    store = _BreaksAfterOne(grid.store)
    lines: list[str] = []
    with pytest.raises(StoreError, match=r"2 finished run\(s\) could not be written.*attnzoo collect"):
        run_grid(grid, store, workers=1, log=lines.append)
    assert any(str(grid.store) in line and line.startswith("error:") for line in lines)
    assert len(ResultStore(grid.store).rows()) == 1
    assert all(read_result(grid.run_dir(c)) for c in grid.cells)  # every finished run is in its result.json

    from attnzoo.ablation.cli import collect_main

    assert collect_main([str(path)]) == 0
    rows = {r["label"]: r for r in ResultStore(grid.store).rows()}
    assert {k: r["status"] for k, r in rows.items()} == {"baseline": "ok", "se": "ok", "raise": "failed"}
    assert "this cell always fails" in rows["raise"]["error"] and rows["se"]["acc1"] == pytest.approx(0.52)
    assert rows["baseline"]["checkpoint"].endswith("checkpoints/last.ckpt")
    assert "collected 2 run(s)" in capsys.readouterr().out

    # a corrupt store: every command names the file; move it aside and collect rebuilds every row
    grid.store.write_bytes(b"this is not a database" * 100)
    from attnzoo.ablation.cli import report_main

    with pytest.raises(StoreError, match="not a readable SQLite database"):
        ResultStore(grid.store)
    for main in (collect_main, report_main):
        assert main([str(path)]) == 2
        err = capsys.readouterr().err
        assert str(grid.store) in err and "not a readable SQLite database" in err and "attnzoo collect" in err
    grid.store.rename(tmp_path / "broken.sqlite")
    assert collect_main([str(path)]) == 0
    assert {r["label"]: r["status"] for r in ResultStore(grid.store).rows()} == {k: r["status"] for k, r in rows.items()}
    # a torn result file is named, not fatal
    (grid.run_dir(grid.cells[0]) / RESULT_FILE).write_text('{"key": ')
    assert collect(grid, ResultStore(grid.store), lines.append)["collected"] == 0
    assert any(str(grid.run_dir(grid.cells[0]) / RESULT_FILE) in line for line in lines)


def test_old_store_without_new_columns_is_read_and_migrated_on_write(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, label TEXT NOT NULL, seed INTEGER NOT NULL, "
                     "status TEXT NOT NULL, acc1 REAL)")
        conn.execute("INSERT INTO runs VALUES ('k0', 'se', 0, 'ok', 0.5)")
    before = db.read_bytes()
    store = ResultStore(db)
    assert store.status() == {"k0": "ok"} and db.read_bytes() == before  # opening and reading change nothing
    store.write({"key": "k1", "label": "se", "seed": 1, "status": "ok", "acc1": 0.6, "wall_time_s": 2.0})
    assert {r["key"]: r["acc1"] for r in store.rows()} == {"k0": 0.5, "k1": 0.6}


def test_committed_experiment_keys_still_match_its_store():
    grid = load_grid(REPO / "experiments/fmnist_resnet20/grid.yaml")
    status = ResultStore(grid.store).status()
    assert all(status.get(c.key) == "ok" for c in grid.cells) and len(grid.cells) == 15


# ------------------------------------------------------------------------------------------------ claims


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    a = ClaimBook(tmp_path, timeout_s=60)
    b = ClaimBook(tmp_path, timeout_s=60)
    assert a.try_claim("k") and not b.try_claim("k") and b.holder("k")["token"] == a.token
    b.release("k")  # not b's: nothing happens
    assert a.path("k").exists()
    a.release("k")
    assert not a.path("k").exists() and b.try_claim("k")
    # owner dead on this host: stale at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = json.loads(b.path("k").read_text())
    b.path("k").write_text(json.dumps({**info, "pid": int(dead.stdout), "pid_start": None, "token": "dead"}))
    c = ClaimBook(tmp_path, timeout_s=60)
    assert c.try_claim("k") and json.loads(c.path("k").read_text())["token"] == c.token
    # a remote owner (pid rule does not apply) is stale only when its heartbeat is older than the timeout
    info = json.loads(c.path("k").read_text())
    c.path("k").write_text(json.dumps({**info, "host": "another-node", "token": "remote"}))
    d = ClaimBook(tmp_path, timeout_s=60)
    assert not d.try_claim("k")
    old = time.time() - 120
    os.utime(c.path("k"), (old, old))
    assert d.try_claim("k")
    d.heartbeat(force=True)
    assert time.time() - d.path("k").stat().st_mtime < 30


def test_two_sweeps_on_one_grid_run_every_cell_exactly_once(tmp_path):
    path = _grid(tmp_path, {"axes": {"model.attn": [None, "se"]}, "seeds": [0, 1]})
    log = tmp_path / "calls.txt"
    env = _env(SWEEP_TEST_LOG=str(log), SWEEP_TEST_SLEEP="1.5")
    cmd = [sys.executable, "-m", "attnzoo.cli", "ablate", str(path), "--workers", "1"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "4/4 runs ok" in out and "table:" in out and "\r" not in out
    calls = log.read_text().splitlines()
    assert len(calls) == 4 and len(set(calls)) == 4  # each cell ran once, in one of the two sweeps
    rows = ResultStore(tmp_path / "results.sqlite").rows()
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert not list((tmp_path / "runs" / ".claims").glob("*.claim"))
    text = outs[0][0] + outs[1][0]
    assert text.count(": started") == 4  # the two sweeps shared the cells out between them
    # progress: one plain line per event with the counters and an ETA from finished runs
    progress = [line for line in outs[0][0].splitlines() if line.startswith("[")]
    assert progress and all(" done, " in line and " failed, " in line and " running" in line and "4 total, ETA " in line
                            for line in progress)
    assert any("ETA ?" not in line for line in progress[1:])


# ------------------------------------------------------------------------------------------------ shards, GPUs, determinism


def test_shards_are_disjoint_and_collect_gathers_them(tmp_path, pypath):
    path = _grid(tmp_path, {"axes": {"model.attn": [None, "se", "eca"]}, "seeds": [0, 1]})
    grid = load_grid(path)
    parts = [shard_cells(grid.cells, (i, 3)) for i in range(3)]
    assert sorted(c.key for p in parts for c in p) == sorted(c.key for c in grid.cells) and all(len(p) == 2 for p in parts)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="i/N"):
            parse_shard(bad)
    for i in range(2):
        run_grid(grid, None, workers=1, shard=(i, 2), log=lambda s: None)
    assert not grid.store.exists()  # shards write run folders only
    store = ResultStore(grid.store)
    assert collect(grid, store)["collected"] == 6 and set(store.status().values()) == {"ok"}


def test_gpus_come_from_the_parents_list_uuids_included(monkeypatch):
    uuids = UUIDS
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4,5"}) == ["4", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": uuids}) == uuids.split(",")
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,3"}) == ["2"] and visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert assign_gpus(["4", "5"], 3) == [["4"], ["5"], ["4"]]
    assert assign_gpus(["4", "5", "6", "7"], 2, per_run=2) == [["4", "5"], ["6", "7"]]
    assert assign_gpus([], 2) == [None, None]
    from attnzoo.ablation.runner import _device_plan

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # workers get physical GPUs 4 and 5, not 0 and 1
    assert _device_plan("auto") == (2, [["4"], ["5"]]) and _device_plan(3) == (3, [["4"], ["5"], ["4"]])


def test_a_cells_numbers_do_not_depend_on_the_number_of_workers(tmp_path):
    """The same real (tiny) cell trained in a 1-worker and in a 2-worker sweep gives identical metrics."""
    fit = {**FIT, "data": {**FIT["data"], "init_args": {**FIT["data"]["init_args"], "num_train": 16}}}
    rows = {}
    for workers, attn in ((1, [None]), (2, [None, "eca"])):
        path = _grid(tmp_path / f"w{workers}", {"axes": {"model.attn": attn}, "seeds": [0],
                                                "run_fn": "attnzoo.training:run_fit_test"}, fit)
        grid = load_grid(path)
        assert run_grid(grid, workers=workers, log=lambda s: None)["ok"] == len(attn)
        rows[workers] = next(r for r in ResultStore(grid.store).rows() if r["label"] == "baseline")
        assert rows[workers]["env"]["torch_threads"] == 1
    one, two = rows[1], rows[2]
    assert one["key"] == two["key"]
    assert (one["acc1"], one["loss"]) == (two["acc1"], two["loss"])
    assert [e.get("train/loss") for e in one["epochs"]] == [e.get("train/loss") for e in two["epochs"]]


# ------------------------------------------------------------------------------------------------ executors


def test_slurm_executor_through_submitits_local_executor(tmp_path, pypath):
    from attnzoo.ablation.executors.slurm import SlurmExecutor

    grid = load_grid(_grid(tmp_path, {"axes": {"model.attn": [None, "raise"]}, "seeds": [0]}))
    ex = SlurmExecutor(grid.runs_dir / ".submitit", max_jobs=2, time_limit_min=5, cluster="local")
    assert ex.cluster == "local"
    assert run_grid(grid, executor=ex, log=lambda s: None) == {"ok": 1, "failed": 1, "skipped": 0}
    status = {r["label"]: r["status"] for r in ResultStore(grid.store).rows()}
    assert status == {"baseline": "ok", "raise": "failed"}
    assert all(read_result(grid.run_dir(c)) for c in grid.cells)


def test_ray_executor_on_a_local_instance(tmp_path, pypath):
    from attnzoo.ablation.executors.ray import RayExecutor

    grid = load_grid(_grid(tmp_path, {"axes": {"model.attn": [None, "se"]}, "seeds": [0]}))
    ex = RayExecutor(init_kwargs={"num_cpus": 2, "num_gpus": 0, "object_store_memory": 80 * 1024 ** 2})
    assert ex.gpus_per_run == 0 and ex.capacity() == 2
    assert run_grid(grid, executor=ex, log=lambda s: None) == {"ok": 2, "failed": 0, "skipped": 0}
    rows = ResultStore(grid.store).rows()
    assert sorted(r["acc1"] for r in rows) == pytest.approx([0.5, 0.52])


def test_core_does_not_import_the_optional_executors():
    code = ("import sys, attnzoo.ablation, attnzoo.ablation.cli, attnzoo.ablation.executors; "
            "print(sorted(m for m in ('ray', 'submitit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ validation (#14.3)


@pytest.mark.parametrize("grid, fit_patch, message", [
    ({"overrides": {"data.val_size": 8}}, None, r"data.val_size=8 holds out the whole training pool \(8 images"),
    ({"overrides": {"data.subset": 2, "data.val_size": 20}}, None, "val_size=20 holds out the whole training pool"),
    ({"overrides": {"data.subset": 5}}, None, "data.subset=5 images per class, but SyntheticDataModule has only 4"),
    ({"overrides": {"trainer.max_epochs": -5}}, None, "trainer.max_epochs=-5"),
    ({}, {"trainer": {**FIT["trainer"], "max_epochs": 0}}, "trainer.max_epochs=0"),
    ({"run_fn": "nomodule:run"}, None, "run_fn 'nomodule:run' cannot be imported.*No module named 'nomodule'"),
    ({"run_fn": "attnzoo.training:no_such_fn"}, None, "the module has no such function"),
    ({"store": "afile/results.sqlite"}, None, "cannot be created: .*afile is not a folder"),
])
def test_grid_validation_catches_what_is_knowable_before_a_run(tmp_path, grid, fit_patch, message, capsys):
    (tmp_path / "afile").write_text("a file, not a folder")
    fit = {**FIT, **(fit_patch or {}), "data": {**FIT["data"], "init_args": {**FIT["data"]["init_args"], "num_classes": 2}}}
    path = _grid(tmp_path, {"axes": {"model.attn": [None, "se"]}, **grid}, fit)
    with pytest.raises(GridError, match=message):
        validate_grid(load_grid(path))
    from attnzoo.ablation.cli import ablate_main

    assert ablate_main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert not (tmp_path / "results.sqlite").exists()


@pytest.mark.parametrize("text, message", [
    ("base: fit.yaml\nseeds: [0]\nseeds: [1]\n", "key 'seeds' is given twice"),
    ("base: fit.yaml\nseed_keys: seed_everything\n", "'seed_keys' must be a list of dotted config keys"),
    ("base: fit.yaml\nseed_keys: [1]\n", "'seed_keys' must be a list"),
    ("base: fit.yaml\nstore: 5\n", "'store' must be a file path"),
    ("base: fit.yaml\nname: [1, 2]\n", "'name' must be a non-empty string"),
    ("base: fit.yaml\nseeds: [-1]\n", r"seeds must lie in \[0, 2\*\*32\)"),
    ("base: nope.yaml\n", "grid.yaml: base fit config 'nope.yaml' not found"),
    ("base: fit.yaml\nthreads: 0\n", "threads .* must be an int >= 1"),
    ("a: [", "grid file is not valid YAML"),
])
def test_bad_grid_files_get_one_error_naming_the_file_and_the_key(tmp_path, text, message, capsys):
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(FIT))
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(GridError, match=message) as e:
        load_grid(path)
    assert str(path) in str(e.value)
    from attnzoo.ablation.cli import ablate_main, collect_main

    for main in (ablate_main, collect_main):
        assert main([str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err


def test_unimportable_run_fn_is_named_before_any_worker_starts(tmp_path):
    grid = load_grid(_grid(tmp_path, {"seeds": [0]}))
    with pytest.raises(GridError, match="run_fn 'nomodule:run' cannot be imported") as e:
        run_grid(grid, run_fn="nomodule:run", log=lambda s: None)
    assert "__main__" not in str(e.value)
    assert not grid.runs_dir.exists() and not (grid.runs_dir / ".claims").exists()
