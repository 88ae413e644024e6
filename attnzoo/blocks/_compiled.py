"""The whole-block native ops as ``torch.library`` custom ops, so that ``torch.compile`` calls the kernels.

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it).

Under ``torch.compile`` the ctypes calls of ``_pooled_gates``' autograd Functions cannot be traced, so the
blocks used to hand the compiler their PyTorch expressions -- and inductor's code for cbam's added 1.5-1.6x
what the eager op added to a training step (``benchmarks/results/overhead_floor_cpu_previous.json``, the run
before these ops: 65 against 43 ms in ResNet-20, 256 against 165 in ResNet-56). Here the kernels are
opaque operators with a fake (shape-only) implementation for tracing and a registered autograd formula whose
backward is a second opaque operator: a compiled graph, ``fullgraph=True`` included, calls the same kernels
as eager mode and fuses what lies around them.

* ``attnzoo::simam_forward`` / ``simam_backward``: SimAM (``simam_gate``).
* ``attnzoo::sge_forward`` / ``sge_backward``: SGE with its factor in the kernels (``group_gates(sge=...)``).
* ``attnzoo::cbam_forward`` / ``cbam_backward``: ``cbam_gates`` -- cbam, cbam_channel, cbam_spatial and
  lcbam with their default small parts. A custom op with an autograd formula may not mutate its inputs:
  the spatial BatchNorm's running statistics come out as outputs, copied back into the buffers.

Each forward op returns the output first and then what its backward reads (custom ops may not return
None: an absent tensor is an empty placeholder). The ops run the eager ops' own code (cbam's runs
``_CbamGates.forward`` and ``.backward`` on a stand-in context), so both modes compute the same function
with the same float32 rounding.

Used while ``torch.compile`` traces (not ``torch.export``, whose graphs must stay aten-only for ONNX and
other runtimes), on the conditions of ``_native.applies``: CPU float32 4-d input contiguous in NCHW or
channels_last, batch >= the thread count, kernels built (``target``). Two facts are read once per
compiled graph, not guarded: whether the kernels are built, and the thread count (a batch below it
would only make the kernels slower, not wrong).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from . import _native

__all__ = ["target", "simam", "sge", "cbam"]


@torch.compiler.assume_constant_result
def _available() -> bool:
    return _native.kernels() is not None


@torch.compiler.assume_constant_result
def _threads() -> int:
    return torch.get_num_threads()


def target(x: torch.Tensor) -> int | None:
    """The layout flag (0 NCHW, 1 channels_last) where a compiled graph calls the custom ops on ``x``, else None
    (eager mode: ``_native.target`` decides there)."""
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return None
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.numel() == 0
            or x.shape[0] < _threads() or not _available()):
        return None
    return _native.layout_flag(x)


_layout = _native.in_layout


def _placeholder(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0) if t is None else t


def _absent(t: torch.Tensor) -> torch.Tensor | None:
    return None if t.numel() == 0 else t


# ---------------------------------------------------------------------------------------------- SimAM
@torch.library.custom_op("attnzoo::simam_forward", mutates_args=(), device_types="cpu")
def _simam_forward(x: torch.Tensor, cl: int, e_lambda: float, n: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ._pooled_gates import _simam_forward as forward  # at call time: _pooled_gates imports this module

    return forward(_native.kernels(), _layout(x, cl), cl, e_lambda, n)  # y, mu (B, C), k (B, C)


@_simam_forward.register_fake
def _(x, cl, e_lambda, n):
    b, c = x.shape[:2]
    return torch.empty_like(x), x.new_empty(b, c), x.new_empty(b, c)


@torch.library.custom_op("attnzoo::simam_backward", mutates_args=(), device_types="cpu")
def _simam_backward(dy: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, k: torch.Tensor, cl: int,
                    n: float) -> torch.Tensor:
    b, c, h, w = x.shape
    x, dy = _layout(x, cl), _layout(dy, cl)
    dx = torch.empty_like(x)
    _native.kernels().simam_backward(x.data_ptr(), dy.data_ptr(), mu.data_ptr(), k.data_ptr(), b, c, h * w, cl,
                                     torch.get_num_threads(), n, dx.data_ptr())
    return dx


@_simam_backward.register_fake
def _(dy, x, mu, k, cl, n):
    return torch.empty_like(x)


def _simam_setup(ctx, inputs, output):
    x, cl, _, n = inputs
    ctx.save_for_backward(x, output[1], output[2])
    ctx.cl, ctx.n = cl, n


def _simam_grad(ctx, dy, dmu, dk):
    x, mu, k = ctx.saved_tensors
    return torch.ops.attnzoo.simam_backward(dy, x, mu, k, ctx.cl, ctx.n), None, None, None


_simam_forward.register_autograd(_simam_grad, setup_context=_simam_setup)


def simam(x: torch.Tensor, cl: int, e_lambda: float, n: float) -> torch.Tensor:
    """SimAM's output, as ``_pooled_gates.simam_gate`` computes it."""
    return torch.ops.attnzoo.simam_forward(x, cl, e_lambda, n)[0]


