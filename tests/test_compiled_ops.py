"""The whole-block native ops as torch.library custom ops (attnzoo/blocks/_compiled.py): a compiled graph
calls the kernels, computes what eager mode computes (outputs, input and parameter gradients, BatchNorm
statistics), and export, a disabled build or an unsupported input keep the aten ops."""
from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
import torch._dynamo
import torch._functorch.config
import torch._inductor.config

from attnzoo import create_attn
from attnzoo.blocks import _compiled, _native

OPS = {  # block -> the forward op its compiled graph must call
    "simam": "simam_forward", "sge": "sge_forward", "cbam": "cbam_forward", "cbam_channel": "cbam_forward",
    "cbam_spatial": "cbam_forward", "lcbam": "cbam_forward",
}


@pytest.fixture(autouse=True)
def _kernels_two_threads_fresh_dynamo(monkeypatch):
    cc = (os.environ.get("CC") or "cc").split()[0]  # the compiler _native builds with
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc!r} not on PATH): the native kernels, and so their custom ops, cannot be built")
    monkeypatch.setenv("ATTNZOO_NATIVE", "1")
    _native._reset()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch._dynamo.reset()  # a graph compiled by an earlier test must not be reused with other settings
    yield
    torch._dynamo.reset()
    torch.set_num_threads(before)
    _native._reset()


def _randomized(name: str, c: int) -> torch.nn.Module:
    """The block with every parameter and BatchNorm buffer off its initial value (an all-zero or all-one
    weight hides a wrong gradient)."""
    torch.manual_seed(0)
    block = create_attn(name, c)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return block


class _Recorder:
    """A torch.compile backend that keeps the ops of the graphs it gets (AOTAutograd's forward and backward
    graphs, after the custom ops' autograd formulas) and runs them eagerly."""

    def __init__(self):
        self.targets: list[str] = []

    def __call__(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def keep(g, _inputs):
            self.targets += [str(n.target) for n in g.graph.nodes if n.op == "call_function"]
            return make_boxed_func(g)

        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)


