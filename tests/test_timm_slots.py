"""Every registered block in every timm family's own attention slot (attnzoo.timm_slots.TIMM_SLOTS).

timm builds the block itself, with the keywords of that family (device/dtype, a config's rd_ratio,
act_layer, mobilenetv3/hardcorenas's gate_layer/force_act_layer/rd_round_fn, efficientnet's
``se_layer(8, rd_ratio=1.0)`` probe). Each block is built, run forward and backward at 2x3x32x32, and
found in the slot. The full registry goes through every family except the two whose models are the
slowest here (sknet and res2net make the same call as resnet10t and vovnet, which do get the full
registry); those two get one block of each constructor shape. So every (block, call signature) pair
is exercised.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from attnzoo import create_attn, get_attn, list_attn
from attnzoo.factory import TIMM_SLOT_KWARGS, timm_kwargs_ignored
from attnzoo.timm_slots import TIMM_SLOTS, timm_slot

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = list_attn()
# one block of each constructor shape: full timm keywords (se), gate only (eca), reduction + act + gate
# with spatial part (cbam), act without gate (sk), no timm keyword at all (gct), self-attention (nonlocal)
FEW = ["se", "eca", "cbam", "sk", "gct", "nonlocal"]
FEW_ONLY = {"sknet", "res2net"}

TIMM_INIT_ZEROES_LINEAR_BIAS = {"vovnet", "efficientnet", "mobilenetv5", "hardcorenas"}


def _cases():
    for slot in TIMM_SLOTS:
        for name in (FEW if slot.family in FEW_ONLY else BLOCKS):
            yield pytest.param(slot.family, name, id=f"{slot.family}-{name}")


def _block_class(name: str) -> type:
    f = get_attn(name)
    return f.func if isinstance(f, functools.partial) else f


@pytest.mark.parametrize("family,name", list(_cases()))
def test_block_builds_and_trains_in_timm_slot(family, name):
    torch.manual_seed(0)
    model = timm_slot(family).build(get_attn(name), 3).train()
    cls = _block_class(name)
    assert any(type(m) is cls for m in model.modules()), f"{name} is not in {family}'s slot"
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    y.square().sum().backward()
    blocks = [m for m in model.modules() if type(m) is cls]
    grads = [p.grad for b in blocks for p in b.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("family", sorted(TIMM_INIT_ZEROES_LINEAR_BIAS))
def test_blocks_survive_timm_init_that_zeroes_every_linear_bias(family):
    """timm's vovnet/efficientnet/mobilenet init zeroes ``m.bias`` of every nn.Linear unchecked:
    mhsa and axial keep their bias-free position MLP output out of its reach (BiaslessLinear)."""
    for name in ("mhsa", "axial", "mhsa_topk"):
        timm_slot(family).build(get_attn(name), 3)


def test_every_slot_call_signature_gets_the_whole_registry():
    full = {s.kind for s in TIMM_SLOTS if s.family not in FEW_ONLY}
    assert full == {s.kind for s in TIMM_SLOTS}


def test_hardcorenas_keywords_are_used_as_timms_squeeze_excite_uses_them():
    """Same slot, same keywords: attnzoo's se gets the widths and layers timm's SqueezeExcite gets."""
    from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite

    ours = [m for m in timm_slot("hardcorenas").build(get_attn("se"), 3).modules() if type(m) is _block_class("se")]
    theirs = [m for m in timm_slot("hardcorenas").build(TimmSqueezeExcite, 3).modules() if type(m) is TimmSqueezeExcite]
    assert ours and len(ours) == len(theirs)
    for se, ref in zip(ours, theirs):
        assert type(se.act) is type(ref.act1) is nn.ReLU  # force_act_layer=nn.ReLU beats the model's hard_swish
        assert isinstance(se.gate, nn.Hardsigmoid) and isinstance(ref.gate, nn.Hardsigmoid)
        assert (se.channels, se.rd_channels) == (ref.conv_reduce.in_channels, ref.conv_reduce.out_channels)
    assert [se.rd_channels for se in ours] == [24, 40]  # round_channels(72 / 4), round_channels(144 / 4)


def test_cspnet_act_layer_and_rd_ratio_reach_the_block():
    from timm.layers import make_divisible

    model = timm_slot("cspnet").build(get_attn("cbam"), 3)
    blocks = [m for m in model.modules() if type(m) is _block_class("cbam")]
    assert blocks
    for b in blocks:
        assert any(isinstance(m, nn.SiLU) for m in b.modules())  # cs3darknet's act_layer="silu"
        assert b.channel.rd_channels == make_divisible(b.channels * 0.25, 8, round_limit=0.0)


def test_force_act_layer_and_rd_round_fn_without_a_slot():
    gc = create_attn("gc", 64, act_layer=nn.SiLU, force_act_layer=nn.ReLU, rd_round_fn=lambda v: 7)
    assert any(isinstance(m, nn.ReLU) for m in gc.modules())
    assert not any(isinstance(m, nn.SiLU) for m in gc.modules())
    assert gc.rd_channels == 7
    explicit = create_attn("gc", 64, rd_channels=5, rd_round_fn=lambda v: 7)  # rd_channels wins, as in timm
    assert explicit.rd_channels == 5


@pytest.mark.parametrize("name", BLOCKS)
def test_efficientnet_builder_sees_rd_ratio(name):
    """timm's builder probes se_layer(8, rd_ratio=1.0); a TypeError would make it drop se_ratio."""
    from timm.models._efficientnet_builder import EfficientNetBuilder

    assert EfficientNetBuilder(se_layer=get_attn(name)).se_has_ratio


