"""AttnClassifier, its schedules and callbacks, and run_fit_test / validate_config (attnzoo.training)."""
from __future__ import annotations

import math
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnzoo.training import AttnClassifier, complexity, run_fit_test, validate_config
from attnzoo.training.module import build_schedule


CHECKPOINT = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}


def synthetic_config(**trainer) -> dict:
    """A run small enough for the test suite: resnet20 at 16x16, 4 classes, batch 16."""
    return {
        "seed_everything": 3,
        "model": {"backbone": "resnet20", "attn": "se", "lr": 0.05, "warmup_epochs": 0.5},
        "data": {
            "class_path": "attnzoo.data.SyntheticDataModule",
            "init_args": {"batch_size": 16, "num_train": 96, "num_test": 32, "image_size": 16, "num_classes": 4},
        },
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "callbacks": [CHECKPOINT], **trainer},
    }


# -- complexity ----------------------------------------------------------------


def test_complexity_counts_conv_and_linear_flops_of_a_hand_sized_model():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    got = complexity(model, (1, 4, 4))
    conv = 2 * (2 * 4 * 4) * (1 * 3 * 3)  # 2 FLOPs per MAC x outputs x kernel taps
    linear = 2 * 32 * 3
    assert got == {"params": 2 * 9 + 32 * 3 + 3, "flops": conv + linear}


def test_complexity_leaves_batchnorm_statistics_and_training_mode_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    complexity(model, 8)
    assert model.training and torch.equal(model[1].running_mean, before)


# -- model construction -----------------------------------------------------------


def test_model_reports_inserted_sites_and_counts_their_parameters():
    plain = AttnClassifier("resnet20", num_classes=10, in_chans=1, input_size=28)
    model = AttnClassifier("resnet20", attn="se", num_classes=10, in_chans=1, input_size=28)
    extra = sum(p.numel() for p in model.model.parameters()) - sum(p.numel() for p in plain.model.parameters())
    assert len(model.insert_report.sites) == 9  # 3 stages x 3 blocks, standard position
    assert model.insert_report.total_params == extra > 0
    assert model.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"attn": "sse"}, KeyError, "unknown attention block 'sse'"),
        ({"attn": "se", "position": "middle"}, ValueError, "middle"),
        ({"backbone": "resnet21"}, KeyError, "unknown backbone 'resnet21'"),
        ({"optimizer": "adam"}, ValueError, "did you mean 'adamw'"),
        ({"schedule": "cosin"}, ValueError, "did you mean 'cosine'"),
        ({"position": "pre"}, ValueError, "model.attn is null"),
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing"),
        ({"compile": "yes"}, ValueError, "compile must be true, false or 'auto'"),
        ({"compile": "auto", "compile_min_steps": -1}, ValueError, "compile_min_steps"),
    ],
)
def test_bad_model_argument_fails_at_construction_with_a_clear_message(kwargs, error, words):
    with pytest.raises(error) as info:
        AttnClassifier(**{"num_classes": 10, "input_size": 32, **kwargs})
    assert words in str(info.value)


def test_weight_decay_applies_to_conv_and_linear_weights_only():
    model = AttnClassifier("resnet20", attn="se", num_classes=10, weight_decay=1e-3)
    groups = model.param_groups()
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.model.named_parameters():
        expect = p.ndim > 1 and not name.endswith(".bias")
        assert (id(p) in decayed) == expect, name
    assert all(g["weight_decay"] in (0.0, 1e-3) for g in groups)


# -- schedules ---------------------------------------------------------------------


def _lrs(schedule: str, total: int, warmup: int, lr: float = 0.1, **kwargs) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_schedule(opt, schedule, total_steps=total, warmup_steps=warmup, lr=lr, **kwargs)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])  # the lr the next optimizer step uses
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_warms_up_linearly_then_follows_the_cosine_to_zero():
    total, warmup, lr = 20, 4, 0.1
    got = _lrs("cosine", total, warmup, lr)
    # straight line from lr/warmup (step 0) to lr (step `warmup`), then half a cosine period to 0
    ramp = [lr * (1 / warmup + (1 - 1 / warmup) * i / warmup) for i in range(warmup)]
    cosine = [lr * 0.5 * (1 + math.cos(math.pi * k / (total - warmup))) for k in range(total - warmup)]
    assert got == pytest.approx(ramp + cosine, rel=1e-6, abs=1e-9)


def test_onecycle_schedule_peaks_at_lr_at_the_end_of_warmup():
    got = _lrs("onecycle", 40, 10, lr=0.2)
    assert max(got) == pytest.approx(0.2)
    assert got.index(max(got)) in (9, 10)
    assert got[0] < 0.02 and got[-1] < 1e-3


