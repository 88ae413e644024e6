"""The fast paths of attnzoo/blocks/_fused.py: exact gradients, and the same function as the plain path."""
from __future__ import annotations

import sys

import pytest
import torch
from torch.autograd import gradcheck

from attnzoo import create_attn, list_attn
from attnzoo.factory import attn_info
from attnzoo.blocks import _fused
from attnzoo.blocks._fused import _ShuffleAttn, _SimAM


def _d(*shape, positive=False):
    t = torch.rand(*shape, dtype=torch.float64) + 0.1 if positive else torch.randn(*shape, dtype=torch.float64)
    return t.requires_grad_(True)


def test_shuffle_attention_gradients_are_exact():
    torch.manual_seed(0)
    x, params = _d(2, 8, 3, 4), [_d(2) for _ in range(4)]
    assert gradcheck(lambda a, *p: _ShuffleAttn.apply(a, *p, 2, 1e-5), (x, *params))


@pytest.mark.parametrize("size", [(3, 2), (1, 1)])
def test_simam_op_gradients_are_exact(size):
    torch.manual_seed(0)
    n = max(size[0] * size[1] - 1, 1)
    assert gradcheck(lambda a: _SimAM.apply(a, 0.1, n), (_d(2, 3, *size),))


def test_conv1x1_fused_is_the_separate_convolutions():
    convs = [torch.nn.Conv2d(6, 2, 1), torch.nn.Conv2d(6, 3, 1, bias=False)]
    x = torch.randn(2, 6, 4, 4)
    for got, conv in zip(_fused.conv1x1_fused(x, convs), convs):
        torch.testing.assert_close(got, conv(x))


def _randomized(name, seed=0):
    torch.manual_seed(seed)
    block = create_attn(name, 32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() if p.dim() > 1 else 4) ** -0.5)
    return block


_SWITCHED = [n for n in list_attn()  # blocks whose eager training path is a custom op of _fused
             if "use_fused" in vars(sys.modules[type(create_attn(n, 32)).__module__])]


def test_the_blocks_with_a_fast_path_are_the_expected_ones():
    assert {"shuffle", "simam", "scse"} <= set(_SWITCHED)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", _SWITCHED)
def test_fast_path_matches_the_plain_path_in_training(name, channels_last, monkeypatch):
    """Output, input gradient and every parameter gradient equal with the fast path off (the native
    kernels off as well: they take precedence where built, tests/test_native.py covers them)."""
    monkeypatch.setenv("ATTNZOO_NATIVE", "0")
    block = _randomized(name).train()
    module = sys.modules[type(block).__module__]  # the block's module bound use_fused by name: switch it there
    x = torch.randn(2, 32, 7, 6)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    results, backward_ops = [], []
    for fused in (True, False):
        monkeypatch.setattr(module, "use_fused", lambda t, on=fused: on and torch.is_grad_enabled())
        xi = x.clone().requires_grad_(True)
        block.zero_grad(set_to_none=True)
        y = block(xi)
        backward_ops.append(type(y.grad_fn).__name__)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad.clone() for n, p in block.named_parameters()}))
    assert backward_ops[0] != backward_ops[1], backward_ops  # the two runs did take different paths
    (y1, g1, p1), (y0, g0, p0) = results
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
    for n in p0:
        torch.testing.assert_close(p1[n], p0[n], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}.{n}: {m}")



# -- pooling (attnzoo/blocks/_pool.py) ---------------------------------------------------------------
from attnzoo.blocks._pool import pool_max, pool_mean  # noqa: E402


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dims, keepdim", [((2, 3), True), ((2, 3), False), (1, True), (2, True), (3, False)])
def test_pool_mean_is_tensor_mean_with_the_same_gradient(dims, keepdim, channels_last):
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = pool_mean(a, dims, keepdim=keepdim), b.mean(dims, keepdim=keepdim)
    torch.testing.assert_close(ya, yb)
    w = torch.randn_like(yb)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pool_mean_does_not_overflow_in_half_precision(dtype):
    x = torch.full((1, 2, 64, 64), 60.0, dtype=dtype)  # the sum (245760) would overflow float16
    assert torch.isfinite(pool_mean(x, (2, 3))).all() and pool_mean(x, (2, 3)).float().allclose(torch.tensor(60.0))