@pytest.mark.parametrize("name", BLOCKS)
def test_block_takes_every_timm_keyword_and_names_those_it_ignores(name):
    cls = _block_class(name)
    block = get_attn(name)(24, **{k: v for k, v in dict(
        act_layer=nn.SiLU, gate_layer="hard_sigmoid", rd_ratio=0.5, rd_channels=None, rd_divisor=4,
        force_act_layer=None, rd_round_fn=None, device="cpu", dtype=torch.float32).items()})
    assert block(torch.randn(1, 24, 5, 5)).shape == (1, 24, 5, 5)
    ignored = timm_kwargs_ignored(cls)
    assert set(ignored) <= set(TIMM_SLOT_KWARGS) - {"device", "dtype"}
    import inspect

    declared = inspect.signature(cls.__init__).parameters
    assert not set(ignored) & set(declared), "a block ignores a keyword it declares"
    for k in ignored:
        assert f"``{k}``" in (cls.__doc__ or ""), f"{name}'s docstring does not say it ignores {k}"


def test_unknown_keywords_still_raise():
    with pytest.raises(TypeError, match=r"'se' got unknown argument\(s\) \['foo'\]"):
        create_attn("se(foo=1)", 16)
    with pytest.raises(TypeError, match=r"'eca' got unknown argument\(s\) \['foo'\]"):
        create_attn("eca", 16, foo=1)
    with pytest.raises(TypeError, match="foo"):
        get_attn("eca")(16, foo=1)
    # timm's keywords a block has no part for are accepted, in create_attn too
    assert create_attn("eca", 16, act_layer="silu", rd_ratio=0.5).channels == 16


def test_activation_without_inplace_argument_is_accepted():
    se = create_attn("se", 16, act_layer=nn.GELU)  # torch's GELU has no inplace=
    assert isinstance(se.act, nn.GELU)


def test_readme_lists_exactly_the_tested_timm_slots():
    spec = importlib.util.spec_from_file_location("attnzoo_readme_script", ROOT / "benchmarks" / "readme.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- timm-slots:start -->\n(.*?)\n<!-- timm-slots:end -->", readme, flags=re.S)
    assert m, "README lost its timm-slots markers"
    assert m.group(1) == script.timm_slots_table(), "regenerate it: python benchmarks/readme.py"
