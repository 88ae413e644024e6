"""Reference tests for bam, scse, coord, triplet, sge and shuffle (issue 6, spatial blocks part 1).

Each block's central equation is recomputed here independently -- with hand-set weights and plain
torch ops written the way the paper states them (explicit rotations, loops over groups, BN in its
eval formula) -- and compared with the block. Coordinate Attention is also compared with timm's
CoordAttn under copied weights. The registry-wide contract lives in tests/test_blocks.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnzoo import create_attn
from attnzoo.blocks.bam import BottleneckAttn
from attnzoo.blocks.base import SafeBatchNorm2d
from attnzoo.blocks.coord import CoordAttn
from attnzoo.blocks.scse import ConcurrentSpatialChannelSE
from attnzoo.blocks.sge import SpatialGroupEnhance
from attnzoo.blocks.shuffle import ShuffleAttn, channel_shuffle
from attnzoo.blocks.triplet import TripletAttn


def _randomize(module, seed=0, scale=0.5):
    """Random parameters and non-trivial BN running statistics, so nothing is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return module


def _bn_eval(x, bn):
    """BatchNorm in eval mode, written out: (x - running_mean) / sqrt(running_var + eps) * w + b."""
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


# --------------------------------------------------------------------------------------------- bam


def test_bam_is_f_plus_f_times_sigmoid_of_channel_plus_spatial_branch():
    torch.manual_seed(0)
    block = _randomize(BottleneckAttn(4, rd_channels=2, dilation=2)).eval()
    x = torch.randn(2, 4, 5, 6)

    # channel branch, Eq. 3: BN(W1 relu(BN(W0 GAP))), the hidden BN as in the authors' code
    z = x.mean((2, 3))  # (B, C)
    hidden = torch.relu(_bn_eval((z @ block.fc1.weight[:, :, 0, 0].T)[:, :, None, None], block.bn_hidden))[:, :, 0, 0]
    mc = _bn_eval((hidden @ block.fc2.weight[:, :, 0, 0].T)[:, :, None, None], block.bn_channel)
    # spatial branch, Eq. 4 (BN + ReLU after every conv but the last, BN after the last)
    s = torch.relu(_bn_eval(torch.einsum("bchw,rc->brhw", x, block.conv_reduce.weight[:, :, 0, 0]), block.bn_reduce))
    s = torch.relu(_bn_eval(F.conv2d(s, block.conv_dil1.weight, padding=2, dilation=2), block.bn_dil1))
    s = torch.relu(_bn_eval(F.conv2d(s, block.conv_dil2.weight, padding=2, dilation=2), block.bn_dil2))
    ms = _bn_eval(torch.einsum("bchw,rc->brhw", s, block.conv_spatial.weight[:, :, 0, 0]), block.bn_spatial)
    m = torch.sigmoid(mc + ms)  # Eq. 2: a sum, not the product of the authors' code

    captured = []
    block.tap.register_forward_hook(lambda mod, inp, out: captured.append(out))
    y = block(x)
    torch.testing.assert_close(y, x + x * m)  # Eq. 1
    torch.testing.assert_close(captured[0], m)
    assert captured[0].shape == x.shape


def test_bam_uses_the_papers_defaults_r16_d4():
    block = BottleneckAttn(64)
    assert block.rd_channels == 4 and block.conv_reduce.out_channels == 4
    assert block.conv_dil1.dilation == (4, 4) and block.conv_dil2.dilation == (4, 4)
    assert block.conv_dil1.padding == (4, 4)


def test_bam_dilated_conv_sees_exactly_d_pixels_away():
    """One 3x3 conv with d=4: the output at a pixel depends on pixels 4 away, not 1 or 2 away."""
    block = BottleneckAttn(16)
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    with torch.no_grad():
        conv = torch.nn.Conv2d(1, 1, 3, padding=block.dilation, dilation=block.dilation, bias=False)
        conv.weight.fill_(1.0)
        y = conv(x)[0, 0]
    hit = {(int(i), int(j)) for i, j in y.nonzero()}
    assert hit == {(4 + di, 4 + dj) for di in (-4, 0, 4) for dj in (-4, 0, 4)}


def test_bam_rejects_bad_dilation_and_too_few_channels():
    with pytest.raises(ValueError, match="dilation must be a positive int"):
        BottleneckAttn(64, dilation=0)
    with pytest.raises(ValueError, match="too small for rd_ratio=0.0625"):
        BottleneckAttn(8)


