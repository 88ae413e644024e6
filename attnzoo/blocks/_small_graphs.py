"""The gates' small graphs as single autograd ops: the same functions, fewer eager ops.

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it).

Between the native ops of ``_pooled_gates.py`` the blocks run their small parts -- CBAM's shared MLP on
the pooled descriptors, the 7x7 conv + BatchNorm + sigmoid on the pooled maps -- as ordinary modules.
On maps of 7x7 to 28x28 those graphs cost more than the kernels around them: each of their 10-20 eager
ops (and its autograd node, and its backward) costs 10-30 us on CPU whatever its size, and CBAM's two
graphs took about 0.4 ms each way per call at 128x64x7x7 (``benchmarks/native.py --breakdown``). Here
each graph is one autograd op whose forward and backward are C kernels (``_native.c``; the small convolution
its own kernel, a large MLP torch's BLAS), with the gradients written out by hand:

* ``mlp_gate``: ``sigmoid(sum_i fc2(relu(fc1(p_i))))`` over k pooled (B, C, 1, 1) descriptors (CBAM:
  the average and max pools, k = 2; LightCBAM: their mean, k = 1); fc1 and fc2 1x1 convs (as linears),
  with or without bias.
* ``coord_gates``: coordinate attention's ``sigmoid(conv_h(f_h)), sigmoid(conv_w(f_w))`` with
  ``f = hardswish(norm(conv1([z_h; z_w])))`` on its pooled strips (1x1 convs C -> M -> C, a BatchNorm2d
  of M channels or none), and timm's simplified form (scoord: linears, SiLU, no norm, the gate applied
  by the op after it).
* ``strip_norm_gate``: ELA's ``sigmoid(GroupNorm(conv(z)))`` on a pooled strip, conv a depthwise 1-D
  convolution; without norm and sigmoid, strip attention's convs.
* ``channel_conv_gate``: ECA's ``sigmoid(conv1d_k(z))`` over the channel means as a 1-D sequence (eca; ceca
  wrapped around; ecam with its 1-tap conv 1 -> R and ReLU before it). In a one-off measurement (Intel Xeon,
  2 threads, batch 128, C = 16-512) ``nn.Conv1d`` on these (B, 1, C) sequences cost 0.4-5.5 ms per forward +
  backward (oneDNN's set-up), the op 0.13-0.24 ms (ecam: 1.3-37 ms against 0.3-3.4 ms); the committed
  comparison of the blocks is ``benchmarks/results/channel_conv_revision_cpu.json``.
* ``conv_norm_gate``: ``sigmoid(norm(conv(z)))`` for a convolution the native small-conv kernel runs
  (CBAM's and triplet attention's k x k conv 2 -> 1, LightCBAM's 1 -> 1) and a BatchNorm2d (running
  statistics updated as ``nn.BatchNorm2d`` updates them) or no norm.

Each returns None where it does not apply, and the block runs its modules as before. It applies when the
native kernels do (``_native.applies``: eager float32 CPU, no compile, export, tracing or dispatch mode),
and the modules are the default ones: exactly those types (a parametrized or subclassed layer runs as a
module), float32 parameters, no forward or backward hooks on them and no global module hooks (a hook
would not see its module run), no forward replaced on the instance. The results equal the modules' up to
float32 rounding (the MLP's k branches are summed before fc2: W2 (h_1 + ... + h_k) + k b2);
``tests/test_small_graphs.py`` compares outputs, all gradients and the BatchNorm buffers with the modules'
graph. Double backward is not supported (``once_differentiable``), as for the other native ops.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from . import _native
from ._fused import is_sigmoid
from ._layout import LayoutConv2d, small_conv_backward, small_conv_forward

__all__ = ["channel_conv_gate", "conv_norm_backward", "conv_norm_forward", "conv_norm_gate", "coord_gates", "mlp_backward",
           "mlp_forward", "mlp_gate", "strip_norm_gate"]

# False: every block runs its small graphs as modules (tests/test_small_graphs.py compares the two)
ENABLED = True
_NORMS = (nn.BatchNorm2d,)  # with its subclass SafeBatchNorm2d (base.py), whose forward differs only at 1 value


def _unhooked(*modules: nn.Module) -> bool:
    """None of the modules has a hook or an instance-level forward, and no global module hook is set."""
    has_global = getattr(_module, "_has_any_global_hook", None)
    if has_global is None or has_global():
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   or "forward" in m.__dict__ for m in modules)


def _is_pointwise(conv: nn.Module) -> bool:
    return (type(conv) in (LayoutConv2d, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.weight.dtype == torch.float32)


def _float32(*tensors) -> bool:
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in tensors)


# ---------------------------------------------------------------------------------------------- the MLP
def mlp_gate(pooled: list[torch.Tensor], fc1: nn.Module, act: nn.Module, fc2: nn.Module,
             gate: nn.Module) -> torch.Tensor | None:
    """``gate(sum_i fc2(act(fc1(p))))`` for the (B, C, 1, 1) descriptors ``pooled``, as one autograd op, or
    None where it does not apply (then run the modules)."""
    p0 = pooled[0]
    if not (ENABLED and _native.applies(p0) and p0.shape[2:] == (1, 1) and type(act) is nn.ReLU
            and is_sigmoid(gate) and _is_pointwise(fc1) and _is_pointwise(fc2)
            and fc1.out_channels == fc2.in_channels and fc2.out_channels == fc1.in_channels == p0.shape[1]
            and all(p.shape == p0.shape and p.dtype == torch.float32 for p in pooled)
            and _float32(fc1.bias, fc2.bias) and _unhooked(fc1, act, fc2, gate)):
        return None
    return _MlpGate.apply(fc1.weight, fc1.bias, fc2.weight, fc2.bias, *pooled)


# Up to this many multiply-adds (k B C R) the MLP runs in one single-threaded C call; above, the matmuls
# go to torch's BLAS (ResNet-50's widest stage at batch 128: 128 * 2048 * 128 = 2^25).
_C_MLP_MAX = 2**20


def mlp_forward(a: torch.Tensor, w1, b1, w2, b2, k: int):
    """g (B, C) = sigmoid(W2 sum_i relu(W1 a_i + b1) + k b2) for the k stacked descriptors ``a`` (kB, C), with
    fc1's and fc2's 1x1 conv weights, and what ``mlp_backward`` needs, (a, h, hs, w1v, w2v): in one
    single-threaded C call up to ``_C_MLP_MAX`` multiply-adds, else on torch's BLAS."""
    b, c = a.shape[0] // k, a.shape[1]
    r = w1.shape[0]
    w1v, w2v = w1.detach().reshape(r, c).contiguous(), w2.detach().reshape(c, r).contiguous()
    b1d = None if b1 is None else b1.detach().contiguous()
    b2d = None if b2 is None else b2.detach().contiguous()
    if k * b * c * r <= _C_MLP_MAX:
        h, hs, g = a.new_empty(k * b, r), a.new_empty(b, r), a.new_empty(b, c)
        _native.kernels().mlp_gate_forward(a.data_ptr(), w1v.data_ptr(), _native.ptr(b1d), w2v.data_ptr(),
                                           _native.ptr(b2d), k, b, c, r, h.data_ptr(), hs.data_ptr(), g.data_ptr())
    else:
        h = (torch.mm(a, w1v.t()) if b1d is None else torch.addmm(b1d, a, w1v.t())).relu_()  # (kB, R)
        hs = h.view(k, b, r).sum(0) if k > 1 else h  # the branches meet before fc2: W2 sum_i h_i + k b2
        g = (torch.mm(hs, w2v.t()) if b2d is None else torch.addmm(b2d, hs, w2v.t(), beta=k)).sigmoid_()
    return g, (a, h, hs, w1v, w2v)


