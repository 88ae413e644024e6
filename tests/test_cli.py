"""``attnzoo fit|validate|test|predict`` (attnzoo.training.cli) with the shipped configs/fit/*.yaml."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnzoo.training.cli import config_layers, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "fit"

# every shipped config, with the fixture holding its data set in the real on-disk format
CONFIG_DATA = {
    "fmnist_resnet20": "fmnist_dir",
    "fmnist_resnet20_smoke": "fmnist_dir",
    "cifar10_resnet20": "cifar10_dir",
    "cifar10_resnet56": "cifar10_dir",
    "cifar100_resnet20": "cifar100_dir",
    "cifar100_resnet56": "cifar100_dir",
    "imagenet_subset_resnet18": "imagefolder_dir",
    "imagenet_subset_resnet50": "imagefolder_dir",
    "imagenet_subset_yolo": "imagefolder_dir",
    "imagefolder_finetune_mobilenetv3": "imagefolder_dir",
}
# configs that load pretrained weights: the torchvision model whose random weights stand in (no hub here)
PRETRAINED = {"imagefolder_finetune_mobilenetv3": "mobilenet_v3_large"}
TINY = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
        "--data.init_args.batch_size", "4", "--data.init_args.val_size", "0.2", "--data.init_args.num_workers", "0"]


def tiny_args(name: str, data_dir: Path) -> list[str]:
    args = ["--config", str(CONFIGS / f"{name}.yaml"), "--data.init_args.data_dir", str(data_dir), *TINY]
    if name.startswith(("imagenet", "imagefolder")):
        args += ["--data.init_args.image_size", "32"]
    return args


def test_every_config_file_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "base") == sorted(CONFIG_DATA)


@pytest.mark.parametrize("name", sorted(CONFIG_DATA))
def test_fit_fast_dev_run_with_each_config_and_data_module(name, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = request.getfixturevalue(CONFIG_DATA[name])
    extra = []
    if name in PRETRAINED:
        import torch
        import torchvision

        torch.save(torchvision.models.get_model(PRETRAINED[name]).state_dict(), tmp_path / "weights.pth")
        extra = ["--model.pretrained_file", str(tmp_path / "weights.pth")]
    assert main(["fit", *tiny_args(name, data_dir), *extra, "--model.attn", "se", "--trainer.fast_dev_run", "1"]) == 0


def test_fit_on_synthetic_data_by_short_class_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", str(CONFIGS / "base.yaml"), "--data", "SyntheticDataModule", "--data.image_size", "16", "--data.batch_size", "4",
                 "--model.attn", "eca", "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu",
                 "--trainer.enable_progress_bar", "false"])
    assert code == 0


def _metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_fit_saves_the_resolved_config_and_logs_and_resumes_from_its_checkpoint(fmnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a 2-epoch run that stops after epoch 0 (EarlyStopping whose threshold any loss meets), as if interrupted
    args = ["fit", *tiny_args("fmnist_resnet20", fmnist_dir), "--model.attn", "eca", "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
            "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/loss",
            "--trainer.callbacks.stopping_threshold=1e9"]
    assert main(args) == 0
    run = tmp_path / "runs" / "attnzoo" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["attn"] == "eca"  # the command-line override
    assert saved["model"]["schedule"] == "onecycle"  # from fmnist_resnet20.yaml
    assert saved["trainer"]["log_every_n_steps"] == 50  # from base.yaml, under the file's own trainer keys
    assert saved["trainer"]["max_epochs"] == 2
    for name in ("metrics.csv", "complexity.json", "insert_report.txt", "throughput.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard writes into the same run folder
    assert "eca" in (run / "insert_report.txt").read_text()
    assert {r["epoch"] for r in _metrics(run) if r.get("val/acc1")} == {"0"}

    # resume: the saved config + its checkpoint -> a new run folder holding the remaining epoch
    resume = ["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    assert main(resume) == 0
    rows = _metrics(tmp_path / "runs" / "attnzoo" / "version_1")
    assert {r["epoch"] for r in rows if r.get("val/acc1")} == {"1"}
    assert {r["step"] for r in rows if r.get("train/loss")} == {"5"}  # global step went on from 3 to 6


def test_test_validate_and_predict_subcommands_use_a_checkpoint(fmnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *tiny_args("fmnist_resnet20", fmnist_dir), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    assert main(args) == 0
    run = tmp_path / "runs" / "attnzoo" / "version_0"
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                 "--trainer.limit_test_batches", "2"]) == 0
    assert "test/acc1" in capsys.readouterr().out
    common = ["--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    assert main(["validate", *common, "--trainer.limit_val_batches", "1"]) == 0
    assert "val/acc1" in capsys.readouterr().out
    assert main(["predict", *common, "--trainer.limit_predict_batches", "1"]) == 0


def test_print_config_shows_base_file_and_overrides_merged(fmnist_dir, capsys):
    code = main(["fit", "--config", str(CONFIGS / "fmnist_resnet20.yaml"), "--data.init_args.data_dir", str(fmnist_dir),
                 "--model.attn", "cbam", "--print_config"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["attn"] == "cbam"
    assert printed["trainer"]["max_epochs"] == 5 and printed["trainer"]["devices"] == 1
    assert printed["trainer"]["callbacks"][0]["init_args"]["save_last"] is True


def test_base_files_merge_key_by_key_and_loops_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("trainer:\n  max_epochs: 3\n  devices: 1\n")
    (tmp_path / "b.yaml").write_text("__base__: a.yaml\ntrainer:\n  max_epochs: 7\n")
    layers = config_layers(tmp_path / "b.yaml")
    assert layers[0] == str(tmp_path / "a.yaml")
    assert yaml.safe_load(layers[1]) == {"trainer": {"max_epochs": 7}}
    (tmp_path / "c.yaml").write_text("__base__: d.yaml\n")
    (tmp_path / "d.yaml").write_text("__base__: c.yaml\n")
    with pytest.raises(ValueError, match="loop"):
        config_layers(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("__base__: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        config_layers(tmp_path / "e.yaml")


@pytest.mark.parametrize(
    "override, words",
    [
        (["--model.attn", "sse"], "unknown attention block 'sse'"),
        (["--model.attn", "se", "--model.position", "sppf"], "sppf"),
        (["--model.lr_max", "0.1"], "lr_max"),
        (["--data.init_args.data_dir", "/nonexistent/fmnist"], "Fashion-MNIST"),
    ],
    ids=["unknown-block", "unknown-position", "unknown-key", "missing-data-set"],
)
def test_config_error_fails_with_a_clear_message_before_training(override, words, fmnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "fmnist_resnet20.yaml"), "--data.init_args.data_dir", str(fmnist_dir),
            *override]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert words in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.slow  # ~40 s on 2 shared cores: two processes start, import torch and rendezvous
def test_fit_with_ddp_on_two_cpu_processes(fmnist_dir, tmp_path):
    """Lightning's DDP strategy (gloo) with 2 processes: the model, metrics and data module work there."""
    script = tmp_path / "attnzoo_entry.py"  # a script path, so Lightning can relaunch it for rank 1
    script.write_text("import sys\nfrom attnzoo.cli import main\nsys.exit(main())\n")
    cmd = [sys.executable, str(script), "fit", *tiny_args("fmnist_resnet20", fmnist_dir), "--model.attn", "se",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.fast_dev_run", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr + proc.stdout
