"""Self-attention, long-range and multi-branch blocks: danet (pam, cam), cca, a2, external, axial, sk.

Each block's central equation is checked against an independent reference: loops over positions
written from the paper's equations, hand-computed numbers, or timm's SelectiveKernel with the same
weights. The registry-wide contract (shapes, gradients, autocast, compile, ONNX) is tests/test_blocks.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo import create_attn
from attnzoo.blocks.base import AttnTap

OURS = ["danet", "danet_pam", "danet_cam", "cca", "a2", "external", "axial", "sk"]


def _randomize(block: nn.Module, seed: int = 0, std: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return block


def _capture(tap: AttnTap) -> list[torch.Tensor]:
    """Turn a tap on and collect what passes through it."""
    seen: list[torch.Tensor] = []
    tap.active = True
    tap.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    return seen


# ----------------------------------------------------------------------------- all of ours


@pytest.mark.parametrize("name", OURS)
def test_block_builds_and_runs_with_defaults_at_16_channels(name):
    """Insertion puts blocks into 16-channel stages: the defaults must work there."""
    block = create_attn(name, 16).train()
    for size in [(1, 1), (5, 3)]:
        x = torch.randn(2, 16, *size)
        assert block(x).shape == x.shape


@pytest.mark.parametrize("name", ["danet", "danet_pam", "cca", "axial", "a2"])
def test_query_taps_are_built_only_while_captured_and_rows_sum_to_one(name):
    block = _randomize(create_attn(name, 16)).eval()
    taps = [m for m in block.modules() if isinstance(m, AttnTap) and m.kind == "query"]
    x = torch.randn(2, 16, 3, 4)
    seen = [_capture(t) for t in taps]
    for t in taps:
        t.active = False
    block(x)
    assert all(not s for s in seen), "weights were built although no capture was active"
    for t in taps:
        t.active = True
    block(x)
    for s in seen:
        assert s, "an active tap received nothing"
        for w in s:
            assert w.dim() == 5 and w.shape[0] == 2
            torch.testing.assert_close(w.sum((-2, -1)), torch.ones(w.shape[:3]))


# ----------------------------------------------------------------------------- danet


def test_danet_pam_matches_a_loop_over_positions():
    torch.manual_seed(0)
    pam = _randomize(create_attn("danet_pam", 16)).eval()  # d = 16 / 8 = 2
    pam.gamma.data.fill_(0.7)
    x = torch.randn(1, 16, 2, 3)
    feats = x[0].flatten(1)  # (C, N)
    q = pam.query.weight[:, :, 0, 0] @ feats + pam.query.bias[:, None]  # (d, N)
    k = pam.key.weight[:, :, 0, 0] @ feats  # (d, N)
    v = pam.value.weight[:, :, 0, 0] @ feats + pam.value.bias[:, None]  # (C, N)
    expected = torch.empty_like(feats)
    for j in range(feats.shape[1]):
        s = torch.tensor([float(q[:, j].detach() @ k[:, i].detach()) for i in range(feats.shape[1])]).softmax(0)  # s_ji, unscaled
        expected[:, j] = feats[:, j] + 0.7 * (v * s).sum(1)
    torch.testing.assert_close(pam(x)[0].flatten(1), expected, rtol=1e-5, atol=1e-5)


def test_danet_cam_max_minus_matches_hand_computed_numbers():
    cam = create_attn("danet_cam", 2, gamma_init=0.5)
    a = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # two channels over N = 2 positions
    # energy = A A^T = [[5, 2], [2, 1]]; max - energy = [[0, 3], [0, 1]] row by row
    e3, e1 = math.exp(3), math.exp(1)
    weights = torch.tensor([[1 / (1 + e3), e3 / (1 + e3)], [1 / (1 + e1), e1 / (1 + e1)]])
    expected = a + 0.5 * weights @ a
    torch.testing.assert_close(cam(a.reshape(1, 2, 1, 2)).reshape(2, 2), expected)


def test_danet_cam_max_minus_equals_softmax_of_negated_energy_and_can_be_turned_off():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 3)
    a = x.flatten(2)
    energy = a @ a.transpose(1, 2)
    cam = create_attn("danet_cam", 8, gamma_init=1.0)
    torch.testing.assert_close(cam(x), x + ((-energy).softmax(-1) @ a).reshape(x.shape))
    cam_eq3 = create_attn("danet_cam", 8, gamma_init=1.0, max_minus=False)
    torch.testing.assert_close(cam_eq3(x), x + (energy.softmax(-1) @ a).reshape(x.shape))


def test_danet_adds_both_attention_terms_to_a_single_residual():
    danet = _randomize(create_attn("danet", 16)).eval()
    x = torch.randn(2, 16, 4, 5)
    # each half alone is x + term; the drop-in block counts x once
    torch.testing.assert_close(danet(x), danet.pam(x) + danet.cam(x) - x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["danet", "danet_pam", "danet_cam", "cca"])
def test_gamma_initialised_to_zero_makes_the_block_the_identity(name):
    block = create_attn(name, 16).eval()
    x = torch.randn(2, 16, 5, 4)
    torch.testing.assert_close(block(x), x)


def test_danet_pam_rejects_too_few_channels_for_its_reduction():
    with pytest.raises(ValueError, match="channels=4 is too small for rd_ratio=0.125"):
        create_attn("danet_pam", 4)


# ----------------------------------------------------------------------------- cca


def _criss_cross_reference(block, x):
    """One criss-cross pass written as a loop: each position's column (without itself) + its row."""
    b, c, h, w = x.shape
    q = F.conv2d(x, block.query.weight, block.query.bias)
    k = F.conv2d(x, block.key.weight)
    v = F.conv2d(x, block.value.weight, block.value.bias)
    out = torch.empty_like(x)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                keys = [(g, j) for g in range(h) if g != i] + [(i, t) for t in range(w)]  # H + W - 1
                logits = torch.stack([q[n, :, i, j] @ k[n, :, gi, gj] for gi, gj in keys])
                a = logits.softmax(0)
                ctx = sum(a[m] * v[n, :, gi, gj] for m, (gi, gj) in enumerate(keys))
                out[n, :, i, j] = x[n, :, i, j] + block.gamma * ctx
    return out