def mlp_backward(dg: torch.Tensor, g: torch.Tensor, kept, want) -> tuple:
    """(dW1, db1, dW2, db2, da) of ``mlp_forward`` for dL/dg (B, C), da (k, B, C); ``want``: which of the five
    are needed (the others are None)."""
    a, h, hs, w1v, w2v = kept
    b, c = g.shape
    r = h.shape[1]
    k = h.shape[0] // b
    if k * b * c * r <= _C_MLP_MAX:
        outs = [w1v.new_empty(r, c, 1, 1), w1v.new_empty(r), w2v.new_empty(c, r, 1, 1), w2v.new_empty(c),
                a.new_empty(k, b, c)]
        outs = [t if w else None for t, w in zip(outs, want)]
        dg = dg.reshape(b, c).contiguous()  # named: a temporary could be freed before the call reads it
        _native.kernels().mlp_gate_backward(dg.data_ptr(), g.data_ptr(), a.data_ptr(), h.data_ptr(), hs.data_ptr(),
                                            w1v.data_ptr(), w2v.data_ptr(), k, b, c, r, *(_native.ptr(t) for t in outs))
        return tuple(outs)
    dz = torch.ops.aten.sigmoid_backward(dg.reshape(b, c), g)  # (B, C)
    dw2 = torch.mm(dz.t(), hs).view(c, r, 1, 1) if want[2] else None
    db2 = dz.sum(0).mul_(k) if want[3] else None
    dw1 = db1 = da = None
    if want[0] or want[1] or want[4]:
        dh = torch.mm(dz, w2v)  # (B, R): the same for every branch, before each branch's ReLU
        dh = torch.ops.aten.threshold_backward(dh.repeat(k, 1) if k > 1 else dh, h, 0)  # (kB, R)
        dw1 = torch.mm(dh.t(), a).view(r, c, 1, 1) if want[0] else None
        db1 = dh.sum(0) if want[1] else None
        da = torch.mm(dh, w1v).view(k, b, c) if want[4] else None
    return dw1, db1, dw2, db2, da


