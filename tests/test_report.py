"""attnzoo report: Holm-adjusted significance, the grid's metric, the cost pass's columns, the terminal
table, and a README whose hand-written lines are never lost. Tiny fake stores, no training (except
the cost-pass test, which times two 8x8 ResNet-20s for a few steps)."""
from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from attnzoo.ablation import ResultStore, load_grid
from attnzoo.ablation.cli import report_main
from attnzoo.ablation.cost import cost_path, load_costs, measure_costs, write_costs
from attnzoo.ablation.report import BEGIN, END, Metric, metric_from_grid, summarize, write_report
from attnzoo.ablation.stats import holm, paired_difference

FIT = {
    "seed_everything": 0,
    "model": {"backbone": "resnet20", "attn": None, "lr": 0.05, "schedule": "constant"},
    "data": {"class_path": "attnzoo.data.SyntheticDataModule",
             "init_args": {"batch_size": 4, "image_size": 8, "num_train": 8, "num_test": 8, "val_size": 0}},
    "trainer": {"accelerator": "cpu", "max_epochs": 1, "logger": False},
}
BASE = [80.0, 81.0, 82.0]
DIFFS = {"se": [2.0, 3.0, 4.0], "eca": [-1.0, 1.0, 0.0], "cbam": [1.0, 1.1, 1.2]}


def _row(label, seed, value, key=None, metric="acc1"):
    row = {"key": key or f"{label}-{seed}", "grid": "g", "label": label, "seed": seed, "status": "ok",
           "is_baseline": int(label == "baseline"), "baseline": None if label == "baseline" else "baseline",
           "params": 1000, "flops": 2_000_000, "train_throughput": 10.0, "infer_throughput": 40.0, "wall_time_s": 1.0,
           "epochs": [{"epoch": 0, "val/loss": 1.0}],
           "config": {"model": {"backbone": "resnet20"}, "data": {"class_path": "x.FashionMNISTDataModule"}},
           "env": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 1}, "finished_at": f"2026-01-01T00:0{seed}:00+00:00"}
    if metric == "acc1":
        row["acc1"] = value / 100
    else:
        row["epochs"] = [{"epoch": 0, metric: value / 100}]
    return row


def _rows(metric="acc1"):
    rows = [_row("baseline", k, b, metric=metric) for k, b in enumerate(BASE)]
    rows += [_row(lab, k, BASE[k] + d[k], metric=metric) for lab, d in DIFFS.items() for k in range(3)]
    return rows


def test_significance_is_holm_adjusted_over_the_variants_sharing_a_baseline():
    s = {v.label: v for v in summarize(_rows())}
    raw = {lab: paired_difference([BASE[k] + d[k] for k in range(3)], BASE).p for lab, d in DIFFS.items()}
    adj = dict(zip(raw, holm(list(raw.values()))))
    for lab in DIFFS:
        assert s[lab].diff.p == pytest.approx(raw[lab]) and s[lab].p_holm == pytest.approx(adj[lab])
        assert s[lab].significant == (adj[lab] < 0.05)
    # cbam: diffs 1.0, 1.1, 1.2 -> raw p ~ 0.0017, x3 -> still < 0.05; se: raw p 0.035 -> x2 = 0.070 -> no
    assert s["cbam"].significant is True and s["se"].diff.significant is True and s["se"].significant is False
    assert s["baseline"].significant is None and s["baseline"].p_holm is None
    # MDE and seeds for 0.3 pp follow the variant's own spread of paired differences
    from attnzoo.ablation.stats import min_detectable_effect, seeds_needed

    assert s["se"].mde == s["eca"].mde == pytest.approx(min_detectable_effect(1.0, 3))  # both: sd of diffs = 1
    assert s["cbam"].mde == pytest.approx(min_detectable_effect(0.1, 3)) and s["cbam"].seeds_for_target == seeds_needed(0.3, 0.1)


def test_markdown_header_names_holm_and_the_cost_pass_absence(tmp_path):
    write_report(_rows(), tmp_path, "t", formats=("md", "csv"))
    md = (tmp_path / "README.md").read_text()
    assert "significant (Holm p < 0.05)" in md and "Holm–Bonferroni adjusted over all 3 variants" in md
    assert "**cost pass**: not run" in md and "train step" not in md and "thr." not in md
    row = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}["cbam"]
    assert row["significant"] == "1" and row["metric"] == "acc1" and row["train_step_ms"] == ""


def _costs(steps):
    return {"measured_at": "2026-01-01T00:00:00+00:00", "settings": {"rounds": 3, "train_steps": 5, "batch_size": 4},
            "env": {"device": "cpu", "cpu": "Test CPU", "torch_threads": 2}, "load_average": [0.1, 0.2],
            "variants": {lab: {"train_step_ms": ms, "infer_throughput": 1000.0 / ms} for lab, ms in steps.items()}}


def test_cost_pass_gives_step_time_columns_and_the_delta_vs_step_time_figure(tmp_path):
    import matplotlib.image

    costs = _costs({"baseline": 10.0, "se": 12.5, "eca": 10.0, "cbam": 20.0})
    written = write_report(_rows(), tmp_path, "t", costs=costs)
    rows = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert float(rows["se"]["delta_train_step_pct"]) == pytest.approx(25.0)
    assert float(rows["cbam"]["delta_infer_throughput_pct"]) == pytest.approx(-50.0)
    md = (tmp_path / "README.md").read_text()
    assert "| train step (ms) | Δ step | infer. (img/s) | Δ infer. thr. |" in md and "| 12.5 | +25.0% | 80 | -20.0% |" in md
    assert "load average 0.10 before, 0.20 after" in md and "![delta_top1_vs_step_time.png]" in md
    assert written["png"].name == "delta_top1_vs_step_time.png" and matplotlib.image.imread(written["png"]).ndim == 3


