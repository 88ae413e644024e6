"""The contract every registered attention block keeps, parametrized over the registry.

A block registered anywhere in attnzoo is tested here the moment it registers: shape, batch 1,
odd and 1x1 maps, gradients to every parameter, finite values, channels_last, bfloat16 autocast,
torch.compile, ONNX export (compared with eager through onnxruntime), timm interop, input checks.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo import create_attn, get_attn, list_attn
from attnzoo.blocks.base import AttnTap
from attnzoo.factory import FAMILIES, attn_info

BLOCKS = list_attn()
C = 64  # every block must build at C=64 with its defaults
SIZES = [(1, 1), (3, 5), (7, 7), (32, 32)]


def randomize_(block: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every parameter, so zero-initialised scales (identity at start) cannot
    hide a broken branch: afterwards every parameter must influence the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4  # weights at a realistic scale, 1-D at std 0.5
            p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
    return block


def build(name: str, channels: int = C, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_(create_attn(name, channels), seed)


def test_registry_has_the_core_blocks():
    assert {"se", "eca", "cbam", "cbam_channel", "cbam_spatial", "mhsa", "nonlocal"} <= set(BLOCKS)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_metadata_names_its_paper(name):
    meta = attn_info(name).metadata
    assert meta["family"] in FAMILIES
    assert meta["paper"] and meta["authors"]
    assert isinstance(meta["year"], int) and 1990 < meta["year"] <= 2026
    assert meta["link"].startswith("https://")
    if not meta["onnx"]:
        assert meta.get("onnx_note"), f"{name} cannot export to ONNX but its metadata does not say why"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", BLOCKS)
def test_block_keeps_shape(name, size):
    block = build(name)
    x = torch.randn(2, C, *size)
    for train in (True, False):
        block.train(train)
        y = block(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all(), f"{name} gave non-finite values at {size} (train={train})"


@pytest.mark.parametrize("name", BLOCKS)
def test_block_works_at_batch_one_in_train_mode(name):
    block = build(name).train()
    x = torch.randn(1, C, 7, 7, requires_grad=True)
    y = block(x)
    y.square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", BLOCKS)
def test_block_works_at_batch_one_on_a_one_pixel_map_in_train_mode(name):
    """The harshest case for norms over pooled descriptors: one value per channel."""
    block = build(name).train()
    x = torch.randn(1, C, 1, 1, requires_grad=True)
    y = block(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", BLOCKS)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    block = build(name).train()
    x = torch.randn(2, C, 7, 6, requires_grad=True)  # parameter-free blocks still pass gradients on
    y = block(x)
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in block.named_parameters():
        assert p.grad is not None, f"{name}.{pname} is not used in forward"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} gets a zero gradient: it can never learn"


@pytest.mark.parametrize("name", BLOCKS)
def test_block_output_depends_on_its_input(name):
    """Not a constant and not a silent identity once its parameters are non-trivial."""
    block = build(name).eval()
    x = torch.randn(2, C, 6, 6)
    y = block(x)
    assert not torch.allclose(y, x), f"{name} returned its input unchanged with random parameters"


@pytest.mark.parametrize("name", BLOCKS)
def test_channels_last_gives_the_same_result(name):
    block = build(name).eval()
    x = torch.randn(2, C, 9, 7)
    y = block(x)
    y_cl = block(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BLOCKS)
def test_bfloat16_autocast_gives_finite_close_values(name):
    block = build(name).eval()
    x = torch.randn(2, C, 24, 24)  # large enough for attention over positions to be sharp
    y = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf = block(x)
    assert torch.isfinite(y_bf).all()
    # bfloat16 keeps ~3 significant digits; a wrong result is far off, not a few percent
    err = (y_bf.float() - y).norm() / y.norm().clamp_min(1e-6)
    assert err < 0.1, f"{name} under bfloat16 autocast is {err:.3f} (relative) away from float32"


@pytest.mark.parametrize("name", BLOCKS)
def test_block_compiles_without_graph_breaks(name):
    torch._dynamo.reset()
    block = build(name).eval()
    x = torch.randn(2, C, 5, 7)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BLOCKS)
def test_onnx_export_matches_eager(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    block = build(name).eval()
    x = torch.randn(2, C, 5, 7)
    meta = attn_info(name).metadata
    path = tmp_path / f"{name}.onnx"
    if not meta["onnx"]:
        with pytest.raises(Exception):
            _export(block, x, path)
        return
    _export(block, x, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), block(x), rtol=1e-4, atol=1e-5)


def _export(block, x, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(block, (x,), str(path), dynamo=True, verbose=False)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_works_as_timm_attn_layer(name):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", num_classes=3, block_args=dict(attn_layer=get_attn(name))).eval()
    assert type(model.layer2[0].se) is type(create_attn(name, 128))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_rejects_a_non_4d_input_saying_what_it_expected(name):
    block = create_attn(name, C)
    with pytest.raises(ValueError, match=r"4-D input \(B, C=64, H, W\)"):
        block(torch.randn(2, C, 8))


@pytest.mark.parametrize("name", BLOCKS)
def test_block_rejects_wrong_channels_saying_which_to_use(name):
    block = create_attn(name, C)
    with pytest.raises(ValueError, match=r"built for 64 channels .* channels=32"):
        block(torch.randn(2, 32, 4, 4))


@pytest.mark.parametrize("name", BLOCKS)
def test_block_passes_its_attention_through_a_tap(name):
    """Attention capture (attnzoo.explain) needs every block to expose what it computed."""
    block = create_attn(name, C)
    taps = [m for m in block.modules() if isinstance(m, AttnTap)]
    assert taps, f"{name} has no AttnTap: its attention cannot be captured"


@pytest.mark.parametrize("name", BLOCKS)
def test_block_accepts_torch_factory_kwargs_device_and_dtype(name):
    """timm builds attn_layer(channels, device=..., dtype=...); torch modules take the same."""
    block_on_meta = create_attn(name, C, device="meta")
    assert all(p.device.type == "meta" for p in block_on_meta.parameters())
    if any(True for _ in create_attn(name, C).parameters()):
        block_bf16 = create_attn(name, C, dtype=torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in block_bf16.parameters())


def test_list_attn_filters_like_timm_list_models():
    assert list_attn("cbam*") == ["cbam", "cbam_channel", "cbam_spatial"]
    assert set(list_attn(family="self-attention")) >= {"mhsa", "nonlocal"}
    assert all(attn_info(n).metadata["family"] == "channel" for n in list_attn(family="channel"))
    assert list_attn() == sorted(list_attn())
    assert len(list_attn()) == len(attnzoo.factory.ATTN_REGISTRY)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_records_its_channels_and_reduced_width(name):
    block = create_attn(name, C)
    assert block.channels == C
    rd = getattr(block, "rd_channels", None)
    assert rd is None or (isinstance(rd, int) and rd >= 1)