class _MlpGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w1, b1, w2, b2, *pooled):
        b, c = pooled[0].shape[:2]
        k = len(pooled)
        a = torch.cat([p.reshape(b, c) for p in pooled]) if k > 1 else pooled[0].reshape(b, c).contiguous()  # (kB, C)
        g, kept = mlp_forward(a, w1, b1, w2, b2, k)
        ctx.save_for_backward(g, *kept)
        ctx.has_bias = (b1 is not None, b2 is not None)
        return g.view(b, c, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dg):
        g, *kept = ctx.saved_tensors
        need = ctx.needs_input_grad
        want = (need[0], ctx.has_bias[0] and need[1], need[2], ctx.has_bias[1] and need[3], any(need[4:]))
        dw1, db1, dw2, db2, da = mlp_backward(dg, g, kept, want)
        k, (b, c) = len(need) - 4, g.shape
        dpooled = [da[i].view(b, c, 1, 1) if da is not None and need[4 + i] else None for i in range(k)]
        return (dw1, db1, dw2, db2, *dpooled)


# --------------------------------------------------------------------------- ECA's conv over channels
def _is_conv1d(conv: nn.Module, in_channels: int, out_channels: int, padding: int) -> bool:
    """A plain ``nn.Conv1d`` in -> out channels (stride 1, no dilation or groups), zero padding ``padding``."""
    return (type(conv) is nn.Conv1d and conv.in_channels == in_channels and conv.out_channels == out_channels
            and conv.padding == (padding,) and conv.stride == (1,) and conv.dilation == (1,) and conv.groups == 1
            and conv.padding_mode == "zeros" and _float32(conv.weight, conv.bias))