@pytest.mark.parametrize("size", [(3, 4), (1, 3)])
def test_cca_matches_a_loop_over_row_and_column_with_self_counted_once(size):
    torch.manual_seed(0)
    block = _randomize(create_attn("cca", 16, recurrence=1)).eval()
    x = torch.randn(2, 16, *size)
    torch.testing.assert_close(block(x), _criss_cross_reference(block, x), rtol=1e-5, atol=1e-5)


def test_cca_recurrence_reuses_the_same_weights():
    torch.manual_seed(0)
    block = _randomize(create_attn("cca", 16)).eval()  # R = 2
    assert block.recurrence == 2
    x = torch.randn(1, 16, 3, 3)
    expected = _criss_cross_reference(block, _criss_cross_reference(block, x))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_cca_reaches_every_position_after_two_recurrences_but_only_its_cross_after_one():
    x = torch.randn(1, 16, 4, 5, requires_grad=True)
    for recurrence, reached in [(1, 4 + 5 - 1), (2, 4 * 5)]:
        block = _randomize(create_attn("cca", 16, recurrence=recurrence), std=0.3).eval()
        (grad,) = torch.autograd.grad(block(x)[0, :, 0, 0].sum(), x)
        assert int((grad[0].abs().sum(0) > 0).sum()) == reached


def test_cca_tap_is_zero_off_the_criss_cross():
    block = _randomize(create_attn("cca", 16)).eval()
    seen = _capture(block.tap)
    block(torch.randn(1, 16, 3, 4))
    assert len(seen) == 2  # one map per recurrence
    w = seen[0][0, 0].reshape(3, 4, 3, 4)  # (query h, query w, key h, key w)
    on_cross = torch.zeros(3, 4, 3, 4, dtype=torch.bool)
    for i in range(3):
        for j in range(4):
            on_cross[i, j, :, j] = True
            on_cross[i, j, i, :] = True
    assert (w[~on_cross] == 0).all() and (w[on_cross] > 0).all()


