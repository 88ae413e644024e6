"""Faithfulness to the papers and to the authors' released code (issue 15, deliverable 3).

Each ``*_authors`` function below is an op-for-op rendering, written for these tests, of how the
authors' public PyTorch code computes the block's forward (module layout, order of operations,
which BatchNorms and softmaxes sit where). The attnzoo block's weights are copied in, and the
block's authors' form must give the same numbers; the default (paper) form must differ where the
docstring says it does.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attnzoo import create_attn


def _randomize(block, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() if p.dim() > 1 else 4) ** -0.5)
        for m in block.modules():  # non-trivial running statistics for eval mode
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return block


def _bn(x, bn, training):
    """BatchNorm as the authors' nn.BatchNorm1d/2d computes it, on x of shape (B, C, ...)."""
    return F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, training, 0.0, bn.eps)


# --------------------------------------------------------------------------------------------- sge


def _sge_authors(block, x):
    """PytorchInsight's SpatialGroupEnhance: per group x * avgpool, sum, centre, / (std + 1e-5)."""
    b, c, h, w = x.shape
    g = block.groups
    xg = x.reshape(b * g, c // g, h, w)
    t = (xg * xg.mean((2, 3), keepdim=True)).sum(1, keepdim=True).reshape(b * g, -1)
    t = t - t.mean(1, keepdim=True)
    t = t / (t.std(1, keepdim=True) + 1e-5)
    t = t.reshape(b, g, h, w) * block.weight + block.bias
    return (xg * torch.sigmoid(t.reshape(b * g, 1, h, w))).reshape(b, c, h, w)


def test_sge_divides_by_std_plus_eps_in_low_variance_groups():
    """A group whose similarities vary by ~1e-3: std + eps keeps their spread, sqrt(var + eps) flattens it."""
    block = _randomize(create_attn("sge", 4, groups=2))
    torch.manual_seed(0)
    x = torch.randn(1, 4, 4, 4) * 0.03  # c_i = g . x_i ~ 1e-3
    c = (x.reshape(1, 2, 2, 16) * x.reshape(1, 2, 2, 16).mean(-1, keepdim=True)).sum(2)  # (1, G, N)
    n = (c - c.mean(-1, keepdim=True)) / (c.var(-1, unbiased=False, keepdim=True).sqrt() + 1e-5)  # Eq. 4
    a = torch.sigmoid(n * block.weight.view(1, 2, 1) + block.bias.view(1, 2, 1)).repeat_interleave(2, 1)
    torch.testing.assert_close(block(x), x * a.view(1, 4, 4, 4))
    old = copy.deepcopy(block)
    old.spread = "sqrt_var"
    rel = ((old(x) - block(x)) / block(x)).abs().max()
    assert rel > 0.1, f"the sqrt(var + eps) form should differ a lot in a low-variance group, got {rel:.3g}"


@pytest.mark.parametrize("size", [(1, 1), (5, 3)])
def test_sge_authors_form_matches_their_code_and_every_form_has_finite_gradients(size):
    block = _randomize(create_attn("sge", 8, groups=2, spread="unbiased_std"))
    x = torch.randn(2, 8, *size, requires_grad=True)
    if size != (1, 1):  # the authors' code is 0/0 = NaN on a 1x1 map
        torch.testing.assert_close(block(x), _sge_authors(block, x))
    for spread in ("std", "unbiased_std", "sqrt_var"):
        block.spread = spread
        x.grad = None
        block(x).square().sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(block.weight.grad).all(), spread
    constant = torch.ones(1, 8, 3, 3, requires_grad=True)  # std 0: no infinite gradient
    create_attn("sge", 8, groups=2)(constant).sum().backward()
    assert torch.isfinite(constant.grad).all()


def test_sge_rejects_an_unknown_spread():
    with pytest.raises(ValueError, match="spread must be one of"):
        create_attn("sge", 8, spread="var")


# --------------------------------------------------------------------------------------------- bam


def _bam_authors(block, x, training):
    """Jongchan/attention-module BAM: FC-BN-ReLU-FC channel gate, conv-BN-ReLU spatial gate with no
    final BN, combined as x * (1 + sigmoid(Mc * Ms))."""
    d = block.dilation
    z = x.mean((2, 3))  # (B, C)
    z = F.relu(_bn(F.linear(z, block.fc1.weight[:, :, 0, 0], block.fc1.bias), block.bn_hidden, training))
    mc = F.linear(z, block.fc2.weight[:, :, 0, 0], block.fc2.bias)[:, :, None, None]
    s = F.relu(_bn(F.conv2d(x, block.conv_reduce.weight, block.conv_reduce.bias), block.bn_reduce, training))
    s = F.relu(_bn(F.conv2d(s, block.conv_dil1.weight, block.conv_dil1.bias, padding=d, dilation=d), block.bn_dil1, training))
    s = F.relu(_bn(F.conv2d(s, block.conv_dil2.weight, block.conv_dil2.bias, padding=d, dilation=d), block.bn_dil2, training))
    ms = F.conv2d(s, block.conv_spatial.weight, block.conv_spatial.bias)
    return x * (1 + torch.sigmoid(mc * ms))


@pytest.mark.parametrize("training", [True, False])
def test_bam_authors_form_matches_their_code(training):
    block = _randomize(create_attn("bam", 32, form="authors")).train(training)
    x = torch.randn(3, 32, 9, 8)
    torch.testing.assert_close(block(x), _bam_authors(block, x, training))


def test_bam_forms_differ_in_batchnorm_layout_and_width():
    paper, authors = create_attn("bam", 48), create_attn("bam", 48, form="authors")
    assert isinstance(authors.bn_channel, torch.nn.Identity) and isinstance(authors.bn_spatial, torch.nn.Identity)
    assert isinstance(paper.bn_channel, torch.nn.BatchNorm2d) and isinstance(paper.bn_spatial, torch.nn.BatchNorm2d)
    assert paper.fc1.bias is None and authors.fc1.bias is not None
    assert create_attn("bam", 40).rd_channels == 3 and create_attn("bam", 40, form="authors").rd_channels == 2
    assert create_attn("bam", 56).rd_channels == 4 and create_attn("bam", 56, form="authors").rd_channels == 3
    with pytest.raises(ValueError, match="form must be one of"):
        create_attn("bam", 32, form="code")


# -------------------------------------------------------------------------------------------- cbam


def _cbam_authors(block, x, training):
    """Jongchan/attention-module CBAM: shared MLP over avg and max pools, then ChannelPool [max; mean],
    a 7x7 conv without bias, BatchNorm (momentum 0.01), sigmoid."""
    ch = block.channel

    def mlp(v):
        return F.linear(F.relu(F.linear(v, ch.fc1.weight[:, :, 0, 0], ch.fc1.bias)), ch.fc2.weight[:, :, 0, 0], ch.fc2.bias)

    x = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    sp = block.spatial
    pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)  # the authors' order
    weight = sp.conv.weight[:, [1, 0]]  # attnzoo stacks [mean; max]: the same conv, channels swapped
    s = _bn(F.conv2d(pooled, weight, padding=sp.conv.padding), sp.norm, training)
    return x * torch.sigmoid(s)