def test_safe_batchnorm_matches_batchnorm_and_handles_one_value_per_channel():
    torch.manual_seed(0)
    bn, ref = SafeBatchNorm2d(3).train(), torch.nn.BatchNorm2d(3).train()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    # a single value per channel: torch raises; here running statistics normalize it, unchanged
    one = torch.randn(1, 3, 1, 1)
    with pytest.raises(ValueError):
        ref(one)
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    expected = (one - mean.view(1, 3, 1, 1)) / torch.sqrt(var.view(1, 3, 1, 1) + bn.eps)
    torch.testing.assert_close(bn(one), expected)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


def test_bam_trains_at_batch_one_and_on_a_1x1_map():
    block = _randomize(BottleneckAttn(16)).train()
    for shape in [(1, 16, 5, 5), (1, 16, 1, 1)]:
        x = torch.randn(shape, requires_grad=True)
        y = block(x)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


# -------------------------------------------------------------------------------------------- scse


def _scse_branches(block, x):
    z = x.mean((2, 3))
    s = torch.sigmoid(torch.relu(z @ block.fc1.weight[:, :, 0, 0].T + block.fc1.bias) @ block.fc2.weight[:, :, 0, 0].T
                      + block.fc2.bias)[:, :, None, None]  # (B, C, 1, 1)
    q = torch.sigmoid(torch.einsum("bchw,c->bhw", x, block.conv_spatial.weight[0, :, 0, 0])
                      + block.conv_spatial.bias)[:, None]  # (B, 1, H, W)
    return x * s, x * q


@pytest.mark.parametrize("aggregation", ["max", "add", "mult"])
def test_scse_combines_cse_and_sse_outputs(aggregation):
    block = _randomize(ConcurrentSpatialChannelSE(6, aggregation=aggregation)).eval()
    assert block.rd_channels == 3  # the paper's r = 2
    x = torch.randn(2, 6, 4, 5)
    x_cse, x_sse = _scse_branches(block, x)
    expected = {"max": torch.maximum(x_cse, x_sse), "add": x_cse + x_sse, "mult": x_cse * x_sse}[aggregation]
    torch.testing.assert_close(block(x), expected)


def test_scse_hand_computed_one_pixel_case():
    """C=2, 1x1 map, hand-set weights: every number below is worked out by hand."""
    block = ConcurrentSpatialChannelSE(2, rd_channels=1)
    with torch.no_grad():
        block.fc1.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1))
        block.fc1.bias.zero_()
        block.fc2.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        block.fc2.bias.zero_()
        block.conv_spatial.weight.zero_()
        block.conv_spatial.bias.fill_(math.log(3.0))  # sigmoid(log 3) = 3/4
    x = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    # cSE: z = (1, 1), hidden = relu(2) = 2, s = sigmoid(2, -2); sSE: q = 3/4 everywhere
    s = torch.sigmoid(torch.tensor([2.0, -2.0]))
    assert block(x).flatten().tolist() == pytest.approx([max(s[0].item(), 0.75), max(s[1].item(), 0.75)])


def test_scse_default_aggregation_is_max_and_bad_one_is_refused():
    assert create_attn("scse", 64).aggregation == "max"
    with pytest.raises(ValueError, match=r"aggregation must be one of \('max', 'add', 'mult'\)"):
        ConcurrentSpatialChannelSE(64, aggregation="concat")


# ------------------------------------------------------------------------------------------- coord


def test_coord_matches_timm_coordattn_with_copied_weights():
    from timm.layers.coord_attn import CoordAttn as TimmCoordAttn

    torch.manual_seed(0)
    ref = _randomize(TimmCoordAttn(64))  # timm: rd = make_divisible(64/16 * 2/3, 8) = 8, no biases
    ours = CoordAttn(64, rd_channels=ref.conv1.out_channels, bias=False)
    ours.load_state_dict(ref.state_dict())  # strict: the same names and shapes
    x = torch.randn(2, 64, 7, 5)
    for train in (False, True):
        ref.train(train), ours.train(train)
        torch.testing.assert_close(ours(x), ref(x))


def test_coord_default_width_and_biases_differ_from_timm_as_documented():
    from timm.layers.coord_attn import CoordAttn as TimmCoordAttn

    # the paper: mip = max(8, C // 32); timm: make_divisible(C / 16 * 2/3, 8)
    assert [CoordAttn(c).rd_channels for c in (16, 64, 256, 512, 1024, 1000)] == [8, 8, 8, 16, 32, 31]
    assert [TimmCoordAttn(c).conv1.out_channels for c in (512, 1024)] == [24, 40]
    extra = set(CoordAttn(64).state_dict()) - set(TimmCoordAttn(64).state_dict())
    assert extra == {"conv_h.bias", "conv_w.bias"}