def test_cca_rejects_a_recurrence_below_one():
    with pytest.raises(ValueError, match="recurrence must be an int >= 1"):
        create_attn("cca", 16, recurrence=0)


# ----------------------------------------------------------------------------- a2


def test_a2_gather_then_distribute_matches_loops_over_descriptors_and_positions():
    torch.manual_seed(0)
    block = _randomize(create_attn("a2", 8, c_m=3, c_n=2)).eval()
    x = torch.randn(1, 8, 2, 3)
    feats = x[0].flatten(1)  # (C, N)
    a = block.phi.weight[:, :, 0, 0] @ feats + block.phi.bias[:, None]  # (c_m, N)
    bmaps = block.theta.weight[:, :, 0, 0] @ feats  # (c_n, N)
    vecs = block.rho.weight[:, :, 0, 0] @ feats + block.rho.bias[:, None]  # (c_n, N)
    n = feats.shape[1]
    descriptors = [sum(a[:, j] * bmaps[i].softmax(0)[j] for j in range(n)) for i in range(2)]  # gather
    z = torch.stack([sum(vecs[:, j].softmax(0)[i] * descriptors[i] for i in range(2)) for j in range(n)], 1)
    expected = feats + block.proj.weight[:, :, 0, 0] @ z + block.proj.bias[:, None]
    torch.testing.assert_close(block(x)[0].flatten(1), expected, rtol=1e-5, atol=1e-5)


def test_a2_tap_is_the_position_map_that_reproduces_the_output():
    block = _randomize(create_attn("a2", 16)).eval()
    assert (block.c_m, block.c_n) == (4, 4)  # C / 4 by default
    seen = _capture(block.tap)
    x = torch.randn(2, 16, 3, 3)
    y = block(x)
    weights = seen[0][:, 0].reshape(2, 9, 9)  # (B, Nq, Nk)
    z = block.phi(x).flatten(2) @ weights.transpose(1, 2)  # Z = A W^T
    torch.testing.assert_close(y, x + block.proj(z.reshape(2, 4, 3, 3)), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- external


def test_external_double_normalisation_matches_hand_computed_numbers():
    block = create_attn("external", 2, memory_size=2).eval()
    with torch.no_grad():
        block.conv_in.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
        block.mem_k.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))  # affinities = the features
        block.mem_v.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
        block.conv_out.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    x = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).reshape(1, 2, 1, 2)  # N = 2 positions
    # softmax over N: unit 0 -> [1/4, 3/4], unit 1 -> [1/2, 1/2]
    # l1 over S per position: position 0 -> [1/3, 2/3], position 1 -> [3/5, 2/5]
    attn = torch.tensor([[1 / 3, 3 / 5], [2 / 3, 2 / 5]])
    bn = block.norm  # eval mode: running mean 0, var 1, weight 1, bias 0
    expected = x.reshape(2, 2) + attn / math.sqrt(1 + bn.eps)
    torch.testing.assert_close(block(x).reshape(2, 2), expected)


def test_external_value_memory_starts_as_the_transposed_key_memory():
    block = create_attn("external", 16)
    assert block.memory_size == 64
    torch.testing.assert_close(block.mem_v.weight[:, :, 0, 0], block.mem_k.weight[:, :, 0, 0].T)
    assert block.conv_in.bias is None  # cancelled by the softmax over N (module NOTE)


def test_external_out_act_applies_the_authors_final_relu():
    torch.manual_seed(0)
    plain = _randomize(create_attn("external", 8)).eval()
    with_relu = create_attn("external", 8, out_act=True).eval()
    with_relu.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(with_relu(x), plain(x).relu())


