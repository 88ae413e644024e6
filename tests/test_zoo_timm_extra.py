"""The blocks timm has that attnzoo added from timm's documented behaviour (ceca, ecam, lcbam, scoord,
strip, split, bat): same outputs as timm's module under copied weights (1e-5), plus the behaviours
that make each one what it is. The registry-wide contract (tests/test_blocks.py) covers them too.
"""
from __future__ import annotations

import pytest
import torch
import timm.layers as tl
from timm.layers.coord_attn import StripAttn as StripAttnTimm
from timm.layers.create_attn import get_attn as timm_get_attn

from attnzoo import create_attn, list_attn


def _randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for b in module.buffers():
            if b.dtype.is_floating_point:
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)  # running stats away from 0/1
    return module


def _assert_parity(ours, theirs, x, train=False):
    theirs = _randomize_(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same keys: timm's checkpoints load too
    ours.train(train), theirs.train(train)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# (attnzoo name, timm's attn name, channels): timm's factory builds the reference, as timm models do
PARITY = [
    ("ceca", "ceca", 64), ("ceca", "ceca", 5), ("ecam", "ecam", 64), ("ecam", "ecam", 24),
    ("lcbam", "lcbam", 64), ("lcbam", "lcbam", 48), ("scoord", "scoord", 64), ("scoord", "scoord", 40),
    ("strip", "strip", 32),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,timm_name,channels", PARITY, ids=[f"{p[0]}-C{p[2]}" for p in PARITY])
def test_same_outputs_as_timm_with_copied_weights(name, timm_name, channels, train):
    torch.manual_seed(0)
    ours = create_attn(name, channels)
    theirs = timm_get_attn(timm_name)(channels)
    x = torch.randn(2, channels, 7, 9)
    _assert_parity(ours, theirs, x, train)


def test_timm_names_are_registered():
    assert {"ceca", "ecam", "lcbam", "scoord", "strip"} <= set(list_attn())


def test_ceca_wraps_around_the_channels_where_eca_pads_with_zeros():
    ceca, eca = create_attn("ceca", 16, kernel_size=3), create_attn("eca", 16, kernel_size=3)
    eca.conv.weight.data.copy_(ceca.conv.weight.data)
    x = torch.randn(2, 16, 4, 4)
    z = x.mean((2, 3))
    w = ceca.conv.weight.view(3)
    first = torch.sigmoid(w[0] * z[:, 15] + w[1] * z[:, 0] + w[2] * z[:, 1])  # channel 0's left neighbour is 15
    torch.testing.assert_close(ceca(x)[:, 0], x[:, 0] * first.view(2, 1, 1))
    assert not torch.allclose(ceca(x)[:, 0], eca(x)[:, 0])
    torch.testing.assert_close(ceca(x)[:, 5], eca(x)[:, 5])  # inner channels see the same window


def test_ceca_bias_is_what_timm_act_layer_switches_on():
    theirs = tl.CecaModule(32, act_layer=torch.nn.ReLU)
    assert theirs.conv.bias is not None
    _assert_parity(create_attn("ceca", 32, bias=True), theirs, torch.randn(2, 32, 5, 5))


def test_ceca_and_ecam_kernel_size_has_timms_floor_of_three():
    assert create_attn("ceca", 4).kernel_size == 3 and create_attn("eca", 4).kernel_size == 1
    assert create_attn("ecam", 512).kernel_size == create_attn("eca", 512).kernel_size == 5


def test_ecam_is_ecas_filter_made_nonlinear():
    m = create_attn("ecam", 64)
    assert (m.conv.in_channels, m.conv.out_channels, m.conv2.in_channels, m.rd_channels) == (1, 8, 8, 8)


def test_lcbam_averages_the_pooled_descriptors_before_one_mlp_pass():
    m = _randomize_(create_attn("lcbam", 32)).eval()
    x = torch.randn(2, 32, 6, 6)
    c = m.channel
    z = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)
    xc = x * torch.sigmoid(c.fc2(torch.relu(c.fc1(z))))
    s = 0.5 * xc.mean(1, keepdim=True) + 0.5 * xc.amax(1, keepdim=True)
    want = xc * torch.sigmoid(m.spatial.conv.bn(m.spatial.conv.conv(s)))
    torch.testing.assert_close(m(x), want)


def test_lcbam_gate_layer_sets_both_gates():
    m = create_attn("lcbam", 32, gate_layer="hard_sigmoid")
    assert isinstance(m.channel.gate, torch.nn.Hardsigmoid) and isinstance(m.spatial.gate, torch.nn.Hardsigmoid)


def test_scoord_and_strip_skip_adds_the_input():
    for name in ("scoord", "strip"):
        x = torch.randn(1, 16, 5, 3)
        plain, skip = create_attn(name, 16), create_attn(name, 16, has_skip=True)
        skip.load_state_dict(plain.state_dict())
        torch.testing.assert_close(skip(x), plain(x) + x)
    _assert_parity(create_attn("strip", 16, has_skip=True, use_conv=False),
                   StripAttnTimm(16, has_skip=True, use_conv=False), torch.randn(2, 16, 4, 6))


def test_scoord_width_is_about_ses_parameter_count():
    assert create_attn("scoord", 64).rd_channels == 8  # make_divisible(64 * 0.25 * 2/3 = 10.7, 8)
    assert create_attn("scoord", 240).rd_channels == 40


SPLIT_CONFIGS = [  # (attnzoo kwargs, timm SplitAttn kwargs): the paper's BN, timm's default (no norm), K and R
    ({}, dict(norm_layer=torch.nn.BatchNorm2d)),
    (dict(norm=False), {}),
    (dict(radix=4, groups=2), dict(radix=4, groups=2, norm_layer=torch.nn.BatchNorm2d)),
    (dict(radix=1), dict(radix=1, norm_layer=torch.nn.BatchNorm2d)),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kwargs,timm_kwargs", SPLIT_CONFIGS, ids=["paper", "timm-default", "R4-K2", "R1"])
def test_split_same_outputs_as_timm_with_copied_weights(kwargs, timm_kwargs, train):
    _assert_parity(create_attn("split", 64, **kwargs), tl.SplitAttn(64, **timm_kwargs), torch.randn(2, 64, 5, 6), train)


def test_split_weights_are_a_softmax_over_the_splits():
    from attnzoo.explain import capture_attention

    m = _randomize_(create_attn("split", 30, radix=3))
    maps = capture_attention(m, torch.randn(2, 30, 4, 4)).of_kind("channel")
    assert len(maps) == 3  # one tap per split
    weights = torch.stack([t.reshape(2, 30) for t in maps.values()], 0)  # (R, B, C)
    torch.testing.assert_close(weights.sum(0), torch.ones(2, 30))


def test_split_says_which_radix_and_groups_fit():
    with pytest.raises(ValueError, match="divisible by groups \\* radix = 4"):
        create_attn("split", 18, radix=2, groups=2)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", [(7, 7), (14, 14), (14, 21)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bat_same_outputs_as_timm_where_the_map_divides_into_blocks(size, train):
    ours, theirs = create_attn("bat", 64), tl.BatNonLocalAttn(64)
    if train:  # dropout draws differ between the two modules; compare the deterministic part
        ours.dropout.p = theirs.dropout.p = 0.0
    _assert_parity(ours, theirs, torch.randn(2, 64, *size), train)


def test_bat_at_other_sizes_pads_the_transform_with_zeros():
    """Where timm refuses (H, W not multiples of k), the transform acts on the zero-padded map."""
    m = _randomize_(create_attn("bat", 32, block_size=4)).eval()
    x = torch.randn(1, 32, 6, 5)
    ba = m.ba
    xr = m.conv1(x)
    f = ba.conv1(xr)
    p = ba.conv_p(torch.nn.functional.adaptive_max_pool2d(f, (4, 1))).view(1, 2, 4, 4).sigmoid()
    q = ba.conv_q(torch.nn.functional.adaptive_max_pool2d(f, (1, 4))).view(1, 2, 4, 4).sigmoid()
    p, q = p / p.sum(3, keepdim=True), q / q.sum(2, keepdim=True)
    big_p = torch.kron(p, torch.eye(2))  # (1, 2, 8, 8): H padded 6 -> 8, t_h = 2
    big_q = torch.kron(q, torch.eye(2))  # W padded 5 -> 8, t_w = 2
    xp = torch.nn.functional.pad(xr, (0, 3, 0, 2)).view(1, 2, xr.shape[1] // 2, 8, 8)
    y = (big_p.unsqueeze(2) @ xp @ big_q.unsqueeze(2)).reshape(1, -1, 8, 8)[:, :, :6, :5]
    torch.testing.assert_close(m(x), x + m.conv2(ba.conv2(y)))


def test_bat_captured_weights_sum_to_one_per_pixel():
    from attnzoo.explain.capture import AttentionCapture

    m = _randomize_(create_attn("bat", 32)).eval()
    raw = []
    m.ba.tap.register_forward_hook(lambda mod, inp, out: raw.append(out))
    with AttentionCapture(m) as cap:
        m(torch.randn(2, 32, 14, 7))
    assert raw[0].shape == (2, 2, 14 * 7, 7, 7)  # (B, G, H*W, k, k)
    torch.testing.assert_close(raw[0].sum((3, 4)), torch.ones(2, 2, 98))
    (t,) = cap.maps.values()
    assert t.shape == (2, 2, 14, 7)  # the centre query's weights per group, on the map
    m(torch.randn(2, 32, 14, 7))
    assert len(raw) == 1  # not built when nobody captures


def test_bat_says_what_groups_fit():
    with pytest.raises(ValueError, match="divisible by groups=3"):
        create_attn("bat", 64, groups=3)
