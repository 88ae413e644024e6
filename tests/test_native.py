"""The native CPU kernels (attnzoo/blocks/_native.c): built here, the same function as the PyTorch paths
(outputs, input and parameter gradients, BatchNorm statistics, taps), and a clean fallback."""
from __future__ import annotations

import gc
import os
import shutil
import weakref

import pytest
import torch
import torch.nn.functional as F

from attnzoo import create_attn, list_attn
from attnzoo.blocks import _native
from attnzoo.blocks._layout import LayoutConv2d
from attnzoo.blocks._pooled_gates import MEAN_ONLY

# tests that hold without a C compiler (the fallbacks, the parsing, the packaging); every other test here
# needs the kernels, and is skipped, saying so, on a machine without a compiler
_WITHOUT_COMPILER = {
    "test_the_kernels_build_where_there_is_a_compiler", "test_a_failed_build_warns_once_and_keeps_the_pytorch_paths",
    "test_the_build_is_cached_by_source_and_compiler", "test_the_ctypes_signatures_are_read_from_the_c_source",
    "test_the_kernel_source_ships_with_the_package", "test_native_status_says_what_runs_and_run_records_keep_it",
    "test_tracing_records_aten_ops_not_the_kernels", "test_flops_are_counted_on_the_aten_ops",
}


def _cc() -> str:
    """The compiler the kernels would be built with ($CC or cc), as _native resolves it."""
    return (os.environ.get("CC") or "cc").split()[0]


@pytest.fixture(autouse=True)
def _kernels_or_skip(request):
    if request.node.originalname in _WITHOUT_COMPILER:
        return
    cc = _cc()
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc!r} not on PATH): the native kernels cannot be built here, the PyTorch paths run")


POOLED = ["cbam", "cbam_channel", "cbam_spatial", "lcbam", "triplet", "coord", "ela"]
MOMENT = ["srm", "gct", "fca"]
NATIVE_OPS = {"_MomentScaleBackward", "_ScseApplyBackward", "_ApplyGatesBackward", "_StripApplyBackward", "_GroupApplyBackward",
              "_TripletApplyBackward", "_BamGateBackward",
              "_SgeGatesBackward", "_SimAMGateBackward", "_GcApplyBackward", "_EmaCrossBackward", "_SkSelectBackward",
              "_NearestGateBackward", "_CbamGatesBackward", "_SumGatesBackward", "_ProductGatesBackward"}


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _native_on(monkeypatch, on: bool):
    monkeypatch.setenv("ATTNZOO_NATIVE", "1" if on else "0")


def test_the_kernels_build_where_there_is_a_compiler():
    if shutil.which(_cc()) is None:
        pytest.skip("no C compiler on this machine: the PyTorch paths run (tested below)")
    assert _native.kernels() is not None, _native.build_error()
    assert _native.build_error() is None


def _randomized(name, channels, seed=0, train=True, **kwargs):
    torch.manual_seed(seed)
    block = create_attn(name, channels, **kwargs).train(train)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() if p.dim() > 1 else 4) ** -0.5)
    return block


def _train_step(name, x, monkeypatch, native, seed=0, capture=True, **kwargs):
    """Output, dL/dx, parameter gradients, buffers and the captured factors of one training step (``kwargs``: the
    block's)."""
    _native_on(monkeypatch, native)
    block = _randomized(name, x.shape[1], seed, **kwargs)
    taps = {}
    for mname, m in block.named_modules():
        if capture and type(m).__name__ == "AttnTap":
            m.register_forward_hook(lambda mod, inp, out, k=mname: taps.__setitem__(k, out.detach().clone()))
    x = x.clone().requires_grad_(True)
    y = block(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(memory_format=torch.channels_last)
               if x.is_contiguous(memory_format=torch.channels_last) else
               torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return dict(y=y.detach(), dx=x.grad, grad_fn=type(y.grad_fn).__name__,
                params={k: p.grad for k, p in block.named_parameters()},
                buffers={k: b.clone() for k, b in block.named_buffers()}, taps=taps,
                layout=y.is_contiguous(memory_format=torch.channels_last))


def _train_step_float64(name, x, monkeypatch, seed=0, **kwargs):
    """The parameter gradients of ``_train_step`` for the float64 modules (the plain path): same input, weights, dL/dy."""
    _native_on(monkeypatch, False)
    block = _randomized(name, x.shape[1], seed, **kwargs).double()
    y = block(x.double().requires_grad_(True))
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).double())
    return dict(params={k: p.grad for k, p in block.named_parameters()})


def _close(a, b, what):
    scale = max(float(b.abs().max()), 1.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5 * scale, msg=lambda m: f"{what}: {m}")


def _same_step(got, want, taps: bool = True):
    """Two training steps (``_train_step``) agree: layout, output, dL/dx, parameter gradients, buffers and (unless
    ``taps`` is false: steps without a capture) taps."""
    assert got["layout"] == want["layout"]
    _close(got["y"], want["y"], "output")
    _close(got["dx"], want["dx"], "dL/dx")
    assert got["params"].keys() == want["params"].keys()
    for k in want["params"]:
        _close(got["params"][k], want["params"][k], f"dL/d{k}")
    for k in want["buffers"]:
        _close(got["buffers"][k].float(), want["buffers"][k].float(), k)
    if not taps:
        return
    assert got["taps"].keys() == want["taps"].keys() and got["taps"]
    for k in want["taps"]:
        _close(got["taps"][k], want["taps"][k], f"tap {k}")


