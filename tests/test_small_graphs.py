"""The gates' small graphs as single autograd ops (attnzoo/blocks/_small_graphs.py): the same function as the
modules they stand for (outputs, every gradient, BatchNorm buffers over several steps), used only where they
apply, and the modules' own behaviour (hooks, other layers, parametrizations) kept everywhere else."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn

from attnzoo import create_attn
from attnzoo.blocks import _small_graphs
from attnzoo.blocks.base import SafeBatchNorm2d
from attnzoo.blocks._layout import LayoutConv2d

from test_native import _cc, _same_step, _train_step

FUSED = {"_MlpGateBackward", "_ConvNormGateBackward"}
WHOLE = "_CbamGatesBackward"  # cbam_gates: CBAM's small graphs inside the block's one op
COORD = "_CoordGatesBackward"
STRIP = "_StripNormGateBackward"
CHANNEL_CONV = "_ChannelConvGateBackward"


@pytest.fixture(autouse=True)
def _kernels_and_two_threads():
    if shutil.which(_cc()) is None:
        pytest.skip("no C compiler: the native kernels, and so the fused small graphs, do not run here")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    _small_graphs.ENABLED = True


def _nodes(t):
    """The names of every autograd node behind t."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


def _step(name, x, monkeypatch, fused, **kwargs):
    _small_graphs.ENABLED = fused
    try:
        return _train_step(name, x, monkeypatch, True, **kwargs)
    finally:
        _small_graphs.ENABLED = True


CASES = [("cbam", {}), ("cbam", {"mlp_bias": False, "spatial_norm": False}), ("cbam_channel", {}),
         ("cbam_spatial", {}), ("cbam_spatial", {"spatial_norm": False, "kernel_size": 3}), ("lcbam", {}),
         ("triplet", {}), ("triplet", {"kernel_size": 3}),
         ("coord", {}), ("coord", {"bias": False, "rd_channels": 5}),
         ("ela", {}), ("ela", {"shared": False, "kernel_size": 5, "num_groups": 4}), ("ela", {"num_groups": 1}),
         ("strip", {}), ("strip", {"bias": True, "kernel_size": 5, "has_skip": True}),
         ("scoord", {}), ("scoord", {"bias": False, "act_layer": "hard_swish", "rd_channels": 6}),
         ("se", {}), ("se", {"rd_channels": 3}),
         ("eca", {}), ("eca", {"kernel_size": 7}), ("ceca", {}), ("ceca", {"bias": True, "kernel_size": 5}),
         ("ceca", {"kernel_size": 33}),  # wraps 16 channels on each side: all of them at C = 16
         ("ecam", {}), ("ecam", {"kernel_size": 5, "rd_channels": 3}),
         ("cbam_channel", {"rd_ratio": 0.25})]  # (4, 1024, .) below: 2 * 4 * 1024 * 256 > 2^20, the BLAS path


@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 64, 7, 7), (2, 16, 1, 5), (5, 17, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}" for n, k in CASES])
def test_the_fused_small_graphs_are_the_modules(name, kwargs, channels_last, shape, monkeypatch):
    if kwargs.get("rd_ratio") == 0.25:
        shape = (4, 1024, 3, 2)
    torch.manual_seed(5)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = _step(name, x, monkeypatch, True, **kwargs), _step(name, x, monkeypatch, False, **kwargs)
    _same_step(got, want)


def _graph_of(name, x, **kwargs):
    block = create_attn(name, x.shape[1], **kwargs).train()
    return block, _nodes(block(x.requires_grad_()))


@pytest.mark.parametrize("name", ["cbam", "cbam_channel", "cbam_spatial", "lcbam", "triplet", "coord", "ela", "strip",
                                  "scoord", "se", "eca", "ceca", "ecam"])
def test_the_default_blocks_run_their_small_graphs_as_one_op_each(name):
    _, nodes = _graph_of(name, torch.randn(4, 32, 8, 8))
    want = {"cbam": {WHOLE}, "cbam_channel": {WHOLE}, "cbam_spatial": {WHOLE}, "lcbam": {WHOLE},  # one op there
            "triplet": {"_ConvNormGateBackward"}, "coord": {COORD}, "ela": {STRIP}, "strip": {STRIP},
            "scoord": {COORD}, "se": {"_MlpGateBackward"}, "eca": {CHANNEL_CONV}, "ceca": {CHANNEL_CONV},
            "ecam": {CHANNEL_CONV}}.get(name, FUSED)
    assert want <= nodes
    assert not ({"AddmmBackward0", "NativeBatchNormBackward0", "SigmoidBackward0", "HardswishBackward0",
                 "BmmBackward0", "MmBackward0", "NativeGroupNormBackward0", "_DepthwiseConvBackward",
                 "ConvolutionBackward0", "ReluBackward0", "ConstantPadNdBackward0"} & nodes)


@pytest.mark.parametrize("name,kwargs", [("eca", {"gate_layer": "hard_sigmoid"}), ("ceca", {"gate_layer": "hard_sigmoid"}),
                                         ("ecam", {"act_layer": "silu"}), ("ecam", {"gate_layer": "hard_sigmoid"})])