# ----------------------------------------------------------------------------- axial


def _axial_reference(block, x):
    """Height pass then width pass, each a loop over columns/rows and heads, from the equations."""
    b, c, h, w = x.shape
    heads, d = block.num_heads, block.head_dim

    def bias(pos, length):
        if pos is None:
            return torch.zeros(heads, length, length)
        off = torch.tensor([[float(i - j)] for i in range(length) for j in range(length)])  # query - key
        return pos.mlp(torch.sign(off) * torch.log1p(off.abs())).T.reshape(heads, length, length)

    def one_pass(inp, qkv_conv, pos, axis):
        qkv = F.conv2d(inp, qkv_conv.weight)
        q, k, v = qkv.split(c, 1)
        out = torch.empty_like(inp)
        length = h if axis == "h" else w
        bb = bias(pos, length)
        for n in range(b):
            for line in range(w if axis == "h" else h):
                for hd in range(heads):
                    sl = slice(hd * d, (hd + 1) * d)
                    pick = (lambda t: t[n, sl, :, line]) if axis == "h" else (lambda t: t[n, sl, line, :])
                    qq, kk, vv = pick(q), pick(k), pick(v)  # (d, L)
                    a = (qq.T @ kk / math.sqrt(d) + bb[hd]).softmax(-1)  # (L, L)
                    res = vv @ a.T  # (d, L)
                    if axis == "h":
                        out[n, sl, :, line] = res
                    else:
                        out[n, sl, line, :] = res
        return out

    y = one_pass(x, block.qkv_h, block.pos_h, "h")
    z = one_pass(y, block.qkv_w, block.pos_w, "w")
    return x + block.gamma * F.conv2d(z, block.proj.weight, block.proj.bias)


@pytest.mark.parametrize("rel_pos", [True, False])
def test_axial_matches_loops_along_height_then_width(rel_pos):
    torch.manual_seed(0)
    block = _randomize(create_attn("axial", 8, num_heads=2, rel_pos=rel_pos, rel_pos_hidden=4), std=0.4).eval()
    x = torch.randn(2, 8, 3, 4)
    torch.testing.assert_close(block(x), _axial_reference(block, x), rtol=1e-4, atol=1e-5)


def test_axial_tap_maps_stay_on_the_query_column_then_row():
    block = _randomize(create_attn("axial", 16, num_heads=2), std=0.3).eval()
    seen_h, seen_w = _capture(block.tap_h), _capture(block.tap_w)
    block(torch.randn(1, 16, 3, 4))
    wh = seen_h[0][0, 1].reshape(3, 4, 3, 4)  # head 1: (query h, query w, key h, key w)
    ww = seen_w[0][0, 1].reshape(3, 4, 3, 4)
    for i in range(3):
        for j in range(4):
            assert wh[i, j].sum(0)[j] == pytest.approx(1.0) and wh[i, j][:, [t for t in range(4) if t != j]].abs().sum() == 0
            assert ww[i, j].sum(1)[i] == pytest.approx(1.0) and ww[i, j][[g for g in range(3) if g != i]].abs().sum() == 0


def test_axial_rejects_heads_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="channels=12 must be divisible by num_heads=8"):
        create_attn("axial", 12)


# ----------------------------------------------------------------------------- sk