@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_max_is_amax_and_sends_the_gradient_to_the_maximum(channels_last):
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64)  # no ties
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(pool_max(a), b.amax((2, 3), keepdim=True))
    w = torch.randn(3, 5, 1, 1, dtype=torch.float64)
    (pool_max(a) * w).sum().backward()
    (b.amax((2, 3), keepdim=True) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


_LAYOUT_CASES = [  # (in, out, kernel, dilation, bias, input shape) as the blocks use them
    (1, 1, 3, 4, True, (5, 1, 9, 9)),  # bam's dilated branch at C/r = 1
    (1, 1, 7, 1, False, (3, 1, 8, 6)),  # lcbam's spatial conv
    (1, 1, 1, 1, True, (4, 1, 5, 5)),  # bam's last 1x1
    (2, 1, 7, 1, False, (3, 2, 8, 6)),  # cbam / triplet: [mean; max] -> 1
    (2, 2, 3, 1, True, (6, 2, 7, 7)),  # ema's per-group conv at C/G = 2
    (16, 4, 1, 1, True, (5, 16, 1, 1)),  # an MLP over pooled channels: F.linear
    (4, 16, 1, 1, False, (5, 4, 1, 1)),
    (8, 4, 3, 1, True, (2, 8, 5, 5)),  # more input channels: the plain call
    (16, 4, 1, 1, False, (3, 16, 6, 5)),  # bam's conv_reduce C -> C/r: F.linear over the channels_last view
    (16, 1, 1, 1, True, (2, 16, 4, 7)),
    (16, 8, 1, 1, True, (2, 16, 4, 4)),  # not reducing enough: the plain call
]


@pytest.mark.parametrize("cin,cout,k,d,bias,shape", _LAYOUT_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_layout_conv2d_computes_what_conv2d_computes(cin, cout, k, d, bias, shape, channels_last):
    from attnzoo.blocks._layout import LayoutConv2d

    torch.manual_seed(0)
    plain = torch.nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=bias).double()
    fast = LayoutConv2d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=bias).double()
    fast.load_state_dict(plain.state_dict())
    assert isinstance(fast, torch.nn.Conv2d) and fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [m(t) for m, t in zip((plain, fast), xs)]
    torch.testing.assert_close(ys[1], ys[0])
    g = torch.randn_like(ys[0])
    for y in ys:
        y.backward(g)
    torch.testing.assert_close(xs[1].grad, xs[0].grad)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad)
    assert gradcheck(lambda t, w: fast._conv_forward(t, w, fast.bias), (xs[1].detach()[:2].requires_grad_(),
                                                                           fast.weight.detach().clone().requires_grad_()))


def test_layout_conv2d_runs_hooks_and_leaves_unbatched_input_to_conv2d():
    from attnzoo.blocks._layout import LayoutConv2d

    conv = LayoutConv2d(1, 1, 3, padding=1)
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    conv(torch.randn(4, 1, 6, 6))
    assert seen == [torch.Size([4, 1, 6, 6])]
    torch.testing.assert_close(conv(torch.randn(1, 6, 6).fill_(1.0)),
                               torch.nn.functional.conv2d(torch.ones(1, 6, 6), conv.weight, conv.bias, padding=1))


@pytest.mark.parametrize("name", list_attn())
def test_every_slow_convolution_shape_goes_through_the_layout_conv(name):
    """A conv a block applies to a pooled (B, C, 1, 1) vector (1x1 kernel), to a one-channel map
    (1 -> 1), or to a small NCHW map inside a channels_last block is a LayoutConv2d; so is, in a channel or
    spatial block, a 1x1 conv of a channels_last map to a quarter of its channels or fewer."""
    from attnzoo.blocks._layout import LayoutConv2d
    gate = attn_info(name).metadata["family"] in ("channel", "spatial", "channel+spatial")

    block = create_attn(name, 64)
    slow = []

    def hook(conv, args, out):
        x = args[0]
        pooled = x.dim() == 4 and x.shape[-2:] == (1, 1) and conv.kernel_size == (1, 1) and conv.groups == 1
        one = conv.in_channels == conv.out_channels == 1
        small = (1 < conv.in_channels <= 4 and conv.out_channels <= 4 and x.shape[-1] > 1
                 and not x.is_contiguous(memory_format=torch.channels_last))
        reducing = (gate and conv.kernel_size == (1, 1) and conv.groups == 1 and 4 * conv.out_channels <= conv.in_channels
                    and x.shape[-1] > 1 and x.is_contiguous(memory_format=torch.channels_last))
        if (pooled or one or small or reducing) and not isinstance(conv, LayoutConv2d):
            slow.append((type(conv).__name__, tuple(x.shape)))

    hooks = [m.register_forward_hook(hook) for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        block(torch.randn(2, 64, 14, 14).contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    assert not slow


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("keepdim", [True, False])
def test_pool_amax_is_amax_to_the_bit_with_ties(dtype, channels_last, dim, keepdim):
    from attnzoo.blocks._pool import pool_amax

    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6, dtype=dtype)
    x[0, :, 0, 0] = 0.0  # every channel ties (a map after a ReLU)
    x[1, 2:4, 1, 1] = 7.0  # two tie
    x[2, 0, 2, :] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a.amax(dim, keepdim=keepdim), pool_amax(b, dim, keepdim)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)