def channel_conv_gate(mean: torch.Tensor, conv: nn.Module, gate: nn.Module, *, circular: int = 0,
                      hidden: nn.Module | None = None, act: nn.Module | None = None) -> torch.Tensor | None:
    """ECA's factor ``gate(conv(seq))`` on the (B, C, 1, 1) channel means, the channels of a sample taken as a
    1-D sequence ``seq`` (B, 1, C), as one autograd op, or None where it does not apply (then run the modules).

    ``conv``: an ``nn.Conv1d`` with one output channel and zero padding that keeps the length (eca), or
    padding 0 on a sequence wrapped by ``circular`` channels on each side first (ceca); ``hidden``, ``act``:
    ecam's 1-tap ``nn.Conv1d`` 1 -> R and its ReLU before it (seq then has R channels)."""
    b, c = mean.shape[:2]
    r = 0 if hidden is None else hidden.out_channels
    k = conv.kernel_size[0]
    pad = circular if circular else (k - 1) // 2
    if not (ENABLED and _native.applies(mean) and mean.shape[2:] == (1, 1) and is_sigmoid(gate)
            and _is_conv1d(conv, max(r, 1), 1, 0 if circular else pad) and k == 2 * pad + 1
            and (not circular or pad <= c)  # a wrap around the channels more than once is F.pad's error
            and (hidden is None or (type(act) is nn.ReLU and _is_conv1d(hidden, 1, r, 0) and hidden.kernel_size == (1,)))
            and _unhooked(*(m for m in (conv, gate, hidden, act) if m is not None))):
        return None
    w1, b1 = (None, None) if hidden is None else (hidden.weight, hidden.bias)
    return _ChannelConvGate.apply(mean, w1, b1, conv.weight, conv.bias, pad, bool(circular))


class _ChannelConvGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean, w1, b1, w2, b2, pad, circular):
        b, c = mean.shape[:2]
        r = 0 if w1 is None else w1.shape[0]
        k = w2.shape[2]
        z = mean.detach().reshape(b, c).contiguous()  # named: the kernels read it after
        w1v, b1v, w2v, b2v = _flat(w1, -1), _flat(b1, -1), _flat(w2, -1), _flat(b2, -1)
        g = z.new_empty(b, c)
        P = _native.ptr
        _native.kernels().chan_conv_gate_forward(z.data_ptr(), P(w1v), P(b1v), w2v.data_ptr(), P(b2v), b, c, r, k, pad,
                                                 int(circular), torch.get_num_threads(), g.data_ptr())
        ctx.save_for_backward(z, g, w1v, b1v, w2v)
        ctx.dims, ctx.has = (b, c, r, k, pad, int(circular)), (b1 is not None, b2 is not None)
        ctx.shapes = (mean.shape, None if w1 is None else w1.shape, w2.shape)
        return g.view(b, c, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dg):
        z, g, w1v, b1v, w2v = ctx.saved_tensors
        b, c, r, k, pad, circular = ctx.dims
        need = ctx.needs_input_grad
        mean_shape, w1_shape, w2_shape = ctx.shapes
        outs = [z.new_empty(mean_shape) if need[0] else None,
                z.new_empty(w1_shape) if r and need[1] else None,
                z.new_empty(r) if r and ctx.has[0] and need[2] else None,
                z.new_empty(w2_shape) if need[3] else None,
                z.new_empty(1) if ctx.has[1] and need[4] else None]
        dg = dg.reshape(b, c).contiguous()  # named: read by the kernel below
        P = _native.ptr
        _native.kernels().chan_conv_gate_backward(dg.data_ptr(), g.data_ptr(), z.data_ptr(), P(w1v), P(b1v),
                                                  w2v.data_ptr(), b, c, r, k, pad, circular, torch.get_num_threads(),
                                                  *(P(t) for t in outs))
        return (*outs, None, None)


# ------------------------------------------------------------------------- the conv, the norm, the gate
def conv_norm_gate(z: torch.Tensor, conv: nn.Module, norm: nn.Module, gate: nn.Module, *,
                   owners: tuple[nn.Module, ...] = ()) -> torch.Tensor | None:
    """``gate(norm(conv(z)))`` as one autograd op, or None where it does not apply (then run the modules).

    ``conv``: a ``LayoutConv2d`` that the native small-conv kernel runs on z; ``norm``: a BatchNorm2d or
    ``nn.Identity``; ``owners``: modules whose forward the plain path would also run (their hooks count)."""
    if not (ENABLED and type(conv) is LayoutConv2d and conv._native_ok(z) and is_sigmoid(gate) and conv.padding_mode == "zeros"
            and _float32(conv.bias) and _unhooked(conv, norm, gate, *owners)):
        return None
    found = _norm(norm, z.shape[0] * z.shape[2] * z.shape[3], 1)
    if found is None:
        return None
    bn, weight, bias = found
    return _ConvNormGate.apply(z, conv.weight, conv.bias, weight, bias, conv.padding, conv.dilation, bn)