@pytest.mark.parametrize("training", [True, False])
def test_cbam_matches_the_authors_code(training):
    block = _randomize(create_attn("cbam", 40)).train(training)
    x = torch.randn(2, 40, 9, 9)
    torch.testing.assert_close(block(x), _cbam_authors(block, x, training))


def test_cbam_floors_the_hidden_width_and_uses_the_authors_bn_momentum():
    assert create_attn("cbam", 40).rd_channels == 2  # 40 // 16, as the authors
    assert create_attn("cbam", 40, rd_floor=False).rd_channels == 3  # round(2.5) -> timm's make_divisible
    assert create_attn("cbam", 64).rd_channels == create_attn("cbam", 64, rd_floor=False).rd_channels == 4
    block = create_attn("cbam_spatial", 8).train()
    assert block.norm.momentum == 0.01
    x = torch.randn(2, 8, 5, 5) + 3.0
    conv_out = block.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)).detach()
    block(x)
    torch.testing.assert_close(block.norm.running_mean, 0.01 * conv_out.mean().reshape(1))  # 1%, not 10%


# ---------------------------------------------------------------------------------------- external


def _external_authors(block, x, linear_0_weight, linear_1_weight):
    """EANet's External_attention (without its final ReLU, off by default here): conv1 -> linear_0 ->
    softmax over N -> l1 over S -> linear_1 -> conv2 + BN -> + identity."""
    b, c, h, w = x.shape
    f = F.conv2d(x, block.conv_in.weight).reshape(b, c, h * w)
    attn = F.conv1d(f, linear_0_weight).softmax(-1)
    attn = attn / (1e-9 + attn.sum(1, keepdim=True))
    y = F.conv1d(attn, linear_1_weight).reshape(b, c, h, w)
    return x + _bn(F.conv2d(y, block.conv_out.weight), block.norm, False)


