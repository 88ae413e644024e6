"""attnzoo.integrations.ultralytics: YAML rows, the attnzoo: key, host adapters, YAML variants, training,
reload in a fresh process, predict, export, a detection ablation cell -- all offline, on a tiny
synthetic YOLO-format data set written here (8 images of 64x64, two box classes)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

# before ultralytics is first imported in this process: its settings in a tmp dir, and no online checks
_CFG_DIR = tempfile.mkdtemp(prefix="attnzoo-yolo-cfg-")
os.environ["YOLO_CONFIG_DIR"] = _CFG_DIR
os.environ["YOLO_OFFLINE"] = "1"

import attnzoo.integrations.ultralytics as azu  # noqa: E402
from attnzoo import create_attn, insert_attn  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.modules import block as ub  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.nn import tasks  # noqa: E402
from ultralytics.utils import SETTINGS  # noqa: E402

SETTINGS.update({"sync": False})
# ultralytics' dataset check looks for Arial.ttf in its config dir and downloads it when missing (even with
# YOLO_OFFLINE); a font matplotlib ships, under that name, keeps it local. The socket guard below proves it.
import shutil  # noqa: E402

import matplotlib  # noqa: E402
from ultralytics.utils import USER_CONFIG_DIR  # noqa: E402

shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", USER_CONFIG_DIR / "Arial.ttf")
REPO = Path(__file__).resolve().parents[1]
FAMILY_BLOCKS = ["se", "eca", "cbam", "ema", "lska", "simam", "coord"]  # one or more per family
NETWORK_ATTEMPTS: list[str] = []


def _blocked(*args, **kwargs):
    NETWORK_ATTEMPTS.append(repr(args[:2]))
    raise OSError("network access is blocked in tests/test_ultralytics.py")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs with sockets unable to connect or resolve; any attempt fails the test."""
    before = len(NETWORK_ATTEMPTS)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: _blocked(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: _blocked(*a))
    monkeypatch.setattr(socket, "create_connection", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)
    yield
    assert NETWORK_ATTEMPTS[before:] == [], f"something tried the network: {NETWORK_ATTEMPTS[before:]}"


# the blocker used by the subprocesses (a fresh interpreter each)
_SUB_PRELUDE = textwrap.dedent("""
    import json, os, socket, sys
    attempts = []
    def _blocked(*a, **k):
        attempts.append(repr(a[:2])); raise OSError("network blocked")
    socket.socket.connect = lambda self, *a: _blocked(*a)
    socket.create_connection = _blocked
    socket.getaddrinfo = _blocked
""")


