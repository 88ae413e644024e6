"""The timm-style factory: spec forms, registration, listing, timm interop and error messages."""
from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo import create_attn, get_attn, list_attn, register_attn
from attnzoo.blocks.cbam import Cbam
from attnzoo.blocks.se import SqueezeExcite
from attnzoo.factory import ATTN_REGISTRY, attn_info
from attnzoo.spec import format_spec, parse_spec

META = dict(family="channel", paper="A test block", authors="Nobody", year=2024, link="https://example.org")


@pytest.fixture
def scratch_name():
    """A registry name that is removed again after the test."""
    name = "scratch_block_for_tests"
    yield name
    if name in ATTN_REGISTRY:
        ATTN_REGISTRY.unregister(name)


# -- spec forms -------------------------------------------------------------
def test_create_attn_builds_a_registered_name():
    block = create_attn("se", 64)
    assert isinstance(block, SqueezeExcite) and block.channels == 64 and block.rd_channels == 8


def test_create_attn_reads_literal_arguments_from_the_string():
    block = create_attn("se(rd_ratio=0.25, rd_divisor=1, act_layer='gelu')", 64)
    assert block.rd_channels == 16
    assert type(block.act).__name__ == "GELU"  # resolved through timm's activation table


def test_create_attn_keyword_arguments_override_the_string():
    assert create_attn("se(rd_ratio=0.25)", 64, rd_ratio=0.5, rd_divisor=1).rd_channels == 32


def test_create_attn_accepts_a_class_a_partial_and_a_module():
    assert isinstance(create_attn(Cbam, 32), Cbam)
    assert create_attn(functools.partial(SqueezeExcite, rd_ratio=0.5), 64).rd_channels == 32
    block = SqueezeExcite(16)
    assert create_attn(block, 999) is block


@pytest.mark.parametrize("spec", [None, "", "none", "None"])
def test_create_attn_of_nothing_is_none(spec):
    assert create_attn(spec, 64) is None
    assert get_attn(spec) is None


def test_get_attn_returns_the_class_or_a_partial_without_building():
    assert get_attn("se") is SqueezeExcite
    p = get_attn("se(rd_ratio=0.5)")
    assert isinstance(p, functools.partial) and p.func is SqueezeExcite and p.keywords == {"rd_ratio": 0.5}
    assert p(64).rd_channels == 32


def test_get_attn_refuses_a_built_module():
    with pytest.raises(TypeError, match="use create_attn"):
        get_attn(SqueezeExcite(16))


def test_timm_prefix_builds_timms_own_block():
    from timm.layers import EcaModule, SEModule

    assert isinstance(create_attn("timm:se", 64), SEModule)
    assert isinstance(create_attn("timm:eca", 64), EcaModule)
    with pytest.raises(KeyError, match="timm has no attention block 'nope'"):
        create_attn("timm:nope", 64)


def test_attnzoo_block_drops_into_a_timm_resnet_as_attn_layer():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=get_attn("eca")))
    assert all(type(b.se).__name__ == "EfficientChannelAttn" for b in model.layer1)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# -- registration -----------------------------------------------------------
def test_register_attn_registers_a_class_with_its_metadata(scratch_name):
    @register_attn(scratch_name, **META)
    class Scratch(nn.Module):
        def __init__(self, channels, *, scale: float = 2.0):
            super().__init__()
            self.channels = channels
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    assert scratch_name in list_attn()
    assert attn_info(scratch_name).metadata["paper"] == "A test block"
    assert attn_info(scratch_name).defaults == {"scale": 2.0}
    assert create_attn(f"{scratch_name}(scale=3.0)", 8).scale == 3.0
    assert create_attn(scratch_name, 8, device="meta").channels == 8  # factory kwargs added for timm


def test_register_attn_registers_a_partial_variant(scratch_name):
    register_attn(scratch_name, functools.partial(SqueezeExcite, rd_ratio=0.25, rd_divisor=1), **META)
    assert create_attn(scratch_name, 64).rd_channels == 16
    assert attn_info(scratch_name).defaults["rd_ratio"] == 0.25


def test_register_attn_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="'se' is already registered"):
        register_attn("se", SqueezeExcite, **META)


def test_register_attn_requires_a_family_and_the_paper(scratch_name):
    with pytest.raises(ValueError, match="family must be one of"):
        register_attn(scratch_name, SqueezeExcite, **{**META, "family": "magic"})
    with pytest.raises(ValueError, match=r"missing metadata \['link'\]"):
        register_attn(scratch_name, SqueezeExcite, **{k: v for k, v in META.items() if k != "link"})
    assert scratch_name not in list_attn()