def test_external_tied_memories_take_the_authors_shared_storage_sgd_step():
    torch.manual_seed(0)
    tied = _randomize(create_attn("external", 8, memory_size=4, tie_memories=True)).eval()
    assert tied.mem_v is None and "mem_v.weight" not in tied.state_dict()
    x = torch.randn(2, 8, 5, 5)
    # the authors' module: linear_1's weight is a transposed view of linear_0's storage
    lin0 = torch.nn.Conv1d(8, 4, 1, bias=False)
    lin1 = torch.nn.Conv1d(4, 8, 1, bias=False)
    with torch.no_grad():
        lin0.weight.copy_(tied.mem_k.weight[:, :, :, 0])
    lin1.weight.data = lin0.weight.data.permute(1, 0, 2)
    torch.testing.assert_close(tied(x), _external_authors(tied, x, lin0.weight, lin1.weight))

    opt_ours = torch.optim.SGD([tied.mem_k.weight], lr=0.5)
    opt_theirs = torch.optim.SGD([lin0.weight, lin1.weight], lr=0.5)
    tied(x).square().sum().backward()
    _external_authors(tied, x, lin0.weight, lin1.weight).square().sum().backward()
    opt_ours.step()
    opt_theirs.step()
    torch.testing.assert_close(tied.mem_k.weight[:, :, 0, 0], lin0.weight[:, :, 0])
    torch.testing.assert_close(lin1.weight[:, :, 0], lin0.weight[:, :, 0].T)  # still tied in theirs


def test_external_default_memories_are_independent_and_tied_ones_survive_a_dtype_change():
    free = create_attn("external", 8, memory_size=4)
    assert free.mem_v.weight.data_ptr() != free.mem_k.weight.data_ptr()
    torch.testing.assert_close(free.mem_v.weight[:, :, 0, 0], free.mem_k.weight[:, :, 0, 0].T)
    tied = create_attn("external", 8, memory_size=4, tie_memories=True).double().eval()
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    w = tied.mem_k.weight[:, :, 0, 0]
    torch.testing.assert_close(tied(x), _external_authors(tied, x, w.unsqueeze(-1), w.T.unsqueeze(-1)))


# ------------------------------------------------------------------------------------------- psa