@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (2, 48, 1, 7), (2, 16, 1, 1), (5, 17, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", POOLED)
def test_pooled_gates_op_is_the_plain_path(name, channels_last, shape, monkeypatch, two_threads):
    torch.manual_seed(3)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = _train_step(name, x, monkeypatch, True), _train_step(name, x, monkeypatch, False)
    assert got["grad_fn"] in NATIVE_OPS and want["grad_fn"] not in NATIVE_OPS
    _same_step(got, want)


@pytest.mark.parametrize("kwargs", [{}, {"spatial_norm": False, "mlp_bias": False}, {"kernel_size": 3, "rd_channels": 3}])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (2, 48, 1, 7), (2, 16, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", ["cbam", "cbam_channel", "cbam_spatial", "lcbam"])
def test_cbam_whole_block_op_is_the_plain_path(name, channels_last, shape, train, kwargs, monkeypatch, two_threads):
    """CBAM (and LightCBAM) as one op (``cbam_gates``: taps neither captured nor hooked), against its modules:
    output, dL/dx, every parameter gradient and the BatchNorm buffers, in training and in eval mode."""
    allowed = {"cbam": kwargs.keys(), "cbam_channel": ("mlp_bias", "rd_channels"),
               "cbam_spatial": ("spatial_norm", "kernel_size"), "lcbam": ("mlp_bias", "kernel_size", "rd_channels")}
    keys = {k: v for k, v in kwargs.items() if k in allowed[name]}
    torch.manual_seed(3)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = (_train_step(name, x, monkeypatch, native, capture=False, train=train, **keys) for native in (True, False))
    one_op = name == "cbam_channel" or shape[2] * shape[3] > 1  # the small-conv kernel wants a map (else the split ops)
    assert got["grad_fn"] == ("_CbamGatesBackward" if one_op else "_ApplyGatesBackward") and want["grad_fn"] not in NATIVE_OPS
    _same_step(got, want, taps=False)


def test_cbam_with_a_hooked_tap_or_frozen_parts_keeps_the_ops_right(monkeypatch, two_threads):
    """A hooked tap sends CBAM to the split ops; frozen parameters or an input without a gradient still give
    the modules' gradients on the whole-block op."""
    x = torch.randn(4, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    _native_on(monkeypatch, True)
    block = _randomized("cbam", 16)
    block.spatial.tap.register_forward_hook(lambda m, i, o: None)
    assert type(block(x).grad_fn).__name__ == "_ApplyGatesBackward"
    for frozen in ("channel", "spatial"):
        grads = {}
        for native in (True, False):
            _native_on(monkeypatch, native)
            block = _randomized("cbam", 16)
            for p in getattr(block, frozen).parameters():
                p.requires_grad_(False)
            y = block(x)
            assert (type(y.grad_fn).__name__ == "_CbamGatesBackward") == native
            y.square().sum().backward()
            grads[native] = {k: p.grad for k, p in block.named_parameters() if p.requires_grad}
        assert grads[True].keys() == grads[False].keys()
        for k in grads[False]:
            _close(grads[True][k], grads[False][k], k)


@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (2, 48, 1, 7), (2, 16, 1, 1), (5, 17, 4, 4),
                                   (4, 64, 7, 7), (2, 256, 5, 5)])  # groups of 1, 2 (C = 20, 48, 64) and 8 channels
@pytest.mark.parametrize("channels_last", [False, True])
def test_ema_op_is_the_plain_path(channels_last, shape, monkeypatch, two_threads):
    """EMA's cross-spatial step as one op (``ema_gates``) against the block's expression: output, dL/dx and every
    parameter gradient (through both branches); a captured factor, or a gate other than the sigmoid, runs the
    expression."""
    torch.manual_seed(3)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = (_train_step("ema", x, monkeypatch, native, capture=False) for native in (True, False))
    assert got["grad_fn"] == "_EmaCrossBackward" and want["grad_fn"] not in NATIVE_OPS
    _same_step(got, want, taps=False)
    captured = _train_step("ema", x, monkeypatch, True)
    assert captured["grad_fn"] not in NATIVE_OPS and captured["taps"]
    _close(captured["y"], want["y"], "output with a capture")
    other = _train_step("ema", x, monkeypatch, True, capture=False, gate_layer="hard_sigmoid")
    assert other["grad_fn"] not in NATIVE_OPS
    _native_on(monkeypatch, True)
    block = _randomized("ema", shape[1])
    assert {n for n, _ in _function_nodes(block(x))} >= {"_EmaCrossBackward", "_EmaBranchBackward"}
    block.gn.register_forward_hook(lambda m, i, o: None)  # a hooked GroupNorm runs as the module
    nodes = {n for n, _ in _function_nodes(block(x))}
    assert "_EmaCrossBackward" in nodes and "_EmaBranchBackward" not in nodes
    with torch.no_grad():  # inference: the forward kernel alone, the same values
        _native_on(monkeypatch, True)
        block = _randomized("ema", shape[1])
        y = block(x)
        _native_on(monkeypatch, False)
        _close(y, block(x), "inference output")


@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (3, 48, 1, 7), (3, 16, 1, 1), (5, 17, 4, 4),
                                   (4, 64, 7, 7)])  # batch >= 3: srm's BatchNorm over 2 samples is ill-conditioned
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", MOMENT)
def test_moment_gates_op_is_the_plain_path(name, channels_last, shape, monkeypatch, two_threads):
    """The channel gates on the mean (and variance) over positions: the one native op against each block's
    plain path -- output, dL/dx, parameter gradients, BatchNorm statistics (srm), taps."""
    torch.manual_seed(3)
    x = torch.randn(shape) * 2 + 0.5  # a non-zero mean: the variance term of dL/dx matters
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = _train_step(name, x, monkeypatch, True), _train_step(name, x, monkeypatch, False)
    assert got["grad_fn"] == "_MomentScaleBackward" and want["grad_fn"] not in NATIVE_OPS
    _same_step(got, want)


@pytest.mark.parametrize("aggregation", ["max", "add"])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (3, 16, 1, 1), (4, 64, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_scse_op_is_the_plain_path(aggregation, shape, channels_last, monkeypatch, two_threads):
    """scSE on its native op against its plain path: output, dL/dx, every parameter gradient (the 1x1
    conv's weight through its own reduction, its bias in the small graph), taps."""
    import attnzoo
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    runs = {}
    for native in (True, False):
        _native_on(monkeypatch, native)
        torch.manual_seed(0)
        block = attnzoo.create_attn("scse", shape[1], aggregation=aggregation).train()
        taps = {}
        for mname, m in block.named_modules():
            if type(m).__name__ == "AttnTap":
                m.register_forward_hook(lambda mod, inp, out, k=mname: taps.__setitem__(k, out.detach().clone()))
        xi = x.clone().requires_grad_(True)
        y = block(xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format))
        runs[native] = dict(op=type(y.grad_fn).__name__, y=y.detach(), dx=xi.grad, taps=taps,
                            params={k: q.grad for k, q in block.named_parameters()})
    got, want = runs[True], runs[False]
    assert got["op"] == "_ScseApplyBackward" and want["op"] != "_ScseApplyBackward"
    _close(got["y"], want["y"], "output")
    _close(got["dx"], want["dx"], "dL/dx")
    assert got["params"].keys() == want["params"].keys()
    for k in want["params"]:
        _close(got["params"][k], want["params"][k], f"dL/d{k}")
    assert got["taps"].keys() == want["taps"].keys() and got["taps"]
    for k in want["taps"]:
        _close(got["taps"][k], want["taps"][k], f"tap {k}")


def test_scse_mult_stays_on_the_plain_path(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    block = create_attn("scse", 16, aggregation="mult")
    assert type(block(torch.randn(4, 16, 6, 6, requires_grad=True)).grad_fn).__name__ not in NATIVE_OPS


@pytest.mark.parametrize("name", ["srm", "gct"])
def test_moment_gates_with_the_variance_are_as_accurate_as_the_plain_path(name, monkeypatch, two_threads):
    """Both float32 paths against float64, on a map whose mean is large next to its spread (where a
    one-pass E[x^2] - E[x]^2 would lose the variance to cancellation; the kernels take two passes)."""
    torch.manual_seed(0)  # means of 3 +- 1 per (sample, channel): srm's BatchNorm over the batch stays well-conditioned
    x = (torch.randn(4, 32, 12, 10) * 0.05 + 3.0 + torch.randn(4, 32, 1, 1)).contiguous(memory_format=torch.channels_last)
    got, plain = _train_step(name, x, monkeypatch, True), _train_step(name, x, monkeypatch, False)
    assert got["grad_fn"] == "_MomentScaleBackward"
    block = _randomized(name, 32).double()
    x64 = x.double().requires_grad_(True)
    y = block(x64)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).double())
    for key, want in (("y", y.detach()), ("dx", x64.grad)):
        err_native = float((got[key].double() - want).abs().max())
        err_plain = float((plain[key].double() - want).abs().max())
        assert err_native <= 2 * err_plain + 1e-6 * float(want.abs().max()), (key, err_native, err_plain)


