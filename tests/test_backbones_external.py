"""timm: and tv: backbones: building, pretrained weights from a local file, adaptation, and a fit."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from attnzoo import create_backbone
from attnzoo.training import AttnClassifier, run_fit_test


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Local 'pretrained' checkpoints (the hubs are unreachable here): random weights saved to files."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    timm_model = timm.create_model("convnext_atto")
    tv_model = torchvision.models.mobilenet_v3_small()
    torch.save(timm_model.state_dict(), root / "convnext_atto.pth")
    torch.save(tv_model.state_dict(), root / "mobilenet_v3_small.pth")
    return {"timm": (root / "convnext_atto.pth", timm_model.state_dict()),
            "tv": (root / "mobilenet_v3_small.pth", tv_model.state_dict())}


def test_timm_pretrained_file_loads_and_timm_adapts_in_chans_and_classes(weights):
    path, state = weights["timm"]
    model = create_backbone("timm:convnext_atto", num_classes=7, in_chans=1, pretrained_file=str(path))
    got = model.state_dict()
    body = [k for k in state if not k.startswith(("stem.0.", "head.fc."))]
    assert all(torch.equal(got[k], state[k]) for k in body)
    torch.testing.assert_close(got["stem.0.weight"], state["stem.0.weight"].sum(dim=1, keepdim=True))
    assert got["head.fc.weight"].shape == (7, 320)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_torchvision_pretrained_file_loads_then_first_conv_and_head_are_adapted(weights):
    path, state = weights["tv"]
    model = create_backbone("tv:mobilenet_v3_small", num_classes=7, in_chans=1, pretrained_file=path)
    got = model.state_dict()
    body = [k for k in state if not k.startswith(("features.0.0.", "classifier.3."))]
    assert all(torch.equal(got[k], state[k]) for k in body)
    # like timm's adapt_input_conv: RGB filters summed into one grey channel
    torch.testing.assert_close(got["features.0.0.weight"], state["features.0.0.weight"].sum(dim=1, keepdim=True))
    assert got["classifier.3.weight"].shape == (7, 1024)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_torchvision_without_weights_is_built_at_num_classes_and_in_chans():
    model = create_backbone("tv:resnet18", num_classes=3, in_chans=2)
    assert model.fc.out_features == 3 and model.conv1.in_channels == 2
    assert model(torch.randn(2, 2, 32, 32)).shape == (2, 3)


def test_backbone_errors_say_what_would_be_right(weights, tmp_path):
    with pytest.raises(ValueError, match="timm has no model 'convnext_attoo'; did you mean 'convnext_atto'"):
        create_backbone("timm:convnext_attoo")
    with pytest.raises(ValueError, match="torchvision has no classification model 'mobilenet_v3_smal'"):
        create_backbone("tv:mobilenet_v3_smal")
    with pytest.raises(ValueError, match="has no pretrained weights.*'timm:resnet18'"):
        create_backbone("resnet20", pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backbone("tv:resnet18", pretrained_file=tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match="does not fit torchvision resnet18"):
        create_backbone("tv:resnet18", pretrained_file=weights["tv"][0])


def test_attn_classifier_replaces_se_of_a_pretrained_torchvision_model(weights):
    path, state = weights["tv"]
    module = AttnClassifier(backbone="tv:mobilenet_v3_small", pretrained_file=str(path), attn="eca",
                            position="replace", init="identity", num_classes=4, in_chans=3, input_size=32)
    report = module.insert_report
    assert len(report.sites) == 9 and all(s.replaced == "torchvision SqueezeExcitation" for s in report.sites)
    got = module.model.state_dict()
    sites = [s.path + "." for s in report.sites]
    kept = [k for k in state if not k.startswith(("classifier.3.", *sites))]
    assert all(torch.equal(got[k], state[k]) for k in kept)


def fit_config(backbone: str, path, attn: str, position: str) -> dict:
    return {
        "seed_everything": 0,
        "model": {"backbone": backbone, "pretrained_file": str(path), "attn": attn, "position": position,
                  "init": "identity", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        "data": {"class_path": "attnzoo.data.SyntheticDataModule",
                 "init_args": {"batch_size": 4, "num_train": 16, "num_test": 8, "image_size": 32, "num_classes": 3}},
        "trainer": {"fast_dev_run": True, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False},
    }


@pytest.mark.parametrize("backbone,key,attn,position,sites", [
    ("timm:convnext_atto", "timm", "eca", "standard", 12),  # inserted into each ConvNeXt block
    ("tv:mobilenet_v3_small", "tv", "cbam", "replace", 9),  # in place of each SqueezeExcitation
], ids=["timm-insert", "tv-replace"])
def test_fit_runs_on_pretrained_timm_and_torchvision_models(weights, tmp_path, backbone, key, attn, position, sites):
    result = run_fit_test(fit_config(backbone, weights[key][0], attn, position), tmp_path / "run")
    assert len(result["insert_report"]["sites"]) == sites
    assert result["test"]["loss"] is not None and result["test"]["acc1"] is not None


def test_imagefolder_finetune_config_builds_with_a_local_weights_file(tmp_path):
    from pathlib import Path

    from attnzoo.training import load_config, validate_config

    path = tmp_path / "mbv3l.pth"
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), path)
    config = load_config(Path(__file__).parent.parent / "configs/fit/imagefolder_finetune_mobilenetv3.yaml")
    assert config["model"]["position"] == "replace" and config["model"]["init"] == "identity"
    config["model"]["pretrained_file"] = str(path)  # no hub here
    config["data"] = {"class_path": "attnzoo.data.SyntheticDataModule",
                      "init_args": {"batch_size": 4, "num_train": 8, "num_test": 4, "image_size": 32}}
    validate_config(config)


def test_create_backbone_attn_shorthand_inserts_into_timm_and_torchvision_models():
    from attnzoo.insertion import adapter_for

    for name, expected in [("tv:mobilenet_v3_small", 11), ("timm:mobilenetv3_small_100", 11)]:
        model = create_backbone(name, num_classes=3, attn="eca")
        hosts = [m for m in model.modules() if adapter_for(m) is not None and getattr(m, "attn_standard", None) is not None]
        assert len(hosts) == expected  # one block at 'standard' in each inverted residual