def test_channel_convs_with_other_layers_run_as_modules(name, kwargs):
    _, nodes = _graph_of(name, torch.randn(4, 32, 8, 8), **kwargs)
    assert CHANNEL_CONV not in nodes and "ConvolutionBackward0" in nodes


def test_a_hook_on_ecas_conv_sees_it_run():
    block = create_attn("eca", 32).train()
    seen = []
    block.conv.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    nodes = _nodes(block(torch.randn(4, 32, 8, 8, requires_grad=True)))
    assert seen == [(4, 1, 32)] and CHANNEL_CONV not in nodes


def test_the_channel_conv_is_accurate_against_float64():
    """Against the modules in float64, at a width where float32's error shows (ResNet-50's widest stage)."""
    torch.manual_seed(3)
    for name in ("eca", "ceca", "ecam"):
        block = create_attn(name, 2048).train()
        for prm in block.parameters():
            prm.data.normal_(0, 0.5)
        ref = copy.deepcopy(block).double()
        z = torch.randn(8, 2048, 1, 1)
        dg = torch.randn(8, 2048, 1, 1)
        z32, z64 = z.clone().requires_grad_(), z.double().requires_grad_()
        g32 = block.from_pooled(z32)
        assert CHANNEL_CONV in _nodes(g32)
        g32.backward(dg)
        ref.from_pooled(z64).backward(dg.double())
        pairs = [("factor", g32, ref.from_pooled(z.double())), ("dL/dmean", z32.grad, z64.grad)]
        pairs += [(n, p32.grad, p64.grad) for (n, p32), p64 in zip(block.named_parameters(), ref.parameters())]
        for what, got, want in pairs:  # relative to the largest value: ecam's sums run over R k = 1280 terms
            err = ((got.double() - want).abs().max() / want.abs().max()).item()
            assert err < 1e-5, f"{name} {what}: {err:.1e}"


@pytest.mark.parametrize("kwargs,unfused", [({"act_layer": "silu"}, {"_MlpGateBackward"}),
                                            ({"gate_layer": "hard_sigmoid"}, FUSED)])
def test_other_layers_run_as_modules(kwargs, unfused):
    _, nodes = _graph_of("cbam", torch.randn(4, 32, 8, 8), **kwargs)
    assert not (unfused & nodes) and (FUSED - unfused) <= nodes


@pytest.mark.parametrize("name,kwargs,op", [("coord", {"act_layer": "relu"}, COORD), ("ela", {"act_layer": "silu"}, STRIP),
                                            ("scoord", {"act_layer": "gelu"}, COORD),
                                            ("ela", {"conv_group_width": 8}, STRIP)])
def test_strip_blocks_with_other_layers_run_as_modules(name, kwargs, op):
    _, nodes = _graph_of(name, torch.randn(4, 32, 8, 8), **kwargs)
    assert op not in nodes


def test_a_hook_on_a_small_part_sees_it_run():
    block = create_attn("cbam", 32).train()
    seen = []
    block.channel.fc1.register_forward_hook(lambda m, i, o: seen.append("fc1"))
    block.spatial.norm.register_forward_pre_hook(lambda m, i: seen.append("norm"))
    nodes = _nodes(block(torch.randn(4, 32, 8, 8, requires_grad=True)))
    assert seen == ["fc1", "norm"] and not (FUSED & nodes)


def test_a_global_module_hook_turns_the_fusion_off():
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    try:
        _, nodes = _graph_of("cbam", torch.randn(4, 32, 8, 8))
    finally:
        handle.remove()
    assert "LayoutConv2d" in seen and not (FUSED & nodes)


def test_a_parametrized_weight_runs_as_a_module_and_gets_its_gradient(monkeypatch):
    torch.manual_seed(0)
    block = create_attn("cbam", 32).train()
    plain = copy.deepcopy(block)
    for b in (block, plain):
        nn.utils.parametrizations.weight_norm(b.channel.fc1)
    x = torch.randn(4, 32, 8, 8)
    y = block(x)
    assert "_MlpGateBackward" not in _nodes(y)
    y.sum().backward()
    _small_graphs.ENABLED = False
    plain(x).sum().backward()
    for (k, p), (_, q) in zip(block.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=k)


def _same_modules(fused, plain):
    """The two copies of a small graph's modules agree: every parameter gradient and every buffer."""
    params = [[p for m in mods for p in m.parameters()] for mods in (fused, plain)]
    buffers = [[t for m in mods for t in m.buffers()] for mods in (fused, plain)]
    assert len(params[0]) == len(params[1]) and len(buffers[0]) == len(buffers[1])
    for p, q in zip(*params):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    for p, q in zip(*buffers):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", [
    lambda: SafeBatchNorm2d(1, momentum=0.01), lambda: SafeBatchNorm2d(1, momentum=None),
    lambda: nn.BatchNorm2d(1, track_running_stats=False), lambda: nn.BatchNorm2d(1, affine=False),
    lambda: nn.Identity()], ids=["momentum", "cumulative", "no-running-stats", "no-affine", "identity"])