def test_step_schedule_divides_the_rate_at_each_milestone_after_warmup():
    got = _lrs("step", 12, 2, lr=0.1, milestones=[6, 9], gamma=0.1)
    # linear warmup over 2 steps, then x0.1 at steps 6 and 9
    expected = [0.05, 0.075] + [0.1] * 4 + [0.01] * 3 + [0.001] * 3
    assert got == pytest.approx(expected, rel=1e-6)


def test_step_schedule_defaults_to_half_and_three_quarters_of_training(tmp_path):
    import csv

    config = synthetic_config(max_epochs=4, log_every_n_steps=1)
    config["model"].update(schedule="step", lr=0.1, warmup_epochs=0)
    result = run_fit_test(config, tmp_path)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    lrs = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    per_epoch = len(lrs) // 4  # one logged rate per optimizer step
    assert per_epoch >= 2 and len(lrs) == 4 * per_epoch
    assert lrs[0] == pytest.approx(0.1) and lrs[2 * per_epoch] == pytest.approx(0.01)
    assert lrs[3 * per_epoch] == pytest.approx(0.001) and result["test"]["acc1"] is not None


# -- run_fit_test / validate_config -------------------------------------------------


def test_validate_config_names_the_unknown_block_key_and_position():
    validate_config(synthetic_config())  # a good config passes
    bad_block = synthetic_config()
    bad_block["model"]["attn"] = "cbma"
    with pytest.raises(KeyError, match="did you mean 'cbam'"):
        validate_config(bad_block)
    bad_key = synthetic_config()
    bad_key["model"]["lr_max"] = 0.1
    with pytest.raises(ValueError, match="lr_max"):
        validate_config(bad_key)
    bad_position = synthetic_config()
    bad_position["model"]["position"] = "sppf"  # a YOLO position; resnet20 has no SPPF
    with pytest.raises(ValueError, match="sppf"):
        validate_config(bad_position)


def test_validate_config_reports_a_missing_data_set(tmp_path):
    config = synthetic_config()
    config["data"] = {"class_path": "attnzoo.data.FashionMNISTDataModule",
                      "init_args": {"data_dir": str(tmp_path / "nowhere")}}
    with pytest.raises(FileNotFoundError, match="nowhere"):
        validate_config(config)


def test_run_fit_test_returns_the_contract_and_writes_the_run_folder(tmp_path):
    result = run_fit_test(synthetic_config(), tmp_path / "run")
    assert set(result) >= {"test", "epochs", "params", "flops", "train_throughput", "infer_throughput",
                           "wall_time_s", "insert_report", "config"}
    assert [e["epoch"] for e in result["epochs"]] == [0, 1]
    for row in result["epochs"]:
        assert {"train/loss", "train/acc1", "val/loss", "val/acc1"} <= set(row)
    assert 0.0 <= result["test"]["acc1"] <= 1.0 and result["test"]["acc5"] is None  # 4 classes: no top-5
    assert result["train_throughput"] > 0 and result["infer_throughput"] > 0
    assert result["params"] == sum(p.numel() for p in AttnClassifier(attn="se", num_classes=4).model.parameters())
    assert len(result["insert_report"]["sites"]) == 9
    assert result["config"]["model"]["attn"] == "se" and result["config"]["seed_everything"] == 3
    run = tmp_path / "run"
    for name in ("config.yaml", "complexity.json", "insert_report.txt", "metrics.csv", "throughput.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_compile_auto_stays_eager_on_cpu_and_says_why(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: calls.append(module) or module)
    config = synthetic_config()
    config["model"].update(compile="auto", compile_min_steps=0)
    result = run_fit_test(config, tmp_path)
    assert not calls and result["test"]["acc1"] is not None
    assert "model.compile: auto -> off: the fit runs on cpu" in capsys.readouterr().out


@pytest.mark.parametrize("choice", ["keep", "system"])
def test_cpu_fits_keep_freed_memory_unless_told_not_to(tmp_path, monkeypatch, capsys, choice):
    from attnzoo.training import module

    calls = []
    monkeypatch.setattr(module, "keep_freed_memory", lambda: calls.append(1) or {"allocator": "glibc", "tuned": True})
    config = synthetic_config()
    config["model"].update(cpu_allocator=choice)
    run_fit_test(config, tmp_path)
    said = capsys.readouterr().out.count("model.cpu_allocator: keep -> glibc keeps freed memory")
    assert (bool(calls), said) == ((True, 1) if choice == "keep" else (False, 0))  # said once per fit + test


def test_cpu_allocator_choice_is_checked():
    with pytest.raises(ValueError, match="cpu_allocator.*keep"):
        AttnClassifier(cpu_allocator="jemalloc")
    from attnzoo.training.allocator import use_allocator

    with pytest.raises(ValueError, match="allocator must be one of"):
        use_allocator("jemalloc")
    assert use_allocator("system") == {"allocator": "system", "tuned": False}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning acts on glibc only")
def test_keep_freed_memory_takes_effect_once_per_process():
    code = ("from attnzoo.training.allocator import keep_freed_memory as k; a = k(); b = k(); "
            "print(a == b, a['tuned'], a['mmap_threshold'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", str(1 << 30)]


def test_compile_true_compiles_the_network_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: calls.append(type(module).__name__) or module)
    config = synthetic_config()
    config["model"].update(compile=True)
    run_fit_test(config, tmp_path)
    assert calls == ["CifarResNet"]  # once, reused by validation and test