def _run(block, x, g):
    x = x.clone().requires_grad_()
    y = block(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_compiled_block_calls_the_kernels_and_matches_eager(name, train, layout):
    eager = _randomized(name, 32).train(train)
    if layout == "channels_last":  # as users convert a model: its 4-d weights (the 7x7 conv's) change strides too
        eager = eager.to(memory_format=torch.channels_last)
    compiled_block = copy.deepcopy(eager)
    rec = _Recorder()
    compiled = torch.compile(compiled_block, backend=rec, fullgraph=True)
    torch.manual_seed(1)
    x, g = torch.randn(4, 32, 9, 7), torch.randn(4, 32, 9, 7)
    if layout == "channels_last":
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # the second step starts from the first's BatchNorm statistics
        y_e, dx_e = _run(eager, x, g)
        y_c, dx_c = _run(compiled, x, g)
        # the same kernels on the same inputs: the same float32 results
        torch.testing.assert_close(y_c, y_e, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(dx_c, dx_e, rtol=1e-6, atol=1e-7)
        assert y_c.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    forward_op, backward_op = f"attnzoo.{OPS[name]}", f"attnzoo.{OPS[name].replace('forward', 'backward')}"
    assert any(t.startswith(forward_op) for t in rec.targets), rec.targets
    assert any(t.startswith(backward_op) for t in rec.targets), rec.targets
    for (pname, p_e), p_c in zip(eager.named_parameters(), compiled_block.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-5, atol=1e-6, msg=f"{name}.{pname}.grad")
    for (bname, b_e), b_c in zip(eager.named_buffers(), compiled_block.buffers()):
        torch.testing.assert_close(b_c, b_e, rtol=1e-6, atol=1e-7, msg=f"{name}.{bname}")


def test_frozen_parts_get_no_gradient_under_compile():
    """Only the parameters that require grad get one (the backward op skips the others' reductions)."""
    eager = _randomized("cbam", 32)
    eager.channel.fc1.requires_grad_(False)
    eager.spatial.norm.requires_grad_(False)
    compiled_block = copy.deepcopy(eager)
    rec = _Recorder()
    compiled = torch.compile(compiled_block, backend=rec, fullgraph=True)
    x, g = torch.randn(4, 32, 8, 8), torch.randn(4, 32, 8, 8)
    _run(eager, x, g)
    _run(compiled, x, g)
    assert any(t.startswith("attnzoo.cbam_backward") for t in rec.targets), rec.targets
    for (pname, p_e), p_c in zip(eager.named_parameters(), compiled_block.parameters()):
        assert (p_c.grad is None) == (not p_e.requires_grad), pname
        if p_e.requires_grad:
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["simam", "cbam"])
def test_export_and_a_disabled_build_keep_the_aten_ops(name, monkeypatch):
    """torch.export's graph must run anywhere (ONNX, other runtimes): no attnzoo op in it; with
    ATTNZOO_NATIVE=0 a compiled graph runs the PyTorch expression."""
    block = _randomized(name, 16).eval()
    x = torch.randn(4, 16, 8, 8)
    exported = torch.export.export(block, (x,))
    assert not [n for n in exported.graph.nodes if "attnzoo" in str(n.target)]
    torch.testing.assert_close(exported.module()(x), block(x), rtol=1e-5, atol=1e-6)

    monkeypatch.setenv("ATTNZOO_NATIVE", "0")
    _native._reset()
    torch._dynamo.reset()
    rec = _Recorder()
    torch.compile(block, backend=rec, fullgraph=True)(x)
    assert rec.targets and not [t for t in rec.targets if t.startswith("attnzoo.")]


def test_the_custom_ops_pass_torch_library_opcheck():
    """Schema, fake (shape-only) implementations and autograd registrations as torch.library checks them."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 4)
    xcl = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.attnzoo.simam_forward.default, (x.requires_grad_(), 0, 1e-4, 19.0))
    gamma, beta = torch.randn(1, 4, 1, 1, requires_grad=True), torch.randn(1, 4, 1, 1, requires_grad=True)
    torch.library.opcheck(torch.ops.attnzoo.sge_forward.default,
                          (xcl.detach().requires_grad_(), gamma, beta, 1, 4, 1e-5, 19.0))
    w1, b1 = torch.randn(4, 16, 1, 1, requires_grad=True), torch.randn(4, requires_grad=True)
    w2, b2 = torch.randn(16, 4, 1, 1, requires_grad=True), torch.randn(16, requires_grad=True)
    wc, bnw, bnb = torch.randn(1, 2, 7, 7, requires_grad=True), torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    wc_cl = wc.detach().contiguous(memory_format=torch.channels_last).requires_grad_()  # a channels_last model's
    rm, rv = torch.zeros(1), torch.ones(1)
    for xin, w, cl in ((x, wc, 0), (xcl, wc_cl, 1)):
        torch.library.opcheck(torch.ops.attnzoo.cbam_forward.default,
                              (xin.detach().requires_grad_(), w1, b1, w2, b2, w, None, bnw, bnb, rm, rv, cl, True, True,
                               [3, 3], [1, 1], True, True, 0.01, 1e-5, False))


def test_the_compile_check_declines_what_the_kernels_do_not_take():
    """``_compiled.target`` outside a compile is None (eager mode has ``_native.target``); inside one it
    declines float64, a batch below the thread count and a strided view."""
    assert _compiled.target(torch.randn(4, 8, 4, 4)) is None
    seen = {}

    def probe(x, key):
        seen[key] = _compiled.target(x)
        return x + 1

    for key, x in {"f32": torch.randn(4, 8, 4, 4), "cl": torch.randn(4, 8, 4, 4).contiguous(memory_format=torch.channels_last),
                   "f64": torch.randn(4, 8, 4, 4, dtype=torch.float64), "batch1": torch.randn(1, 8, 4, 4),
                   "strided": torch.randn(4, 8, 4, 8)[..., ::2]}.items():
        torch._dynamo.reset()
        torch.compile(probe, backend="eager", fullgraph=True)(x, key)
    assert seen == {"f32": 0, "cl": 1, "f64": None, "batch1": None, "strided": None}


def test_inductor_compiles_a_channels_last_cbam_model_and_matches_eager(monkeypatch):
    """Inductor checks every custom op's output strides against its fake implementation (aot_eager does not):
    a channels_last model's 7x7 weight once made the fake weight gradient channels_last where the kernel's is
    contiguous, and the first backward raised."""
    eager = _randomized("cbam", 16).to(memory_format=torch.channels_last)
    compiled_block = copy.deepcopy(eager)
    # inductor, cold: its on-disk caches key on the graph, not on the custom ops' fake implementations
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    compiled = torch.compile(compiled_block, fullgraph=True)
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    for _ in range(2):
        y_e, dx_e = _run(eager, x, g)
        y_c, dx_c = _run(compiled, x, g)
        torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dx_c, dx_e, rtol=1e-5, atol=1e-6)
    for p_e, p_c in zip(eager.parameters(), compiled_block.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-5, atol=1e-6)