def _sub_env() -> dict[str, str]:
    env = dict(os.environ, YOLO_CONFIG_DIR=_CFG_DIR, YOLO_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_sub(code: str, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _SUB_PRELUDE + textwrap.dedent(code)], cwd=cwd, env=_sub_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 images of 64x64 with 2 coloured boxes each, YOLO labels, and a data.yaml (train = val)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("yolo_ds")
    rng = np.random.default_rng(0)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for k in range(8):
        img = np.full((64, 64, 3), 40, np.uint8)
        lines = []
        for _ in range(2):
            w, h = (int(v) for v in rng.integers(14, 28, 2))
            x0, y0 = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
            c = int(rng.integers(0, 2))
            img[y0:y0 + h, x0:x0 + w] = (220, 60, 60) if c == 0 else (60, 220, 60)
            lines.append(f"{c} {(x0 + w / 2) / 64:.5f} {(y0 + h / 2) / 64:.5f} {w / 64:.5f} {h / 64:.5f}")
        Image.fromarray(img).save(root / "images" / "train" / f"{k}.png")
        (root / "labels" / "train" / f"{k}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\n"
                                    "names:\n  0: red\n  1: green\n")
    return root / "data.yaml"


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _model(path) -> DetectionModel:
    return DetectionModel(str(path), nc=2, verbose=False)


def _out_channels(layer: torch.nn.Module) -> int:
    """Output channels of a stock C2f/C3k2/SPPF/C2PSA row: its last conv."""
    return layer.cv2.conv.out_channels


# -- 1. YAML rows -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stock,host", [("yolo11n.yaml", "C3k2"), ("yolov8n.yaml", "C2f")])
def test_attnzoo_rows_of_every_family_build_with_the_channels_of_the_row_before(stock, host, tmp_path):
    base = _model(stock)
    hosts = [i for i, m in enumerate(base.model) if type(m).__name__ == host and i < 10]
    channels = [_out_channels(base.model[i]) for i in hosts]
    x = torch.randn(1, 3, 64, 64)
    base.eval()
    with torch.no_grad():
        ref = base(x)[0].shape
    for spec in FAMILY_BLOCKS:
        path = azu.write_yolo_yaml(stock, spec, after=host, where="backbone", out=tmp_path / f"{Path(stock).stem}-{spec}.yaml")
        m = _model(path)
        zoo = [l for l in m.model if isinstance(l, azu.AttnZoo)]
        assert [z.channels for z in zoo] == channels, spec
        expected = sum(_params(create_attn(spec, c)) for c in channels)  # built independently of the integration
        assert _params(m) - _params(base) == expected, spec
        m.eval()
        with torch.no_grad():
            assert m(x)[0].shape == ref, spec


@pytest.mark.parametrize("stock,last", [("yolo11n.yaml", "C2PSA"), ("yolov8n.yaml", "SPPF")])
def test_mhsa_row_at_the_last_stage_builds_and_runs(stock, last, tmp_path):
    path = azu.write_yolo_yaml(stock, "mhsa", after=last, out=tmp_path / f"{Path(stock).stem}-mhsa.yaml")
    m = _model(path).eval()
    (zoo,) = [l for l in m.model if isinstance(l, azu.AttnZoo)]
    assert zoo.channels == 256 and type(zoo.block) is type(create_attn("mhsa", 256))
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64))[0].shape[1] == 4 + 2


def test_attnzoo_row_takes_the_scaled_width_at_every_scale():
    import yaml
    from ultralytics.utils.ops import make_divisible

    d = yaml.safe_load((Path(tasks.__file__).parent.parent / "cfg/models/11/yolo11.yaml").read_text())
    d["backbone"] = d["backbone"][:10] + [[-1, 1, "AttnZoo", ["se(rd_ratio=0.25)"]]]  # after SPPF
    d["head"] = []
    for scale, (depth, width, max_ch) in d["scales"].items():
        layers, _ = tasks.parse_model({**d, "scale": scale, "backbone": [list(r) for r in d["backbone"]]}, ch=3,
                                      verbose=False)
        assert layers[10].channels == make_divisible(min(1024, max_ch) * width, 8), scale


def test_unknown_block_in_a_row_names_the_row_and_the_closest_names(tmp_path):
    p = tmp_path / "yolo11n-bad.yaml"
    p.write_text(azu.write_yolo_yaml("yolo11n.yaml", "cbam", after="SPPF", out=tmp_path / "ok.yaml").read_text()
                 .replace("AttnZoo, [cbam]", "AttnZoo, [cbma]"))
    with pytest.raises(KeyError) as e:
        _model(p)
    msg = str(e.value)
    assert "row 10 (backbone)" in msg and "'cbma'" in msg and "cbam" in msg


def test_a_channel_count_in_the_row_is_refused_with_the_right_form(tmp_path):
    p = tmp_path / "yolo11n-ch.yaml"
    p.write_text(azu.write_yolo_yaml("yolo11n.yaml", "cbam", after="SPPF", out=tmp_path / "ok.yaml").read_text()
                 .replace("AttnZoo, [cbam]", "AttnZoo, [256, cbam]"))
    with pytest.raises(ValueError, match=r"no channel count.*\[-1, 1, AttnZoo, \[cbam\]\]"):
        _model(p)


