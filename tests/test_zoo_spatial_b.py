"""Reference tests of ema, lka, lska, ela, gam, psa/psa_s: each block's central equation on a tiny
hand-set case, computed here independently (numbers, loops or plain torch ops), and parity with timm
where timm has the block (ela)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnzoo import create_attn
from attnzoo.blocks.base import AttnTap
from attnzoo.blocks.ema import ema_groups
from attnzoo.blocks.lka import LSKA_KERNELS
from attnzoo.factory import attn_info

NAMES = ["ema", "lka", "lska", "ela", "gam", "psa", "psa_s"]


def sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def capture_taps(block):
    """Record what every AttnTap of ``block`` sees, by attribute name."""
    seen = {}
    for name, m in block.named_modules():
        if isinstance(m, AttnTap):
            m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, out))
    return seen


# ---------------------------------------------------------------- registry and narrow widths


@pytest.mark.parametrize(
    "name, family",
    [("ema", "channel+spatial"), ("lka", "spatial"), ("lska", "spatial"), ("ela", "spatial"),
     ("gam", "channel+spatial"), ("psa", "channel+spatial"), ("psa_s", "channel+spatial")],
)
def test_block_is_registered_under_its_family(name, family):
    assert attn_info(name).metadata["family"] == family


@pytest.mark.parametrize("channels", [16, 32, 64])
@pytest.mark.parametrize("name", NAMES)
def test_defaults_work_at_cifar_resnet_widths(name, channels):
    block = create_attn(name, channels).train()
    x = torch.randn(2, channels, 8, 8)
    assert block(x).shape == x.shape


# ---------------------------------------------------------------- ema


@pytest.mark.parametrize("channels, factor, groups", [(64, 32, 32), (256, 32, 32), (16, 32, 16), (48, 32, 24),
                                                      (32, 32, 32), (100, 32, 25), (64, 8, 8)])
def test_ema_uses_the_largest_group_count_that_divides_channels(channels, factor, groups):
    assert ema_groups(channels, factor) == groups
    assert create_attn("ema", channels, factor=factor).groups == groups


@pytest.mark.parametrize("factor", [0, -2, 2.5, True])
def test_ema_rejects_a_factor_that_is_not_a_positive_int(factor):
    with pytest.raises(ValueError, match="factor"):
        create_attn("ema", 16, factor=factor)


def test_ema_matches_hand_computed_cross_spatial_weights():
    # one group of 2 channels; 1x1 branch gates fixed at sigmoid(0)=1/2; 3x3 branch the identity;
    # GroupNorm bias (0, ln 3) so softmax(GAP(x1)) = (1/4, 3/4)
    block = create_attn("ema", 2, factor=1).eval()
    with torch.no_grad():
        block.conv1x1.weight.zero_()
        block.conv1x1.bias.zero_()
        block.conv3x3.weight.zero_()
        block.conv3x3.weight[0, 0, 1, 1] = 1.0
        block.conv3x3.weight[1, 1, 1, 1] = 1.0
        block.conv3x3.bias.zero_()
        block.gn.weight.fill_(1.0)
        block.gn.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    x0 = [1.0, 2.0, 3.0, 4.0]  # channel 0, positions row-major in a 2x2 map
    x1c = [0.0, 0.0, 0.0, 4.0]  # channel 1
    x = torch.tensor([x0, x1c]).reshape(1, 2, 2, 2)

    def standardized(vals, scale=0.25, eps=1e-5):  # GroupNorm of scale * vals over the 4 positions
        v = [scale * t for t in vals]
        m = sum(v) / 4
        var = sum((t - m) ** 2 for t in v) / 4
        return [(t - m) / math.sqrt(var + eps) for t in v]

    g0 = standardized(x0)  # x1 of channel 0 (GN bias 0)
    g1 = [t + math.log(3.0) for t in standardized(x1c)]  # x1 of channel 1
    e0, e1 = math.exp(sum(x0) / 4), math.exp(sum(x1c) / 4)  # softmax(GAP(x2)), x2 = x
    s20, s21 = e0 / (e0 + e1), e1 / (e0 + e1)
    w = [0.25 * x0[p] + 0.75 * x1c[p] + s20 * g0[p] + s21 * g1[p] for p in range(4)]
    want = torch.tensor([[x0[p] * sig(w[p]) for p in range(4)], [x1c[p] * sig(w[p]) for p in range(4)]])
    torch.testing.assert_close(block(x).reshape(2, 4), want, rtol=1e-5, atol=1e-5)


def test_ema_gives_one_spatial_map_per_group_through_its_tap():
    torch.manual_seed(0)
    block = create_attn("ema", 8, factor=4).eval()  # 4 groups of 2 channels
    seen = capture_taps(block)
    x = torch.randn(2, 8, 5, 6)
    y = block(x)
    gate = seen["tap"]
    assert gate.shape == (2, 8, 5, 6)
    torch.testing.assert_close(y, x * gate)
    torch.testing.assert_close(gate[:, 0::2], gate[:, 1::2])  # both channels of a group share a map
    assert not torch.allclose(gate[:, 0], gate[:, 2])  # different groups have different maps


# ---------------------------------------------------------------- lka / lska


def test_lka_default_layers_are_the_papers_5x5_and_7x7_dilated_3():
    block = create_attn("lka", 8)
    assert block.conv0.kernel_size == (5, 5) and block.conv0.groups == 8
    assert block.conv_spatial.kernel_size == (7, 7) and block.conv_spatial.dilation == (3, 3)
    assert block.conv_spatial.groups == 8 and block.conv1.kernel_size == (1, 1)


def test_lka_matches_hand_computed_dilated_shift():
    # conv0 = 2 * identity, the dilated conv picks the tap at column offset +1 (i.e. +3 pixels),
    # conv1 = 1 with bias 0.5: attn(i, j) = 2 x(i, j+3) + 0.5 (zero beyond the border)
    block = create_attn("lka", 1).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.conv0.weight[0, 0, 2, 2] = 2.0
        block.conv_spatial.weight[0, 0, 3, 4] = 1.0
        block.conv1.weight.fill_(1.0)
        block.conv1.bias.fill_(0.5)
    x = torch.arange(1.0, 21.0).reshape(1, 1, 4, 5)
    want = torch.empty(4, 5)
    for i in range(4):
        for j in range(5):
            shifted = x[0, 0, i, j + 3].item() if j + 3 < 5 else 0.0
            want[i, j] = x[0, 0, i, j].item() * (2.0 * shifted + 0.5)
    torch.testing.assert_close(block(x)[0, 0], want)


def test_lka_rejects_a_decomposition_that_cannot_keep_the_size():
    with pytest.raises(ValueError, match="kernel_size"):
        create_attn("lka", 8, kernel_size=22, dilation=3)  # ceil(22/3) = 8 taps, span 22: no 'same' padding


@pytest.mark.parametrize("k", sorted(LSKA_KERNELS))
def test_lska_receptive_field_is_the_papers_kernel_size(k):
    """All-ones kernels: the impulse response of the conv chain spans exactly k x k."""
    block = create_attn("lska", 1, kernel_size=k).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    n = 2 * k + 1
    x = torch.zeros(1, 1, n, n)
    x[0, 0, k, k] = 1.0
    seen = capture_taps(block)
    block(x)
    support = seen["tap"][0, 0] != 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == k and cols.max() - cols.min() + 1 == k


def test_lska_equals_lka_with_outer_product_kernels():
    """LSKA's 1xn then nx1 depthwise convs are LKA's nxn depthwise convs with kernel v h^T."""
    torch.manual_seed(0)
    c = 3
    lska = create_attn("lska", c, kernel_size=23).eval()
    lka = create_attn("lka", c, kernel_size=21, dilation=3).eval()  # 5x5, then 7x7 dilated 3
    with torch.no_grad():
        for m in (lska.conv0h, lska.conv0v, lska.conv_spatial_h, lska.conv_spatial_v):
            m.bias.zero_()  # a bias between two zero-padded convs is not an outer-product kernel
        lka.conv0.weight.copy_(lska.conv0v.weight * lska.conv0h.weight)  # (c,1,5,1) * (c,1,1,5)
        lka.conv_spatial.weight.copy_(lska.conv_spatial_v.weight * lska.conv_spatial_h.weight)
        lka.conv0.bias.zero_()
        lka.conv_spatial.bias.zero_()
        lka.conv1.load_state_dict(lska.conv1.state_dict())
    x = torch.randn(2, c, 11, 9)
    torch.testing.assert_close(lska(x), lka(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [21, 9, 7.0])
def test_lska_rejects_kernel_sizes_outside_the_papers_table(k):
    with pytest.raises(ValueError, match=r"\[7, 11, 23, 35, 41, 53\]"):
        create_attn("lska", 8, kernel_size=k)


# ---------------------------------------------------------------- ela


def test_ela_matches_hand_computed_strip_attention():
    # 2 channels, kernel 3, GroupNorm per channel (2 groups); channel 0: identity kernel,
    # channel 1: box kernel (1, 1, 1); GN affine weight 1, bias (0, 0.5)
    block = create_attn("ela", 2, kernel_size=3, num_groups=2).eval()
    with torch.no_grad():
        block.conv.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).reshape(2, 1, 3, 1))
        block.norm.weight.fill_(1.0)
        block.norm.bias.copy_(torch.tensor([0.0, 0.5]))
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]],
                      [[0.0, 1.0, 0.0], [2.0, 0.0, 2.0]]]).reshape(1, 2, 2, 3)  # (1, C=2, H=2, W=3)

    def conv(vals, kernel):  # zero-padded 1-D correlation, 'same' length
        pad = [0.0, *vals, 0.0]
        return [sum(kernel[t] * pad[i + t] for t in range(3)) for i in range(len(vals))]

    def gn(vals, bias, eps=1e-5):
        m = sum(vals) / len(vals)
        var = sum((v - m) ** 2 for v in vals) / len(vals)
        return [(v - m) / math.sqrt(var + eps) + bias for v in vals]

    kernels, biases = ([0.0, 1.0, 0.0], [1.0, 1.0, 1.0]), (0.0, 0.5)
    want = torch.empty(2, 2, 3)
    for c in range(2):
        rows = x[0, c].tolist()
        z_h = [sum(r) / 3 for r in rows]
        z_w = [(rows[0][j] + rows[1][j]) / 2 for j in range(3)]
        a_h = [sig(v) for v in gn(conv(z_h, kernels[c]), biases[c])]
        a_w = [sig(v) for v in gn(conv(z_w, kernels[c]), biases[c])]
        for i in range(2):
            for j in range(3):
                want[c, i, j] = rows[i][j] * a_h[i] * a_w[j]
    torch.testing.assert_close(block(x)[0], want, rtol=1e-5, atol=1e-5)


def _timm_ela(channels, seed=0):
    from timm.layers.coord_attn import EfficientLocalAttn as TimmEla

    torch.manual_seed(seed)
    ref = TimmEla(channels).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return ref


def test_ela_matches_timm_with_copied_weights_in_timms_configuration():
    ref = _timm_ela(16)
    ours = create_attn("ela", 16, shared=False, num_groups=1, act_layer="silu").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names, same shapes
    x = torch.randn(2, 16, 7, 5)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_ela_default_shares_one_conv_and_norm_for_both_directions_unlike_timm():
    """Documented difference: the paper's code shares weights (timm learns one set per direction),
    uses 16 GroupNorm groups (timm: 1) and no SiLU before the sigmoid (timm: SiLU)."""
    default = create_attn("ela", 16)
    assert {n for n, _ in default.named_parameters()} == {"conv.weight", "norm.weight", "norm.bias"}
    assert default.norm.num_groups == 16 and isinstance(default.act, torch.nn.Identity)
    # sharing == timm's layout with tied weights (W kernel = H kernel transposed) when the rest agrees
    ref = _timm_ela(16)
    with torch.no_grad():
        ref.conv_w.weight.copy_(ref.conv_h.weight.transpose(2, 3))
        ref.norm_w.load_state_dict(ref.norm_h.state_dict())
    tied = create_attn("ela", 16, num_groups=1, act_layer="silu").eval()
    with torch.no_grad():
        tied.conv.weight.copy_(ref.conv_h.weight)
        tied.norm.load_state_dict(ref.norm_h.state_dict())
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(tied(x), ref(x), rtol=1e-5, atol=1e-6)
    # and the paper's defaults (no SiLU) give a different block from timm's
    plain = create_attn("ela", 16, num_groups=1).eval()
    plain.load_state_dict(tied.state_dict())
    assert not torch.allclose(plain(x), ref(x), atol=1e-3)


def test_ela_adapts_groupnorm_groups_and_rejects_bad_conv_groups():
    assert create_attn("ela", 24).num_groups == 8  # gcd(24, 16)
    assert create_attn("ela", 16, conv_group_width=8).conv.groups == 2  # ELA-S/L: C/8 groups
    with pytest.raises(ValueError, match="conv_group_width"):
        create_attn("ela", 20, conv_group_width=8)
    with pytest.raises(ValueError, match="kernel_size"):
        create_attn("ela", 16, kernel_size=4)


# ---------------------------------------------------------------- gam


def test_gam_matches_a_plain_reference_channel_then_spatial():
    torch.manual_seed(0)
    block = create_attn("gam", 8).eval()  # rd = 2
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for bn in (block.bn1, block.bn2):
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    x = torch.randn(2, 8, 5, 6)

    def bn(t, m):
        shape = (1, -1, 1, 1)
        return ((t - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
                * m.weight.view(shape) + m.bias.view(shape))

    # channel submodule: the MLP on each position's C-vector, written as einsums over c
    hid = torch.einsum("bchw,rc->brhw", x, block.fc1.weight) + block.fc1.bias.view(1, -1, 1, 1)
    mc = torch.einsum("brhw,cr->bchw", hid.clamp_min(0), block.fc2.weight) + block.fc2.bias.view(1, -1, 1, 1)
    f2 = x * torch.sigmoid(mc)
    s = bn(F.conv2d(f2, block.conv1.weight, padding=3), block.bn1).clamp_min(0)
    ms = torch.sigmoid(bn(F.conv2d(s, block.conv2.weight, padding=3), block.bn2))
    torch.testing.assert_close(block(x), f2 * ms, rtol=1e-5, atol=1e-5)


def test_gam_constant_maps_give_hand_computed_scaling():
    # all weights zero: Mc = sigmoid(b2) per channel; Ms = sigmoid(BN(0)) = sigmoid(beta) in eval
    block = create_attn("gam", 4).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.fc2.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
        block.bn2.bias.copy_(torch.tensor([3.0, 0.0, 0.0, -2.0]))
    x = torch.ones(1, 4, 3, 3)
    want = [sig(b2) * sig(b) for b2, b in zip([0.0, 1.0, -1.0, 2.0], [3.0, 0.0, 0.0, -2.0])]
    torch.testing.assert_close(block(x)[0, :, 1, 2], torch.tensor(want))


def test_gam_reduces_by_four_and_says_when_too_narrow():
    assert create_attn("gam", 16).rd_channels == 4
    with pytest.raises(ValueError, match="too small"):
        create_attn("gam", 2)


# ---------------------------------------------------------------- psa


def _psa_hand_block(name):
    """C = 2, inner width 2, weights chosen so both branches reduce to a few numbers."""
    block = create_attn(name, 2, rd_channels=2).eval()
    with torch.no_grad():
        eye = torch.eye(2).reshape(2, 2, 1, 1)
        block.ch_wv.weight.copy_(eye)  # v = x
        block.ch_wq.weight.copy_(torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1))  # q = x_1
        block.ch_wz.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).reshape(2, 2, 1, 1))
        block.ln.weight.copy_(torch.tensor([1.0, 0.5]))
        block.ln.bias.copy_(torch.tensor([0.0, 0.25]))
        block.sp_wq.weight.copy_(eye)  # q' = GAP(x)
        block.sp_wv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1))  # v' = (x0, -x1)
    return block


def _psa_hand_factors(x0, x1):
    """A_ch (2 numbers) and A_sp (one per position) of the hand block, in plain Python."""
    e = [math.exp(t) for t in x1]
    p = [t / sum(e) for t in e]  # softmax over positions of q = x_1
    z = [sum(pi * t for pi, t in zip(p, x0)), 2.0 * sum(pi * t for pi, t in zip(p, x1))]
    m = sum(z) / 2
    var = sum((t - m) ** 2 for t in z) / 2
    n = [(t - m) / math.sqrt(var + 1e-5) for t in z]
    a_ch = [sig(1.0 * n[0] + 0.0), sig(0.5 * n[1] + 0.25)]
    g = [sum(x0) / len(x0), sum(x1) / len(x1)]
    q = [math.exp(t) / (math.exp(g[0]) + math.exp(g[1])) for t in g]  # softmax over channels
    a_sp = [sig(q[0] * a - q[1] * b) for a, b in zip(x0, x1)]
    return a_ch, a_sp


def test_psa_parallel_matches_hand_computed_branches():
    block = _psa_hand_block("psa")
    x0, x1 = [1.0, -2.0, 0.5], [0.0, 1.0, 3.0]
    x = torch.tensor([x0, x1]).reshape(1, 2, 1, 3)
    a_ch, a_sp = _psa_hand_factors(x0, x1)
    want = [[xc[j] * a_ch[c] + xc[j] * a_sp[j] for j in range(3)] for c, xc in enumerate((x0, x1))]
    torch.testing.assert_close(block(x)[0, :, 0], torch.tensor(want), rtol=1e-5, atol=1e-5)


def test_psa_s_applies_spatial_attention_to_the_channel_output():
    block = _psa_hand_block("psa_s")
    assert block.layout == "sequential"
    x0, x1 = [1.0, -2.0, 0.5], [0.0, 1.0, 3.0]
    x = torch.tensor([x0, x1]).reshape(1, 2, 1, 3)
    a_ch, _ = _psa_hand_factors(x0, x1)
    y0, y1 = [t * a_ch[0] for t in x0], [t * a_ch[1] for t in x1]
    _, a_sp = _psa_hand_factors(y0, y1)  # the spatial branch sees Z_ch
    want = [[yc[j] * a_sp[j] for j in range(3)] for yc in (y0, y1)]
    torch.testing.assert_close(block(x)[0, :, 0], torch.tensor(want), rtol=1e-5, atol=1e-5)


def test_psa_taps_show_a_channel_and_a_spatial_factor():
    torch.manual_seed(0)
    block = create_attn("psa", 8).eval()
    seen = capture_taps(block)
    x = torch.randn(2, 8, 4, 5)
    y = block(x)
    assert seen["tap_channel"].shape == (2, 8, 1, 1) and seen["tap_spatial"].shape == (2, 1, 4, 5)
    torch.testing.assert_close(y, x * seen["tap_channel"] + x * seen["tap_spatial"])


def test_psa_rejects_an_unknown_layout():
    with pytest.raises(ValueError, match="parallel"):
        create_attn("psa", 8, layout="serial")