def test_sk_matches_timm_selective_kernel_in_the_paper_form_with_copied_weights():
    from timm.layers import SelectiveKernel as TimmSK

    torch.manual_seed(0)
    ours = create_attn("sk", 64, attn_norm=True)  # groups gcd(64, 32) = 32, d = max(64/16, 32) = 32
    assert (ours.groups, ours.rd_channels) == (32, 32)
    ref = TimmSK(64, kernel_size=[3, 5], groups=32, rd_channels=32, split_input=False)
    _randomize(ref, std=0.3)
    with torch.no_grad():
        for mod in ref.modules():  # running variances must stay positive
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_var.abs_().add_(0.5)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 64, 7, 5)
    for train in (False, True):
        ours.train(train), ref.train(train)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_sk_default_replaces_the_fuse_bn_by_a_bias_so_batch_one_trains():
    """Documented difference from timm/the paper: BN over a (1, d, 1, 1) descriptor cannot train."""
    from timm.layers import SelectiveKernel as TimmSK

    x = torch.randn(1, 64, 5, 5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        TimmSK(64, kernel_size=[3, 5], groups=32, rd_channels=32, split_input=False).train()(x)
    ours = create_attn("sk", 64).train()
    assert isinstance(ours.attn.bn, nn.Identity) and ours.attn.fc_reduce.bias is not None
    assert ours(x).shape == x.shape


def test_sk_selects_between_branches_with_a_softmax_over_them():
    """V = sum_m a_m U_m, a = softmax_m(W_select relu(W_reduce GAP(sum_m U_m) + b)), hand-built."""
    torch.manual_seed(0)
    block = _randomize(create_attn("sk", 16), std=0.3).eval()
    for mod in block.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.abs_().add_(0.5)
    x = torch.randn(2, 16, 6, 6)
    u = []
    for path, dil in zip(block.paths, (1, 2)):
        conv = F.conv2d(x, path.conv.weight, padding=dil, dilation=dil, groups=16)  # 3x3, dilation 1 / 2
        bn = path.bn
        u.append(((conv - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
                  * bn.weight[:, None, None] + bn.bias[:, None, None]).relu())
    s = (u[0] + u[1]).mean((2, 3))  # (B, C)
    z = (s @ block.attn.fc_reduce.weight[:, :, 0, 0].T + block.attn.fc_reduce.bias).relu()  # (B, d)
    logits = (z @ block.attn.fc_select.weight[:, :, 0, 0].T).reshape(2, 2, 16)  # (B, M, C)
    a = logits.softmax(1)
    expected = a[:, 0, :, None, None] * u[0] + a[:, 1, :, None, None] * u[1]
    seen = [_capture(t) for t in block.taps]
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0][0] + seen[1][0], torch.ones(2, 16, 1, 1))  # the taps see a_m


@pytest.mark.parametrize("channels, groups", [(16, 16), (24, 8), (64, 32), (96, 32), (3, 1)])
def test_sk_groups_are_the_gcd_of_channels_and_the_papers_32(channels, groups):
    block = create_attn("sk", channels)
    assert block.groups == groups and all(p.conv.groups == groups for p in block.paths)


@pytest.mark.parametrize("channels, rd", [(16, 32), (64, 32), (1024, 64)])
def test_sk_reduced_width_is_c_over_16_but_at_least_32(channels, rd):
    assert create_attn("sk", channels).rd_channels == rd


def test_sk_second_branch_is_a_dilated_3x3_in_place_of_5x5():
    block = create_attn("sk", 32)
    convs = [p.conv for p in block.paths]
    assert [(c.kernel_size, c.dilation, c.padding) for c in convs] == [((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (2, 2))]
    plain = create_attn("sk", 32, keep_3x3=False)
    assert [p.conv.kernel_size for p in plain.paths] == [(3, 3), (5, 5)]


def test_sk_rejects_a_single_or_even_kernel():
    with pytest.raises(ValueError, match="kernel_size must list >= 2 odd kernel sizes"):
        create_attn("sk", 16, kernel_size=(3,))
    with pytest.raises(ValueError, match="kernel_size must list >= 2 odd kernel sizes"):
        create_attn("sk", 16, kernel_size=(3, 4))


def test_danet_cam_energies_stay_float32_under_bfloat16_autocast():
    """Unscaled energies over N positions make a sharp softmax; bf16 rounding must not move it."""
    torch.manual_seed(0)
    cam = create_attn("danet_cam", 32, gamma_init=1.0).eval()
    x = torch.randn(2, 32, 24, 24) * 3
    y = cam(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf = cam(x)
    assert ((y_bf.float() - y).norm() / y.norm()) < 0.01