def test_list_attn_rejects_an_unknown_family():
    with pytest.raises(ValueError, match="unknown family 'chanel'"):
        list_attn(family="chanel")


# -- error messages ---------------------------------------------------------
def test_unknown_name_suggests_the_closest_registered_names():
    with pytest.raises(KeyError, match=r"unknown attention block 'sse'; did you mean [^?]*'se'[^?]*\?.*attnzoo.list_attn\(\) lists all \d+"):
        create_attn("sse", 64)


def test_unknown_keyword_names_the_block_and_its_arguments():
    with pytest.raises(TypeError, match=r"'se' got unknown argument\(s\) \['ratio'\]; it accepts: rd_ratio=0.0625"):
        create_attn("se(ratio=0.5)", 64)
    with pytest.raises(TypeError, match=r"'cbam' got unknown argument\(s\) \['kernel'\]"):
        create_attn("cbam", 64, kernel=3)


@pytest.mark.parametrize(
    "spec, column, message",
    [
        ("se(rd_ratio=0.25", 17, "missing closing"),
        ("se(0.25)", 3, "keyword arguments"),
        ("se(rd_ratio=0.25,,)", 18, "malformed arguments"),
        ("se(act_layer=nn.GELU)", 14, "not a literal"),
        ("se(rd_ratio=__import__('os').getcwd())", 13, "not a literal"),
        ("se x", 4, "expected '\\('"),
        ("(rd_ratio=1)", 1, "expected a block name"),
    ],
)
def test_malformed_spec_says_where(spec, column, message):
    with pytest.raises(ValueError, match=rf"malformed block spec at column {column}: .*{message}"):
        create_attn(spec, 64)


def test_spec_strings_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    with pytest.raises(ValueError):
        parse_spec(f"se(x=open({str(marker)!r}, 'w'))")
    assert not marker.exists()


def test_parse_and_format_spec_round_trip():
    name, kwargs = parse_spec(" cbam( kernel_size=3, rd_ratio=0.125, act_layer='silu', x=(1, 2), y=None) ")
    assert name == "cbam" and kwargs == {"kernel_size": 3, "rd_ratio": 0.125, "act_layer": "silu", "x": (1, 2), "y": None}
    assert parse_spec(format_spec(name, kwargs)) == (name, kwargs)


def test_channels_too_small_for_the_reduction_say_so():
    with pytest.raises(ValueError, match=r"se: channels=8 is too small for rd_ratio=0.0625.*channels >= 16"):
        create_attn("se", 8)
    assert create_attn("se", 8, rd_channels=2).rd_channels == 2  # the way out the message names


def test_channels_must_be_a_positive_int():
    with pytest.raises(TypeError, match="channels must be an int"):
        create_attn("eca", 64.0)
    with pytest.raises(ValueError, match="eca: channels=0 is too small"):
        create_attn("eca", 0)
    with pytest.raises(TypeError, match="needs channels"):
        create_attn("eca")


def test_mhsa_heads_must_divide_channels():
    with pytest.raises(ValueError, match=r"channels=6 must be divisible by num_heads=4; choose num_heads among \[1, 2, 3, 6\]"):
        create_attn("mhsa", 6)


def test_unknown_activation_name_is_reported():
    with pytest.raises(ValueError, match="se: unknown act_layer 'relu7'"):
        create_attn("se(act_layer='relu7')", 64)


def test_public_api_is_small():
    assert set(attnzoo.__all__) >= {"create_attn", "get_attn", "list_attn", "register_attn"}
    assert all(not n.startswith("_") or n == "__version__" for n in attnzoo.__all__)


# -- attnzoo list -------------------------------------------------------------
def test_attnzoo_list_prints_every_registered_block_with_its_family_and_parameters(capsys):
    from attnzoo.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_attn():
        assert re.search(rf"│ {re.escape(name)}\s+│ {re.escape(attn_info(name).metadata['family'])}\s", out), name
    assert "1,096" in out  # se at C=64: 64*8 + 8 + 8*64 + 64 parameters


def test_attnzoo_list_filters_and_reports_an_empty_match(capsys):
    from attnzoo.cli import main

    assert main(["list", "cbam*", "--family", "spatial"]) == 0
    out = capsys.readouterr().out
    assert "cbam_spatial" in out and "cbam_channel" not in out
    assert main(["list", "nothing*"]) == 1
    assert "no attention block matches 'nothing*'" in capsys.readouterr().err


def test_attnzoo_unknown_command_suggests_the_closest(capsys):
    from attnzoo.cli import main

    assert main(["lst"]) == 2
    assert "did you mean 'list'?" in capsys.readouterr().err