# -- 2. YAML variants -------------------------------------------------------------------------------
def _detect_inputs(model: DetectionModel) -> list[tuple[int, ...]]:
    seen = []
    h = model.model[-1].register_forward_pre_hook(lambda mod, args: seen.extend(tuple(t.shape) for t in args[0]))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    h.remove()
    return seen


@pytest.mark.parametrize("where", ["backbone", "head", "all"])
@pytest.mark.parametrize("stock,after", [("yolo11n.yaml", "C3k2"), ("yolov8n.yaml", "C2f,SPPF")])
def test_variant_detect_gets_the_same_shapes_from_the_same_layers(stock, after, where, tmp_path):
    stock_d, _, _ = azu.load_model_dict(stock)
    variant = azu.yolo_yaml(stock, "ema", after=after, where=where)
    n_stock = len(stock_d["backbone"]) + len(stock_d["head"])
    names = after.split(",")
    expect = sum(r[2] in names for r in (stock_d["backbone"] if where == "backbone" else stock_d["head"]
                                          if where == "head" else stock_d["backbone"] + stock_d["head"]))
    assert len(variant.inserted) == expect > 0
    rows = variant.d["backbone"] + variant.d["head"]
    assert len(rows) == n_stock + expect
    # every stock row's inputs map to the rows carrying the same stock layers
    for i, row in enumerate(stock_d["backbone"] + stock_d["head"]):
        new = rows[variant.index_map[i] - (1 if variant.index_map[i] in variant.inserted else 0)]
        assert new[1:] == row[1:]
        f_old, f_new = row[0], new[0]
        for a, b in zip(f_old if isinstance(f_old, list) else [f_old], f_new if isinstance(f_new, list) else [f_new]):
            if a == -1:
                assert b == -1
            else:
                assert b == variant.index_map[a], (i, row, new)
    path = azu.write_yolo_yaml(stock, "ema", after=after, where=where, out=tmp_path / f"{Path(stock).stem}-ema.yaml")
    m, base = _model(path), _model(stock)
    assert _detect_inputs(m) == _detect_inputs(base)
    detect_from = m.model[-1].f
    assert [variant.stock_of[j] for j in detect_from] == base.model[-1].f  # semantically the same layers


def test_yolo_yaml_cli_writes_a_buildable_variant(tmp_path):
    from attnzoo.cli import main

    out = tmp_path / "yolo11s-cbam.yaml"
    assert main(["yolo-yaml", "yolo11s.yaml", "--attn", "cbam", "--after", "C3k2", "--where", "head", "-o", str(out)]) == 0
    m = _model(out)
    assert sum(isinstance(l, azu.AttnZoo) for l in m.model) == 4
    assert m.model[2].cv2.conv.out_channels == 128  # scale s (width 0.5), read from the file name
    assert main(["yolo-yaml", "yolo11n.yaml", "--attn", "cbam", "--after", "Detect", "-o", str(out)]) == 2


# -- 3. insert_attn on ultralytics models -------------------------------------------------------------
def test_insert_bottleneck_fills_every_bottleneck_and_never_a_bypass_conv():
    m = _model("yolo11n.yaml")
    bottlenecks = sorted(n for n, mod in m.named_modules() if type(mod) is ub.Bottleneck)
    report = insert_attn(m, "ema", position="bottleneck", input_size=(64, 64))
    assert sorted(s.host for s in report.sites) == bottlenecks
    assert len(bottlenecks) == 11 and any(".m.0.m." in b for b in bottlenecks)  # C3k's bottlenecks included
    assert all(s.path.endswith(".attn_bottleneck") for s in report.sites)
    for n, mod in m.named_modules():  # C3k's cv2 (the 1x1 bypass) and every other conv stay plain
        if n.endswith("cv2") and type(m.get_submodule(n.rsplit(".", 1)[0])).__name__ in ("C3k", "C3kAttn"):
            assert type(mod).__name__ == "Conv"
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64))[0].shape == (1, 4 + 2, 84)


