"""attnzoo.explain: attention capture through the AttnTap hook points, Grad-CAM, figures, `attnzoo explain`."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.blocks.base import AttnTap
from attnzoo.explain import (
    AttentionCapture,
    ExplainImages,
    capture_attention,
    default_cam_layer,
    explain_grid,
    grad_cam,
)
from attnzoo.explain.cli import main as explain_main, parse_ckpt
from attnzoo.factory import attn_info, create_attn

B, C, H, W = 2, 32, 8, 6  # non-square, so a swapped H/W shows


def _capture_block(name: str, **kw):
    torch.manual_seed(0)
    block = create_attn(name, C, **kw)
    x = torch.randn(B, C, H, W)
    return block, x, capture_attention(block, x)


# -- capture: shapes for every registered block ---------------------------------------------------
@pytest.mark.parametrize("name", attnzoo.list_attn())
def test_capture_gives_documented_shape_for_every_site_of_every_block(name):
    _, _, maps = _capture_block(name)
    assert maps, f"{name}: nothing captured"
    for site, t in maps.items():
        kind = maps.info[site].kind
        assert maps.info[site].size == (H, W)
        if kind == "channel":
            assert t.dim() == 2 and t.shape[0] == B, (site, t.shape)
        elif kind == "spatial":
            assert t.shape == (B, 1, H, W), (site, t.shape)
        else:
            assert kind == "query" and t.dim() == 4 and t.shape[0] == B and t.shape[-2:] == (H, W), (site, t.shape)
        assert torch.isfinite(t).all()
    family = attn_info(name).metadata["family"]
    kinds = {maps.info[s].kind for s in maps}
    if family in ("spatial", "channel+spatial"):
        assert "spatial" in kinds, f"{name} ({family}) shows no spatial map: {kinds}"


@pytest.mark.parametrize("name", [n for n in attnzoo.list_attn() if attn_info(n).metadata["family"] == "channel"])
def test_channel_blocks_capture_one_weight_per_channel_or_a_map(name):
    _, _, maps = _capture_block(name)
    for site, t in maps.items():
        assert (maps.info[site].kind, tuple(t.shape)) in {("channel", (B, C)), ("spatial", (B, 1, H, W))}


def test_captured_spatial_map_is_the_factor_cbam_spatial_multiplies_into_its_input():
    block, x, maps = _capture_block("cbam_spatial")
    block.eval()
    with torch.no_grad():
        out = block(x)
    assert list(maps) == ["tap"]
    torch.testing.assert_close(maps["tap"] * x, out)


def test_captured_channel_weights_are_the_factor_se_multiplies_into_its_input():
    block, x, maps = _capture_block("se")
    with torch.no_grad():
        out = block.eval()(x)
    torch.testing.assert_close(maps["tap"][:, :, None, None] * x, out)


def test_query_map_of_mhsa_matches_softmax_of_its_projections_at_the_centre():
    torch.manual_seed(0)
    block = create_attn("mhsa", C, num_heads=4, rel_pos=False).eval()
    x = torch.randn(B, C, H, W)
    maps = capture_attention(block, x)
    with torch.no_grad():
        q, k, _ = block.qkv(x).reshape(B, 3, 4, C // 4, H * W).unbind(1)  # each (B, heads, d, N)
        logits = torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(C // 4)  # (B, heads, N, N)
        centre = (H // 2) * W + W // 2
        expected = logits.softmax(-1)[:, :, centre].reshape(B, 4, H, W)
    torch.testing.assert_close(maps["tap"], expected)
    assert maps.info["tap"].query == (H // 2, W // 2)


def test_query_position_is_chosen_by_fraction_and_several_positions_get_one_entry_each():
    torch.manual_seed(0)
    block = create_attn("nonlocal", C, sub_sample=True)  # keys pooled to 4 x 3, shown at 8 x 6
    maps = capture_attention(block, torch.randn(B, C, H, W), query=[(0.0, 0.0), (1.0, 1.0)])
    assert list(maps) == ["tap@(0,0)", "tap@(1,1)"]
    assert maps.info["tap@(0,0)"].query == (0, 0) and maps.info["tap@(1,1)"].query == (H - 1, W - 1)
    for t in maps.values():
        assert t.shape == (B, 1, H, W)
        # each pooled key covers 2 x 2 pixels, so the map sums to 4 (weights sum to 1 over keys)
        torch.testing.assert_close(t.sum((-2, -1)), torch.full((B, 1), 4.0))
    with pytest.raises(ValueError, match="fractions"):
        capture_attention(block, torch.randn(1, C, H, W), query=(2, 0.5))


def test_coord_row_factor_is_broadcast_along_each_row():
    _, _, maps = _capture_block("coord")
    row = maps["tap_h"]  # (B, 1, H, W) from a (B, C, H, 1) factor
    torch.testing.assert_close(row, row[..., :1].expand_as(row))
    col = maps["tap_w"]
    torch.testing.assert_close(col, col[..., :1, :].expand_as(col))


def test_channel_affinity_of_danet_cam_is_recorded_as_weights_per_channel():
    _, _, maps = _capture_block("danet_cam")
    assert maps.info["tap"].kind == "channel" and maps["tap"].shape == (B, C)
    torch.testing.assert_close(maps["tap"].sum(1), torch.ones(B))  # mean of softmax rows


def test_repeated_tap_calls_get_numbered_keys_and_repeated_forwards_concatenate():
    torch.manual_seed(0)
    block = create_attn("cca", C)  # two recurrences through the same tap
    x = torch.randn(B, C, H, W)
    with AttentionCapture(block.eval()) as cap, torch.no_grad():
        block(x)
        block(x[:1])
    maps = cap.maps
    assert list(maps) == ["tap", "tap#2"]
    assert maps["tap"].shape == (B + 1, 1, H, W)
    torch.testing.assert_close(maps["tap"][B], maps["tap"][0])


def test_capture_is_off_by_default_and_leaves_no_hook_even_after_an_error():
    net = attnzoo.create_backbone("resnet20", num_classes=4, attn="mhsa")
    taps = [m for m in net.modules() if isinstance(m, AttnTap)]
    assert taps and not any(t.active for t in taps)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = net.eval()(x)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionCapture(net):
            assert all(t.active for t in taps)
            raise RuntimeError("boom")
    maps = capture_attention(net, x)
    assert not any(t.active for t in taps)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before)  # capturing never changes the output
    assert len(maps) == 9 and maps["layer3.2.attn_standard.tap"].shape == (1, 4, 4, 4)


def test_capture_keys_sites_by_tap_path_in_an_inserted_model_with_each_stage_resolution():
    net = attnzoo.create_backbone("resnet20", num_classes=4)
    attnzoo.insert_attn(net, "cbam", blocks="last", input_size=(3, 16, 16))
    maps = capture_attention(net, torch.randn(2, 3, 16, 16))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "layer1.2.attn_standard.channel.tap": (2, 16), "layer1.2.attn_standard.spatial.tap": (2, 1, 16, 16),
        "layer2.2.attn_standard.channel.tap": (2, 32), "layer2.2.attn_standard.spatial.tap": (2, 1, 8, 8),
        "layer3.2.attn_standard.channel.tap": (2, 64), "layer3.2.attn_standard.spatial.tap": (2, 1, 4, 4),
    }


def test_capture_on_a_model_without_attention_blocks_says_so():
    with pytest.raises(ValueError, match="no AttnTap"):
        capture_attention(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4))


# -- Grad-CAM ----------------------------------------------------------------------------------------
class TinyCNN(nn.Module):
    def __init__(self, in_chans: int = 1, width: int = 8, num_classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def features(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_grad_cam_equals_class_activation_map_for_gap_linear_head():
    # with GAP + linear, alpha_k^c = w_ck / Z, so Grad-CAM = ReLU(sum_k w_ck A_k) / Z (Zhou et al. 2016)
    torch.manual_seed(0)
    net = TinyCNN()
    x = torch.randn(3, 1, 8, 8)
    # hook the ReLU output: the features the head pools
    net.relu2 = nn.ReLU()
    net.features = lambda x: net.relu2(net.conv2(F.relu(net.conv1(x))))
    res = grad_cam(net, x, target=1, layer="relu2")
    with torch.no_grad():
        cam = F.relu(torch.einsum("k,bkhw->bhw", net.fc.weight[1], net.features(x)))
        cam = cam / cam.flatten(1).amax(1).view(-1, 1, 1)
    torch.testing.assert_close(res.cam[:, 0], cam)
    assert res.target.tolist() == [1, 1, 1] and res.layer == "relu2"
    assert all(p.grad is None for p in net.parameters())


def test_grad_cam_highlights_the_planted_region_after_training():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def batch(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
        x[y == 1, :, :4, :4] += 2.0  # class 1: a bright 4 x 4 patch in the top-left corner
        return x, y

    net = TinyCNN()
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(40):
        x, y = batch(32)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch(16)
    x = x[y == 1]
    res = grad_cam(net, x)  # default layer: the last conv, conv2
    assert res.layer == "conv2" and (res.target == 1).all()
    cam = res.cam[:, 0]  # (N, 16, 16)
    corner = cam[:, :8, :8].sum((1, 2)) / cam.sum((1, 2))
    assert (corner > 0.7).all(), corner
    peak = cam.flatten(1).argmax(1)
    assert ((peak // 16 < 6) & (peak % 16 < 6)).all()


def test_default_cam_layer_is_the_last_stage_of_an_attnzoo_backbone():
    assert default_cam_layer(attnzoo.create_backbone("resnet20", num_classes=4)) == "layer3"
    assert default_cam_layer(attnzoo.create_backbone("yolov8n", num_classes=4)) == "stage4"
    assert default_cam_layer(TinyCNN()) == "conv2"


def test_grad_cam_rejects_a_bad_layer_or_target():
    net = TinyCNN()
    with pytest.raises(ValueError, match="did you mean 'conv2'"):
        grad_cam(net, torch.randn(1, 1, 8, 8), layer="conv3")
    with pytest.raises(ValueError, match=r"target must be a class in \[0, 2\)"):
        grad_cam(net, torch.randn(1, 1, 8, 8), target=5)


# -- figures and `attnzoo explain` --------------------------------------------------------------
def _read_png(path):
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 0, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoints of two fast_dev_run fits on synthetic 16 x 16 images (one block each)."""
    import lightning as L

    from attnzoo.data import SyntheticDataModule
    from attnzoo.training import AttnClassifier

    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for attn in ("cbam", "mhsa"):
        torch.manual_seed(0)
        dm = SyntheticDataModule(num_classes=4, image_size=16, num_train=8, num_test=4, batch_size=4)
        model = AttnClassifier(backbone="resnet20", attn=attn, stages=3, blocks="last", num_classes=4,
                               in_chans=3, input_size=16, lr=0.01)
        trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=folder)  # run files go to tmp
        trainer.fit(model, dm)
        paths[attn] = folder / f"{attn} epoch=0-step=1.ckpt"  # '=' in the name, as Lightning writes them
        trainer.save_checkpoint(paths[attn])
    return paths