def _norm(norm: nn.Module, n: int, features: int):
    """(``_norm_args`` or None for no norm, weight, bias) of a BatchNorm2d or ``nn.Identity``; None where the
    module must run."""
    if type(norm) is nn.Identity:
        return None, None, None
    if isinstance(norm, _NORMS) and type(norm).forward in (nn.BatchNorm2d.forward, _safe_forward()):
        bn = _norm_args(norm, n, features)
        return None if bn is None else (bn, norm.weight, norm.bias)
    return None


def _safe_forward():
    from .base import SafeBatchNorm2d

    return SafeBatchNorm2d.forward


def _norm_args(norm: nn.BatchNorm2d, n: int, features: int = 1):
    """(running_mean, running_var, use batch statistics, momentum, eps) as ``nn.BatchNorm2d.forward``
    passes them to ``F.batch_norm``, after counting the batch; None where the plain module must run (one
    value per channel in training, where BatchNorm raises or SafeBatchNorm2d uses the running statistics,
    float64 buffers, a bad momentum)."""
    if norm.num_features != features or not _float32(norm.weight, norm.bias, norm.running_mean, norm.running_var):
        return None
    if norm.training and n <= 1:
        return None
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
    keep = not norm.training or norm.track_running_stats
    return (norm.running_mean if keep else None, norm.running_var if keep else None, batch_stats, momentum, norm.eps)


def conv_norm_forward(z, weight, bias, bn_weight, bn_bias, padding, dilation, bn):
    """g = sigmoid(norm(conv(z))) (B, 1, H, W) of the native small conv (stride 1, one group) and the one-feature
    norm ``bn`` (``_norm_args``, or None for none; its running statistics updated in place), and what
    ``conv_norm_backward`` needs, (z, w, u, g, bw, stats)."""
    z, w, u = small_conv_forward(z, weight, bias, padding, dilation)  # u: (B, 1, H, W) NCHW
    running_mean, running_var, batch_stats, momentum, eps = bn if bn is not None else (None, None, True, 0.0, 0.0)
    bw = None if bn_weight is None else bn_weight.detach().contiguous()
    bb = None if bn_bias is None else bn_bias.detach().contiguous()
    stats, g = u.new_empty(2), torch.empty_like(u)
    _native.kernels().norm_gate_forward(u.data_ptr(), u.numel(), bn is not None, batch_stats, _native.ptr(bw),
                                        _native.ptr(bb), _native.ptr(running_mean), _native.ptr(running_var),
                                        momentum, eps, torch.get_num_threads(), stats.data_ptr(), g.data_ptr())
    return g, (z, w, u, g, bw, stats)


def conv_norm_backward(dg, kept, padding, dilation, norm: bool, batch_stats: bool, want) -> tuple:
    """(dz, dweight, dbias, dbn_weight, dbn_bias) of ``conv_norm_forward`` for dL/dg; ``want``: which of the five
    are needed (the others are None)."""
    z, w, u, g, bw, stats = kept
    dbw = u.new_empty(1) if want[3] else None
    dbb = u.new_empty(1) if want[4] else None
    du = torch.empty_like(u)
    dg = dg.contiguous()  # named: a temporary could be freed before the call reads it
    _native.kernels().norm_gate_backward(dg.data_ptr(), g.data_ptr(), u.data_ptr(), u.numel(), norm, batch_stats,
                                         _native.ptr(bw), stats.data_ptr(), torch.get_num_threads(), du.data_ptr(),
                                         _native.ptr(dbw), _native.ptr(dbb))
    dz = dw = db = None
    if want[0] or want[1] or want[2]:
        dz, dw, db = small_conv_backward(z, w, du, padding, dilation, (want[0], want[1]), want[2])
    return dz, dw, db, dbw, dbb