@pytest.mark.parametrize("position,host", [("block", "C3k2"), ("c3k", "C3k"), ("sppf", "SPPF"), ("psa", "C2PSA")])
def test_insert_block_positions_follow_their_hosts(position, host):
    m = _model("yolo11n.yaml")
    want = sorted(n for n, mod in m.named_modules() if type(mod).__name__ == host)
    x = torch.randn(1, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        ref = m(x)[0]
    report = insert_attn(m, "eca", position=position, init="identity", input_size=(64, 64))
    assert sorted(s.host for s in report.sites) == want
    with torch.no_grad():
        assert torch.allclose(m(x)[0], ref, atol=1e-5)  # identity init: outputs unchanged


def test_attnzoo_key_inserts_when_ultralytics_builds_the_model(tmp_path):
    path = azu.write_yolo_yaml("yolov8n.yaml", "ema", position="bottleneck", where="backbone",
                               out=tmp_path / "yolov8n-ema-bottleneck.yaml")
    m = _model(path)
    hosts = sorted(n for n, mod in m.named_modules() if isinstance(mod, ub.Bottleneck))
    backbone = [h for h in hosts if int(h.split(".")[1]) < 10]
    assert sorted(n.rsplit(".", 1)[0] for n, mod in m.named_modules() if n.endswith("attn_bottleneck")) == backbone
    no_psa = azu.write_yolo_yaml("yolov8n.yaml", "ema", position="psa", out=tmp_path / "yolov8n-psa.yaml")
    with pytest.raises(ValueError, match="no row .* has a block with position 'psa'"):
        _model(no_psa)  # yolov8 has no C2PSA


def test_yolo_with_attn_returns_a_model_whose_yaml_file_carries_the_insertion(tmp_path):
    y = azu.yolo_with_attn("yolo11n.yaml", "eca", position="sppf", save_to=tmp_path / "yolo11n-eca-sppf.yaml")
    assert [n for n, _ in y.model.named_children()] == ["model"]
    assert type(y.model.model[9]).__name__ == "SPPFAttn" and y.model.model[9].attn_sppf is not None
    rebuilt = _model(tmp_path / "yolo11n-eca-sppf.yaml")  # what the trainer builds from the file
    assert rebuilt.model[9].attn_sppf is not None


# -- 1+3+5. train through `attnzoo yolo train`, reload in a fresh process, predict -----------------
def test_cli_train_then_best_pt_reloads_with_the_blocks_in_a_fresh_process(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # attnzoo yolo rewrites it for ultralytics' parser
    rows = azu.write_yolo_yaml("yolo11n.yaml", "cbam", after="SPPF", out=tmp_path / "rows.yaml")
    text = rows.read_text() + "attnzoo:\n  - {attn: eca, position: bottleneck, where: head}\n"
    cfg = tmp_path / "yolo11n-cbam.yaml"
    cfg.write_text(text)
    expected = _model(cfg)
    names = {n for n, _ in expected.named_parameters() if "attn_bottleneck" in n or ".block." in n}
    assert any("attn_bottleneck" in n for n in names) and any(n.startswith("model.10.block") for n in names)

    from attnzoo.cli import main

    assert main(["yolo", "train", f"model={cfg}", f"data={dataset}", "epochs=1", "imgsz=64", "batch=4", "workers=0",
                 "plots=False", "device=cpu", f"project={tmp_path / 'runs'}", "name=t", "exist_ok=True",
                 "amp=False", "val=True"]) == 0
    best = tmp_path / "runs" / "t" / "weights" / "best.pt"
    assert best.exists()
    out = _run_sub(f"""
        from ultralytics import YOLO
        pre = "attnzoo.integrations.ultralytics" in sys.modules
        m = YOLO({str(best)!r})
        names = sorted(n for n, _ in m.model.named_parameters())
        r = m.predict({str(dataset.parent / 'images' / 'train' / '0.png')!r}, imgsz=64, device="cpu", verbose=False)
        print(json.dumps({{"pre": pre, "post": "attnzoo.integrations.ultralytics" in sys.modules, "names": names,
                          "boxes": int(r[0].boxes.xyxy.shape[1]), "attempts": attempts}}))
    """, tmp_path)
    assert out["pre"] is False and out["post"] is True  # unpickling the checkpoint imported the integration
    assert names <= set(out["names"])
    assert out["boxes"] == 4 and out["attempts"] == []


def test_ddp_worker_file_imports_the_integration_before_building(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ultralytics.utils import dist

    cfg = azu.write_yolo_yaml("yolov8n.yaml", "simam", after="SPPF", out=tmp_path / "yolov8n-simam.yaml")
    trainer = SimpleNamespace(args=SimpleNamespace(model=str(cfg)), model=str(cfg), callbacks={})
    path = Path(dist.generate_ddp_file(trainer))  # what BaseTrainer._do_train's DDP launch runs per GPU
    try:
        lines = path.read_text().splitlines()
        k = next(i for i, line in enumerate(lines) if azu.DDP_IMPORT_LINE in line)
        assert k > next(i for i, line in enumerate(lines) if "sys.path =" in line)
        assert k < next(i for i, line in enumerate(lines) if "torch_load" in line)
        # the worker's own preamble (up to its trainer), then a build from the YAML as the stock trainer does
        head = "\n".join(lines[:k + 1]).replace('if __name__ == "__main__":', "if True:")
        out = _run_sub(head + f"""
    from ultralytics.nn.tasks import DetectionModel
    m = DetectionModel({str(cfg)!r}, verbose=False)
    print(json.dumps({{"zoo": sum(type(l).__name__ == "AttnZoo" for l in m.model)}}))
        """, tmp_path)
        assert out == {"zoo": 1}
    finally:
        dist.ddp_cleanup(trainer, str(path))


# -- 5. export --------------------------------------------------------------------------------------
def test_torchscript_and_onnx_export_match_the_eager_model(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    cfg = azu.write_yolo_yaml("yolo11n.yaml", "cbam", after="C3k2", where="head", out=tmp_path / "yolo11n-cbam.yaml")
    text = cfg.read_text() + "attnzoo:\n  - {attn: ema, position: bottleneck, where: backbone}\n"
    cfg.write_text(text)
    y = YOLO(str(cfg))
    x = torch.rand(1, 3, 64, 64)
    ts = y.export(format="torchscript", imgsz=64, device="cpu")
    onnx_path = y.export(format="onnx", imgsz=64, device="cpu", simplify=False)
    eager = y.model.eval()
    with torch.no_grad():
        ref = eager(x)[0]
    got_ts = torch.jit.load(ts)(x)
    got_ts = got_ts[0] if isinstance(got_ts, (tuple, list)) else got_ts
    assert torch.allclose(got_ts, ref, atol=1e-4)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got_onnx = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got_onnx, ref.numpy(), atol=1e-3)


# -- 4. detection ablation --------------------------------------------------------------------------
def test_shipped_detection_grid_expands_into_blocks_positions_seeds():
    from attnzoo.ablation.grid import load_grid

    grid = load_grid(REPO / "configs" / "ablation" / "detection" / "voc_yolo11n.yaml")
    assert grid.run_fn == "attnzoo.integrations.ultralytics.ablation:run_detection"
    labels = grid.variants
    assert {"baseline", "ema", "ema@block", "cbam@row:C3k2", "mhsa@psa"} <= set(labels)
    assert next(c for c in grid.cells if c.label == "cbam@row:C3k2").config["model"]["position"] == "row:C3k2"
    for c in grid.cells:
        assert c.config["train"]["seed"] == c.seed
        assert (c.baseline == "baseline") != c.is_baseline


def test_detection_cell_returns_map_metrics(dataset, tmp_path, monkeypatch):
    import yaml

    from attnzoo.ablation.grid import load_grid
    from attnzoo.integrations.ultralytics.ablation import run_detection

    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"cfg": "yolov8n.yaml", "attn": None}, "train": {
        "data": str(dataset), "epochs": 1, "imgsz": 64, "batch": 8, "workers": 0, "device": "cpu", "amp": False}}))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "name": "tiny", "base": str(base), "axes": {"model.attn": [None, "eca"]},
        "overrides": {"model.position": "bottleneck"}, "seeds": [0], "seed_keys": ["train.seed"],
        "run_fn": "attnzoo.integrations.ultralytics.ablation:run_detection"}))
    grid = load_grid(grid_file)
    cell = next(c for c in grid.cells if c.label == "eca")
    result = run_detection(cell.config, tmp_path / "run")
    assert result["test"]["acc1"] is None and result["metric"] == "map50_95"
    for k in ("map50_95", "map50"):
        assert 0.0 <= result[k] <= 1.0 and result["test"][k] == result[k]
    assert result["map50"] >= result["map50_95"]
    stock = _params(DetectionModel("yolov8n.yaml", nc=2, verbose=False))
    assert result["params"] > stock and result["insert_report"]["rows"]
    assert len(result["epochs"]) == 1 and Path(result["weights"]).exists()