# ---------------------------------------------------------------------------------------------- SGE
@torch.library.custom_op("attnzoo::sge_forward", mutates_args=(), device_types="cpu")
def _sge_forward(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, cl: int, groups: int, eps: float,
                 dof: float) -> torch.Tensor:
    b, c, h, w = x.shape
    x = _layout(x, cl)
    g32, b32 = gamma.detach().float().contiguous(), beta.detach().float().contiguous()
    y = torch.empty_like(x)
    _native.kernels().sge_forward(x.data_ptr(), g32.data_ptr(), b32.data_ptr(), eps, dof, b, c, h * w, groups, cl,
                                  torch.get_num_threads(), y.data_ptr())
    return y


@_sge_forward.register_fake
def _(x, gamma, beta, cl, groups, eps, dof):
    return torch.empty_like(x)


@torch.library.custom_op("attnzoo::sge_backward", mutates_args=(), device_types="cpu")
def _sge_backward(dy: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, cl: int, groups: int,
                  eps: float, dof: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    x, dy = _layout(x, cl), _layout(dy, cl)
    g32, b32 = gamma.detach().float().contiguous(), beta.detach().float().contiguous()
    dx, dgamma, dbeta = torch.empty_like(x), x.new_empty(b, groups), x.new_empty(b, groups)
    _native.kernels().sge_backward(x.data_ptr(), dy.data_ptr(), g32.data_ptr(), b32.data_ptr(), eps, dof, b, c, h * w,
                                   groups, cl, torch.get_num_threads(), dx.data_ptr(), dgamma.data_ptr(),
                                   dbeta.data_ptr())
    return dx, dgamma.sum(0).view(gamma.shape), dbeta.sum(0).view(beta.shape)


@_sge_backward.register_fake
def _(dy, x, gamma, beta, cl, groups, eps, dof):
    return torch.empty_like(x), gamma.new_empty(gamma.shape), beta.new_empty(beta.shape)  # contiguous, as the kernels'



def _sge_setup(ctx, inputs, output):
    x, gamma, beta, cl, groups, eps, dof = inputs
    ctx.save_for_backward(x, gamma, beta)
    ctx.args = (cl, groups, eps, dof)


def _sge_grad(ctx, dy):
    x, gamma, beta = ctx.saved_tensors
    dx, dgamma, dbeta = torch.ops.attnzoo.sge_backward(dy, x, gamma, beta, *ctx.args)
    return dx, dgamma, dbeta, None, None, None, None


_sge_forward.register_autograd(_sge_grad, setup_context=_sge_setup)


def sge(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, cl: int, groups: int, eps: float,
        dof: float) -> torch.Tensor:
    """SGE's output with its factor in the kernels, as ``_pooled_gates._SgeGates``."""
    return torch.ops.attnzoo.sge_forward(x, gamma, beta, cl, groups, eps, dof)


# ---------------------------------------------------------------------------------------------- CBAM
# _CbamGates.forward saves (x, gc, carg, smax, z, wv, u, gs, bw, stats) and keeps (a, h, hs, w1v, w2v); of these
# x is an input, and wv, bw, w1v and w2v are views of the weights (a custom op's outputs may not alias its
# inputs), made again in backward. The forward op returns y, the other ten and the running statistics.
class _Stand(SimpleNamespace):
    """What ``_CbamGates`` reads and writes on its autograd context."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _cbam_conv(padding, dilation, has_s):
    return (tuple(padding), tuple(dilation)) if has_s else None


def _cbam_bn(running_mean, running_var, norm, batch_stats, momentum, eps):
    return (running_mean, running_var, batch_stats, momentum, eps) if norm else None


@torch.library.custom_op("attnzoo::cbam_forward", mutates_args=(), device_types="cpu")
def _cbam_forward(x: torch.Tensor, w1: torch.Tensor | None, b1: torch.Tensor | None, w2: torch.Tensor | None,
                  b2: torch.Tensor | None, wc: torch.Tensor | None, bc: torch.Tensor | None, bnw: torch.Tensor | None,
                  bnb: torch.Tensor | None, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                  cl: int, has_c: bool, has_s: bool, padding: list[int], dilation: list[int], norm: bool,
                  batch_stats: bool, momentum: float, eps: float, light: bool) -> list[torch.Tensor]:
    from ._pooled_gates import _CbamGates

    ctx = _Stand()
    x = _layout(x, cl)
    # functional: the kernels update copies of the running statistics, which ``cbam`` writes back
    running_mean = None if running_mean is None else running_mean.clone()
    running_var = None if running_var is None else running_var.clone()
    y = _CbamGates.forward(ctx, x, w1, b1, w2, b2, wc, bc, bnw, bnb, _native.kernels(), cl, has_c, has_s,
                           _cbam_conv(padding, dilation, has_s),
                           _cbam_bn(running_mean, running_var, norm, batch_stats, momentum, eps), light)
    _, gc, carg, smax, z, _, u, gs, _, stats = ctx.saved_tensors
    a, h, hs = ctx.kept[:3] if has_c else (None, None, None)
    return [y] + [_placeholder(t, x) for t in (gc, carg, smax, z, u, gs, stats, a, h, hs, running_mean, running_var)]


@_cbam_forward.register_fake
def _(x, w1, b1, w2, b2, wc, bc, bnw, bnb, running_mean, running_var, cl, has_c, has_s, padding, dilation, norm,
      batch_stats, momentum, eps, light):
    b, c, hh, ww = x.shape
    none = x.new_empty(0)
    gc = carg = a = h = hs = gs = smax = z = u = stats = none
    if has_c:
        r, k = w1.shape[0], 1 if light else 2
        gc, carg = x.new_empty(b, c), x.new_empty(b, c, dtype=torch.int32)
        a, h, hs = x.new_empty(k * b, c), x.new_empty(k * b, r), x.new_empty(b, r)
    if has_s:
        gs, smax, u = x.new_empty(b, 1, hh, ww), x.new_empty(b, 1, hh, ww), x.new_empty(b, 1, hh, ww)
        z, stats = x.new_empty(b, 1 if light else 2, hh, ww), x.new_empty(2)
    stat = [none if t is None else torch.empty_like(t) for t in (running_mean, running_var)]
    return [torch.empty_like(x), gc, carg, smax, z, u, gs, stats, a, h, hs, *stat]


@torch.library.custom_op("attnzoo::cbam_backward", mutates_args=(), device_types="cpu")
def _cbam_backward(dy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor | None, b1: torch.Tensor | None,
                   w2: torch.Tensor | None, b2: torch.Tensor | None, wc: torch.Tensor | None, bc: torch.Tensor | None,
                   bnw: torch.Tensor | None, bnb: torch.Tensor | None, saved: list[torch.Tensor], cl: int, has_c: bool,
                   has_s: bool, padding: list[int], dilation: list[int], norm: bool, batch_stats: bool, light: bool,
                   needs: list[bool]) -> list[torch.Tensor]:
    from ._pooled_gates import _CbamGates

    gc, carg, smax, z, u, gs, stats, a, h, hs = (_absent(t) for t in saved)
    x = _layout(x, cl)
    wv = None if wc is None else wc.detach().contiguous()
    bw = None if bnw is None else bnw.detach().contiguous()
    kept = None
    if has_c:
        r, c = w1.shape[:2]
        kept = (a, h, hs, w1.detach().reshape(r, c).contiguous(), w2.detach().reshape(c, r).contiguous())
    ctx = _Stand(saved_tensors=(x, gc, carg, smax, z, wv, u, gs, bw, stats), kept=kept, lib=_native.kernels(), cl=cl,
                 has=(has_c, has_s), conv_args=_cbam_conv(padding, dilation, has_s), norm=norm,
                 batch_stats=batch_stats, light=light, needs_input_grad=tuple(needs),
                 biases=(b1 is not None, b2 is not None, bc is not None, bnw is not None, bnb is not None))
    grads = _CbamGates.backward(ctx, dy)[:9]
    like = (x, w1, b1, w2, b2, wc, bc, bnw, bnb)
    return [_placeholder(g, x) if g is None or t is None else g for g, t in zip(grads, like)]


@_cbam_backward.register_fake
def _(dy, x, w1, b1, w2, b2, wc, bc, bnw, bnb, saved, cl, has_c, has_s, padding, dilation, norm, batch_stats, light,
      needs):
    # dL/dx in x's layout; the parameters' gradients contiguous (as the kernels write them), whatever the
    # parameters' own strides (``model.to(memory_format=torch.channels_last)`` makes the 7x7 weight channels_last)
    like = (x, w1, b1, w2, b2, wc, bc, bnw, bnb)
    return [x.new_empty(0) if t is None or not n else torch.empty_like(x) if i == 0 else t.new_empty(t.shape)
            for i, (t, n) in enumerate(zip(like, needs))]


def _cbam_setup(ctx, inputs, output):
    x, w1, b1, w2, b2, wc, bc, bnw, bnb, _, _, cl, has_c, has_s, padding, dilation, norm, batch_stats, _, _, light = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2, wc, bc, bnw, bnb, *output[1:11])
    ctx.consts = (cl, has_c, has_s, padding, dilation, norm, batch_stats, light)


def _cbam_grad(ctx, grads):
    x, w1, b1, w2, b2, wc, bc, bnw, bnb, *saved = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:9]]
    out = torch.ops.attnzoo.cbam_backward(grads[0], x, w1, b1, w2, b2, wc, bc, bnw, bnb, saved, *ctx.consts, needs)
    return (*(g if n else None for g, n in zip(out, needs)), *([None] * 12))


_cbam_forward.register_autograd(_cbam_grad, setup_context=_cbam_setup)


def cbam(x, w1, b1, w2, b2, wc, bc, bnw, bnb, cl, has_c, has_s, conv_args, bn, light) -> torch.Tensor:
    """``_CbamGates.apply``'s output, with the same arguments (``cl`` from ``target``)."""
    padding, dilation = conv_args if conv_args is not None else ((0, 0), (1, 1))
    running_mean, running_var, batch_stats, momentum, eps = bn if bn is not None else (None, None, True, 0.0, 0.0)
    out = torch.ops.attnzoo.cbam_forward(x, w1, b1, w2, b2, wc, bc, bnw, bnb, running_mean, running_var, cl, has_c,
                                         has_s, list(padding), list(dilation), bn is not None, batch_stats,
                                         float(momentum), float(eps), light)
    with torch.no_grad():
        for buf, new in zip((running_mean, running_var), out[11:]):
            if buf is not None:
                buf.copy_(new)
    return out[0]