@pytest.mark.parametrize("name,kwargs", [("gct", {"mode": "l1"}), *((n, {}) for n in MEAN_ONLY)])
def test_moment_gates_leave_other_variants_to_the_plain_path(name, kwargs, monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    block = create_attn(name, 16, **kwargs)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    assert type(block(x).grad_fn).__name__ not in NATIVE_OPS


def test_moment_gates_support_a_second_backward_frozen_parameters_and_inference(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    block = _randomized("fca", 16)
    x = torch.randn(4, 16, 6, 6, requires_grad=True)
    y = block(x)
    assert type(y.grad_fn).__name__ == "_MomentScaleBackward"
    y.sum().backward(retain_graph=True)
    first = (x.grad.clone(), block.fc1.weight.grad.clone())
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first[0])
    torch.testing.assert_close(block.fc1.weight.grad, 2 * first[1])
    block.requires_grad_(False)
    x.grad = None
    block(x).sum().backward()
    torch.testing.assert_close(x.grad, first[0])
    with torch.no_grad():  # inference: the forward kernels, same values
        got = block(x)
        _native_on(monkeypatch, False)
        torch.testing.assert_close(got, block(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["cbam", "cbam_channel", "cbam_spatial", "coord", "ela", "strip", "scoord", "triplet", "gc",
                                  "scse", "ema"])
def test_split_ops_support_a_second_backward_frozen_parameters_and_a_loss_on_a_factor(name, monkeypatch,
                                                                                          two_threads):
    """The ops around the small graphs: a retained graph's second backward, parameters without x's gradient and
    x's without the parameters', and a gradient that reaches x only through a factor (y itself unused)."""
    x0 = torch.randn(4, 32, 7, 6).contiguous(memory_format=torch.channels_last)

    def run(native, what):
        _native_on(monkeypatch, native)
        block = _randomized(name, 32)
        x = x0.clone().requires_grad_(what != "params only")
        if what == "x only":
            block.requires_grad_(False)
        if what == "factor":
            kept = []
            tap = [m for m in block.modules() if type(m).__name__ == "AttnTap"][-1]
            tap.register_forward_hook(lambda mod, inp, out: kept.append(out))
            block(x)
            (kept[0] * torch.linspace(-1, 1, kept[0].numel()).view(kept[0].shape)).sum().backward()
        else:
            y = block(x)
            if native:
                assert type(y.grad_fn).__name__ in NATIVE_OPS
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
            y.backward(g, retain_graph=True)
            if what == "twice":
                y.backward(g)
        return x.grad, {k: p.grad for k, p in block.named_parameters() if p.grad is not None}

    for what in ("twice", "params only", "x only", "factor"):
        if name == "ema" and what == "factor":
            continue  # ema's 1x1 branch op is more exact there than the float32 modules: checked against float64 below
        (dx, grads), (dx_plain, grads_plain) = run(True, what), run(False, what)
        assert (dx is None) == (dx_plain is None) and grads.keys() == grads_plain.keys(), what
        if dx is not None:
            assert dx.abs().sum() > 0, what
            _close(dx, dx_plain, f"{what}: dL/dx")
        for k in grads_plain:
            _close(grads[k], grads_plain[k], f"{what}: dL/d{k}")


def test_ema_branch_op_is_accurate_against_float64_with_a_loss_on_the_factor(monkeypatch, two_threads):
    """A capture of ema's factor runs its cross step as the expression and its 1x1 branch on ``ema_branch``; with
    a loss on the factor, dL/dgn.bias sums 5k terms that nearly cancel, and the float32 modules' sum is 1e-4 off
    the float64 value where the op's (double across the maps) is within a few 1e-6."""
    x0 = torch.randn(4, 32, 7, 6, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)

    def run(native, dtype):
        _native_on(monkeypatch, native)
        block = _randomized("ema", 32).to(dtype)
        kept = []
        block.tap.register_forward_hook(lambda mod, inp, out: kept.append(out))
        y = block(x0.to(dtype).requires_grad_(True))
        names = {n for n, _ in _function_nodes(y)}
        (kept[0] * torch.linspace(-1, 1, kept[0].numel(), dtype=dtype).view(kept[0].shape)).sum().backward()
        return names, {k: p.grad.double() for k, p in block.named_parameters()}

    names, got = run(True, torch.float32)
    assert "_EmaBranchBackward" in names and "_EmaCrossBackward" not in names
    _, plain = run(False, torch.float32)
    _, exact = run(False, torch.float64)
    for k, want in exact.items():
        scale = max(float(want.abs().max()), 1.0)
        err, err_plain = float((got[k] - want).abs().max()), float((plain[k] - want).abs().max())
        assert err <= max(2 * err_plain, 1e-5 * scale), (k, err, err_plain)


def _function_nodes(y):
    """Weak references to the custom autograd ops (torch.autograd.Function nodes) in y's graph."""
    refs, seen, stack = [], set(), [y.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            refs.append((type(fn).__name__, weakref.ref(fn)))
        stack.extend(f for f, _ in fn.next_functions)
    return refs


@pytest.mark.parametrize("name", list_attn())
def test_a_training_step_leaves_no_reference_cycle(name, monkeypatch, two_threads):
    """Once y is dropped after backward, reference counting alone frees every op of the block's graph: none is
    tied into a cycle (node -> ctx -> a tensor whose grad_fn is the node) that would keep it, and what it
    holds, until the garbage collector runs -- in a network such leftovers fragmented the heap enough that
    every step page-faulted tens of MB of fresh memory."""
    _native_on(monkeypatch, True)
    block = create_attn(name, 32).train()
    x = torch.randn(4, 32, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        y = block(x)
        nodes = _function_nodes(y)
        y.backward(torch.ones_like(y))
        del y
        alive = [n for n, ref in nodes if ref() is not None]
        assert not alive, f"{name}: {alive} outlived the graph (a reference cycle)"
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("form", ["paper", "authors"])
@pytest.mark.parametrize("name", ["psa", "psa_s"])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (3, 16, 1, 1), (4, 64, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_psa_projections_and_sum_op_are_the_modules(name, form, shape, channels_last, monkeypatch, two_threads):
    """PSA's projections (matmuls of x's token view, W_q' on the pooled x, Z_ch's from x's in the sequential
    layout) and its output op (x A_ch + x A_sp, x A_ch A_sp), against the four 1x1 conv modules and PyTorch's
    products: output, dL/dx, every parameter gradient, taps."""
    from attnzoo.blocks.psa import PolarizedSelfAttn
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = _train_step(name, x, monkeypatch, True, form=form)
    op = "_SumGatesBackward" if name == "psa" else "_ProductGatesBackward"
    assert got["grad_fn"] == op
    monkeypatch.setattr(PolarizedSelfAttn, "_fast", lambda self, t: False)
    want = _train_step(name, x, monkeypatch, False, form=form)
    assert want["grad_fn"] != op
    _same_step(got, want)


def test_psa_runs_its_conv_modules_where_one_has_a_hook(two_threads):
    block = create_attn("psa", 16)
    seen = []
    block.sp_wq.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    block(torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last))
    assert seen == [(2, 8, 5, 5)]


@pytest.mark.parametrize("spread", ["std", "unbiased_std", "sqrt_var"])
@pytest.mark.parametrize("groups", [None, 4, 1])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 48, 6, 5), (2, 16, 1, 7), (4, 64, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sge_group_gates_are_the_plain_path(channels_last, shape, groups, spread, monkeypatch, two_threads):
    """SGE's op (its tap is left uncaptured: a captured tap needs the full factor, so it runs the plain path)."""
    import attnzoo
    # + 1: channel means away from 0, so no group's similarities have a near-zero spread, where the
    # normalisation's 1 / (std + eps) makes float32 itself (either path) disagree with float64
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for native in (True, False):
        _native_on(monkeypatch, native)
        torch.manual_seed(0)
        block = attnzoo.create_attn("sge", shape[1], spread=spread, **({} if groups is None else {"groups": groups})).train()
        with torch.no_grad():
            block.weight.normal_()
            block.bias.normal_()
        xi = x.clone().requires_grad_(True)
        y = block(xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format))
        results.append((y.detach(), xi.grad, block.weight.grad, block.bias.grad, type(y.grad_fn).__name__))
    got, want = results
    assert got[4] == ("_GroupApplyBackward" if spread == "sqrt_var" else "_SgeGatesBackward") and want[4] != got[4]
    for a, b, what in zip(got[:4], want[:4], ("output", "dL/dx", "dL/dgamma", "dL/dbeta")):
        _close(a, b, what)


@pytest.mark.parametrize("form", ["paper", "authors"])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (3, 16, 1, 1), (4, 64, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bam_op_is_the_plain_path(channels_last, shape, form, monkeypatch, two_threads):
    """BAM's combination y = x + x * sigmoid(a (+ or *) s) as one op (tap uncaptured): output, dL/dx and every
    parameter gradient through both branches, BatchNorm statistics."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = (_train_step("bam", x, monkeypatch, native, capture=False, form=form) for native in (True, False))
    assert got["grad_fn"] == "_BamGateBackward" and want["grad_fn"] != got["grad_fn"]
    _close(got["y"], want["y"], "output")
    _close(got["dx"], want["dx"], "dL/dx")
    for k in want["params"]:
        _close(got["params"][k], want["params"][k], f"dL/d{k}")
    for k in want["buffers"]:
        _close(got["buffers"][k].float(), want["buffers"][k].float(), k)
    with torch.no_grad():  # inference: the forward kernel
        _native_on(monkeypatch, True)
        block = create_attn("bam", shape[1], form=form).eval()
        y = block(x)
        _native_on(monkeypatch, False)
        _close(y, block(x), "inference output")


@pytest.mark.parametrize("kwargs", [{}, {"attn_norm": True}, {"kernel_size": (3, 5, 7)}, {"keep_3x3": False}])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (3, 16, 1, 1), (4, 64, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sk_fuse_and_select_op_is_the_plain_path(channels_last, shape, kwargs, monkeypatch, two_threads):
    """SK's BatchNorms, ReLUs, fuse and select as two ops around its MLP (``sk_gates``): output, dL/dx, every
    parameter gradient (the convs' through the BatchNorms' backward), the BatchNorms' running statistics and
    batch counts, the captured branch weights; and in eval mode and inference."""
    if kwargs.get("attn_norm"):
        # the attention's BatchNorm over a few (B, d, 1, 1) descriptors amplifies float32 rounding in both paths
        # alike (at batch 3 both are about 2e-4 off the float64 modules in dL/dfc_reduce): batch 8
        shape = (8, *shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = (_train_step("sk", x, monkeypatch, native, **kwargs) for native in (True, False))
    assert got["grad_fn"] == "_SkSelectBackward" and want["grad_fn"] not in NATIVE_OPS
    if kwargs.get("attn_norm"):
        # both paths' parameter gradients are 1e-7-1e-3 off float64 here (cancellation in the BatchNorms over
        # few values): the op is held to the float64 modules, no worse than the float32 modules are
        exact = _train_step_float64("sk", x, monkeypatch, **kwargs)
        for k, ref in exact["params"].items():
            err = [float((step["params"][k].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                   for step in (got, want)]
            assert err[0] <= 4 * err[1] + 5e-5, f"dL/d{k}: relative error {err[0]:.2e}, the modules' {err[1]:.2e}"
        got["params"], want["params"] = {}, {}
    _same_step(got, want)
    for train in (False, True):
        with torch.no_grad():  # eval (running statistics) and training-mode inference: the forward kernels alone
            outs = []
            for native in (True, False):
                _native_on(monkeypatch, native)
                block = _randomized("sk", shape[1], **kwargs).train(train)
                outs.append((block(x), dict(block.named_buffers())))
            _close(outs[0][0], outs[1][0], f"inference output (train={train})")
            for k, v in outs[1][1].items():
                _close(outs[0][1][k].float(), v.float(), k)


def test_sk_fuse_and_select_is_accurate_against_float64(monkeypatch, two_threads):
    """At a ResNet stage's shape with a large mean (the variance's shifted sums), the op's output and
    gradients against the float64 modules."""
    _native_on(monkeypatch, True)
    x = (torch.randn(16, 64, 14, 14, generator=torch.Generator().manual_seed(6)) * 0.5 + 30.0)
    x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).to(memory_format=torch.channels_last)
    results = []
    for dtype in (torch.float32, torch.float64):
        block = _randomized("sk", 64).to(dtype)
        xi = x.to(dtype).detach().requires_grad_(True)
        y = block(xi)
        y.backward(dy.to(dtype))
        results.append((type(y.grad_fn).__name__, y.detach().double(), xi.grad.double(),
                        {k: p.grad.double() for k, p in block.named_parameters()}))
    (fn32, *got), (fn64, *want) = results
    assert fn32 == "_SkSelectBackward" and fn64 != fn32
    for a, b, what in [(got[0], want[0], "output"), (got[1], want[1], "dL/dx"),
                       *((got[2][k], want[2][k], f"dL/d{k}") for k in want[2])]:
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        assert err < 2e-5, f"{what}: relative error {err:.2e}"


def test_sk_leaves_hooks_other_layers_and_single_values_to_the_modules(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    x = torch.randn(4, 32, 6, 6, requires_grad=True)
    block = create_attn("sk", 32)
    assert type(block(x).grad_fn).__name__ == "_SkSelectBackward"
    seen = []
    block.paths[1].bn.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    y = block(x)
    assert seen == [(4, 32, 6, 6)] and type(y.grad_fn).__name__ not in NATIVE_OPS
    other = create_attn("sk", 32, act_layer="silu")
    assert type(other(x).grad_fn).__name__ not in NATIVE_OPS
    single = create_attn("sk", 32).train()  # one value per channel: SafeBatchNorm2d's running statistics
    before = single.paths[0].bn.num_batches_tracked.clone()
    y = single(torch.randn(1, 32, 1, 1, requires_grad=True))
    assert type(y.grad_fn).__name__ not in NATIVE_OPS
    assert int(single.paths[0].bn.num_batches_tracked) == int(before)  # nothing counted by a refused native path


@pytest.mark.parametrize("bn_kwargs", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}])
@pytest.mark.parametrize("shape", [(4, 1, 9, 11), (3, 4, 6, 5), (4, 16, 7, 7), (8, 2, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_norm_relu_is_batchnorm_then_relu(channels_last, shape, bn_kwargs, monkeypatch, two_threads):
    """``norm_relu`` against ``relu(BatchNorm2d(x))``: output, dL/dx, dL/dweight and dL/dbias, the running
    statistics and batch counts after two training steps, then eval mode; a hook or another activation runs
    the modules."""
    from attnzoo.blocks._pooled_gates import norm_relu

    _native_on(monkeypatch, True)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(shape, generator=gen) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    norms = [torch.nn.BatchNorm2d(shape[1], **bn_kwargs) for _ in range(2)]
    if norms[0].weight is not None:
        with torch.no_grad():
            for n in norms:
                n.weight.copy_(torch.linspace(-1.5, 2.0, shape[1]))
                n.bias.copy_(torch.linspace(0.5, -0.5, shape[1]))
    act = torch.nn.ReLU()
    for train in (True, True, False):
        outs = []
        for native, norm in zip((True, False), norms):
            norm.train(train)
            xi = x.clone().requires_grad_(True)
            y = norm_relu(xi, norm, act) if native else act(norm(xi))
            assert (type(y.grad_fn).__name__ == "_NormReluBackward") == native
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            y.backward(dy)
            outs.append((y.detach(), xi.grad, *[p.grad.clone() for p in norm.parameters()],
                         *[b.clone().float() for b in norm.buffers()]))
            for p in norm.parameters():
                p.grad = None
        assert outs[0][0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for a, b in zip(*outs):
            _close(a, b, f"train={train}")
    hooked = torch.nn.BatchNorm2d(shape[1])
    hooked.register_forward_hook(lambda m, i, o: None)
    assert norm_relu(x, hooked, act) is None and norm_relu(x, norms[0], torch.nn.SiLU()) is None


@pytest.mark.parametrize("name,kwargs", [("ge_theta", {}), ("ge_theta_plus", {}), ("ge", {"extent": 2}),
                                         ("ge", {"extent": 4, "use_mlp": True})])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 16, 16), (4, 16, 7, 7), (3, 16, 28, 28)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gather_excite_local_gate_op_is_the_plain_path(name, kwargs, shape, channels_last, monkeypatch, two_threads):
    """ge's ``x * upsample(sigmoid(g))`` as one op (``nearest_gate``): output, dL/dx, every parameter gradient
    and the BatchNorm statistics against the plain path; a captured tap runs the plain path and sees the full
    factor; inference equals."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(10))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = (_train_step(name, x, monkeypatch, native, capture=False, **kwargs) for native in (True, False))
    assert got["grad_fn"] == "_NearestGateBackward" and want["grad_fn"] not in NATIVE_OPS
    _same_step(got, want, taps=False)
    captured = _train_step(name, x, monkeypatch, True, **kwargs)
    assert captured["grad_fn"] not in NATIVE_OPS and all(t.shape == x.shape for t in captured["taps"].values())
    _close(captured["y"], want["y"], "output with a capture")
    with torch.no_grad():
        _native_on(monkeypatch, True)
        block = _randomized(name, shape[1], **kwargs).eval()
        y = block(x)
        _native_on(monkeypatch, False)
        _close(y, block(x), "inference output")


def test_nearest_gate_reads_the_index_maps_of_interpolate(monkeypatch, two_threads):
    """Upsampling ratios that are not integers (5 -> 13, 3 -> 7): the op's cells are F.interpolate's."""
    from attnzoo.blocks._pooled_gates import nearest_gate

    _native_on(monkeypatch, True)
    for cl in (False, True):
        x = torch.randn(4, 24, 13, 7)
        s = torch.rand(4, 24, 5, 3, requires_grad=True)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        y = nearest_gate(x, s)
        want = x * F.interpolate(s, size=(13, 7), mode="nearest")
        _close(y.detach(), want.detach(), "output")
        dy = torch.randn(y.shape)
        gx, gs = torch.autograd.grad(y, (x, s), dy)
        wx, ws = torch.autograd.grad(want, (x, s), dy)
        _close(gx, wx, "dL/dx")
        _close(gs, ws, "dL/ds")


def test_bam_with_a_captured_tap_runs_the_plain_path(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    block = create_attn("bam", 32)
    seen = []
    block.tap.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    y = block(torch.randn(4, 32, 5, 5, requires_grad=True))
    assert seen == [(4, 32, 5, 5)] and type(y.grad_fn).__name__ != "_BamGateBackward"


@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 20, 6, 5), (2, 16, 1, 1), (4, 64, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_simam_op_is_the_plain_path(channels_last, shape, monkeypatch, two_threads):
    """SimAM's op (tap uncaptured, as SGE's), its sigmoid from the kernels' own exp."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = (_train_step("simam", x, monkeypatch, native, capture=False) for native in (True, False))
    assert got["grad_fn"] == "_SimAMGateBackward" and want["grad_fn"] != got["grad_fn"]
    _close(got["y"], want["y"], "output")
    _close(got["dx"], want["dx"], "dL/dx")
    with torch.no_grad():  # inference: the forward kernel
        _native_on(monkeypatch, True)
        block = create_attn("simam", shape[1])
        y = block(x)
        _native_on(monkeypatch, False)
        _close(y, block(x), "inference output")


def test_the_kernels_sigmoid_is_torch_sigmoid_to_float_precision():
    """The vectorised sigmoid behind SimAM's, shuffle's and the strip gates: over the whole float range, +-inf
    and NaN."""
    lib = _native.kernels()  # a compiler is on PATH here (the fixture skips otherwise): a failed build is a failure
    assert lib is not None, _native.build_error()
    z = torch.cat([torch.linspace(-120, 120, 240001), torch.logspace(-30, 38, 1000), -torch.logspace(-30, 38, 1000),
                   torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 88.72, 88.73, -87.33, -87.34])])
    got = torch.empty_like(z)
    lib.sigmoid_values(z.data_ptr(), z.numel(), got.data_ptr())
    want = torch.sigmoid(z.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=2e-38)
    assert got[z == float("inf")].item() == 1.0 and got[z == -float("inf")].item() == 0.0
    nan = torch.tensor([float("nan")])
    lib.sigmoid_values(nan.data_ptr(), 1, nan.data_ptr())
    assert nan.isnan().all()
    # the 16-lane form (channels_last rows of the strip gates) computes the same values
    n = z.numel() // 16 * 16
    wide = torch.empty(n)
    lib.sigmoid16_values(z.data_ptr(), n, wide.data_ptr())
    torch.testing.assert_close(wide, got[:n], rtol=0, atol=0)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0] * 4)
    out = torch.empty(16)
    lib.sigmoid16_values(special.data_ptr(), 16, out.data_ptr())
    assert out[0::4].isnan().all() and (out[1::4] == 1).all() and (out[2::4] == 0).all() and (out[3::4] == 0.5).all()


@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 64, 6, 5), (2, 32, 1, 1), (4, 128, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shuffle_attention_on_the_kernels_is_the_pytorch_op(channels_last, shape, monkeypatch, two_threads):
    """SA-Net's op with its statistics, gate, product and shuffle in the kernels, against the same op
    on PyTorch ops (ATTNZOO_NATIVE=0); its tap uncaptured (a captured tap runs the plain path)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    runs = []
    for native in (True, False):
        _native_on(monkeypatch, native)
        block = _randomized("shuffle", shape[1])
        xi = x.clone().requires_grad_(True)
        y = block(xi)
        runs.append((y.grad_fn.lib is not None, y.detach(), y.is_contiguous(memory_format=torch.channels_last)))
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format))
        runs[-1] += (xi.grad, {k: q.grad for k, q in block.named_parameters()})
    (on, y1, l1, g1, p1), (off, y0, l0, g0, p0) = runs
    assert on and not off and l1 == l0
    _close(y1, y0, "output")
    _close(g1, g0, "dL/dx")
    for k in p0:
        _close(p1[k], p0[k], f"dL/d{k}")


@pytest.mark.parametrize("kwargs", [{}, {"has_skip": True}])
@pytest.mark.parametrize("name", ["strip", "scoord"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_strip_sigmoid_gates_are_the_plain_path(name, kwargs, channels_last, monkeypatch, two_threads):
    """y = x * sigmoid(z_h + z_w) (+ x): the kernels' sigmoid and both strip gradients (tap uncaptured)."""
    import attnzoo
    x = torch.randn(3, 32, 9, 7, generator=torch.Generator().manual_seed(2)) * 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    runs = []
    for native in (True, False):
        _native_on(monkeypatch, native)
        torch.manual_seed(0)
        block = attnzoo.create_attn(name, 32, **kwargs).train()
        xi = x.clone().requires_grad_(True)
        y = block(xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format))
        runs.append((type(y.grad_fn).__name__, y.detach(), xi.grad, {k: q.grad for k, q in block.named_parameters()}))
    (op1, y1, g1, p1), (op0, y0, g0, p0) = runs
    assert op1 == "_StripApplyBackward" and op0 != op1
    _close(y1, y0, "output")
    _close(g1, g0, "dL/dx")
    for k in p0:
        _close(p1[k], p0[k], f"dL/d{k}")


@pytest.mark.parametrize("kwargs", [{}, {"fuse_scale": True, "fuse_add": False}, {"fuse_scale": True, "fuse_add": True}])
@pytest.mark.parametrize("shape", [(4, 32, 9, 11), (3, 48, 6, 5), (5, 40, 4, 4)])  # bottleneck >= 2 channels
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_context_on_the_kernels_is_as_accurate_as_the_plain_path(kwargs, shape, channels_last, monkeypatch,
                                                                          two_threads):
    """GCNet's op against float64: every gradient about as close (within a factor 10) as the float32 plain
    path's. Not against the float32 plain path itself: where a true gradient is (near) 0 the two float32
    paths return different rounding noise. (With a one-channel bottleneck, C < 32, the LayerNorm over one
    value makes the whole MLP's input gradient 0: degenerate, not tested.)"""
    import attnzoo
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    g = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    runs = {}
    for key, native, dtype in (("native", True, torch.float32), ("plain", False, torch.float32),
                               ("exact", False, torch.float64)):
        _native_on(monkeypatch, native)
        block = attnzoo.create_attn("gc", shape[1], **kwargs).train()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for q in block.parameters():
                q.copy_(torch.randn(q.shape, generator=gen) * (q[0].numel() if q.dim() > 1 else 4) ** -0.5)
        block = block.to(dtype)
        xi = x.to(dtype).contiguous(memory_format=fmt).clone().requires_grad_(True)
        y = block(xi)
        y.backward(g.to(dtype).contiguous(memory_format=fmt))
        runs[key] = dict(op=type(y.grad_fn).__name__, y=y.detach().double(), dx=xi.grad.double(),
                         **{k: q.grad.double() for k, q in block.named_parameters()})
    assert runs["native"].pop("op") == "_GcApplyBackward" and runs["plain"].pop("op") != "_GcApplyBackward"
    runs["exact"].pop("op")
    scale = float(runs["exact"]["dx"].abs().max())
    for k, exact in runs["exact"].items():
        err_native = float((runs["native"][k] - exact).abs().max())
        err_plain = float((runs["plain"][k] - exact).abs().max())
        assert err_native <= 10 * err_plain + 1e-6 * scale, (k, err_native, err_plain)


def test_a_captured_sge_tap_sees_the_full_factor(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    block = _randomized("sge", 32)
    seen = []
    block.tap.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    y = block(torch.randn(4, 32, 5, 5, requires_grad=True))
    assert seen == [(4, 32, 5, 5)] and type(y.grad_fn).__name__ not in NATIVE_OPS


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", POOLED)
def test_pooled_gates_split_ties_as_pytorch_does(name, channels_last, monkeypatch, two_threads):
    """Integer-valued maps tie everywhere: the max over positions gives the gradient to the first maximum
    (adaptive_max_pool2d), the max over channels splits it among the tied channels (amax)."""
    x = torch.randint(-2, 3, (4, 16, 5, 6), generator=torch.Generator().manual_seed(0)).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = _train_step(name, x, monkeypatch, True), _train_step(name, x, monkeypatch, False)
    _close(got["y"], want["y"], "output")
    _close(got["dx"], want["dx"], "dL/dx")


@pytest.mark.parametrize("channels_last", [False, True])
def test_pooled_gates_propagate_nan_as_the_plain_path(channels_last, monkeypatch, two_threads):
    x = torch.randn(4, 16, 5, 6)
    x[1, 3, 2, 2] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for name in ("cbam_channel", "cbam", "triplet"):
        got, want = _train_step(name, x, monkeypatch, True), _train_step(name, x, monkeypatch, False)
        assert torch.equal(got["y"].isnan(), want["y"].isnan()) and got["y"].isnan().any()
        assert torch.equal(got["dx"].isnan(), want["dx"].isnan())


def test_pooled_gates_are_accurate_against_float64(monkeypatch, two_threads):
    """The float32 kernels against the plain path in float64 (not only against another float32 sum)."""
    x = torch.randn(4, 32, 12, 10).contiguous(memory_format=torch.channels_last)
    got = _train_step("cbam", x, monkeypatch, True)
    _native_on(monkeypatch, True)
    block = _randomized("cbam", 32).double()
    x64 = x.double().requires_grad_(True)
    y = block(x64)
    assert type(y.grad_fn).__name__ != "_ApplyGatesBackward"  # float64 runs the plain path
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).double())
    torch.testing.assert_close(got["y"].double(), y.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["dx"].double(), x64.grad, rtol=1e-4, atol=1e-6)


def test_pooled_gates_support_a_second_backward_and_frozen_parameters(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    block = _randomized("cbam", 16)
    x = torch.randn(4, 16, 6, 6, requires_grad=True)
    y = block(x)
    y.sum().backward(retain_graph=True)
    first = (x.grad.clone(), block.channel.fc1.weight.grad.clone())
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first[0])
    torch.testing.assert_close(block.channel.fc1.weight.grad, 2 * first[1])

    block.requires_grad_(False)  # frozen block, input still needs its gradient
    x.grad = None
    block(x).sum().backward()
    assert x.grad is not None and block.channel.fc1.weight.grad is not None  # unchanged from before
    torch.testing.assert_close(block.channel.fc1.weight.grad, 2 * first[1])


def test_pooled_gates_leave_other_inputs_to_the_plain_path(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    block = _randomized("cbam", 16)

    def fn(x):
        return type(block(x.requires_grad_(True)).grad_fn).__name__ in NATIVE_OPS

    assert fn(torch.randn(4, 16, 5, 5))
    assert not fn(torch.randn(1, 16, 5, 5))  # batch below the thread count
    block.double()
    assert not fn(torch.randn(4, 16, 5, 5).double())
    block.float()
    assert not fn(torch.randn(4, 5, 5, 16).permute(0, 3, 2, 1))  # neither layout
    with torch.no_grad():  # inference: the forward kernels, same values
        x = torch.randn(4, 16, 5, 5)
        y = block(x)
        _native_on(monkeypatch, False)
        torch.testing.assert_close(y, block(x), rtol=1e-5, atol=1e-6)


def test_a_failed_build_warns_once_and_keeps_the_pytorch_paths(monkeypatch, tmp_path, two_threads):
    monkeypatch.setenv("ATTNZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(_native, "_state", {})
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
        assert _native.kernels() is None
    assert "false exited with 1" in _native.build_error()
    block = _randomized("cbam", 16)
    x = torch.randn(4, 16, 5, 5, requires_grad=True)
    y = block(x)
    assert type(y.grad_fn).__name__ != "_ApplyGatesBackward"
    y.sum().backward()
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setattr(_native, "_state", {})
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert _native.kernels() is None


def test_the_build_is_cached_by_source_and_compiler(monkeypatch, tmp_path):
    if shutil.which(_cc()) is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("ATTNZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_state", {})
    assert _native.kernels() is not None
    built = list((tmp_path / "kernels").glob("*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob("tmp*"))
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(_native, "_state", {})
    assert _native.kernels() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


_SMALL_CASES = [  # (C_in, C_out, kernel, padding, dilation, (H, W), bias)
    (2, 1, 7, 3, 1, (28, 28), False),  # CBAM / triplet
    (2, 1, 7, 3, 1, (5, 3), True),  # kernel wider than the map
    (1, 1, 3, 4, 4, (14, 14), True),  # BAM's dilated 3x3 at C/r = 1
    (2, 2, 3, 1, 1, (9, 7), True),  # EMA's groups
    (3, 4, (1, 5), (0, 2), 1, (6, 8), False),
    (4, 3, 3, 2, 2, (5, 5), True),
    (2, 1, 7, 0, 1, (9, 9), False),  # no padding: smaller output
    (2, 3, 3, 3, 1, (4, 4), True),  # padding beyond the kernel's reach: larger output
    (1, 2, (2, 9), (1, 4), (1, 2), (6, 20), True),  # a width without its own weight-gradient loop, an even height
]


def _conv_parity(conv, x, groups=1, module=None):
    """``conv(x)`` against float64 ``F.conv2d`` with the parameters of ``module`` (default: conv itself)."""
    y = conv(x)
    conv = module or conv
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(memory_format=torch.channels_last) \
        if y.is_contiguous(memory_format=torch.channels_last) else torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(g)
    got = (y.detach(), x.grad.clone(), conv.weight.grad.clone(), None if conv.bias is None else conv.bias.grad.clone())
    x64 = x.detach().double().requires_grad_(True)
    w64 = conv.weight.detach().double().requires_grad_(True)
    b64 = None if conv.bias is None else conv.bias.detach().double().requires_grad_(True)
    y64 = F.conv2d(x64, w64, b64, conv.stride, conv.padding, conv.dilation, groups)
    y64.backward(g.double())
    want = (y64, x64.grad, w64.grad, None if b64 is None else b64.grad)
    for a, b, what in zip(got, want, ("output", "dL/dx", "dL/dweight", "dL/dbias")):
        if b is not None:
            torch.testing.assert_close(a.double(), b.detach(), rtol=1e-5, atol=1e-5 * max(float(b.detach().abs().max()), 1.0),
                                       msg=lambda m, w=what: f"{w}: {m}")
    return type(y.grad_fn).__name__


_CONV_PATHS = {"auto": 0, "rows": 1, "tiles": 2}  # _native.c's conv_small_set_path modes


@pytest.fixture
def conv_path():
    """Force one of the small convolution's two kernel families (rows in a padded pitch, or 16 samples in
    the lanes of a vector); the automatic choice again afterwards."""
    lib = _native.kernels()  # the autouse fixture has skipped where there is no compiler: here they must build
    assert lib is not None, _native.build_error()
    yield lambda path: lib.conv_small_set_path(_CONV_PATHS[path])
    lib.conv_small_set_path(0)


@pytest.mark.parametrize("path,batch", [("rows", 4), ("tiles", 4), ("tiles", 37)])  # 37: two full tiles and 5
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("cin,cout,k,pad,dil,hw,bias", _SMALL_CASES)
def test_small_conv_kernel_is_conv2d(cin, cout, k, pad, dil, hw, bias, channels_last, path, batch, conv_path,
                                     monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    conv_path(path)
    torch.manual_seed(0)
    conv = LayoutConv2d(cin, cout, k, padding=pad, dilation=dil, bias=bias)
    x = torch.randn(batch, cin, *hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert _conv_parity(conv, x.requires_grad_(True)) == "_SmallConvBackward"


@pytest.mark.parametrize("shape,path", [
    ((128, 2, 7, 7), "tiles"), ((128, 2, 64, 7), "tiles"), ((128, 2, 56, 56), "tiles"),  # the gates' maps at batch 128
    ((4, 2, 28, 28), "rows"), ((1, 2, 56, 56), "rows"),  # a few samples: one tile would be mostly empty lanes
    ((128, 1, 28, 28, 3, 4), "rows"),  # bam's dilated 3x3 C/r -> C/r on one channel: 9 taps, the transposes dominate
    ((128, 4, 7, 7, 3, 4), "tiles"),  # ... on four channels: 36 taps
])
def test_the_small_conv_takes_the_cheaper_kernel_for_the_shape(shape, path, conv_path):
    import ctypes

    from attnzoo.blocks._layout import _conv_dims

    conv_path("auto")
    got = ctypes.c_int32()
    b, c, h, w, k, d = (*shape, 7, 1) if len(shape) == 4 else shape
    x, weight = torch.empty(b, c, h, w), torch.empty(1 if k == 7 else c, c, k, k)
    pad = d * (k - 1) // 2
    _native.kernels().conv_small_path(*_conv_dims(x, weight, (pad, pad), (d, d))[:-1], 2, ctypes.addressof(got))
    assert got.value == _CONV_PATHS[path]


_DEPTHWISE_CASES = [  # (C, kernel, padding, dilation, (H, W), bias[, stride])
    (16, 5, 2, 1, (28, 28), True),  # lka's first conv
    (16, 3, 1, 1, (28, 28), False, 2),  # ge_theta's gather, stride 2
    (32, 3, 1, 1, (7, 7), False, 2),  # its odd map: 7 -> 4
    (20, 3, (2, 1), (1, 2), (9, 11), True, (3, 2)),  # other strides, the lanes' remainder
    (16, 7, 9, 3, (14, 14), True),  # lka's dilated conv
    (64, (1, 11), (0, 5), 1, (7, 7), False),  # lska
    (32, (7, 1), (3, 0), 1, (14, 1), False),  # ela's strips
    (20, 3, (2, 0), (1, 2), (6, 9), True),  # channels beyond the last full lane chunk
    (5, 3, 0, 2, (9, 9), True),
]


@pytest.mark.parametrize("c,k,pad,dil,hw,bias,stride", [(*case, 1)[:7] for case in _DEPTHWISE_CASES])
def test_depthwise_kernel_is_conv2d(c, k, pad, dil, hw, bias, stride, monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    torch.manual_seed(0)
    conv = LayoutConv2d(c, c, k, stride=stride, padding=pad, dilation=dil, groups=c, bias=bias)
    x = torch.randn(4, c, *hw).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert _conv_parity(conv, x, groups=c) == "_DepthwiseConvBackward"
    nchw = torch.randn(4, c, *hw, requires_grad=True)  # NCHW input stays with oneDNN
    assert type(conv(nchw).grad_fn).__name__ == "ConvolutionBackward0"


_GROUPED_CASES = [  # (C, channels per group, kernel, padding, dilation, (H, W), bias)
    (64, 2, 3, 1, 1, (7, 7), False),  # sk's 3x3 branch at C = 64
    (64, 2, 3, 2, 2, (7, 7), False),  # its dilated branch
    (36, 2, 3, (2, 0), (1, 2), (6, 9), True),  # channels beyond the last full lane chunk
    (32, 4, 3, 1, 1, (5, 6), True),  # cg = 4 and 3: the kernels' other spreads (LayoutConv2d leaves them to oneDNN)
    (24, 3, 3, 1, 1, (5, 6), False),
    (48, 8, (1, 3), (0, 1), 1, (4, 5), True),
]


@pytest.mark.parametrize("c,cg,k,pad,dil,hw,bias", _GROUPED_CASES)
def test_grouped_kernel_is_conv2d(c, cg, k, pad, dil, hw, bias, monkeypatch, two_threads):
    """The native grouped convolution against float64 ``F.conv2d``: output and all gradients; LayoutConv2d runs it
    for 2 channels per group on channels_last input, and leaves NCHW input and wider groups to oneDNN."""
    from attnzoo.blocks._layout import _GroupedConv

    _native_on(monkeypatch, True)
    torch.manual_seed(0)
    conv = LayoutConv2d(c, c, k, padding=pad, dilation=dil, groups=c // cg, bias=bias)
    x = torch.randn(4, c, *hw).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    if cg == 2:
        assert _conv_parity(conv, x, groups=c // cg) == "_GroupedConvBackward"
        nchw = torch.randn(4, c, *hw, requires_grad=True)
        assert type(conv(nchw).grad_fn).__name__ == "ConvolutionBackward0"
    else:
        assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"
        def direct(t):
            return _GroupedConv.apply(t, conv.weight, conv.bias, conv.padding, conv.dilation, (1, 1))
        assert _conv_parity(direct, x, groups=c // cg, module=conv) == "_GroupedConvBackward"


def test_native_convs_reject_a_kernel_larger_than_the_padded_input(monkeypatch, two_threads):
    _native_on(monkeypatch, True)
    for conv, x in ((LayoutConv2d(2, 1, 7), torch.randn(4, 2, 4, 4)),
                    (LayoutConv2d(8, 8, 7, groups=8), torch.randn(4, 8, 4, 4).contiguous(memory_format=torch.channels_last))):
        with pytest.raises(RuntimeError, match="larger than the padded 4x4 input"):
            conv(x)
        with pytest.raises(RuntimeError):  # as PyTorch's own conv2d
            F.conv2d(x, conv.weight, conv.bias, groups=conv.groups)


@pytest.mark.parametrize("name", ["cbam", "lka", "triplet"])
def test_tracing_records_aten_ops_not_the_kernels(name, monkeypatch, two_threads):
    """torch.jit.trace (and the ONNX exporter built on it) must see the plain ops: a traced kernel call
    would replay nothing."""
    _native_on(monkeypatch, True)
    block = _randomized(name, 16).eval()
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    traced = torch.jit.trace(block, x, check_trace=False)  # its re-trace check trips on value numbering alone
    x2 = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(traced(x2), block(x2), rtol=1e-5, atol=1e-6)
    assert "_ApplyGates" not in str(traced.inlined_graph) and "_ChannelPool" not in str(traced.inlined_graph) and "_SmallConv" not in str(traced.inlined_graph)


def test_the_ctypes_signatures_are_read_from_the_c_source():
    """Every exported kernel's argument types come from its C prototype (macros expanded): a hand-kept
    list once missed three kernels, and ctypes then passed garbage pointers."""
    import ctypes

    source = _native._SOURCE.read_text()
    sig = _native.signatures(source)
    assert set(sig) == set(__import__("re").findall(r"^void (\w+)\(", source, __import__("re").M))
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    assert sig["sigmoid_values"] == [p, i64, p]
    assert sig["triplet_apply"] == [p, p, p, p, f32, i64, i64, i64, i64, i32, i32, p]
    assert sig["conv_small_forward"] == [p, p, p] + [i64] * 11 + [i32, p]
    with pytest.raises(RuntimeError, match="unknown type"):
        _native.signatures("void f(const double *x, int64_t n) {}")


def test_the_kernel_source_ships_with_the_package():
    """A wheel must carry _native.c (it is built on the user's machine): pyproject's package-data names it."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["attnzoo"]
    assert any((root / "attnzoo").glob(pattern) for pattern in data)
    assert "blocks/_native.c" in data and _native._SOURCE.is_file()


def test_native_status_says_what_runs_and_run_records_keep_it(monkeypatch, tmp_path):
    from attnzoo.ablation.runner import environment
    from attnzoo.blocks import native_status

    _native_on(monkeypatch, False)
    assert native_status() == "off (ATTNZOO_NATIVE=0)"
    assert environment()["native_kernels"] == "off (ATTNZOO_NATIVE=0)"
    _native_on(monkeypatch, True)
    if shutil.which(_cc()) is not None:
        assert native_status().startswith("on (") and native_status().endswith(".so)")
    monkeypatch.setenv("ATTNZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    monkeypatch.setattr(_native, "_state", {})
    with pytest.warns(RuntimeWarning):
        assert native_status().startswith("unavailable: false exited with 1")


@pytest.mark.parametrize("name", ["lka", "cbam", "triplet", "sge"])
def test_flops_are_counted_on_the_aten_ops(name, monkeypatch, two_threads):
    """Under FlopCounterMode the blocks run their PyTorch paths, so the count is the same with the kernels
    on and off (a kernel call is invisible to the counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(4, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    counts = []
    for native in (True, False):
        _native_on(monkeypatch, native)
        block = _randomized(name, 32)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("vertical", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_a_1x1_conv_of_a_strip_is_a_matmul_with_conv2ds_values(vertical, bias):
    """Coordinate attention's 1x1 convs of (B, C, L, 1) / (B, C, 1, L) strips (here non-contiguous views,
    as its split and transpose give) run as one batched matmul: the same values and gradients as conv2d."""
    torch.manual_seed(0)
    conv = LayoutConv2d(12, 5, 1, bias=bias)
    base = torch.randn(4, 12, 9, 2, requires_grad=True)
    x = base[..., :1] if vertical else base[..., :1].transpose(2, 3)  # (4, 12, 9, 1) or (4, 12, 1, 9)
    assert not x.is_contiguous()
    y = conv(x)
    want = F.conv2d(x, conv.weight, conv.bias)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [base, conv.weight], g), torch.autograd.grad(want, [base, conv.weight], g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert type(y.grad_fn).__name__ != "ConvolutionBackward0"


def test_every_op_a_block_imports_is_exported():
    """``benchmarks/native_revision.py`` switches the ops that the block modules import by the op modules'
    ``__all__``: an op missing there would run against the other side's kernel library."""
    import importlib
    import pkgutil

    import attnzoo.blocks as blocks
    from attnzoo.blocks import _pooled_gates, _small_graphs

    for info in pkgutil.iter_modules(blocks.__path__):
        module = importlib.import_module(f"attnzoo.blocks.{info.name}")
        for name, obj in vars(module).items():
            for ops in (_pooled_gates, _small_graphs):
                if (callable(obj) and not name.startswith("_") and getattr(obj, "__module__", None) == ops.__name__
                        and module is not ops and not isinstance(obj, type)):
                    assert name in ops.__all__, f"{info.name} imports {ops.__name__}.{name}, which __all__ lacks"