class _ConvNormGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, bias, bn_weight, bn_bias, padding, dilation, bn):
        g, kept = conv_norm_forward(z, weight, bias, bn_weight, bn_bias, padding, dilation, bn)
        ctx.save_for_backward(*kept)
        ctx.padding, ctx.dilation, ctx.norm = padding, dilation, bn is not None
        ctx.batch_stats = True if bn is None else bn[2]
        ctx.has = (bias is not None, bn_weight is not None, bn_bias is not None)
        return g

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dg):
        need = ctx.needs_input_grad
        want = (need[0], need[1], ctx.has[0] and need[2], ctx.has[1] and need[3], ctx.has[2] and need[4])
        return (*conv_norm_backward(dg, ctx.saved_tensors, ctx.padding, ctx.dilation, ctx.norm, ctx.batch_stats, want),
                None, None, None)


# ------------------------------------------------------------------------------- coordinate attention
def _linear_like(m: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a 1x1 conv (as ``_is_pointwise``) or an ``nn.Linear`` with float32 weights."""
    if type(m) is nn.Linear and m.weight.dtype == torch.float32:
        return m.in_features, m.out_features
    if _is_pointwise(m):
        return m.in_channels, m.out_channels
    return None


_ACTS = {nn.Hardswish: 0, nn.SiLU: 1}


def coord_gates(z_h: torch.Tensor, z_w: torch.Tensor, conv1: nn.Module, norm: nn.Module | None, act: nn.Module,
                conv_h: nn.Module, conv_w: nn.Module, gate: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Coordinate attention's factors g_h (B, C, H, 1) and g_w (B, C, 1, W) from the strip means z_h (B, C, H, 1)
    and z_w (B, C, 1, W) as one autograd op, or None where it does not apply (then run the modules): conv1,
    conv_h, conv_w 1x1 convs or linears (C -> M -> C); norm a BatchNorm2d of M channels, ``nn.Identity`` or None;
    act hard swish or SiLU; gate a sigmoid or None (the factors before the gate: timm's simplified form)."""
    if not (ENABLED and _native.applies(z_h) and z_w.dim() == 4 and z_h.shape[3] == 1 and z_w.shape[2] == 1
            and z_h.shape[:2] == z_w.shape[:2] and z_w.dtype == torch.float32
            and type(act) in _ACTS and (gate is None or is_sigmoid(gate))):
        return None
    c = z_h.shape[1]
    f1, fh, fw = _linear_like(conv1), _linear_like(conv_h), _linear_like(conv_w)
    if not (f1 and fh and fw and f1[0] == fh[1] == fw[1] == c and f1[1] == fh[0] == fw[0]
            and _float32(conv1.bias, conv_h.bias, conv_w.bias)
            and _unhooked(*(m for m in (conv1, norm, act, conv_h, conv_w, gate) if m is not None))):
        return None
    found = (None, None, None) if norm is None else _norm(norm, z_h.shape[0] * (z_h.shape[2] + z_w.shape[3]), f1[1])
    if found is None:
        return None
    bn, weight, bias = found
    return _CoordGates.apply(z_h, z_w, conv1.weight, conv1.bias, weight, bias, conv_h.weight, conv_h.bias,
                             conv_w.weight, conv_w.bias, bn, _ACTS[type(act)], gate is not None)


def _flat(t, *shape):
    return None if t is None else t.detach().reshape(*shape).contiguous()


class _CoordGates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_h, z_w, w1, b1, bn_weight, bn_bias, wh, bh, ww, bw, bn, act, gate):
        b, c, h, _ = z_h.shape
        w = z_w.shape[3]
        m = w1.shape[0]
        zh, zw = z_h.detach().contiguous(), z_w.detach().contiguous()  # named: the kernels read them after
        w1v, whv, wwv = _flat(w1, m, c), _flat(wh, c, m), _flat(ww, c, m)
        b1v, bhv, bwv, bnw, bnb = (_flat(t, -1) for t in (b1, bh, bw, bn_weight, bn_bias))
        running_mean, running_var, batch_stats, momentum, eps = bn if bn is not None else (None, None, True, 0.0, 0.0)
        u, stats = zh.new_empty(b, m, h + w), zh.new_empty(2 * m)
        gh, gw = zh.new_empty(b, c, h, 1), zh.new_empty(b, c, 1, w)
        P = _native.ptr
        _native.kernels().coord_gates_forward(
            zh.data_ptr(), zw.data_ptr(), w1v.data_ptr(), P(b1v), P(bnw), P(bnb), P(running_mean), P(running_var),
            momentum, eps, whv.data_ptr(), P(bhv), wwv.data_ptr(), P(bwv), b, c, m, h, w, bn is not None, batch_stats,
            act, gate, torch.get_num_threads(), u.data_ptr(), stats.data_ptr(), gh.data_ptr(), gw.data_ptr())
        ctx.save_for_backward(zh, zw, u, stats, gh, gw, w1v, bnw, bnb, whv, wwv)
        ctx.set_materialize_grads(False)  # an unused factor's gradient arrives as None, not zeros
        ctx.dims = (b, c, m, h, w, bn is not None, batch_stats, act, gate)
        ctx.has = tuple(t is not None for t in (b1, bn_weight, bn_bias, bh, bw))
        ctx.shapes = (w1.shape, wh.shape, ww.shape)
        return gh, gw

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dgh, dgw):
        zh, zw, u, stats, gh, gw, w1v, bnw, bnb, whv, wwv = ctx.saved_tensors
        b, c, m, h, w, norm, batch_stats, act, gate = ctx.dims
        need = ctx.needs_input_grad
        # a factor that went unused: no gradient for its conv (as on the modules, where that conv is not in the
        # graph of the loss); the other factor's still reaches z_h and z_w through the shared conv1 and norm
        used_h, used_w = dgh is not None, dgw is not None
        dgh = torch.zeros_like(gh) if dgh is None else dgh.contiguous()  # named: read by the kernel below
        dgw = torch.zeros_like(gw) if dgw is None else dgw.contiguous()
        has_b1, has_bnw, has_bnb, has_bh, has_bw = ctx.has
        wants = [(need[0], (b, c, h, 1)), (need[1], (b, c, 1, w)), (need[2], (m, c, 1, 1)), (has_b1 and need[3], (m,)),
                 (has_bnw and need[4], (m,)), (has_bnb and need[5], (m,)), (used_h and need[6], None),
                 (used_h and has_bh and need[7], (c,)), (used_w and need[8], None),
                 (used_w and has_bw and need[9], (c,))]
        wants[2] = (wants[2][0], ctx.shapes[0])  # the weights' own shapes: (out, in, 1, 1) convs or (out, in) linears
        wants[6] = (wants[6][0], ctx.shapes[1])
        wants[8] = (wants[8][0], ctx.shapes[2])
        outs = [zh.new_empty(shape) if want else None for want, shape in wants]
        P = _native.ptr
        _native.kernels().coord_gates_backward(
            dgh.data_ptr(), dgw.data_ptr(), gh.data_ptr(), gw.data_ptr(), zh.data_ptr(), zw.data_ptr(), u.data_ptr(),
            stats.data_ptr(), w1v.data_ptr(), P(bnw), P(bnb), whv.data_ptr(), wwv.data_ptr(), b, c, m, h, w, norm,
            batch_stats, act, gate, torch.get_num_threads(), *(P(t) for t in outs))
        return (*outs, None, None, None)