@pytest.mark.parametrize("training", [True, False])
def test_conv_norm_gate_is_the_modules_over_several_steps(norm, training):
    torch.manual_seed(1)
    conv = LayoutConv2d(2, 1, 7, padding=3, bias=True)
    bn = norm()
    if isinstance(bn, nn.BatchNorm2d) and bn.affine:
        with torch.no_grad():
            bn.weight.fill_(1.7)
            bn.bias.fill_(-0.3)
    gate = nn.Sigmoid()
    fused, plain = [copy.deepcopy(m).train(training) for m in (conv, bn, gate)], [m.train(training) for m in (conv, bn, gate)]
    for step in range(3):
        z = torch.randn(4, 2, 9, 6) * (step + 1) + step
        za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
        g = torch.randn(4, 1, 9, 6)
        a = _small_graphs.conv_norm_gate(za, *fused)
        assert a is not None
        b = plain[2](plain[1](plain[0](zb)))
        a.backward(g)
        b.backward(g)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(za.grad, zb.grad, rtol=1e-4, atol=1e-5)
        _same_modules(fused, plain)


def test_one_value_per_channel_in_training_runs_the_module():
    conv, bn = LayoutConv2d(2, 1, 1, bias=False), SafeBatchNorm2d(1)
    assert _small_graphs.conv_norm_gate(torch.randn(1, 2, 1, 1), conv, bn, nn.Sigmoid()) is None


@pytest.mark.parametrize("split", [False, True])
def test_frozen_parameters_and_a_second_backward(split):
    """On the whole-block op, and on the split ops with their small graphs (a hooked tap sends CBAM there)."""
    torch.manual_seed(2)
    block = create_attn("cbam", 32).train()
    if split:
        block.spatial.tap.register_forward_hook(lambda m, i, o: None)
    for p in block.channel.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 32, 8, 8, requires_grad=True)
    y = block(x)
    assert FUSED <= _nodes(y) if split else WHOLE in _nodes(y)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)
    assert all(p.grad is None for p in block.channel.parameters())
    assert all(p.grad is not None for p in block.spatial.parameters())


def test_the_fusion_is_off_where_the_kernels_are(monkeypatch):
    monkeypatch.setenv("ATTNZOO_NATIVE", "0")
    _, nodes = _graph_of("cbam", torch.randn(4, 32, 8, 8))
    assert not (FUSED & nodes)


@pytest.mark.parametrize("norm", [lambda m: SafeBatchNorm2d(m), lambda m: SafeBatchNorm2d(m, momentum=None),
                                  lambda m: nn.BatchNorm2d(m, affine=False), lambda m: nn.Identity()],
                         ids=["default", "cumulative", "no-affine", "identity"])
@pytest.mark.parametrize("training", [True, False])
def test_coord_gates_are_the_modules_over_several_steps(norm, training):
    torch.manual_seed(4)
    c, m, h, w = 24, 6, 5, 7
    mods = [LayoutConv2d(c, m, 1, bias=True), norm(m), nn.Hardswish(), LayoutConv2d(m, c, 1), LayoutConv2d(m, c, 1, bias=False),
            nn.Sigmoid()]
    if isinstance(mods[1], nn.BatchNorm2d) and mods[1].affine:
        with torch.no_grad():
            mods[1].weight.uniform_(0.5, 2.0)
            mods[1].bias.uniform_(-1.0, 1.0)
    fused = [copy.deepcopy(mod).train(training) for mod in mods]
    plain = [mod.train(training) for mod in mods]
    for step in range(3):
        zh, zw = torch.randn(4, c, h, 1) * (step + 1), torch.randn(4, c, 1, w) + step
        a = [t.clone().requires_grad_() for t in (zh, zw)]
        b = [t.clone().requires_grad_() for t in (zh, zw)]
        got = _small_graphs.coord_gates(*a, *fused)
        assert got is not None
        conv1, bn, act, conv_h, conv_w, gate = plain
        f = act(bn(conv1(torch.cat([b[0], b[1].transpose(2, 3)], dim=2))))
        f_h, f_w = torch.split(f, [h, w], dim=2)
        want = gate(conv_h(f_h)), gate(conv_w(f_w.transpose(2, 3)))
        seeds = [torch.randn(t.shape) for t in want]
        torch.autograd.backward(got, seeds)
        torch.autograd.backward(want, seeds)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        for x, y in zip(a, b):
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-5)
        _same_modules(fused, plain)


def test_coord_gates_with_one_factor_used():
    torch.manual_seed(6)
    block = create_attn("coord", 32).train()
    plain = copy.deepcopy(block)
    x = torch.randn(4, 32, 6, 9)
    g_h, _ = block.factors(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
    g_h.sum().backward()
    _small_graphs.ENABLED = False
    p_h, _ = plain.factors(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
    p_h.sum().backward()
    for (k, p), (_, q) in zip(block.named_parameters(), plain.named_parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), k
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=k)