def test_pool_amax_falls_back_to_equality_where_the_maximum_is_not_finite():
    from attnzoo.blocks._pool import pool_amax

    x = torch.randn(2, 3, 4, 4)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = float("inf"), float("nan")
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    a.amax(1).sum().backward()
    pool_amax(b, 1, keepdim=False).sum().backward()
    assert torch.equal(a.grad.nan_to_num(), b.grad.nan_to_num())
    assert b.grad[0, 0, 0, 0] == 1.0  # the inf is the maximum: it gets the gradient (inf - inf would be NaN)


@pytest.mark.parametrize("dim", [1, 2, 3, -1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_max_along_is_amax_and_gives_a_tie_to_one_position(dim, channels_last):
    from attnzoo.blocks._pool import pool_max_along

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a.amax(dim, keepdim=False), pool_max_along(b, dim, keepdim=False)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)  # no ties: the same gradient
    tied = torch.zeros(1, 2, 3, 3, requires_grad=True)
    pool_max_along(tied, dim).sum().backward()
    assert tied.grad.sum() == tied.numel() / tied.shape[dim]  # one unit of gradient per maximum, not split
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3"):
        pool_max_along(x, 0)


def test_max_of_gates_is_torch_maximum_with_its_tie_split():
    from attnzoo.blocks._fused import _MaxOfGates

    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    x[0, :, 0, :] = 0.0  # both products 0: a tie, which maximum splits in half
    gc, gs = torch.rand(2, 4, 1, 1, dtype=torch.float64), torch.rand(2, 1, 3, 5, dtype=torch.float64)
    ins = [[t.clone().requires_grad_() for t in (x, gc, gs)] for _ in range(2)]
    y_plain = torch.maximum(ins[0][0] * ins[0][1], ins[0][0] * ins[0][2])
    y_fused = _MaxOfGates.apply(*ins[1])
    g = torch.randn_like(y_plain)
    y_plain.backward(g)
    y_fused.backward(g)
    torch.testing.assert_close(y_fused, y_plain, rtol=0, atol=0)
    for a, b in zip(ins[1], ins[0]):
        torch.testing.assert_close(a.grad, b.grad)
    assert gradcheck(_MaxOfGates.apply, [t.detach().requires_grad_() for t in (torch.randn_like(x), gc, gs)])


@pytest.mark.parametrize("name", ["se", "cbam", "triplet", "scse", "split", "bam", "ema", "shuffle", "coord"])
def test_fast_paths_compile_fullgraph_in_channels_last_training(name):
    """Under torch.compile the custom ops step aside (plain aten ops, no graph break) and give the same gradients."""
    torch._dynamo.reset()
    block = _randomized(name).train()
    x = torch.randn(2, 32, 7, 6).contiguous(memory_format=torch.channels_last)
    grads = []
    for fn in (block, torch.compile(block, backend="aot_eager", fullgraph=True)):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(0)
        (fn(xi) * torch.linspace(-1, 1, xi.numel()).view_as(xi)).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_combine_like_and_keep_layout_give_channels_last_results_and_gradients():
    from attnzoo.blocks._layout import combine_like, keep_layout

    x = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last)
    gc, gs = torch.randn(2, 6, 1, 1, requires_grad=True), torch.randn(2, 1, 4, 5, requires_grad=True)
    y = combine_like(gc, gs, x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not (gc + gs).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, gc + gs, rtol=0, atol=0)
    assert combine_like(gc, gs, x.contiguous()).is_contiguous()  # an NCHW x: torch's own broadcast
    seen = {}
    for keep in (False, True):  # a non-leaf (a leaf's .grad follows the leaf's layout anyway)
        v = x.clone().requires_grad_(True) * 1.0
        v.register_hook(lambda g, keep=keep: seen.__setitem__(keep, g))
        (keep_layout(v) if keep else v)[:, :3].sum().backward()  # indexing builds a contiguous gradient
    assert not seen[False].is_contiguous(memory_format=torch.channels_last)
    assert seen[True].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(seen[True], torch.cat([torch.ones(2, 3, 4, 5), torch.zeros(2, 3, 4, 5)], 1))