def test_coord_is_x_times_height_and_width_factors():
    block = _randomize(CoordAttn(4, rd_channels=2)).eval()
    x = torch.randn(2, 4, 3, 5)
    w1 = block.conv1.weight[:, :, 0, 0]  # (mip, C)
    hsw = lambda t: t * torch.clamp(t + 3, 0, 6) / 6  # h-swish of the paper
    bn = lambda t: _bn_eval(t.permute(0, 2, 1)[..., None], block.bn1)[..., 0].permute(0, 2, 1)  # (B, L, mip)
    f_h = hsw(bn(x.mean(3).transpose(1, 2) @ w1.T))  # (B, H, mip): strip pooled along W
    f_w = hsw(bn(x.mean(2).transpose(1, 2) @ w1.T))  # (B, W, mip): strip pooled along H
    g_h = torch.sigmoid(f_h @ block.conv_h.weight[:, :, 0, 0].T + block.conv_h.bias)  # (B, H, C)
    g_w = torch.sigmoid(f_w @ block.conv_w.weight[:, :, 0, 0].T + block.conv_w.bias)  # (B, W, C)
    expected = x * g_h.transpose(1, 2)[..., None] * g_w.transpose(1, 2)[:, :, None, :]
    seen = {}
    block.tap_h.register_forward_hook(lambda m, i, o: seen.setdefault("h", o))
    block.tap_w.register_forward_hook(lambda m, i, o: seen.setdefault("w", o))
    torch.testing.assert_close(block(x), expected)
    assert seen["h"].shape == (2, 4, 3, 1) and seen["w"].shape == (2, 4, 1, 5)


# ----------------------------------------------------------------------------------------- triplet


