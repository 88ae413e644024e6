"""Untrusted checkpoints run no code: every path through which attnzoo opens a ``.ckpt`` reads it
weights-only and refuses a crafted pickle with a message that says so (attnzoo.checkpoint)."""
from __future__ import annotations

import os
import pathlib
from pathlib import Path

import pytest
import torch

from attnzoo.checkpoint import checkpoint_in_folder, load_checkpoint
from attnzoo.cli import main as attnzoo_main
from attnzoo.errors import AttnzooError, UnsafeCheckpointError

# `attnzoo fit|test|...` refuse to run without a config; a one-line YAML string is one
CONFIG = ["--config", "seed_everything: 0"]
SYNTH = [*CONFIG, "--data", "SyntheticDataModule", "--data.num_classes", "4", "--data.image_size", "16",
         "--data.num_train", "8", "--data.num_test", "4", "--data.batch_size", "4",
         "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
         "--trainer.enable_checkpointing", "false"]


class _System:
    """Unpickles as os.system('touch MARKER')."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Touch:
    """Unpickles as pathlib.Path(MARKER).touch()."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


PAYLOADS = {"os.system": _System, "Path.touch": _Touch}


def _malicious(folder: Path, kind: str, where: str = "hyper_parameters") -> tuple[Path, Path]:
    """A .ckpt whose unpickling would create ``marker``; a real-looking Lightning layout otherwise."""
    marker = folder / f"PWNED-{kind}-{where}"
    payload = PAYLOADS[kind](marker)
    ckpt = {"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"backbone": "resnet20"}, "epoch": 0}
    if where == "hyper_parameters":
        ckpt["hyper_parameters"]["attn"] = payload
    else:
        ckpt["state_dict"]["evil"] = payload
    path = folder / f"evil-{kind}-{where}.ckpt"
    torch.save(ckpt, path)
    assert not marker.exists()
    return path, marker


def _says_not_plain(text: str, path: Path) -> None:
    assert "is not a plain checkpoint" in text and str(path.name) in text and "weights-only" in text, text
    assert "\n\n" not in text.strip()  # one paragraph


@pytest.mark.parametrize("where", ["hyper_parameters", "state_dict"])
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_load_checkpoint_refuses_a_pickle_that_would_run_code(tmp_path, kind, where):
    path, marker = _malicious(tmp_path, kind, where)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint(path)
    assert not marker.exists()
    _says_not_plain(str(e.value), path)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_explain_cli_refuses_a_malicious_checkpoint(tmp_path, capsys, kind):
    path, marker = _malicious(tmp_path, kind)
    assert attnzoo_main(["explain", "--ckpt", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()
    _says_not_plain(capsys.readouterr().err, path)


def test_explain_api_refuses_a_malicious_checkpoint(tmp_path):
    from attnzoo.explain import explain_grid

    path, marker = _malicious(tmp_path, "os.system")
    with pytest.raises(UnsafeCheckpointError):
        explain_grid({"x": path}, None, tmp_path / "g.png")
    assert not marker.exists()


def _store_rows(checkpoint: str) -> list[dict]:
    return [{"label": "se", "seed": 0, "status": "ok", "checkpoint": checkpoint}]


def test_report_attention_figure_refuses_a_malicious_checkpoint_named_by_the_store(tmp_path):
    from attnzoo.ablation.report import write_attention_figure

    path, marker = _malicious(tmp_path, "Path.touch")
    with pytest.raises(UnsafeCheckpointError) as e:
        write_attention_figure(_store_rows(path.name), tmp_path, tmp_path / "attention.png")
    assert not marker.exists()
    _says_not_plain(str(e.value), path)


@pytest.mark.parametrize("outside", ["../evil.ckpt", "/etc/passwd", "link.ckpt"])
def test_report_never_opens_a_checkpoint_outside_the_experiment_folder(tmp_path, outside):
    from attnzoo.ablation.report import write_attention_figure

    experiment = tmp_path / "exp"
    experiment.mkdir()
    path, marker = _malicious(tmp_path, "os.system")
    (tmp_path / "evil.ckpt").write_bytes(path.read_bytes())
    (experiment / "link.ckpt").symlink_to(path)  # a link that leads out of the folder
    with pytest.raises(AttnzooError, match="outside the experiment's folder") as e:
        write_attention_figure(_store_rows(outside), experiment, experiment / "attention.png")
    assert outside in str(e.value)
    assert not marker.exists()


def test_checkpoint_in_folder_accepts_paths_inside(tmp_path):
    assert checkpoint_in_folder(tmp_path, "runs/se/seed0/last.ckpt") == (tmp_path / "runs/se/seed0/last.ckpt").resolve()


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_ckpt_path_of_every_trainer_command_refuses_a_malicious_checkpoint(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    path, marker = _malicious(tmp_path, "os.system")
    assert attnzoo_main([command, *SYNTH, "--ckpt_path", str(path)]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    _says_not_plain(err, path)
    assert "Traceback" not in err


def test_trainer_commands_refuse_weights_only_false(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert attnzoo_main(["test", *SYNTH, "--weights_only", "false"]) == 2
    assert "weights_only: false is refused" in capsys.readouterr().err


def test_resume_in_a_grid_run_refuses_a_malicious_checkpoint(tmp_path):
    from attnzoo.training.run import run_fit_test

    path, marker = _malicious(tmp_path, "Path.touch", "state_dict")
    config = {"model": {"backbone": "resnet20", "lr": 0.01},
              "data": {"class_path": "attnzoo.data.SyntheticDataModule",
                       "init_args": {"num_classes": 4, "image_size": 8, "num_train": 8, "num_test": 4, "batch_size": 4}},
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                          "enable_model_summary": False},
              "ckpt_path": str(path)}
    with pytest.raises(UnsafeCheckpointError) as e:
        run_fit_test(config, tmp_path / "run")
    assert not marker.exists()
    _says_not_plain(str(e.value), path)


def test_a_real_attnzoo_checkpoint_still_loads_weights_only(tmp_path, monkeypatch):
    """The refusal is not a refusal of everything: a checkpoint a fit wrote (EMA, optimizer and loop
    state, a Path-valued hyper-parameter) reads, and explain rebuilds its network from it."""
    import lightning as L

    from attnzoo.data import SyntheticDataModule
    from attnzoo.explain.images import load_classifier
    from attnzoo.training import AttnClassifier

    dm = SyntheticDataModule(num_classes=4, image_size=8, num_train=8, num_test=4, batch_size=4)
    model = AttnClassifier(backbone="resnet20", attn="se", stages=3, blocks="last", num_classes=4, in_chans=3,
                           input_size=8, lr=0.01, ema_decay=0.9)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    path = tmp_path / "real.ckpt"
    trainer.save_checkpoint(path)
    data = load_checkpoint(path)
    assert {"state_dict", "optimizer_states", "loops", "hyper_parameters"} <= set(data)
    data["hyper_parameters"]["note"] = pathlib.PurePosixPath("runs/x")
    torch.save(data, path)
    assert load_checkpoint(path)["hyper_parameters"]["note"] == pathlib.PurePosixPath("runs/x")
    loaded = load_classifier(path)
    assert loaded.hparams["attn"] == "se" and loaded.input_size == (3, 8, 8)

    # a kept sweep checkpoint is stripped to its weights: smaller, and the same network comes back
    from attnzoo.checkpoint import strip_to_weights

    before = path.stat().st_size
    strip_to_weights(path)
    assert set(load_checkpoint(path)) <= {"state_dict", "hyper_parameters", "hparams_name", "epoch", "global_step",
                                          "pytorch-lightning_version"}
    assert path.stat().st_size < before
    again = load_classifier(path)
    for (k, a), b in zip(loaded.network.state_dict().items(), again.network.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path):
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AttnzooError, match="cut.ckpt is not a readable torch checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")