def _psa_authors(block, x):
    """DeLightCMU/PSA ``PSA_p`` / ``PSA_s``: spatial_pool (the channel branch) and channel_pool (the
    spatial branch) as the released code orders them."""
    def channel_branch(t):
        b, _, h, w = t.shape
        v = F.conv2d(t, block.ch_wv.weight).reshape(b, -1, h * w)
        q = F.conv2d(t, block.ch_wq.weight).reshape(b, 1, h * w).softmax(2)
        ctx = torch.matmul(v, q.transpose(1, 2)).unsqueeze(-1)  # (B, C/2, 1, 1)
        if block.layout == "sequential":  # conv_up = Conv, LayerNorm([C/8, 1, 1]), ReLU, Conv
            ctx = F.conv2d(ctx, block.ch_wz.weight, block.ch_wz.bias)
            ctx = F.layer_norm(ctx, ctx.shape[1:], block.ln.weight.view(-1, 1, 1), block.ln.bias.view(-1, 1, 1))
            ctx = F.conv2d(F.relu(ctx), block.ch_wz2.weight, block.ch_wz2.bias)
        else:
            ctx = F.conv2d(ctx, block.ch_wz.weight)
        return t * torch.sigmoid(ctx)

    def spatial_branch(t):
        b, _, h, w = t.shape
        g = F.adaptive_avg_pool2d(F.conv2d(t, block.sp_wq.weight), 1).reshape(b, -1, 1).permute(0, 2, 1)
        theta = F.conv2d(t, block.sp_wv.weight).reshape(b, -1, h * w)
        if block.layout == "sequential":
            ctx = torch.matmul(g, theta.softmax(2))
        else:
            ctx = torch.matmul(g, theta).softmax(2)
        return t * torch.sigmoid(ctx.reshape(b, 1, h, w))

    if block.layout == "sequential":
        return spatial_branch(channel_branch(x))
    return channel_branch(x) + spatial_branch(x)


@pytest.mark.parametrize("name", ["psa", "psa_s"])
def test_psa_authors_form_matches_their_code_and_differs_from_the_paper(name):
    block = _randomize(create_attn(name, 32, form="authors"))
    x = torch.randn(2, 32, 6, 5)
    torch.testing.assert_close(block(x), _psa_authors(block, x))
    paper = _randomize(create_attn(name, 32))
    assert not torch.allclose(paper(x), _psa_authors(block, x), atol=1e-3)


def test_psa_s_authors_bottleneck_is_c_over_8():
    block = create_attn("psa_s", 64, form="authors")
    assert (block.ch_wz.in_channels, block.ch_wz.out_channels, block.ch_wz2.out_channels) == (32, 8, 64)
    assert block.ln.normalized_shape == (8,)
    with pytest.raises(ValueError, match="form must be one of"):
        create_attn("psa", 32, form="code")


# ------------------------------------------------------------------ the alternative forms keep the contract

ALTERNATIVES = [
    ("sge", {"spread": "unbiased_std"}), ("sge", {"spread": "sqrt_var"}), ("bam", {"form": "authors"}),
    ("cbam", {"rd_floor": False}), ("external", {"tie_memories": True}),
    ("psa", {"form": "authors"}), ("psa_s", {"form": "authors"}),
]


@pytest.mark.parametrize("name,kwargs", ALTERNATIVES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_alternative_forms_compile_fullgraph_and_train_at_batch_one(name, kwargs):
    torch._dynamo.reset()
    block = _randomize(create_attn(name, 64, **kwargs)).eval()
    x = torch.randn(2, 64, 5, 7)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)
    block.train()
    x1 = torch.randn(1, 64, 1, 1, requires_grad=True)
    y = block(x1)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x1.grad).all()


@pytest.mark.parametrize("name,kwargs", ALTERNATIVES[2:3] + ALTERNATIVES[4:], ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_alternative_forms_export_to_onnx(name, kwargs, tmp_path):
    import onnxruntime as ort

    block = _randomize(create_attn(name, 16, **kwargs)).eval()
    x = torch.randn(1, 16, 6, 6)
    path = tmp_path / "block.onnx"
    torch.onnx.export(block, (x,), str(path), dynamo=True, verbose=False)
    got = ort.InferenceSession(str(path)).run(None, {ort.InferenceSession(str(path)).get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), block(x), rtol=1e-4, atol=1e-5)