# ------------------------------------------------------------------------------------------ ELA's strips
def strip_norm_gate(z: torch.Tensor, conv: nn.Module, norm: nn.Module | None, act: nn.Module | None,
                    gate: nn.Module | None) -> torch.Tensor | None:
    """``gate(act(norm(conv(z))))`` for a strip z (B, C, L, 1) with a (k, 1) depthwise conv or (B, C, 1, L) with
    a (1, k) one, a GroupNorm (or None: no norm), no activation (``nn.Identity`` or None) and a sigmoid (or None:
    no gate), as one autograd op, or None where it does not apply (then run the modules)."""
    if not (ENABLED and _native.applies(z) and (z.shape[3] == 1 or z.shape[2] == 1) and type(conv) is LayoutConv2d
            and (norm is None or type(norm) is nn.GroupNorm) and (act is None or type(act) is nn.Identity)
            and (gate is None or is_sigmoid(gate))):
        return None
    b, c, h, w = z.shape
    k = conv.kernel_size[0] if w == 1 else conv.kernel_size[1]
    want_kernel, want_padding = ((k, 1), (k // 2, 0)) if w == 1 else ((1, k), (0, k // 2))
    groups = norm.num_groups if norm is not None else 1
    if not (conv.groups == conv.in_channels == conv.out_channels == c and conv.kernel_size == want_kernel
            and k % 2 == 1 and conv.padding == want_padding and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and conv.weight.dtype == torch.float32 and _float32(conv.bias)
            and (norm is None or (norm.num_channels == c and _float32(norm.weight, norm.bias)
                                  and c // groups * h * w > 1))  # one value per group normalises to beta
            and _unhooked(*(m for m in (conv, norm, act, gate) if m is not None))):
        return None
    return _StripNormGate.apply(z, conv.weight, conv.bias, None if norm is None else norm.weight,
                                None if norm is None else norm.bias, groups, 0.0 if norm is None else norm.eps,
                                norm is not None, gate is not None)


class _StripNormGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, bias, gamma, beta, groups, eps, norm, gate):
        b, c, h, w = z.shape
        n = h * w
        zc = z.detach().reshape(b, c, n).contiguous()  # named: the kernels read it after
        wv = _flat(weight, c, -1)
        k = wv.shape[1]
        cb, gv, bv = _flat(bias, -1), _flat(gamma, -1), _flat(beta, -1)
        u, stats, a = zc.new_empty(b, n, c), zc.new_empty(b, groups, 2), zc.new_empty(b, c, n)
        _native.kernels().strip_norm_gate_forward(zc.data_ptr(), wv.data_ptr(), _native.ptr(cb), _native.ptr(gv),
                                                  _native.ptr(bv), eps, b, c, n, k, groups, norm, gate,
                                                  torch.get_num_threads(), u.data_ptr(), stats.data_ptr(), a.data_ptr())
        ctx.save_for_backward(zc, u, stats, a, wv, gv)
        ctx.dims, ctx.shape = (b, c, n, k, groups, norm, gate), z.shape
        ctx.has = (bias is not None, gamma is not None, beta is not None)
        return a.view(z.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, da):
        zc, u, stats, a, wv, gv = ctx.saved_tensors
        b, c, n, k, groups, norm, gate = ctx.dims
        need = ctx.needs_input_grad
        da = da.reshape(b, c, n).contiguous()  # named: read by the kernel below
        kernel = (k, 1) if ctx.shape[3] == 1 else (1, k)
        outs = [zc.new_empty(ctx.shape) if need[0] else None, wv.new_empty(c, 1, *kernel) if need[1] else None,
                zc.new_empty(c) if ctx.has[0] and need[2] else None, zc.new_empty(c) if ctx.has[1] and need[3] else None,
                zc.new_empty(c) if ctx.has[2] and need[4] else None]
        dz, dw, db, dg, dbeta = outs
        P = _native.ptr
        _native.kernels().strip_norm_gate_backward(da.data_ptr(), a.data_ptr(), zc.data_ptr(), u.data_ptr(), wv.data_ptr(),
                                                   P(gv), stats.data_ptr(), b, c, n, k, groups, norm, gate,
                                                   torch.get_num_threads(), P(dz), P(dw), P(db), P(dg), P(dbeta))
        return (*outs, None, None, None, None)