def test_detection_ablation_runs_through_attnzoo_ablate_and_reports_map(dataset, tmp_path, monkeypatch, capsys):
    """The whole route a user takes: attnzoo ablate (validation, dry run, worker processes, store)
    then attnzoo report, on mAP50-95 -- with the workers' sockets blocked too."""
    import yaml

    from attnzoo.ablation.cli import ablate_main, report_main
    from attnzoo.ablation.store import ResultStore

    monkeypatch.chdir(tmp_path)
    attempts = tmp_path / "network_attempts.txt"
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import socket
        def _blocked(*a, **k):
            with open({str(attempts)!r}, "a") as f:
                f.write(repr(a[:2]) + "\\n")
            raise OSError("network blocked")
        socket.socket.connect = lambda self, *a: _blocked(*a)
        socket.create_connection = _blocked
        socket.getaddrinfo = _blocked
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guard), str(REPO), os.environ.get("PYTHONPATH", "")]))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"cfg": "yolov8n.yaml", "attn": None}, "train": {
        "data": str(dataset), "epochs": 1, "imgsz": 64, "batch": 8, "workers": 0, "device": "cpu", "amp": False}}))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "name": "tiny_detection", "base": str(base), "axes": {"model.attn": [None, "eca"]},
        "overrides": {"model.position": "bottleneck"}, "baseline": {"model.attn": None}, "seeds": [0],
        "seed_keys": ["train.seed"], "metric": "map50_95", "workers": 2, "store": "results.sqlite",
        "run_fn": "attnzoo.integrations.ultralytics.ablation:run_detection"}))
    assert ablate_main([str(grid_file), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "eca" in dry and "?" not in dry.split("\n", 2)[2]  # params and FLOPs of each cell, from the hook
    assert ablate_main([str(grid_file)]) == 0
    rows = ResultStore(tmp_path / "results.sqlite").rows()
    assert sorted(r["label"] for r in rows) == ["baseline", "eca"] and {r["status"] for r in rows} == {"ok"}
    assert all(0.0 <= r["test_metrics"]["map50_95"] <= 1.0 and r["acc1"] is None for r in rows)
    capsys.readouterr()
    assert report_main([str(grid_file), "--formats", "md,csv"]) == 0
    assert "mAP50-95" in capsys.readouterr().out + (tmp_path / "README.md").read_text()
    assert not attempts.exists(), attempts.read_text()