def test_explain_cli_writes_a_figure_per_image_and_a_grid_from_fast_dev_run_checkpoints(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    rc = explain_main(["--ckpt", f"cbam={checkpoints['cbam']}", "--ckpt", str(checkpoints["mhsa"]),
                       "--dataset", "synthetic", "--num-images", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["cbam/00_test_0.png", "cbam/01_test_1.png", "grid.png",
                       "mhsa/00_test_0.png", "mhsa/01_test_1.png"]
    for p in out.rglob("*.png"):
        _read_png(p)


def test_explain_cli_explains_a_folder_of_image_files(checkpoints, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(folder / f"photo{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = explain_main(["--ckpt", str(checkpoints["cbam"]), "--images", str(folder), "--mean", "0.5", "0.5", "0.5",
                       "--std", "0.25", "0.25", "0.25", "--no-grid", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    files = sorted(out.rglob("*.png"))
    assert [p.name for p in files] == ["00_photo0.png", "01_photo1.png"]
    for p in files:
        _read_png(p)


def test_explain_cli_asks_for_normalisation_when_the_run_does_not_say(checkpoints, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    rc = explain_main(["--ckpt", str(checkpoints["cbam"]), "--images", str(tmp_path / "a.png"), "--out", str(tmp_path)])
    assert rc == 2 and "--mean/--std" in capsys.readouterr().err


def test_explain_grid_takes_labelled_checkpoints_and_shared_images(checkpoints, tmp_path):
    torch.manual_seed(0)
    images = ExplainImages.from_tensor(torch.randn(2, 3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3, targets=[0, 3],
                                       classes=["a", "b", "c", "d"])
    png = explain_grid({"with cbam": checkpoints["cbam"], "with mhsa": checkpoints["mhsa"]}, images, tmp_path / "g.png")
    _read_png(png)


def test_ckpt_argument_splits_label_only_when_the_path_does_not_exist(checkpoints):
    path = str(checkpoints["cbam"])
    assert parse_ckpt(path) == (None, path)
    assert parse_ckpt("se=runs/x=1.ckpt") == ("se", "runs/x=1.ckpt")


def test_images_default_to_the_runs_own_data_and_its_normalisation(checkpoints, tmp_path):
    import shutil

    import yaml
    from PIL import Image

    from attnzoo.explain import load_models, resolve_images

    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = shutil.copy(checkpoints["cbam"], run / "checkpoints" / "last.ckpt")
    data = {"class_path": "attnzoo.data.SyntheticDataModule",
            "init_args": {"num_classes": 4, "image_size": 16, "num_test": 4, "batch_size": 4}}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))  # as `attnzoo fit` saves it
    models = load_models([ckpt])
    imgs = resolve_images(models, None, num_images=3)
    from attnzoo.data import SyntheticDataModule

    dm = SyntheticDataModule(num_classes=4, image_size=16, num_test=4)
    dm.setup()
    expected = dm.normalize(torch.stack([dm.test_set[i][0] for i in range(3)]))
    torch.testing.assert_close(imgs.tensor, expected)
    assert imgs.targets == [int(dm.test_set[i][1]) for i in range(3)]
    Image.fromarray(torch.full((16, 16, 3), 255, dtype=torch.uint8).numpy()).save(tmp_path / "white.png")
    folder = resolve_images(models, tmp_path / "white.png")
    torch.testing.assert_close(folder.tensor, torch.full((1, 3, 16, 16), (1 - 0.5) / 0.27))  # synthetic mean/std