def test_report_keeps_every_line_it_did_not_write(tmp_path):
    readme = tmp_path / "README.md"
    write_report(_rows(), tmp_path, "t", formats=("md",))
    block = readme.read_text()
    # an earlier report drew attention.png into its block; hand-written text before and after, odd blank lines
    block = block.replace(END, "![attention.png](attention.png)\n" + END)
    text = "# Title\n\nHand notes.\n\n\n" + block + "\n\n\nAfter the table, by hand.\n"
    readme.write_text(text)
    (tmp_path / "attention.png").write_bytes(b"png")
    write_report(_rows(), tmp_path, "t", formats=("md", "csv"))
    new = readme.read_text()
    assert new.startswith("# Title\n\nHand notes.\n\n\n" + BEGIN)
    assert new.endswith(END + "\n\n\n\nAfter the table, by hand.\n")
    assert "![attention.png](attention.png)" in new  # not redrawn this time, still on disk: kept
    (tmp_path / "attention.png").unlink()
    write_report(_rows(), tmp_path, "t", formats=("md",))
    assert "attention.png" not in readme.read_text()  # its file is gone: a dead link would be wrong


def test_report_refuses_broken_markers_and_writes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    text = f"# Notes\n\n{BEGIN}\nold table\n\nhand text that a second end marker would eat\n"
    readme.write_text(text)
    with pytest.raises(ValueError, match="1 begin and 0 end marker"):
        write_report(_rows(), tmp_path, "t", formats=("md", "csv"))
    assert readme.read_text() == text and not (tmp_path / "results.csv").exists()


def test_metric_comes_from_the_grid_and_the_table_is_printed(tmp_path, capsys):
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(FIT))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"base": "fit.yaml", "axes": {"model.attn": [None, "se", "eca", "cbam"]},
                                         "seeds": [0, 1, 2], "store": "results.sqlite", "metric": "map50_95"}))
    grid = load_grid(grid_file)
    store = ResultStore(grid.store)
    by = {(r["label"], r["seed"]): r for r in _rows(metric="map50_95")}
    for c in grid.cells:
        store.write({**by[(c.label, c.seed)], "key": c.key})
    assert report_main([str(grid_file), "--formats", "md"]) == 0
    out = capsys.readouterr().out
    assert "Δ mAP50-95 in pp" in out and "Holm-adjusted p < 0.05" in out and "cost pass: not run" in out
    lines = [ln for ln in out.splitlines() if ln.startswith(("variant", "cbam"))]
    assert lines[0].split()[:2] == ["variant", "params"] and "+1.10 [+0.85, +1.35]" in lines[1]
    md = (tmp_path / "README.md").read_text()
    assert "| mAP50-95 (%) | Δ mAP50-95 (pp) [95% CI] |" in md and "`map50_95` on the test split" in md
    # a cost file beside the store is picked up; a variant measured with another config is left out
    costs = _costs({"baseline": 10.0, "se": 11.0, "eca": 10.0, "cbam": 10.0})
    for lab, v in costs["variants"].items():
        v["model"] = next(c for c in grid.cells if c.label == lab).config["model"]
    costs["variants"]["eca"]["model"] = {"attn": "eca", "changed": True}  # measured before the grid changed
    write_costs(costs, cost_path(grid.store))
    assert report_main([str(grid_file), "--formats", "md", "--quiet"]) == 0
    md = (tmp_path / "README.md").read_text()
    assert "| 11.0 | +10.0% |" in md and "| eca | 0.0010 | +0.0000 | 2.00 | +0.0% | – | – | – | – |" in md
    assert "measured eca with a different model config" in capsys.readouterr().err


def test_metric_entry_forms_and_mistakes():
    assert metric_from_grid(None) == Metric("acc1", "top-1", 100.0)
    assert metric_from_grid("acc5").name == "top-5"
    assert metric_from_grid({"key": "box_ap", "name": "AP", "scale": 1}) == Metric("box_ap", "AP", 1.0)
    for bad in (3, "", {"name": "AP"}, {"key": "ap", "scale": 0}, {"key": "ap", "units": "%"}):
        with pytest.raises(ValueError, match="metric"):
            metric_from_grid(bad)
    assert Metric("acc1").value({"acc1": float("nan")}) is None and Metric("x").value({"epochs": [{"x": 0.5}]}) == 50.0


def test_cost_pass_times_every_variant_in_interleaved_rounds(tmp_path):
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(FIT))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"base": "fit.yaml", "axes": {"model.attn": [None, "se"]}, "seeds": [0, 1],
                                         "store": "results.sqlite"}))
    grid = load_grid(grid_file)
    lines = []
    record = measure_costs(grid, rounds=2, train_steps=1, infer_batches=1, warmup=0, threads=1, log=lines.append)
    assert set(record["variants"]) == {"baseline", "se"} and len(lines) == 2
    for v in record["variants"].values():
        assert len(v["train_step_ms_rounds"]) == 2 and v["train_step_ms"] > 0 and v["infer_throughput"] > 0
        assert v["batch_size"] == 4 and math.isfinite(v["train_step_ms"])
    assert record["settings"]["rounds"] == 2 and record["env"]["torch_threads"] == 1
    path = write_costs(record, cost_path(grid.store))
    assert path.name == "results.cost.json" and load_costs(path)["variants"].keys() == record["variants"].keys()
    assert load_costs(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="cost-pass file"):
        load_costs(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="rounds"):
        measure_costs(grid, rounds=0)
