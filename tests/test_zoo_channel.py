"""Channel-attention zoo (issue 6): ese, gct, srm, fca, gc, ge (+ ge_theta, ge_theta_plus), simam.

Each block's central equation against a tiny hand-computed case, and parity with timm's block
under copied weights where timm has it (EffectiveSEModule, GlobalContext, GatherExcite).
The registry-wide contract (shapes, 1x1, bf16, compile, ONNX, ...) is tests/test_blocks.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from timm.layers import ConvMlp, EffectiveSEModule, GatherExcite as TimmGatherExcite, GlobalContext as TimmGlobalContext
from timm.layers import create_conv2d, make_divisible

from attnzoo import create_attn, list_attn
from attnzoo.factory import attn_info

NAMES = ["ese", "gct", "srm", "fca", "gc", "ge", "ge_theta", "ge_theta_plus", "simam"]


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
    return module


def sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


@pytest.mark.parametrize("name", NAMES)
def test_channel_zoo_block_is_registered_in_its_family(name):
    # SimAM's weights are 3-D (one per neuron), so it is channel+spatial; the rest reweight channels
    family = "channel+spatial" if name == "simam" else "channel"
    assert name in list_attn(family=family)
    assert attn_info(name).metadata["link"].startswith("https://")


# -- ese ---------------------------------------------------------------------------------------------

def test_ese_gate_is_hard_sigmoid_of_one_full_width_fc():
    block = create_attn("ese", 2)
    with torch.no_grad():
        block.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]).view(2, 2, 1, 1))
        block.fc.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]]]])  # channel means 1 and 1
    # t = W m + b = [1.5, -2];  hard_sigmoid(t) = relu6(t + 3) / 6 = [0.75, 1/6]
    expected = x * torch.tensor([0.75, 1.0 / 6]).view(1, 2, 1, 1)
    torch.testing.assert_close(block(x), expected)


def test_ese_matches_timm_effective_se_with_copied_weights():
    ref = randomize_(EffectiveSEModule(16)).eval()
    block = create_attn("ese", 16).eval()
    block.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(block(x), ref(x))


# -- gct ---------------------------------------------------------------------------------------------

def test_gct_is_identity_at_the_papers_initialization():
    block = create_attn("gct", 8)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)


def _gct_hand_block(mode):
    block = create_attn("gct", 2, mode=mode, eps=1e-12)
    with torch.no_grad():
        block.alpha.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
        block.gamma.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        block.beta.copy_(torch.tensor([0.0, 0.5]).view(1, 2, 1, 1))
    return block


def test_gct_l2_gate_matches_hand_computed_case():
    x = torch.tensor([[[[3.0, 4.0]], [[0.0, -1.0]]]])
    # s = alpha * ||x_c||_2 = [1 * 5, 2 * 1] = [5, 2];  s^ = s / sqrt(mean(s^2)) = s / sqrt(14.5)
    s_hat = [5 / math.sqrt(14.5), 2 / math.sqrt(14.5)]
    gate = [1 + math.tanh(1.0 * s_hat[0] + 0.0), 1 + math.tanh(-1.0 * s_hat[1] + 0.5)]
    expected = x * torch.tensor(gate).view(1, 2, 1, 1)
    torch.testing.assert_close(_gct_hand_block("l2")(x), expected)


def test_gct_l1_gate_matches_hand_computed_case():
    x = torch.tensor([[[[3.0, -4.0]], [[0.0, -1.0]]]])
    # s = alpha * ||x_c||_1 = [7, 2];  s^ = C s / ||s||_1 = s / mean|s| = [7/4.5, 2/4.5]
    gate = [1 + math.tanh(7 / 4.5), 1 + math.tanh(-2 / 4.5 + 0.5)]
    expected = x * torch.tensor(gate).view(1, 2, 1, 1)
    torch.testing.assert_close(_gct_hand_block("l1")(x), expected)


def test_gct_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        create_attn("gct", 8, mode="linf")


# -- srm ---------------------------------------------------------------------------------------------

def _srm_hand_block():
    block = create_attn("srm", 2, eps=1e-12).eval()
    with torch.no_grad():
        block.cfc.copy_(torch.tensor([[0.5, 2.0], [-1.0, 0.0]]))
        block.bn.running_mean.copy_(torch.tensor([1.0, 0.0]))
        block.bn.running_var.copy_(torch.tensor([4.0, 1.0]))
        block.bn.weight.copy_(torch.tensor([1.0, 2.0]))
        block.bn.bias.copy_(torch.tensor([0.0, 0.1]))
    return block


def test_srm_gate_matches_hand_computed_style_integration():
    block = _srm_hand_block()
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 5.0]]]])
    # channel 0: mu = 2, sigma = 1 (population std); z = 0.5*2 + 2*1 = 3; BN: (3 - 1)/2 * 1 + 0 = 1
    # channel 1: mu = 5, sigma = 0;                  z = -5;          BN: (-5 - 0)/1 * 2 + 0.1 = -9.9
    expected = x * torch.tensor([sigmoid(1.0), sigmoid(-9.9)]).view(1, 2, 1, 1)
    torch.testing.assert_close(block(x), expected)


def test_srm_std_is_finite_on_a_one_by_one_map():
    block = randomize_(create_attn("srm", 4)).train()
    x = torch.randn(3, 4, 1, 1, requires_grad=True)
    y = block(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(block.cfc.grad).all()


def test_srm_batch_one_in_training_uses_running_statistics_and_leaves_them():
    block = _srm_hand_block().train()
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 5.0]]]])
    before = block.bn.running_mean.clone(), block.bn.running_var.clone()
    y_train = block(x)
    assert torch.equal(block.bn.running_mean, before[0]) and torch.equal(block.bn.running_var, before[1])
    torch.testing.assert_close(y_train, block.eval()(x))


def test_srm_batch_of_two_in_training_normalizes_with_batch_statistics():
    block = _srm_hand_block().train()
    x = torch.randn(2, 2, 3, 3)
    mu = x.mean((2, 3))
    sigma = x.var((2, 3), unbiased=False).add(1e-12).sqrt()
    z = mu * block.cfc[:, 0] + sigma * block.cfc[:, 1]  # (B, C)
    z_hat = (z - z.mean(0)) / (z.var(0, unbiased=False) + block.bn.eps).sqrt()
    gate = torch.sigmoid(z_hat * block.bn.weight + block.bn.bias)
    torch.testing.assert_close(block(x), x * gate[:, :, None, None])


# -- fca ---------------------------------------------------------------------------------------------

def test_fca_ortho_filters_match_the_authors_dct_at_14x14():
    block = create_attn("fca", 32, dct_norm="ortho")
    top16 = [(0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0),
             (5, 0), (1, 6), (3, 0), (0, 4), (0, 6), (0, 3), (3, 5), (2, 2)]  # paper's top-16, 7x7 grid

    def dct(pos, freq, n):
        v = math.cos(math.pi * freq * (pos + 0.5) / n) / math.sqrt(n)
        return v * math.sqrt(2) if freq else v

    expected = torch.zeros(32, 14, 14)
    for k, (u, v) in enumerate(top16):
        for i in range(14):
            for j in range(14):
                expected[2 * k:2 * k + 2, i, j] = dct(i, 2 * u, 14) * dct(j, 2 * v, 14)  # 14 // 7 = 2
    torch.testing.assert_close(block.dct_filters(14, 14), expected)


def test_fca_maps_reference_frequencies_onto_maps_smaller_than_7x7():
    block = create_attn("fca", 16)  # top16: channel 2 has (u, v) = (6, 0), channel 10 has (3, 0)
    f = block.dct_filters(3, 1)  # (C, 3, 1), mean-normalized (divided by H*W = 3)
    c = math.cos(math.pi / 6)
    # u = 6 -> floor(6 * 3 / 7) = 2: cos(2 pi (i + .5) / 3) = [1/2, -1, 1/2]
    torch.testing.assert_close(f[2, :, 0], torch.tensor([0.5, -1.0, 0.5]) / 3)
    # u = 3 -> floor(3 * 3 / 7) = 1: cos(pi (i + .5) / 3) = [cos(pi/6), 0, -cos(pi/6)]
    torch.testing.assert_close(f[10, :, 0], torch.tensor([c, 0.0, -c]) / 3, atol=1e-7, rtol=0)
    # at 1x1 every frequency is (0, 0): the descriptor is the value itself
    assert torch.equal(block.dct_filters(1, 1), torch.ones(16, 1, 1))


def test_fca_with_the_lowest_frequency_only_is_se_without_biases():
    fca = randomize_(create_attn("fca", 32, freq_sel="top1")).eval()
    se = create_attn("se", 32, rd_divisor=1).eval()
    with torch.no_grad():
        se.fc1.weight.copy_(fca.fc1.weight)
        se.fc2.weight.copy_(fca.fc2.weight)
        se.fc1.bias.zero_()
        se.fc2.bias.zero_()
    x = torch.randn(2, 32, 6, 9)
    torch.testing.assert_close(fca(x), se(x))


def test_fca_splits_channels_that_the_frequency_count_does_not_divide():
    few = create_attn("fca", 8, rd_ratio=0.25)  # fewer channels than the 16 frequencies: the top 8, one each
    assert list(zip(few.freq_u.tolist(), few.freq_v.tolist())) == [(0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0)]
    odd = create_attn("fca", 24, freq_sel="top4", rd_ratio=0.25)  # 24 channels, 4 frequencies: groups of 6
    assert odd.freq_u.tolist() == [0] * 12 + [6] * 6 + [0] * 6
    assert odd.freq_v.tolist() == [0] * 6 + [1] * 6 + [0] * 6 + [5] * 6


def test_fca_rejects_an_unknown_frequency_selection():
    with pytest.raises(ValueError, match="freq_sel must be one of"):
        create_attn("fca", 32, freq_sel="top3")


# -- gc ----------------------------------------------------------------------------------------------

def _copy_timm_gc(block, ref):
    state = ref.state_dict()
    state.pop("conv_attn.bias")  # softmax over H*W ignores it (see attnzoo.blocks.gc NOTE)
    block.load_state_dict(state)
    for mlp in (block.mlp_add, block.mlp_scale):
        if mlp is not None:
            mlp.norm.eps = 1e-6  # timm's LayerNorm2d eps


def test_gc_matches_timm_global_context_default_scale_fusion_with_copied_weights():
    ref = randomize_(TimmGlobalContext(32)).eval()  # timm default: fuse_scale, rd_ratio 1/8, sigmoid
    block = create_attn("gc", 32, fuse_add=False, fuse_scale=True, rd_ratio=1 / 8).eval()
    _copy_timm_gc(block, ref)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(block(x), ref(x))


def test_gc_matches_timm_global_context_add_fusion_with_copied_weights():
    ref = randomize_(TimmGlobalContext(32, fuse_add=True, fuse_scale=False, rd_ratio=1 / 16)).eval()
    block = create_attn("gc", 32).eval()
    _copy_timm_gc(block, ref)
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(block(x), ref(x))


def test_gc_add_fusion_is_identity_at_initialization():
    block = create_attn("gc", 32)
    x = torch.randn(2, 32, 5, 5)
    assert torch.equal(block(x), x)


def test_gc_context_and_add_fusion_match_hand_computed_case():
    block = create_attn("gc", 2, rd_channels=2)
    with torch.no_grad():
        block.conv_attn.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))  # logits = channel 0
        block.mlp_add.fc1.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        block.mlp_add.fc1.bias.zero_()
        block.mlp_add.fc2.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(2, 2, 1, 1))
        block.mlp_add.fc2.bias.copy_(torch.tensor([0.5, -1.0]))
    seen = []
    block.tap.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    x = torch.tensor([[[[0.0, math.log(3.0)]], [[4.0, 8.0]]]])
    # softmax([0, ln 3]) = [1/4, 3/4]; context = [3/4 ln 3, 1 + 6] = [0.82, 7]
    # LayerNorm over 2 values -> [-1, +1]; relu -> [0, 1]; fc2 -> [2, 4] + [0.5, -1] = [2.5, 3]
    expected = x + torch.tensor([2.5, 3.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(seen[0], torch.tensor([0.25, 0.75]).view(1, 1, 1, 2))


def test_gc_rejects_a_block_with_no_fusion():
    with pytest.raises(ValueError, match="at least one of fuse_add, fuse_scale"):
        create_attn("gc", 32, fuse_add=False)


# -- ge ----------------------------------------------------------------------------------------------

def test_ge_global_gate_is_sigmoid_of_the_channel_mean():
    x = torch.tensor([[[[0.0, 2.0]], [[-3.0, -1.0]]]])
    expected = x * torch.tensor([sigmoid(1.0), sigmoid(-2.0)]).view(1, 2, 1, 1)
    torch.testing.assert_close(create_attn("ge", 2)(x), expected)


def test_ge_local_extent_gathers_overlapping_windows_and_upsamples_nearest():
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    # extent 2: kernel 3, stride 2, padding 1 not counted: windows {1, 2} and {2, 3, 4}
    g = [1.5, 3.0]
    expected = x * torch.tensor([sigmoid(g[0]), sigmoid(g[0]), sigmoid(g[1]), sigmoid(g[1])]).view(1, 1, 1, 4)
    torch.testing.assert_close(create_attn("ge", 1, extent=2)(x), expected)


def timm_gather_excite(channels, extent, use_mlp=False, extra_params=False):
    """timm's GatherExcite as its constructor means to build it.

    timm 1.0.31 cannot build ``use_mlp=True`` nor ``extra_params=True`` (both constructor calls pass
    ``*dd`` positionally and raise TypeError), so those parts are attached here with the layers its
    constructor names: ``ConvMlp(channels, rd, act_layer=ReLU)`` and depthwise 3x3 stride-2 convs with
    BatchNorm, ReLU between. timm's own forward then runs unchanged.
    """
    ref = TimmGatherExcite(channels, extent=0 if extra_params else extent, use_mlp=False)
    if use_mlp:
        ref.mlp = ConvMlp(channels, make_divisible(channels / 16, 1, round_limit=0.0), act_layer=nn.ReLU)
    if extra_params:
        ref.extent = extent
        ref.gather = nn.Sequential()
        n = int(math.log2(extent))
        for i in range(1, n + 1):
            ref.gather.add_module(f"conv{i}", create_conv2d(channels, channels, kernel_size=3, stride=2, depthwise=True))
            ref.gather.add_module(f"norm{i}", nn.BatchNorm2d(channels))
            if i < n:
                ref.gather.add_module(f"act{i}", nn.ReLU(inplace=True))
    return ref


@pytest.mark.parametrize("extent", [0, 2, 4])
@pytest.mark.parametrize("use_mlp", [False, True])
def test_ge_matches_timm_gather_excite_with_copied_weights(extent, use_mlp):
    ref = randomize_(timm_gather_excite(32, extent, use_mlp)).eval()
    block = create_attn("ge", 32, extent=extent, use_mlp=use_mlp).eval()
    block.load_state_dict(ref.state_dict())
    x = torch.randn(2, 32, 9, 13)
    torch.testing.assert_close(block(x), ref(x))


@pytest.mark.parametrize("name", ["ge_theta", "ge_theta_plus"])
def test_ge_theta_matches_timm_parametric_gather_with_copied_weights(name):
    ref = timm_gather_excite(32, 4, use_mlp=name == "ge_theta_plus", extra_params=True)
    randomize_(ref).train()
    block = create_attn(name, 32, extent=4).train()
    block.load_state_dict(ref.state_dict())
    x = torch.randn(2, 32, 9, 13)
    torch.testing.assert_close(block(x), ref(x))  # train mode: batch statistics, running stats updated
    torch.testing.assert_close(block.eval()(x), ref.eval()(x))


def test_ge_theta_plus_matches_a_plain_functional_reference():
    block = randomize_(create_attn("ge_theta_plus", 32, extent=4)).eval()
    with torch.no_grad():
        for i in (1, 2):
            bn = getattr(block.gather, f"norm{i}")
            bn.running_mean.copy_(torch.randn(32) * 0.1)
            bn.running_var.copy_(torch.rand(32) + 0.5)
    p = dict(block.named_parameters())
    x = torch.randn(2, 32, 8, 8)

    def dw_bn(t, i):
        bn = getattr(block.gather, f"norm{i}")
        t = F.conv2d(t, p[f"gather.conv{i}.weight"], stride=2, padding=1, groups=32)
        return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    g = dw_bn(F.relu(dw_bn(x, 1)), 2)  # (2, 32, 2, 2): two stride-2 convs for extent 4
    g = F.conv2d(F.relu(F.conv2d(g, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    g = g.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # nearest upsampling 2x2 -> 8x8
    torch.testing.assert_close(block(x), x * torch.sigmoid(g))


def test_ge_theta_gathers_with_log2_extent_depthwise_convs():
    block = create_attn("ge_theta", 16)
    convs = [m for m in block.gather if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.groups == 16 and c.stride == (2, 2) for c in convs)  # extent 8
    assert isinstance(block.mlp, nn.Identity)


def test_ge_parametric_global_extent_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="needs a local extent"):
        create_attn("ge_theta", 32, extent=0)


@pytest.mark.parametrize("extent", [1, 3, 6, -2])
def test_ge_rejects_an_extent_that_is_not_a_power_of_two(extent):
    with pytest.raises(ValueError, match="power of two"):
        create_attn("ge", 32, extent=extent)


# -- simam -------------------------------------------------------------------------------------------

def test_simam_gate_matches_hand_computed_inverse_energy():
    x = torch.tensor([[[[0.0, 0.0, 3.0]]]])
    # mu = 1, (t - mu)^2 = [1, 1, 4], sigma^2 = 6 / (3 - 1) = 3; 1/e = d / (4 (3 + 1e-4)) + 1/2
    e_inv = [d / (4 * (3 + 1e-4)) + 0.5 for d in (1.0, 1.0, 4.0)]
    expected = x * torch.tensor([sigmoid(e) for e in e_inv]).view(1, 1, 1, 3)
    torch.testing.assert_close(create_attn("simam", 1)(x), expected)


def test_simam_equals_sigmoid_of_inverse_minimal_energy_from_eq5():
    x = torch.randn(2, 3, 4, 5)
    lam = 1e-4
    mu = x.mean((2, 3), keepdim=True)
    var = x.var((2, 3), keepdim=True, unbiased=True)  # 1 / (M - 1)
    e_min = 4 * (var + lam) / ((x - mu) ** 2 + 2 * var + 2 * lam)  # Eq. 5
    torch.testing.assert_close(create_attn("simam", 3)(x), x * torch.sigmoid(1 / e_min))


def test_simam_gate_is_sigmoid_of_one_half_on_a_one_by_one_map():
    x = torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(create_attn("simam", 4)(x), x * sigmoid(0.5))


@pytest.mark.parametrize("name", ["eca", "ceca", "ecam"])
@pytest.mark.parametrize("bad", [True, 0, 4, 3.0])
def test_eca_family_refuses_a_kernel_size_that_is_not_a_positive_odd_int(name, bad):
    with pytest.raises(ValueError, match=f"{name}: kernel_size must be a positive odd int"):
        create_attn(name, 64, kernel_size=bad)