def _triplet_reference(block, x):
    """The paper's rotations, materialized: rotate, Z-pool [max; mean] over the first axis, conv,
    BN, sigmoid, multiply, rotate back; average of the three branches."""

    def branch(t, gate):  # t: (B, P, Q, R), pooled over P
        z = torch.cat([t.amax(1, keepdim=True), t.mean(1, keepdim=True)], dim=1)  # (B, 2, Q, R)
        k = block.kernel_size
        a = torch.sigmoid(_bn_eval(F.conv2d(z, gate.conv.weight, padding=k // 2), gate.bn))
        return t * a

    out_hc = branch(x.permute(0, 3, 2, 1), block.gate_hc).permute(0, 3, 2, 1)  # (B, W, H, C) rotation
    out_cw = branch(x.permute(0, 2, 1, 3), block.gate_cw).permute(0, 2, 1, 3)  # (B, H, C, W) rotation
    out_hw = branch(x, block.gate_hw)  # no rotation: pooled over C
    return (out_hc + out_cw + out_hw) / 3


def test_triplet_matches_the_rotated_three_branch_reference():
    block = _randomize(TripletAttn(5)).eval()
    x = torch.randn(2, 5, 6, 7)  # C, H, W all different, so a wrong rotation cannot pass
    torch.testing.assert_close(block(x), _triplet_reference(block, x))


def test_triplet_zpool_puts_max_before_mean():
    """conv weight 1 at the centre of input channel 0 only, BN identity: the gate reads max_c."""
    block = TripletAttn(3, kernel_size=1).eval()
    with torch.no_grad():
        for gate in (block.gate_hc, block.gate_cw, block.gate_hw):
            gate.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    x = torch.tensor([1.0, 2.0, 6.0]).view(1, 3, 1, 1)
    eps_scale = 1 / math.sqrt(1 + block.gate_hw.bn.eps)  # BN eval with fresh stats: t / sqrt(1 + eps)
    # each branch pools one value per position: H and W are 1, so hc and cw see x itself, hw sees max = 6
    a = (2 * torch.sigmoid(x * eps_scale) + torch.sigmoid(torch.tensor(6.0) * eps_scale)) / 3
    torch.testing.assert_close(block(x), x * a)


def test_triplet_rejects_an_even_kernel():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        TripletAttn(64, kernel_size=6)


# --------------------------------------------------------------------------------------------- sge


def _sge_reference(block, x, unbiased=False):
    """Loop over groups: c_i = g . x_i, normalize over positions, gamma * n + beta, sigmoid."""
    b, c, h, w = x.shape
    G, out = block.groups, torch.empty_like(x)
    for k in range(G):
        xs = x[:, k * c // G:(k + 1) * c // G].flatten(2)  # (B, C/G, N)
        g = xs.mean(2, keepdim=True)  # (B, C/G, 1) group mean vector
        sim = (xs * g).sum(1)  # (B, N)
        centred = sim - sim.mean(1, keepdim=True)
        if unbiased:  # the authors' code: unbiased std + 1e-5
            n = centred / (sim.std(1, keepdim=True) + 1e-5)
        else:  # the paper's Eq. 4: population std + eps
            n = centred / (sim.var(1, unbiased=False, keepdim=True).sqrt() + block.eps)
        a = torch.sigmoid(block.weight[0, k, 0, 0] * n + block.bias[0, k, 0, 0])  # (B, N)
        out[:, k * c // G:(k + 1) * c // G] = (xs * a[:, None]).view(b, -1, h, w)
    return out


def test_sge_matches_the_per_group_reference():
    block = _randomize(SpatialGroupEnhance(12, groups=3))
    x = torch.randn(2, 12, 5, 4)
    torch.testing.assert_close(block(x), _sge_reference(block, x))


def test_sge_unbiased_std_form_matches_the_authors_code_and_differs_from_the_default():
    block = _randomize(SpatialGroupEnhance(8, groups=2))
    x = torch.randn(2, 8, 4, 4)
    authors = _sge_reference(block, x, unbiased=True)
    assert not torch.allclose(block(x), authors, atol=1e-4)  # sqrt(16/15) on the std at 4x4
    block.spread = "unbiased_std"
    torch.testing.assert_close(block(x), authors)


def test_sge_starts_as_a_constant_gate_and_is_finite_on_a_1x1_map():
    block = SpatialGroupEnhance(64)  # gamma = 0, beta = 1, as the paper initializes
    x = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(block(x), x * torch.sigmoid(torch.tensor(1.0)))
    block = _randomize(SpatialGroupEnhance(64))
    x1 = torch.randn(2, 64, 1, 1, requires_grad=True)
    y = block(x1)
    y.sum().backward()
    beta = block.bias.detach().view(1, 64, 1, 1)  # one channel per group at C = G = 64
    torch.testing.assert_close(y, x1 * torch.sigmoid(beta))  # one position: n = 0
    assert torch.isfinite(x1.grad).all() and torch.isfinite(block.weight.grad).all()


def test_sge_default_groups_fit_small_networks():
    assert [SpatialGroupEnhance(c).groups for c in (16, 32, 48, 64, 96, 256, 2048)] == [16, 32, 48, 64, 48, 64, 64]


def test_sge_explicit_groups_that_do_not_divide_are_refused_with_valid_counts():
    with pytest.raises(ValueError, match=r"groups=64 does not fit channels=48.*valid group counts for 48 channels: "
                                         r"1, 2, 3, 4, 6, 8, 12, 16, 24, 48"):
        SpatialGroupEnhance(48, groups=64)
    with pytest.raises(ValueError, match="groups must be a positive int or None"):
        SpatialGroupEnhance(48, groups=0)


# ----------------------------------------------------------------------------------------- shuffle


def test_channel_shuffle_interleaves_the_two_halves():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_shuffle_matches_the_per_group_reference():
    block = _randomize(ShuffleAttn(12, groups=2))
    x = torch.randn(2, 12, 4, 5)
    G, half = 2, 3  # C/2G channels per branch
    parts = []
    for k in range(G):
        xk = x[:, k * 6:(k + 1) * 6]
        x1, x2 = xk[:, :half], xk[:, half:]
        cw, cb = block.cweight.view(1, half, 1, 1), block.cbias.view(1, half, 1, 1)
        sw, sb = block.sweight.view(1, half, 1, 1), block.sbias.view(1, half, 1, 1)
        x1 = x1 * torch.sigmoid(cw * x1.mean((2, 3), keepdim=True) + cb)  # Eq. 2
        gn = F.group_norm(x2, half, eps=1e-5)  # GN with one group per channel, no affine
        x2 = x2 * torch.sigmoid(sw * gn + sb)  # Eq. 3
        parts += [x1, x2]
    y = torch.cat(parts, dim=1)  # (B, C, H, W) in input order
    shuffled = torch.stack([y[:, :6], y[:, 6:]], dim=2).flatten(1, 2)  # out[2i + s] = y[s * C/2 + i]
    torch.testing.assert_close(block(x), shuffled)


def test_shuffle_tap_is_the_factor_on_the_input_before_the_shuffle():
    block = _randomize(ShuffleAttn(8, groups=2))
    seen = []
    block.tap.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 8, 3, 3)
    y = block(x)
    assert seen[0].shape == x.shape
    torch.testing.assert_close(y, channel_shuffle(x * seen[0], 2))


def test_shuffle_default_groups_fit_small_networks():
    assert [ShuffleAttn(c).groups for c in (16, 32, 64, 128, 256, 96)] == [8, 16, 32, 64, 64, 48]


def test_shuffle_refuses_groups_that_do_not_fit_listing_valid_ones():
    with pytest.raises(ValueError, match=r"groups=64 does not fit channels=64 \(2 \* groups must divide.*"
                                         r"valid group counts for 64 channels: 1, 2, 4, 8, 16, 32"):
        ShuffleAttn(64, groups=64)
    with pytest.raises(ValueError, match="channels=15 must be a multiple of 2"):
        ShuffleAttn(15)