@pytest.mark.parametrize("device, steps, on, words", [
    ("cuda", 5000, True, "on: this fit has 5000 optimizer steps, >= model.compile_min_steps 5000"),
    ("cuda", 4999, False, "off: this fit has 4999 optimizer steps, < model.compile_min_steps 5000"),
    ("cuda", float("inf"), False, "an unknown number of"),
    ("cpu", 10**6, False, "off: the fit runs on cpu"),
])
def test_compile_decision(device, steps, on, words):
    from attnzoo.training.module import compile_decision

    decided, why = compile_decision(device, steps, 5000)
    assert decided is on and words in why


def test_same_seed_twice_gives_identical_metrics(tmp_path):
    a = run_fit_test(synthetic_config(), tmp_path / "a")
    b = run_fit_test(synthetic_config(), tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train/throughput"} for r in rows]  # noqa: E731
    assert strip(a["epochs"]) == strip(b["epochs"])
    assert a["test"] == b["test"]


def test_nan_training_loss_raises(tmp_path):
    config = synthetic_config(max_epochs=1)
    config["model"].update(lr=1e12, warmup_epochs=0, schedule="constant")
    with pytest.raises(FloatingPointError, match="training loss became"):
        run_fit_test(config, tmp_path / "nan")


def test_resume_from_checkpoint_continues_the_same_run(tmp_path):
    def config() -> dict:
        # several batches per epoch: the shuffle order and augmentation of epoch k are seeded from
        # (seed, k), so a resumed run sees the batches the uninterrupted run saw
        c = synthetic_config(max_epochs=3)
        c["data"]["init_args"]["batch_size"] = 16
        return c

    full = run_fit_test(config(), tmp_path / "full")
    # the same run, stopped after epoch 0 by a callback (as if interrupted), then resumed
    part = config()
    part["trainer"]["callbacks"] = [CHECKPOINT, {"class_path": "tests.test_training.StopAfterEpoch",
                                                 "init_args": {"epoch": 0}}]
    first = run_fit_test(part, tmp_path / "part")
    assert [e["epoch"] for e in first["epochs"]] == [0]
    resumed_config = config()
    resumed_config["ckpt_path"] = str(tmp_path / "part" / "checkpoints" / "last.ckpt")
    resumed = run_fit_test(resumed_config, tmp_path / "resumed")
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]  # only the remaining epochs ran
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    full_ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["global_step"], ckpt["epoch"]) == (full_ckpt["global_step"], full_ckpt["epoch"])
    # weights, momentum buffers and the schedule went on from where they stopped
    assert ckpt["lr_schedulers"][0]["_last_lr"] == pytest.approx(full_ckpt["lr_schedulers"][0]["_last_lr"])
    measured = lambda row: {k: v for k, v in row.items() if "throughput" not in k}  # noqa: E731  (timings differ)
    for row, full_row in zip(resumed["epochs"], full["epochs"][1:]):
        assert measured(row) == pytest.approx(measured(full_row), rel=1e-5, abs=1e-6)
    assert resumed["test"] == pytest.approx(full["test"], rel=1e-5, abs=1e-6)


def test_checkpoint_reloads_into_the_same_network(tmp_path):
    run_fit_test(synthetic_config(max_epochs=1), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = AttnClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert model.hparams.attn == "se" and model.hparams.num_classes == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# importable by class_path from the configs above
from lightning.pytorch import Callback  # noqa: E402


class StopAfterEpoch(Callback):
    """Ends the fit after ``epoch`` (like an interrupted job), after the checkpoint was written."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def test_ema_weights_are_trained_checkpointed_and_used_for_evaluation(tmp_path):
    config = synthetic_config(max_epochs=1)
    config["model"].update(ema_decay=0.5, channels_last=True)
    result = run_fit_test(config, tmp_path / "ema")
    state = torch.load(tmp_path / "ema" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    key = "model.fc.weight"
    assert not torch.equal(state[key], state["ema.module.fc.weight"])  # an average, not a copy
    model = AttnClassifier.load_from_checkpoint(tmp_path / "ema" / "checkpoints" / "last.ckpt", map_location="cpu")
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model._eval_forward(x), model.ema.module(x))
    assert result["test"]["acc1"] is not None
