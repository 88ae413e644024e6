"""The core blocks against hand-computed cases and against timm with copied weights."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnzoo import create_attn
from attnzoo.blocks.eca import eca_kernel_size
from attnzoo.blocks.mhsa import relative_offsets

timm_layers = pytest.importorskip("timm.layers")
from timm.layers.cbam import CbamModule  # noqa: E402  (not re-exported by timm.layers)


def per_channel(values, h=3, w=3, batch=2):
    """A (batch, C, h, w) tensor whose channel c is the constant values[c]."""
    v = torch.tensor(values, dtype=torch.float32)
    return v.view(1, -1, 1, 1).expand(batch, -1, h, w).clone()


# -- SE -----------------------------------------------------------------------
def test_se_hand_computed_on_a_2x4x3x3_tensor():
    se = create_attn("se", 4, rd_channels=2)
    with torch.no_grad():
        se.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, -1.0]]).view(2, 4, 1, 1))
        se.fc1.bias.zero_()
        se.fc2.weight.copy_(torch.tensor([[0.0, 5], [math.log(3), 5], [0, 5], [-math.log(3), 5]]).view(4, 2, 1, 1))
        se.fc2.bias.zero_()
    x = per_channel([1.0, 2.0, 3.0, 4.0])
    # squeeze: z = [1, 2, 3, 4]; fc1: [1, -4] -> relu -> [1, 0]; fc2: [0, ln3, 0, -ln3]
    # sigmoid: [1/2, 3/4, 1/2, 1/4]; y = x * s = [0.5, 1.5, 1.5, 1.0] per channel
    torch.testing.assert_close(se(x), per_channel([0.5, 1.5, 1.5, 1.0]))


def test_se_matches_timm_semodule_with_copied_weights():
    ours, theirs = create_attn("se", 64), timm_layers.SEModule(64)
    theirs.load_state_dict(ours.state_dict())  # same names: fc1, fc2 (timm's bn is an Identity)
    x = torch.randn(2, 64, 9, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    assert ours.rd_channels == theirs.fc1.out_channels == 8


# -- ECA ----------------------------------------------------------------------
@pytest.mark.parametrize("channels, k", [(2, 1), (4, 1), (16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_size_follows_eq_12(channels, k):
    # k = |(log2 C + 1) / 2|_odd: e.g. C=256 -> 4.5 -> 4 -> 5; C=2048 -> 6 -> 7
    assert eca_kernel_size(channels) == k
    assert create_attn("eca", channels).kernel_size == k


def test_eca_hand_computed_neighbour_direction():
    eca = create_attn("eca", 4, kernel_size=3)
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 3))
    x = per_channel([0.0, math.log(3), 0.0, 0.0])
    # conv (cross-correlation, zero padding 1): s_c = z_{c-1}: [0, 0, ln3, 0] -> sigmoid [.5, .5, .75, .5]
    torch.testing.assert_close(eca(x), per_channel([0.0, 0.5 * math.log(3), 0.0, 0.0]))


def test_eca_matches_timm_ecamodule_with_copied_weights():
    for c in (64, 256, 2048):
        ours, theirs = create_attn("eca", c), timm_layers.EcaModule(c)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(2, c, 5, 6)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_eca_differs_from_timm_only_below_8_channels_as_documented():
    # timm clamps k >= 3; the paper's formula gives k = 1 for C < 8
    assert create_attn("eca", 4).kernel_size == 1
    assert timm_layers.EcaModule(4).conv.kernel_size == (3,)
    assert create_attn("eca", 8).kernel_size == timm_layers.EcaModule(8).conv.kernel_size[0] == 3


# -- CBAM ---------------------------------------------------------------------
def test_cbam_channel_hand_computed_shared_mlp_over_avg_and_max():
    cam = create_attn("cbam_channel", 2, rd_channels=1, mlp_bias=False)
    with torch.no_grad():
        cam.fc1.weight.copy_(torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1))
        cam.fc2.weight.copy_(torch.tensor([[1.0], [-1.0]]).view(2, 1, 1, 1))
    x = torch.zeros(1, 2, 1, 2)
    x[0, 0, 0] = torch.tensor([1.0, 3.0])  # channel 0: avg 2, max 3; channel 1: zeros
    # avg path: relu(2) = 2 -> [2, -2]; max path: relu(3) = 3 -> [3, -3]; sum [5, -5]
    s = torch.sigmoid(torch.tensor([5.0, -5.0])).view(1, 2, 1, 1)
    torch.testing.assert_close(cam(x), x * s)


def test_cbam_spatial_hand_computed_on_mean_and_max_maps():
    sam = create_attn("cbam_spatial", 2, kernel_size=1, spatial_norm=False)
    with torch.no_grad():
        sam.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))  # mean - max
        sam.conv.bias.fill_(1.0)
    x = torch.tensor([[[[0.0, 2.0, -2.0]], [[0.0, 0.0, 2.0]]]])  # (1, 2, 1, 3)
    # mean = [0, 1, 0], max = [0, 2, 2] -> 1 + mean - max = [1, 0, -1]
    s = torch.sigmoid(torch.tensor([1.0, 0.0, -1.0])).view(1, 1, 1, 3)
    torch.testing.assert_close(sam(x), x * s)


def test_cbam_applies_channel_then_spatial():
    cbam = create_attn("cbam", 32).eval()
    x = torch.randn(2, 32, 6, 5)
    torch.testing.assert_close(cbam(x), cbam.spatial(cbam.channel(x)))


def test_cbam_matches_timm_cbammodule_with_mlp_bias_off():
    ours = create_attn("cbam", 64, mlp_bias=False).eval()
    theirs = CbamModule(64).eval()
    sd = ours.state_dict()
    mapped = {k.replace("spatial.conv.", "spatial.conv.conv.").replace("spatial.norm.", "spatial.conv.bn."): v for k, v in sd.items()}
    theirs.load_state_dict(mapped)
    with torch.no_grad():  # non-trivial BN statistics, so the spatial branch is really compared
        for m in (ours.spatial.norm, theirs.spatial.conv.bn):
            m.running_mean.fill_(0.3), m.running_var.fill_(2.0), m.weight.fill_(1.5), m.bias.fill_(-0.2)
    x = torch.randn(2, 64, 9, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_cbam_default_keeps_the_papers_mlp_biases_unlike_timm():
    ours, theirs = create_attn("cbam", 64), CbamModule(64)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(ours) - n(theirs) == ours.rd_channels + 64  # fc1 bias + fc2 bias


# -- MHSA ---------------------------------------------------------------------
def test_mhsa_hand_computed_two_positions_one_head():
    m = create_attn("mhsa", 2, num_heads=1, rel_pos=False, layer_scale_init=1.0)
    with torch.no_grad():
        m.qkv.weight.copy_(torch.eye(2).repeat(3, 1).view(6, 2, 1, 1))  # q = k = v = x
        m.proj.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        m.proj.bias.zero_()
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): positions a = [1, 0], b = [0, 1]
    # logits a: [a.a, a.b] / sqrt(2) = [1/sqrt2, 0]; weights p = sigmoid(1/sqrt2) on a, 1 - p on b
    p = 1 / (1 + math.exp(-1 / math.sqrt(2)))
    attn_a = torch.tensor([p, 1 - p])  # = p * a + (1 - p) * b
    attn_b = torch.tensor([1 - p, p])
    expected = x.clone()
    expected[0, :, 0, 0] += attn_a
    expected[0, :, 0, 1] += attn_b
    torch.testing.assert_close(m(x), expected)


def test_mhsa_relative_bias_is_the_mlp_of_the_log_spaced_offset():
    m = create_attn("mhsa", 8, num_heads=2)
    bias = m.position_bias(3, 4, "cpu")  # (heads, 12, 12)
    q, k = 0 * 4 + 0, 1 * 4 + 2  # query (0, 0), key (1, 2): offset (dy, dx) = (-1, -2)
    offset = torch.tensor([-math.log(2), -math.log(3)])
    torch.testing.assert_close(bias[:, q, k], m.rel_pos(offset))
    assert bias.shape == (2, 12, 12)
    # the same offset gives the same bias wherever it occurs
    torch.testing.assert_close(bias[:, 1 * 4 + 1, 2 * 4 + 3], bias[:, q, k])


def test_mhsa_relative_offsets_index_table():
    table, index = relative_offsets(2, 3)
    assert table.shape == (3 * 5, 2) and index.shape == (6, 6)
    ys, xs = torch.arange(6) // 3, torch.arange(6) % 3
    for i in range(6):
        for j in range(6):
            assert table[index[i, j]].tolist() == [float(ys[i] - ys[j]), float(xs[i] - xs[j])]


def test_mhsa_starts_as_the_identity_and_then_learns():
    m = create_attn("mhsa", 16)
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(m(x), x)
    m(x).sum().backward()
    assert m.gamma.grad.abs().sum() > 0  # the residual scale gets a gradient, so it moves off zero


def test_mhsa_runs_at_any_size_including_one_pixel():
    m = create_attn("mhsa", 16, layer_scale_init=1.0)
    for hw in [(1, 1), (1, 7), (5, 3), (14, 14)]:
        x = torch.randn(1, 16, *hw)
        assert m(x).shape == x.shape


# -- Non-local ----------------------------------------------------------------
def test_nonlocal_hand_computed_embedded_gaussian():
    nl = create_attn("nonlocal", 2, rd_ratio=1.0).eval()
    with torch.no_grad():
        for conv in (nl.theta, nl.phi, nl.g, nl.w_z):
            conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        nl.theta.bias.zero_(), nl.g.bias.zero_()
        nl.norm.weight.fill_(1.0)
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # positions a = [1, 0], b = [0, 1]
    # logits a: [1, 0] (no 1/sqrt(d) scaling) -> weights [e/(e+1), 1/(e+1)]; y_a = that mix of a and b
    w = math.e / (math.e + 1)
    y = torch.tensor([[w, 1 - w], [1 - w, w]])  # rows: channel, cols: position
    expected = x + (y / math.sqrt(1 + nl.norm.eps)).view(1, 2, 1, 2)
    torch.testing.assert_close(nl(x), expected)


def test_nonlocal_starts_as_the_identity_with_zero_bn_scale():
    nl = create_attn("nonlocal", 16)
    x = torch.randn(2, 16, 4, 5)
    torch.testing.assert_close(nl(x), x)


def test_nonlocal_subsampling_works_down_to_one_pixel():
    nl = create_attn("nonlocal", 16, sub_sample=True, zero_init=False)
    for hw in [(1, 1), (3, 5), (8, 8)]:
        assert nl(torch.randn(2, 16, *hw)).shape == (2, 16, *hw)
