"""What ``attnzoo fit`` prints: plain progress off a terminal, the closing summary, refused config-less runs."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from attnzoo.training.cli import main
from attnzoo.training.console import LogProgressBar, format_duration, stream_is_terminal

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "fit" / "base.yaml"
MAIN_JOB = ROOT / "configs" / "fit" / "fmnist_resnet20.yaml"

SYNTHETIC = ["--config", str(BASE), "--data", "SyntheticDataModule", "--data.image_size", "8",
             "--data.num_classes", "4", "--data.val_size", "0.25", "--data.num_workers", "0",
             "--model.backbone", "resnet20", "--trainer.accelerator", "cpu"]


def _fit(tmp_path, monkeypatch, capsys, *extra: str) -> str:
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *SYNTHETIC, *extra]) == 0
    return capsys.readouterr().out


def test_fit_off_a_terminal_prints_plain_epoch_and_progress_lines_with_eta(tmp_path, monkeypatch, capsys):
    # 192 training images in batches of 2: 96 batches per epoch, so progress lines every ~10%
    out = _fit(tmp_path, monkeypatch, capsys, "--data.batch_size", "2", "--trainer.max_epochs", "2",
               "--model.attn", "eca")
    assert not stream_is_terminal()  # pytest's captured stdout, like a log file
    marks = re.findall(r"^epoch 1/2 +(\d+)% \(\d+/96\): loss [\d.]+, [\d,]+ img/s, ETA epoch \d+:\d\d, fit \d+:\d\d$",
                       out, flags=re.M)
    # one line at the first batch past each 10% mark (96 batches: 10%, 21%, 30%, ...)
    assert [int(m) // 10 for m in marks] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert all(int(m) - 10 * (i + 1) <= 1 for i, m in enumerate(marks))
    ends = re.findall(r"^epoch (\d)/2 done in \d+:\d\d: train loss [\d.]+; val acc1 [\d.]+%.*img/s; ETA \d+:\d\d$",
                      out, flags=re.M)
    assert ends == ["1", "2"]
    assert "\r" not in out and "\x1b[" not in out  # no bar redraws, no terminal escapes in a log


def test_fit_tests_the_final_weights_and_ends_with_a_summary(tmp_path, monkeypatch, capsys):
    out = _fit(tmp_path, monkeypatch, capsys, "--data.batch_size", "32", "--trainer.max_epochs", "1",
               "--model.attn", "se")
    summary = out[out.index("== attnzoo fit: done =="):]
    assert re.search(r"^test +top-1 [\d.]+%, loss [\d.]+ on the test split \(64 images\) \(final weights\)$",
                     summary, flags=re.M)
    assert re.search(r"^params +[\d,]+ \(attention: \+[1-9][\d,]* at \d+ site\(s\)\)$", summary, flags=re.M)
    assert re.search(r"^FLOPs +[\d,]+ at input \(3, 8, 8\) \(attention: \+[\d,]+", summary, flags=re.M)
    assert re.search(r"^wall time +\d+:\d\d \(fit \+ test\), 1 epoch\(s\), 6 steps$", summary, flags=re.M)
    run = Path("runs/attnzoo/version_0")
    assert f"run folder   {run}" in summary
    assert f"checkpoint   {run / 'checkpoints' / 'last.ckpt'}" in summary
    for command in ("attnzoo explain --ckpt", "attnzoo test --config", "attnzoo ablate", "attnzoo report"):
        assert command in summary
    # the test metrics are in the run's log too, and one checkpoint is kept: last.ckpt
    assert "test/acc1" in (tmp_path / run / "metrics.csv").read_text()
    assert sorted(p.name for p in (tmp_path / run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_fit_prints_flops_that_match_complexity_json_and_no_lightning_noise(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *SYNTHETIC, "--data.batch_size", "64", "--trainer.max_epochs", "1"]) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err
    import json

    stats = json.loads((tmp_path / "runs/attnzoo/version_0/complexity.json").read_text())
    assert stats["flops"] > 0
    assert f"{stats['flops'] / 1e6:,.2f} MFLOPs" in text  # the one-line model summary at fit start
    assert "Total FLOPs: 0" not in text and "litlogger" not in text
    assert "will override existing callbacks" not in text


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_a_run_without_config_is_refused_with_what_to_pass(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([command, "--model.attn", "se"]) == 2
    err = capsys.readouterr().err
    assert "--config configs/fit/fmnist_resnet20.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_help_needs_no_config(capsys):
    assert main(["fit", "--help"]) == 0  # jsonargparse prints the help
    assert "--model.attn" in capsys.readouterr().out


def test_the_main_job_trains_with_an_attention_block():
    import yaml

    assert yaml.safe_load(MAIN_JOB.read_text())["model"]["attn"]


def test_progress_lines_go_to_the_given_stream_and_durations_read_well():
    stream = io.StringIO()
    bar = LogProgressBar(stream=stream)
    assert bar.is_enabled
    bar.disable()
    assert not bar.is_enabled
    assert [format_duration(s) for s in (0, 59.6, 61, 3725, None, float("nan"))] == \
        ["0:00", "1:00", "1:01", "1:02:05", "?", "?"]
