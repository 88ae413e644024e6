"""Gates as autograd ops on the native CPU kernels (``_native.c``): the full-size work in C, the
small parts in PyTorch.

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it).

Each op takes the block's own small parts (MLPs, convs, BatchNorm, softmax, gates, AttnTaps) as
functions of pooled tensors and runs them as ordinary autograd on those small tensors: hooks, taps,
BatchNorm statistics and parameter gradients behave as in the plain path, and any gate module works.
Every op with a small graph is two or three autograd ops around it, which the autograd engine then runs
itself (no nested ``torch.autograd.grad``: for se that nested call cost about as much as the kernels saved
on 7x7 maps, its plain-path ratio 1.05-1.19 against 0.92-1.01 without it); ``simam_gate``, sge's own
factor and ``bam_gate`` have no small graph inside and are one op each. The split ops pass state between
them in a shared dict; nothing in it may be an output of one of them (its grad_fn would close a reference
cycle through the op's ctx, which only the garbage collector frees: ``tests/test_native.py`` checks every
block for one).

The full-size work -- pooling, applying the factors, the reductions of backward, dL/dx -- is a few
kernel passes per sample while it is in cache, and backward keeps only x (the plain expressions run
16-40 full-size passes and keep several full-size intermediates).

* ``pooled_gates`` (cbam, cbam_channel, cbam_spatial, lcbam): ``x1 = x * gc; y = x1 * gs``,
  gc = channel_fn(mean_hw(x), max_hw(x)) (B, C, 1, 1), gs = spatial_fn(mean_c(x1), max_c(x1))
  (B, 1, H, W); either may be None. x1 is never written. ``cbam_gates``: the same with CBAM's default small
  parts inside one op (no small graph between ops).
* ``sum_gates``, ``product_gates`` (psa, psa_s): y = x * gc + x * gs or x * gc * gs of factors computed outside.
* ``triplet_gates``: y = x * (a_hc + a_cw + a_hw) / 3, the six pooled maps in one pass.
* ``strip_gates`` (coord, ela: y = (x * gh) * gw; strip, scoord: y = x * sigmoid(gh + gw) (+ x)).
* ``group_gates`` (sge): y[c, p] = x[c, p] * a[g(c), p], the normalisation in the kernels too.
* ``moment_gates`` (srm, gct, fca): ``y = x * g``, g = factor_fn(mean) or factor_fn(mean, var)
  (B, C, 1, 1) from the mean and biased variance over positions, or factor_fn(s) of a weighted sum over
  positions (fca's DCT coefficients). The mean-only gates (``MEAN_ONLY``) stay on their PyTorch paths.
* ``scse_gates`` (scse, "max" and "add"): y = max(x * gc, x * gs) or x * gc + x * gs, gc from the mean
  over positions, gs from the 1x1 conv C -> 1 of x.
* ``simam_gate``, ``context_gates`` (gc): the whole block.
* ``sk_gates`` (sk): its fuse and select, out = sum_m a_m relu(bn_m(x_m)) of the branches' conv outputs and
  s = sum_m mean_hw relu(bn_m(x_m)), the BatchNorms and ReLUs in the kernels (the convs, the MLP, the softmax
  and the taps stay PyTorch modules).
* ``norm_relu``: relu(BatchNorm2d(x)) for any block's BatchNorm + ReLU pair on a full-size map (bam's spatial
  branch), on sk's kernels; backward keeps x alone and recomputes the ReLU's mask.
* ``nearest_gate`` (ge_theta, ge_theta_plus, ge with an extent): y = x * s upsampled by nearest neighbours from
  the small (B, C, H / e, W / e) factor s, without writing the upsampled map.
* ``bam_gate`` (bam): y = x + x * sigmoid(a + s) (or a * s) of the block's two branches, computed outside.
* ``ema_gates`` (ema): its cross-spatial step, y = x * sigmoid(s1 . x2 + s2 . x1) from the two grouped branches,
  s1, s2 the softmaxes of their means; ``ema_branch``: its 1x1 branch GroupNorm(gx * gh * gw) after the strip
  gates (one op each; the pooling, the 1x1 and 3x3 convs and the strip sigmoids stay PyTorch modules).

Gradients of the maxima follow PyTorch: the max over positions goes to the first maximum
(``adaptive_max_pool2d``, ``pool_max``); the max over channels is split evenly among ties (``amax``,
``pool_amax``). The kernels compute the same functions up to float32 rounding (sums in another order;
the full-map sigmoid of strip, scoord and simam is the kernels' own, relative error <= 1e-6), not bit
for bit: ``tests/test_native.py`` compares each with its plain path and with float64.

Each is used on CPU, float32, 4-d input contiguous in NCHW or channels_last, batch >= the thread
count, outside ``torch.compile``, export, tracing and dispatch modes, when the kernels are built
(``_native.applies``). Under ``torch.compile`` the whole-block ops -- ``simam_gate``, sge's ``group_gates`` and
``cbam_gates`` -- run as torch.library custom ops (``_compiled.py``); the others return None there. Elsewhere the
function returns None and the block runs its plain path. Double
backward is not supported (``once_differentiable``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _compiled, _native, _small_graphs
from ._fused import is_sigmoid
from ._layout import LayoutConv2d
# the test of default, hook-free modules, the BatchNorm reading, and the MLP and conv + norm that the small graphs use
from ._small_graphs import (_NORMS, _float32, _is_pointwise, _norm_args, _safe_forward, _unhooked, conv_norm_backward,
                            conv_norm_forward, mlp_backward, mlp_forward)


def _small_graphs_on() -> bool:
    """``_small_graphs.ENABLED``, read at call time (tests switch it off to compare with the modules)."""
    return _small_graphs.ENABLED


# The channel gates on the mean alone: their PyTorch path is a handful of ops around two full-size passes,
# and on moment_gates they were not reliably faster (benchmarks/native.py read 0.59-1.71 of the PyTorch
# paths' time over four shapes; eca at 16x64x14x14 went from 0.91 to 1.03 of timm's time). They keep
# their ``from_pooled`` factor, so moving one back onto the kernels is one line in its forward. Their small graphs
# run as single ops (_small_graphs: mlp_gate for se, channel_conv_gate for eca, ceca, ecam).
MEAN_ONLY = ("se", "ese", "eca", "ecam", "ceca", "ge")

__all__ = ["bam_gate", "cbam_gates", "context_gates", "ema_branch", "ema_gates", "group_gates", "moment_gates",
           "nearest_gate", "norm_relu", "pooled_gates", "product_gates", "scse_gates", "simam_gate", "sk_gates",
           "strip_gates", "sum_gates", "triplet_gates"]

Factor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _channel_pool(lib, x, cl):
    b, c, h, w = x.shape
    avg, cmax = x.new_empty(b, c, 1, 1), x.new_empty(b, c, 1, 1)
    carg = torch.empty(b, c, dtype=torch.int32)
    lib.channel_pool(x.data_ptr(), b, c, h * w, cl, torch.get_num_threads(), avg.data_ptr(), cmax.data_ptr(),
                     carg.data_ptr())
    return avg, cmax, carg


def _factor(t, shape, what: str):
    """A small graph's output as the float32 contiguous factor the kernels read."""
    if t.shape != shape:
        raise RuntimeError(f"pooled_gates: the {what} factor must be (B, {'C, 1, 1' if what == 'channel' else '1, H, W'})"
                           f" = {shape}, got {tuple(t.shape)}")
    return t.detach().to(torch.float32).contiguous()


def _spatial_pool(lib, x, cl, gc):
    b, c, h, w = x.shape
    smean, smax = x.new_empty(b, 1, h, w), x.new_empty(b, 1, h, w)
    lib.spatial_pool(x.data_ptr(), _native.ptr(gc), b, c, h * w, cl, torch.get_num_threads(), smean.data_ptr(),
                     smax.data_ptr())
    return smean, smax


def _apply(lib, x, cl, gc, gs):
    b, c, h, w = x.shape
    y = torch.empty_like(x)  # x's memory format
    lib.apply_gates(x.data_ptr(), _native.ptr(gc), _native.ptr(gs), b, c, h * w, cl, torch.get_num_threads(),
                    y.data_ptr())
    return y


def _forward(lib, x, cl, channel_fn, spatial_fn):
    """``y = (x * gc) * gs`` without autograd (inference, or nothing that needs a gradient)."""
    b, c, h, w = x.shape
    gc = gs = None
    if channel_fn is not None:
        avg, cmax, _ = _channel_pool(lib, x, cl)
        gc = _factor(channel_fn(avg, cmax), (b, c, 1, 1), "channel")
    if spatial_fn is not None:
        gs = _factor(spatial_fn(*_spatial_pool(lib, x, cl, gc)), (b, 1, h, w), "spatial")
    return _apply(lib, x, cl, gc, gs)


_in_layout = _native.in_layout


def _pooled_grad(t, like):
    return torch.zeros_like(like) if t is None else t.float().contiguous()


def _incoming_dy(ctx, x, dy):
    """dL/dy as an op's backward gets it through its alias output (zeros where y went unused)."""
    return torch.zeros_like(x) if dy is None else _in_layout(dy, ctx.cl)


def _grad_input(lib, x, cl, link, dy, davg, dcmax, carg):
    """dL/dx in one pass: dy * gc * gs and the terms of both poolings (the ones present)."""
    b, c, h, w = x.shape
    gc, gs = link["gc"], link["gs"]
    if gc is not None:
        davg, dcmax = _pooled_grad(davg, gc), _pooled_grad(dcmax, gc)
    dx = torch.empty_like(x)
    lib.grad_input(x.data_ptr(), _native.ptr(gc), _native.ptr(gs), dy.data_ptr(), _native.ptr(link.get("dmean")),
                   _native.ptr(link.get("dsmax")), _native.ptr(link.get("smax")), _native.ptr(link.get("scnt")),
                   _native.ptr(davg if gc is not None else None), _native.ptr(dcmax if gc is not None else None),
                   _native.ptr(carg), b, c, h * w, cl, torch.get_num_threads(), dx.data_ptr())
    return dx


# With autograd, pooled_gates is up to three ops around the block's two small graphs, which the autograd
# engine runs as it runs any graph (no nested torch.autograd.grad call, no graph kept on ctx):
#
#     x -> _ChannelPool -> avg, cmax, x1;  gc = channel_fn(avg, cmax)
#       -> _SpatialPool(x1, gc) -> smean, smax, x2;  gs = spatial_fn(smean, smax)
#       -> _ApplyGates(x2, gc, gs) -> y
#
# x1 and x2 are aliases of x (x1 = x * gc is never written). Backward runs in the reverse order. Each op hands
# dL/dy -- not a partial dL/dx -- back through its alias and leaves what the ops before it need in the
# shared ``link``, so the first op, the last to run, writes the whole dL/dx in one pass: _ApplyGates reduces
# dL/dgs (and the channel max's tie counts); _SpatialPool reduces dL/dgc, the product's and the spatial
# pooling's terms in one pass; _ChannelPool writes dL/dx. Without a channel factor _SpatialPool writes dL/dx;
# without a spatial factor _ApplyGates reduces dL/dgc.

class _ChannelPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lib, cl, link):
        avg, cmax, carg = _channel_pool(lib, x, cl)
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.carg = lib, cl, link, carg
        return avg, cmax, x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, davg, dcmax, dy):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (x,) = ctx.saved_tensors
        return _grad_input(ctx.lib, x, ctx.cl, ctx.link, _incoming_dy(ctx, x, dy), davg, dcmax, ctx.carg), None, None, None


class _SpatialPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gc_t, lib, cl, link, after_channel_pool):
        b, c, h, w = x.shape
        gc = None if gc_t is None else _factor(gc_t, (b, c, 1, 1), "channel")
        smean, smax = _spatial_pool(lib, x, cl, gc)
        # detached: smax is an output, and the output itself would tie the link to this op's node in a
        # reference cycle (node -> ctx -> link -> smax -> node), which only the garbage collector frees
        link["gc"], link["smax"] = gc, smax.detach()
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.after = lib, cl, link, after_channel_pool
        ctx.gc_dtype = None if gc_t is None else gc_t.dtype
        return smean, smax, x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dmean, dsmax, dy):
        (x,) = ctx.saved_tensors
        lib, cl, link = ctx.lib, ctx.cl, ctx.link
        b, c, h, w = x.shape
        dy = _incoming_dy(ctx, x, dy)
        smax, gc = link["smax"], link["gc"]
        link["dmean"], link["dsmax"] = _pooled_grad(dmean, smax), _pooled_grad(dsmax, smax)
        if link.get("scnt") is None:  # _ApplyGates' backward never ran (y unused): count the ties here (they
            # depend on the forward alone, so a count from an earlier backward of a retained graph holds)
            link["scnt"], dgs = x.new_empty(b, 1, h, w), x.new_empty(b, 1, h, w)
            lib.grad_spatial_factor(x.data_ptr(), _native.ptr(gc), dy.data_ptr(), smax.data_ptr(), b, c, h * w, cl,
                                    torch.get_num_threads(), dgs.data_ptr(), link["scnt"].data_ptr())
        dgc = None
        if gc is not None and ctx.needs_input_grad[1]:
            dgc = x.new_empty(b, c, 1, 1)
            lib.grad_channel_factor(x.data_ptr(), gc.data_ptr(), link["gs"].data_ptr(), dy.data_ptr(),
                                    link["dmean"].data_ptr(), link["dsmax"].data_ptr(), smax.data_ptr(),
                                    link["scnt"].data_ptr(), b, c, h * w, cl, torch.get_num_threads(), dgc.data_ptr())
            dgc = dgc.to(ctx.gc_dtype)
        if not ctx.needs_input_grad[0]:
            dx = None
        elif ctx.after:  # _ChannelPool writes dL/dx
            dx = dy
        else:
            dx = _grad_input(lib, x, cl, link, dy, None, None, None)
        return dx, dgc, None, None, None, None


class _ApplyGates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gc_t, gs_t, lib, cl, link, after_spatial_pool):
        b, c, h, w = x.shape
        if not after_spatial_pool:
            link["gc"] = None if gc_t is None else _factor(gc_t, (b, c, 1, 1), "channel")
        link["gs"] = None if gs_t is None else _factor(gs_t, (b, 1, h, w), "spatial")
        y = _apply(lib, x, cl, link["gc"], link["gs"])
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.after = lib, cl, link, after_spatial_pool
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (gc_t, gs_t))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        lib, cl, link = ctx.lib, ctx.cl, ctx.link
        b, c, h, w = x.shape
        shape = (b, c, h * w, cl, torch.get_num_threads())
        dy = _in_layout(dy, cl)
        gc, gs = link["gc"], link["gs"]
        dgc = dgs = None
        if gs is not None:  # dL/dgs and the tie counts of the channel max, which _SpatialPool and dL/dx use
            dgs, link["scnt"] = x.new_empty(b, 1, h, w), x.new_empty(b, 1, h, w)
            lib.grad_spatial_factor(x.data_ptr(), _native.ptr(gc), dy.data_ptr(), link["smax"].data_ptr(), *shape,
                                    dgs.data_ptr(), link["scnt"].data_ptr())
            dgs = dgs.to(ctx.dtypes[1])
        elif gc is not None and ctx.needs_input_grad[1]:  # no spatial factor: dL/dgc = sum_p dy * x here
            dgc = x.new_empty(b, c, 1, 1)
            lib.grad_channel_factor(x.data_ptr(), gc.data_ptr(), None, dy.data_ptr(), None, None, None, None, *shape,
                                    dgc.data_ptr())
            dgc = dgc.to(ctx.dtypes[0])
        return (dy if ctx.needs_input_grad[0] else None), dgc, dgs, None, None, None, None


_THIRD = 1.0 / 3.0


def _triplet_pool(lib, x, cl):
    """The six pooled maps (max_w, mean_w, max_h, mean_h, max_c, mean_c) and the argmax indices over w, h."""
    b, c, h, w = x.shape
    dims = (b, c, h, w, cl, torch.get_num_threads())
    mw, sw, mh, sh = x.new_empty(b, c, h), x.new_empty(b, c, h), x.new_empty(b, c, w), x.new_empty(b, c, w)
    mc, sc = x.new_empty(b, 1, h, w), x.new_empty(b, 1, h, w)
    aw, ah = torch.empty(b, c, h, dtype=torch.int32), torch.empty(b, c, w, dtype=torch.int32)
    lib.triplet_pool(x.data_ptr(), *dims, mw.data_ptr(), sw.data_ptr(), aw.data_ptr(), mh.data_ptr(), sh.data_ptr(),
                     ah.data_ptr(), mc.data_ptr(), sc.data_ptr())
    return [mw, sw, mh, sh, mc, sc], aw, ah


def _triplet_factors(x, factors):
    b, c, h, w = x.shape
    shapes = ((b, c, h, 1), (b, c, 1, w), (b, 1, h, w))
    if len(factors) != 3 or tuple(tuple(f.shape) for f in factors) != shapes:
        raise RuntimeError(f"triplet_gates: the factors must be {shapes}, got {[tuple(f.shape) for f in factors]}")
    return [f.detach().to(torch.float32).contiguous() for f in factors]  # (B, C, H), (B, C, W), (B, H, W) in memory


def _triplet_apply(lib, x, cl, flat):
    b, c, h, w = x.shape
    y = torch.empty_like(x)
    lib.triplet_apply(x.data_ptr(), flat[0].data_ptr(), flat[1].data_ptr(), flat[2].data_ptr(), _THIRD, b, c, h, w, cl,
                      torch.get_num_threads(), y.data_ptr())
    return y


def _triplet_forward(lib, x, cl, factor_fn):
    """Triplet attention without autograd."""
    pooled, _, _ = _triplet_pool(lib, x, cl)
    return _triplet_apply(lib, x, cl, _triplet_factors(x, factor_fn(*pooled)))


def _triplet_counts(lib, x, cl, link, dy):
    """dL/d(a_hc, a_cw, a_hw) for dL/dy = dy, and (in the link) the tie counts of the max over channels."""
    b, c, h, w = x.shape
    dhc, dcw, dhw, cnt = x.new_empty(b, c, h), x.new_empty(b, c, w), x.new_empty(b, h, w), x.new_empty(b, h, w)
    lib.triplet_grad_factors(x.data_ptr(), dy.data_ptr(), link["mc"].data_ptr(), _THIRD, b, c, h, w, cl,
                             torch.get_num_threads(), dhc.data_ptr(), dcw.data_ptr(), dhw.data_ptr(), cnt.data_ptr())
    link["cnt"] = cnt
    return dhc, dcw, dhw


# With autograd, triplet_gates is two ops around the block's small graph (the three branches' convs, norms
# and gates), as strip_gates:
#     x -> _TripletPool -> the six pooled maps, x1;  factors = factor_fn(...);  _TripletApply(x1, *factors) -> y
# _TripletApply's backward reduces the factors' gradients (and the channel max's tie counts) and hands dL/dy
# back through x1; _TripletPool's backward writes dL/dx in one pass.

class _TripletPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lib, cl, link):
        pooled, aw, ah = _triplet_pool(lib, x, cl)
        link["mc"] = pooled[4].detach()  # detached: an output kept in the link would make a reference cycle
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.aw, ctx.ah = lib, cl, link, aw, ah
        return (*pooled, x.view_as(x))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (x,) = ctx.saved_tensors
        lib, cl, link = ctx.lib, ctx.cl, ctx.link
        b, c, h, w = x.shape
        dy = torch.zeros_like(x) if grads[6] is None else _in_layout(grads[6], cl)
        if link.get("cnt") is None:  # _TripletApply's backward never ran (y unused): the tie counts from here
            _triplet_counts(lib, x, cl, link, dy)
        like = (x.new_empty(b, c, h), x.new_empty(b, c, h), x.new_empty(b, c, w), x.new_empty(b, c, w),
                link["mc"], link["mc"])
        dmw, dsw, dmh, dsh, dmc, dsc = (_pooled_grad(g, t) for g, t in zip(grads[:6], like))
        ahc, acw, ahw = link["flat"]
        dx = torch.empty_like(x)
        lib.triplet_grad_input(x.data_ptr(), dy.data_ptr(), ahc.data_ptr(), acw.data_ptr(), ahw.data_ptr(), _THIRD,
                               dmw.data_ptr(), dsw.data_ptr(), ctx.aw.data_ptr(), dmh.data_ptr(), dsh.data_ptr(),
                               ctx.ah.data_ptr(), dmc.data_ptr(), dsc.data_ptr(), link["mc"].data_ptr(),
                               link["cnt"].data_ptr(), b, c, h, w, cl, torch.get_num_threads(), dx.data_ptr())
        return dx, None, None, None


class _TripletApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a_hc, a_cw, a_hw, lib, cl, link):
        flat = _triplet_factors(x, (a_hc, a_cw, a_hw))
        link["flat"] = flat
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link = lib, cl, link
        ctx.outs = [(t.shape, t.dtype) for t in (a_hc, a_cw, a_hw)]
        return _triplet_apply(lib, x, cl, flat)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dy = _in_layout(dy, ctx.cl)
        grads = _triplet_counts(ctx.lib, x, ctx.cl, ctx.link, dy)
        grads = [g.view(shape).to(dtype) if need else None
                 for g, (shape, dtype), need in zip(grads, ctx.outs, ctx.needs_input_grad[1:4])]
        return (dy if ctx.needs_input_grad[0] else None), *grads, None, None, None


def triplet_gates(x: torch.Tensor, factor_fn, module: nn.Module) -> torch.Tensor | None:
    """Triplet attention on the native kernels, or None where they do not apply (as ``pooled_gates``).

    ``factor_fn(max_w, mean_w, max_h, mean_h, max_c, mean_c)`` -- pooled maps (B, C, H), (B, C, H),
    (B, C, W), (B, C, W), (B, 1, H, W), (B, 1, H, W) -- returns the three factors (B, C, H, 1),
    (B, C, 1, W), (B, 1, H, W); ``module`` owns the parameters it uses."""
    found = _native.target(x)
    if found is None:
        return None
    lib, cl = found
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(module)):
        with torch.no_grad():
            return _triplet_forward(lib, x, cl, factor_fn)
    link: dict = {}
    *pooled, x1 = _TripletPool.apply(x, lib, cl, link)
    factors = factor_fn(*pooled)
    if len(factors) != 3:
        raise RuntimeError(f"triplet_gates: factor_fn must return three factors, got {len(factors)}")
    return _TripletApply.apply(x1, *factors, lib, cl, link)


def _strip_pool(lib, x, cl):
    b, c, h, w = x.shape
    mw, mh = x.new_empty(b, c, h, 1), x.new_empty(b, c, 1, w)
    lib.strip_pool(x.data_ptr(), b, c, h, w, cl, torch.get_num_threads(), mw.data_ptr(), mh.data_ptr())
    return mw, mh


def _strip_factors(x, factors):
    b, c, h, w = x.shape
    shapes = ((b, c, h, 1), (b, c, 1, w))
    if len(factors) != 2 or tuple(tuple(f.shape) for f in factors) != shapes:
        raise RuntimeError(f"strip_gates: the factors must be {shapes}, got {[tuple(f.shape) for f in factors]}")
    return [f.detach().to(torch.float32).contiguous() for f in factors]  # (B, C, H), (B, C, W) in memory


def _strip_apply(lib, x, cl, flat, sigmoid):
    b, c, h, w = x.shape
    dims = (b, c, h, w, cl, torch.get_num_threads())
    y = torch.empty_like(x)
    if sigmoid is None:
        lib.strip_apply(x.data_ptr(), flat[0].data_ptr(), flat[1].data_ptr(), *dims, y.data_ptr())
    else:
        lib.strip_sigmoid_apply(x.data_ptr(), flat[0].data_ptr(), flat[1].data_ptr(), int(sigmoid == "skip"), *dims,
                                y.data_ptr())
    return y


def _strip_forward(lib, x, cl, factor_fn, sigmoid):
    """The strip gates without autograd."""
    return _strip_apply(lib, x, cl, _strip_factors(x, factor_fn(*_strip_pool(lib, x, cl))), sigmoid)


# With autograd, strip_gates is two ops around the block's small graph (as moment_gates):
#     x -> _StripPool -> mean_w, mean_h, x1;  gh, gw = factor_fn(mean_w, mean_h);  _StripApply(x1, gh, gw) -> y
# _StripApply's backward reduces dL/dgh, dL/dgw and hands dL/dy back through the alias x1, leaving the
# factors in the link; _StripPool's backward writes dL/dx in one pass.

class _StripPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lib, cl, link):
        mw, mh = _strip_pool(lib, x, cl)
        ctx.lib, ctx.cl, ctx.link, ctx.shape = lib, cl, link, x.shape
        return mw, mh, x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dmw, dmh, dy):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        b, c, h, w = ctx.shape
        link, cl = ctx.link, ctx.cl
        gh, gw = link["flat"]
        dmw, dmh = _pooled_grad(dmw, gh), _pooled_grad(dmh, gw)
        dx = torch.empty(ctx.shape, dtype=torch.float32, memory_format=torch.channels_last if cl else torch.contiguous_format)
        if dy is None:  # y unused: only the pooling's terms (dL/dy = 0)
            dy = torch.zeros_like(dx)
        dy = _in_layout(dy, cl)
        dims = (b, c, h, w, cl, torch.get_num_threads())
        if link["sigmoid"] is None:
            ctx.lib.strip_grad_input(dy.data_ptr(), gh.data_ptr(), gw.data_ptr(), dmw.data_ptr(), dmh.data_ptr(), *dims,
                                     dx.data_ptr())
        else:
            ctx.lib.strip_sigmoid_grad_input(dy.data_ptr(), gh.data_ptr(), gw.data_ptr(), dmw.data_ptr(), dmh.data_ptr(),
                                             int(link["sigmoid"] == "skip"), *dims, dx.data_ptr())
        return dx, None, None, None


class _StripApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gh_t, gw_t, lib, cl, link, sigmoid):
        flat = _strip_factors(x, (gh_t, gw_t))
        link["flat"], link["sigmoid"] = flat, sigmoid
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.dtypes = lib, cl, link, (gh_t.dtype, gw_t.dtype)
        return _strip_apply(lib, x, cl, flat, sigmoid)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        b, c, h, w = x.shape
        cl, link = ctx.cl, ctx.link
        dy = _in_layout(dy, cl)
        dgh = dgw = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gh, gw = link["flat"]
            dgh, dgw = x.new_empty(b, c, h), x.new_empty(b, c, w)
            reduce = ctx.lib.strip_grad_factors if link["sigmoid"] is None else ctx.lib.strip_sigmoid_reduce
            reduce(x.data_ptr(), dy.data_ptr(), gh.data_ptr(), gw.data_ptr(), b, c, h, w, cl, torch.get_num_threads(),
                   dgh.data_ptr(), dgw.data_ptr())
            dgh, dgw = dgh.view(b, c, h, 1).to(ctx.dtypes[0]), dgw.view(b, c, 1, w).to(ctx.dtypes[1])
        return (dy if ctx.needs_input_grad[0] else None), dgh, dgw, None, None, None, None


def strip_gates(x: torch.Tensor, factor_fn, module: nn.Module, *, sigmoid: str | None = None) -> torch.Tensor | None:
    """Strip gates on the native kernels, or None where they do not apply (as ``pooled_gates``).

    ``factor_fn(mean_w, mean_h)`` -- the means over W (B, C, H, 1) and over H (B, C, 1, W) -- returns
    gh (B, C, H, 1) and gw (B, C, 1, W). ``sigmoid=None``: y = (x * gh) * gw (coordinate attention, ELA);
    ``"gate"``: y = x * sigmoid(gh + gw) (strip attention, shuffled coordinate attention), ``"skip"``:
    that + x. The full-size sigmoid is the kernels' own (relative error about 2e-7 against torch's)."""
    if sigmoid not in (None, "gate", "skip"):
        raise ValueError(f"strip_gates: sigmoid must be None, 'gate' or 'skip', got {sigmoid!r}")
    found = _native.target(x)
    if found is None:
        return None
    lib, cl = found
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(module)):
        with torch.no_grad():
            return _strip_forward(lib, x, cl, factor_fn, sigmoid)
    link: dict = {}
    mw, mh, x1 = _StripPool.apply(x, lib, cl, link)
    factors = factor_fn(mw, mh)
    if len(factors) != 2:
        raise RuntimeError(f"strip_gates: factor_fn must return (gh, gw), got {len(factors)} tensors")
    return _StripApply.apply(x1, *factors, lib, cl, link, sigmoid)


def _group_format(cl: int):
    return torch.channels_last if cl else torch.contiguous_format


def _group_map(x: torch.Tensor, groups: int, cl: int) -> torch.Tensor:
    """A (B, G, H, W) map in x's layout (the kernels index it as (B, G, P) or (B, P, G))."""
    b, _, h, w = x.shape
    return torch.empty(b, groups, h, w, dtype=x.dtype, memory_format=_group_format(cl))


def _group_sim(lib, x, cl, groups):
    b, c, h, w = x.shape
    mean, sim = x.new_empty(b, c), _group_map(x, groups, cl)
    lib.group_sim(x.data_ptr(), b, c, h * w, groups, cl, torch.get_num_threads(), mean.data_ptr(), sim.data_ptr())
    return mean, sim


def _group_factor(x, a_t, groups, cl):
    b, _, h, w = x.shape
    if tuple(a_t.shape) != (b, groups, h, w):
        raise RuntimeError(f"group_gates: the factor must be {(b, groups, h, w)}, got {tuple(a_t.shape)}")
    return a_t.detach().to(torch.float32).contiguous(memory_format=_group_format(cl))


def _group_apply(lib, x, cl, groups, a):
    b, c, h, w = x.shape
    y = torch.empty_like(x)
    lib.group_apply(x.data_ptr(), a.data_ptr(), b, c, h * w, groups, cl, torch.get_num_threads(), y.data_ptr())
    return y


def _group_forward(lib, x, cl, groups, factor_fn):
    """SGE's gate without autograd."""
    _, sim = _group_sim(lib, x, cl, groups)
    return _group_apply(lib, x, cl, groups, _group_factor(x, factor_fn(sim), groups, cl))


# With autograd, group_gates is two ops around the factor's small graph (as strip_gates):
#     x -> _GroupSim -> sim, x1;  a = factor_fn(sim);  _GroupApply(x1, a) -> y
# _GroupApply's backward reduces dL/da and hands dL/dy back through x1; _GroupSim's writes dL/dx.

class _GroupSim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lib, cl, groups, link):
        mean, sim = _group_sim(lib, x, cl, groups)
        ctx.save_for_backward(x, mean)
        ctx.lib, ctx.cl, ctx.groups, ctx.link = lib, cl, groups, link
        return sim, x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dsim, dy):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        x, mean = ctx.saved_tensors
        b, c, h, w = x.shape
        cl, g = ctx.cl, ctx.groups
        a = ctx.link["a"]
        dy = torch.zeros_like(x) if dy is None else _in_layout(dy, cl)
        dsim = torch.zeros_like(a) if dsim is None else dsim.float().contiguous(memory_format=_group_format(cl))
        dx = torch.empty_like(x)
        ctx.lib.group_grad_input(x.data_ptr(), dy.data_ptr(), a.data_ptr(), dsim.data_ptr(), mean.data_ptr(), b, c,
                                 h * w, g, cl, torch.get_num_threads(), dx.data_ptr())
        return dx, None, None, None, None


class _GroupApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a_t, lib, cl, groups, link):
        a = _group_factor(x, a_t, groups, cl)
        link["a"] = a
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.groups, ctx.link, ctx.dtype = lib, cl, groups, link, a_t.dtype
        return _group_apply(lib, x, cl, groups, a)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        b, c, h, w = x.shape
        dy = _in_layout(dy, ctx.cl)
        da = None
        if ctx.needs_input_grad[1]:
            da = _group_map(x, ctx.groups, ctx.cl)
            ctx.lib.group_grad_factor(x.data_ptr(), dy.data_ptr(), b, c, h * w, ctx.groups, ctx.cl,
                                      torch.get_num_threads(), da.data_ptr())
            da = da.to(ctx.dtype)
        return (dy if ctx.needs_input_grad[0] else None), da, None, None, None, None


class _SgeGates(torch.autograd.Function):
    """SGE with its factor in the kernels too: a = sigmoid(gamma * n + beta), n the similarities normalised
    over the positions by sqrt(max(var, 1e-24)) + eps. One kernel per direction works a sample at a time in
    cache (``sge_forward``, ``sge_backward``): the similarities and the factor never reach memory -- at
    C = G (one channel per group) each is as large as x -- and backward recomputes them from x, so only x
    is saved."""

    @staticmethod
    def forward(ctx, x, lib, cl, groups, eps, dof, gamma, beta):
        b, c, h, w = x.shape
        g32, b32 = gamma.detach().float().contiguous(), beta.detach().float().contiguous()
        y = torch.empty_like(x)
        lib.sge_forward(x.data_ptr(), g32.data_ptr(), b32.data_ptr(), eps, dof, b, c, h * w, groups, cl,
                        torch.get_num_threads(), y.data_ptr())
        ctx.save_for_backward(x, g32, b32)
        ctx.lib, ctx.cl, ctx.groups, ctx.eps, ctx.dof = lib, cl, groups, eps, dof
        ctx.shapes = (gamma.shape, beta.shape)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, g32, b32 = ctx.saved_tensors
        b, c, h, w = x.shape
        g = ctx.groups
        dy = dy.contiguous(memory_format=torch.channels_last if ctx.cl else torch.contiguous_format)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dgamma, dbeta = x.new_empty(b, g), x.new_empty(b, g)
        ctx.lib.sge_backward(x.data_ptr(), dy.data_ptr(), g32.data_ptr(), b32.data_ptr(), ctx.eps, ctx.dof, b, c,
                             h * w, g, ctx.cl, torch.get_num_threads(), _native.ptr(dx), dgamma.data_ptr(),
                             dbeta.data_ptr())
        gshape, bshape = ctx.shapes
        return (dx, None, None, None, None, None, dgamma.sum(0).view(gshape), dbeta.sum(0).view(bshape))


def group_gates(x: torch.Tensor, groups: int, factor_fn, module: nn.Module, *, sge=None) -> torch.Tensor | None:
    """SGE's gate on the native kernels, or None where they do not apply (as ``pooled_gates``):
    ``factor_fn(sim)`` maps the similarities (B, G, H, W) to the factor a (B, G, H, W), which multiplies
    each group's channels. ``sge=(gamma, beta, eps, dof)`` computes that factor in the kernels instead
    (SGE's sigmoid gate and its spread sqrt(max(var, 1e-24)) + eps)."""
    found = _native.target(x)
    if found is None or x.shape[1] % groups:
        cl = None if sge is None or x.shape[1] % groups else _compiled.target(x)  # a compiled graph: the custom op
        if cl is None:
            return None
        gamma, beta, eps, dof = sge
        return _compiled.sge(x, gamma, beta, cl, groups, float(eps), float(dof))
    lib, cl = found
    if sge is not None:
        gamma, beta, eps, dof = sge
        return _SgeGates.apply(x, lib, cl, groups, float(eps), float(dof), gamma, beta)
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(module)):
        with torch.no_grad():
            return _group_forward(lib, x, cl, groups, factor_fn)
    link: dict = {}
    sim, x1 = _GroupSim.apply(x, lib, cl, groups, link)
    return _GroupApply.apply(x1, factor_fn(sim), lib, cl, groups, link)


def _simam_forward(lib, x, cl, e_lambda, n):
    """y and the per-(sample, channel) mean and k of SimAM, from the forward kernel."""
    b, c, h, w = x.shape
    mu, k, y = x.new_empty(b, c), x.new_empty(b, c), torch.empty_like(x)
    lib.simam_forward(x.data_ptr(), b, c, h * w, cl, torch.get_num_threads(), e_lambda, n, y.data_ptr(),
                      mu.data_ptr(), k.data_ptr())
    return y, mu, k


class _SimAMGate(torch.autograd.Function):
    """SimAM's block (``simam.py``) on the native kernels: statistics, gate and output per sample in one
    go; backward in two passes over the cached sample, the statistics' gradients in closed form."""

    @staticmethod
    def forward(ctx, x, lib, cl, e_lambda, n):
        y, mu, k = _simam_forward(lib, x, cl, e_lambda, n)
        ctx.save_for_backward(x, mu, k)
        ctx.lib, ctx.cl, ctx.n = lib, cl, n
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, mu, k = ctx.saved_tensors
        b, c, h, w = x.shape
        dy = dy.contiguous(memory_format=torch.channels_last if ctx.cl else torch.contiguous_format)
        dx = torch.empty_like(x)
        ctx.lib.simam_backward(x.data_ptr(), dy.data_ptr(), mu.data_ptr(), k.data_ptr(), b, c, h * w, ctx.cl,
                               torch.get_num_threads(), ctx.n, dx.data_ptr())
        return dx, None, None, None, None


def simam_gate(x: torch.Tensor, e_lambda: float, n: int) -> torch.Tensor | None:
    """SimAM with the logistic gate on the native kernels, or None where they do not apply. The sigmoid
    is computed with ``_native.c``'s vectorised exp (relative error about 2e-7 against torch's)."""
    found = _native.target(x)
    if found is None:
        cl = _compiled.target(x)
        return None if cl is None else _compiled.simam(x, cl, float(e_lambda), float(n))
    lib, cl = found
    if not torch.is_grad_enabled() or not x.requires_grad:
        with torch.no_grad():
            return _simam_forward(lib, x, cl, float(e_lambda), float(n))[0]
    return _SimAMGate.apply(x, lib, cl, float(e_lambda), float(n))


def _conv1x1_logits(lib, x, cl, weight):
    """The logits (B, 1, H, W) of a bias-free 1x1 conv C -> 1 (gc's and scSE's): sum_c w[c] x[c, p]."""
    b, c, h, w = x.shape
    wb = weight.detach().to(torch.float32).reshape(1, c).expand(b, c).contiguous()  # named: a temporary could be freed
    logits = x.new_empty(b, 1, h, w)
    lib.channel_weighted_sum(x.data_ptr(), wb.data_ptr(), b, c, h * w, cl, torch.get_num_threads(), logits.data_ptr())
    return logits


def _conv1x1_weight_grad(lib, x, cl, dlog, wshape):
    """That conv's weight gradient, dL/dw[c] = sum_(b, p) dlogits * x, shaped as the weight."""
    b, c, h, w = x.shape
    part = x.new_empty(b, c)
    lib.position_weighted_pool(x.data_ptr(), dlog.data_ptr(), b, c, h * w, cl, torch.get_num_threads(), part.data_ptr())
    return part.sum(0).view(wshape)


def _gc_context(lib, x, cl, attn_t):
    b, c, h, w = x.shape
    if attn_t.shape != (b, 1, h, w):
        raise RuntimeError(f"context_gates: the attention must be (B, 1, H, W) = {(b, 1, h, w)}, got {tuple(attn_t.shape)}")
    attn = attn_t.detach().to(torch.float32).contiguous()
    context = x.new_empty(b, c, 1, 1)
    lib.position_weighted_pool(x.data_ptr(), attn.data_ptr(), b, c, h * w, cl, torch.get_num_threads(),
                               context.data_ptr())
    return context, attn


def _gc_factors(x, s_t, t_t):
    b, c = x.shape[:2]
    for t in (s_t, t_t):
        if t is not None and t.shape != (b, c, 1, 1):
            raise RuntimeError(f"context_gates: the factors must be (B, C, 1, 1) = {(b, c, 1, 1)} or None, "
                               f"got {tuple(t.shape)}")
    return [None if t is None else t.detach().to(torch.float32).contiguous() for t in (s_t, t_t)]


def _gc_apply(lib, x, cl, s, t):
    b, c, h, w = x.shape
    y = torch.empty_like(x)
    lib.scale_shift(x.data_ptr(), _native.ptr(s), _native.ptr(t), b, c, h * w, cl, torch.get_num_threads(), y.data_ptr())
    return y


def _context_forward(lib, x, cl, block):
    """GCNet's block without autograd."""
    context, _ = _gc_context(lib, x, cl, block.attention(_conv1x1_logits(lib, x, cl, block.conv_attn.weight)))
    return _gc_apply(lib, x, cl, *_gc_factors(x, *block.context_factors(context)))


# With autograd, context_gates is three ops around the block's two small graphs (as pooled_gates):
#     x, w -> _GcLogits -> logits, x1;  attn = block.attention(logits)
#          -> _GcContext(x1, attn) -> context, x2;  scale, add = block.context_factors(context)
#          -> _GcApply(x2, scale, add) -> y
# Backward: _GcApply reduces dL/dscale, dL/dadd; _GcContext turns dL/dcontext into dL/dattn; _GcLogits reduces
# the 1x1 conv's weight gradient and writes dL/dx in one pass (dy * scale + dcontext * attn + dlogits * w).
# Each hands dL/dy back through its alias of x.

class _GcLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lib, cl, link):
        logits = _conv1x1_logits(lib, x, cl, weight)
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.wshape = lib, cl, link, weight.shape
        ctx.w = weight.detach().to(torch.float32).reshape(-1).contiguous()
        return logits, x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dlog, dy):
        (x,) = ctx.saved_tensors
        lib, cl, link = ctx.lib, ctx.cl, ctx.link
        b, c, h, w = x.shape
        dims = (b, c, h * w, cl, torch.get_num_threads())
        dlog = x.new_zeros(b, 1, h, w) if dlog is None else dlog.float().contiguous()
        dweight = _conv1x1_weight_grad(lib, x, cl, dlog, ctx.wshape) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            dy = torch.zeros_like(x) if dy is None else _in_layout(dy, cl)
            dctx = link.get("dctx")
            if dctx is None:
                dctx = x.new_zeros(b, c, 1, 1)
            dx = torch.empty_like(x)
            lib.gc_grad_input(dy.data_ptr(), _native.ptr(link["factors"][0]), dctx.data_ptr(), link["attn"].data_ptr(),
                              dlog.data_ptr(), ctx.w.data_ptr(), *dims, dx.data_ptr())
        return dx, dweight, None, None, None


class _GcContext(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, attn_t, lib, cl, link):
        context, link["attn"] = _gc_context(lib, x, cl, attn_t)
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.dtype = lib, cl, link, attn_t.dtype
        return context, x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dctx, dy):
        (x,) = ctx.saved_tensors
        b, c, h, w = x.shape
        dctx = x.new_zeros(b, c, 1, 1) if dctx is None else dctx.float().contiguous()
        ctx.link["dctx"] = dctx
        dattn = None
        if ctx.needs_input_grad[1]:  # dL/dattn[p] = sum_c dcontext[c] * x[c, p]
            dattn = x.new_empty(b, 1, h, w)
            ctx.lib.channel_weighted_sum(x.data_ptr(), dctx.data_ptr(), b, c, h * w, ctx.cl, torch.get_num_threads(),
                                         dattn.data_ptr())
            dattn = dattn.to(ctx.dtype)
        return dy, dattn, None, None, None


class _GcApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s_t, t_t, lib, cl, link):
        link["factors"] = _gc_factors(x, s_t, t_t)
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl = lib, cl
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (s_t, t_t))
        return _gc_apply(lib, x, cl, *link["factors"])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        b, c, h, w = x.shape
        dy = _in_layout(dy, ctx.cl)
        need_s, need_t = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        ds = x.new_empty(b, c, 1, 1) if need_s else None
        dt = x.new_empty(b, c, 1, 1) if need_t else None
        if need_s or need_t:  # dL/dscale = sum_p dy * x, dL/dadd = sum_p dy
            ctx.lib.scale_shift_reduce(x.data_ptr(), dy.data_ptr(), b, c, h * w, ctx.cl, torch.get_num_threads(),
                                       _native.ptr(ds), _native.ptr(dt))
        ds = None if ds is None else ds.to(ctx.dtypes[0])
        dt = None if dt is None else dt.to(ctx.dtypes[1])
        return (dy if ctx.needs_input_grad[0] else None), ds, dt, None, None, None


def context_gates(x: torch.Tensor, block: nn.Module) -> torch.Tensor | None:
    """GCNet's block on the native kernels, or None where they do not apply (as ``pooled_gates``).

    ``block.conv_attn`` (C -> 1, 1x1, no bias) gives the logits; ``block.attention(logits)`` the
    softmax weights (B, 1, H, W); ``block.context_factors(context)`` the (scale, add) factors, each
    (B, C, 1, 1) or None: y = x * scale + add."""
    conv = block.conv_attn
    found = _native.target(x)
    if found is None or conv.bias is not None or conv.kernel_size != (1, 1) or conv.weight.dtype != torch.float32:
        return None
    lib, cl = found
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(block)):
        with torch.no_grad():
            return _context_forward(lib, x, cl, block)
    link: dict = {}
    logits, x1 = _GcLogits.apply(x, conv.weight, lib, cl, link)
    context, x2 = _GcContext.apply(x1, block.attention(logits), lib, cl, link)
    return _GcApply.apply(x2, *block.context_factors(context), lib, cl, link)


def _bam_inputs(x, a_t, s_t):
    b, c, h, w = x.shape
    if a_t.shape != (b, c, 1, 1) or s_t.shape != (b, 1, h, w):
        raise RuntimeError(f"bam_gate: the branches must be (B, C, 1, 1) and (B, 1, H, W), got {tuple(a_t.shape)} and "
                           f"{tuple(s_t.shape)}")
    return a_t.detach().to(torch.float32).contiguous(), s_t.detach().to(torch.float32).contiguous()


def _bam_apply(lib, x, cl, a, s, mul: bool):
    b, c, h, w = x.shape
    y = torch.empty_like(x)
    lib.bam_apply(x.data_ptr(), a.data_ptr(), s.data_ptr(), int(mul), b, c, h * w, cl, torch.get_num_threads(),
                  y.data_ptr())
    return y


class _BamGate(torch.autograd.Function):
    """BAM's ``y = x + x * sigmoid(a + s)`` (or ``a * s``) of its two branches (``bam.py``), one pass each way."""

    @staticmethod
    def forward(ctx, x, a_t, s_t, lib, cl, mul):
        a, s = _bam_inputs(x, a_t, s_t)
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.mul, ctx.a, ctx.s = lib, cl, mul, a, s
        ctx.dtypes = (a_t.dtype, s_t.dtype)
        return _bam_apply(lib, x, cl, a, s, mul)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        b, c, h, w = x.shape
        dy = _in_layout(dy, ctx.cl)
        dx, da, ds = torch.empty_like(x), x.new_empty(b, c, 1, 1), x.new_empty(b, 1, h, w)
        ctx.lib.bam_backward(x.data_ptr(), dy.data_ptr(), ctx.a.data_ptr(), ctx.s.data_ptr(), int(ctx.mul), b, c, h * w,
                             ctx.cl, torch.get_num_threads(), dx.data_ptr(), da.data_ptr(), ds.data_ptr())
        return (dx if ctx.needs_input_grad[0] else None), da.to(ctx.dtypes[0]), ds.to(ctx.dtypes[1]), None, None, None


def bam_gate(x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, *, mul: bool = False) -> torch.Tensor | None:
    """BAM's ``y = x + x * sigmoid(a + s)`` (``mul``: ``a * s``) on the native kernels, a (B, C, 1, 1) and
    s (B, 1, H, W) its channel and spatial branches; None where the kernels do not apply. The branches are
    ordinary autograd outside the op: it returns dL/dx's direct term and dL/da, dL/ds, which autograd carries
    through them. Full-size traffic 2 |x| forward and 3 |x| backward, where the plain expression writes the
    sum, the sigmoid, the product and the residual and reads them back."""
    found = _native.target(x)
    if found is None:
        return None
    lib, cl = found
    if not torch.is_grad_enabled() or not (x.requires_grad or a.requires_grad or s.requires_grad):
        with torch.no_grad():
            return _bam_apply(lib, x, cl, *_bam_inputs(x, a, s), mul)
    return _BamGate.apply(x, a, s, lib, cl, bool(mul))


def _trainable(module: nn.Module | None) -> list[torch.Tensor]:
    return [] if module is None else [t for t in module.parameters() if t.requires_grad]


def pooled_gates(x: torch.Tensor, channel_fn: Factor | None, spatial_fn: Factor | None, *,
                 channel_module: nn.Module | None = None, spatial_module: nn.Module | None = None) -> torch.Tensor | None:
    """``y = (x * gc) * gs`` on the native kernels, or None where they do not apply (see the module doc).

    ``channel_module`` / ``spatial_module``: the modules whose parameters the two functions use (with none
    trainable and x not requiring a gradient, no graph is recorded); the functions run as ordinary autograd
    between the ops, so their parameters get gradients as anywhere else.
    """
    found = _native.target(x)
    if found is None or x.shape[2] * x.shape[3] >= 2**31:
        return None
    lib, cl = found
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(channel_module) or _trainable(spatial_module)):
        with torch.no_grad():
            return _forward(lib, x, cl, channel_fn, spatial_fn)
    link: dict = {}
    gc_t = gs_t = None
    if channel_fn is not None:
        avg, cmax, x = _ChannelPool.apply(x, lib, cl, link)
        gc_t = channel_fn(avg, cmax)
    if spatial_fn is not None:
        smean, smax, x = _SpatialPool.apply(x, gc_t, lib, cl, link, channel_fn is not None)
        gs_t = spatial_fn(smean, smax)
    return _ApplyGates.apply(x, gc_t, gs_t, lib, cl, link, spatial_fn is not None)


# With the default small parts (CBAM's MLP ReLU -> sigmoid of 1x1 convs, its k x k conv on the native small-conv
# kernel, BatchNorm2d or none, sigmoid; taps neither active nor hooked) ``cbam_gates`` runs the whole block as
# one op: the same kernels as the split ops above, and the MLP's and the conv + norm's (``_small_graphs``), with
# nothing between them for the autograd engine to run (at 7x7 maps the five ops' bookkeeping cost as much as
# their kernels).

def _cbam_channel_ok(ch: nn.Module, c: int) -> bool:
    fc1, fc2 = ch.fc1, ch.fc2
    return (type(ch.act) is nn.ReLU and is_sigmoid(ch.gate) and _is_pointwise(fc1) and _is_pointwise(fc2)
            and fc1.out_channels == fc2.in_channels and fc2.out_channels == fc1.in_channels == c
            and _float32(fc1.bias, fc2.bias) and _unhooked(fc1, ch.act, fc2, ch.gate, ch.tap) and not ch.tap.active)


def _cbam_conv_norm(sp: nn.Module, light: bool) -> tuple[nn.Module, nn.Module, tuple[nn.Module, ...]]:
    """(conv, norm, the modules around them) of CBAM's spatial half, or LightCBAM's (its conv + bn module)."""
    return (sp.conv.conv, sp.conv.bn, (sp.conv,)) if light else (sp.conv, sp.norm, ())


def _cbam_spatial_ok(sp: nn.Module, x: torch.Tensor, light: bool) -> bool:
    conv, norm, owners = _cbam_conv_norm(sp, light)
    return (type(conv) is LayoutConv2d and conv._small_ok(x) and is_sigmoid(sp.gate) and conv.padding_mode == "zeros"
            and _float32(conv.bias) and _unhooked(conv, norm, sp.gate, sp.tap, *owners) and not sp.tap.active
            and (type(norm) is nn.Identity or (isinstance(norm, _NORMS) and type(norm).forward in
                                               (nn.BatchNorm2d.forward, _safe_forward()))))


class _CbamGates(torch.autograd.Function):
    """y = (x * gc) * gs with gc the MLP gate of the pooled channels and gs the conv + norm gate of the pooled
    maps of x * gc (either may be absent), forward and backward each one op on ``_small_graphs``' MLP and
    conv + norm helpers; ``light``: LightCBAM's, the average and max descriptors (and maps) averaged before
    the MLP (and the conv). Saved: x, gc, carg, smax and the conv + norm's six (``conv_norm_forward``)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, wc, bc, bnw, bnb, lib, cl, has_c, has_s, conv_args, bn, light):
        b, c, h, w = x.shape
        gc = gs = carg = smax = None
        ctx.kept, conv_kept = None, (None,) * 6
        if has_c:
            avg, cmax, carg = _channel_pool(lib, x, cl)
            a = 0.5 * avg.view(b, c) + 0.5 * cmax.view(b, c) if light else torch.cat([avg.view(b, c), cmax.view(b, c)])
            gc, ctx.kept = mlp_forward(a, w1, b1, w2, b2, 1 if light else 2)  # (B, C); a (kB, C)
        if has_s:
            smean, smax = _spatial_pool(lib, x, cl, gc)
            z = 0.5 * smean + 0.5 * smax if light else torch.cat([smean, smax], 1)
            gs, conv_kept = conv_norm_forward(z, wc, bc, bnw, bnb, *conv_args, bn)  # (B, 1, H, W)
        y = _apply(lib, x, cl, gc, gs)
        ctx.save_for_backward(x, gc, carg, smax, *conv_kept)
        ctx.lib, ctx.cl, ctx.has, ctx.conv_args, ctx.norm = lib, cl, (has_c, has_s), conv_args, bn is not None
        ctx.batch_stats, ctx.light = True if bn is None else bn[2], light
        ctx.biases = (b1 is not None, b2 is not None, bc is not None, bnw is not None, bnb is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, gc, carg, smax, *conv_kept = ctx.saved_tensors
        gs = conv_kept[3]
        lib, cl, (has_c, has_s) = ctx.lib, ctx.cl, ctx.has
        need = ctx.needs_input_grad
        b, c, h, w = x.shape
        shape = (b, c, h * w, cl, torch.get_num_threads())
        dy = _in_layout(dy, cl)
        link = {"gc": gc, "gs": gs, "smax": smax}
        grads = [None] * 9  # x, w1, b1, w2, b2, wc, bc, bnw, bnb
        if has_s:
            dgs, link["scnt"] = x.new_empty(b, 1, h, w), x.new_empty(b, 1, h, w)
            lib.grad_spatial_factor(x.data_ptr(), _native.ptr(gc), dy.data_ptr(), smax.data_ptr(), *shape, dgs.data_ptr(),
                                    link["scnt"].data_ptr())
            bias = ctx.biases
            want = (True, need[5], bias[2] and need[6], bias[3] and need[7], bias[4] and need[8])
            dz, *grads[5:9] = conv_norm_backward(dgs, conv_kept, *ctx.conv_args, ctx.norm, ctx.batch_stats, want)
            if ctx.light:
                link["dmean"] = link["dsmax"] = (0.5 * dz).contiguous()
            else:
                link["dmean"], link["dsmax"] = dz[:, 0:1].contiguous(), dz[:, 1:2].contiguous()
        davg = dcmax = None
        if has_c:
            dgc = x.new_empty(b, c)
            if has_s:
                lib.grad_channel_factor(x.data_ptr(), gc.data_ptr(), gs.data_ptr(), dy.data_ptr(), link["dmean"].data_ptr(),
                                        link["dsmax"].data_ptr(), smax.data_ptr(), link["scnt"].data_ptr(), *shape,
                                        dgc.data_ptr())
            else:
                lib.grad_channel_factor(x.data_ptr(), gc.data_ptr(), None, dy.data_ptr(), None, None, None, None, *shape,
                                        dgc.data_ptr())
            want = (need[1], ctx.biases[0] and need[2], need[3], ctx.biases[1] and need[4], True)
            *grads[1:5], da = mlp_backward(dgc, gc, ctx.kept, want)
            if ctx.light:  # both descriptors entered the MLP as their mean
                davg = dcmax = 0.5 * da[0]
            else:
                davg, dcmax = da[0].contiguous(), da[1].contiguous()
        if need[0]:
            grads[0] = _grad_input(lib, x, cl, link, dy, davg, dcmax, carg)
        return (*grads, None, None, None, None, None, None, None)


def cbam_gates(x: torch.Tensor, channel: nn.Module | None, spatial: nn.Module | None, *,
               light: bool = False) -> torch.Tensor | None:
    """CBAM (``channel`` a CbamChannel, ``spatial`` a CbamSpatial; either may be None), or LightCBAM's two
    halves (``light``), as one native op, or None where it does not apply (other small parts, a captured or
    hooked tap, ...: then ``pooled_gates``)."""
    found = _native.target(x)
    compiled = None if found is not None else _compiled.target(x)
    if ((found is None and compiled is None) or not _small_graphs_on() or x.shape[2] * x.shape[3] >= 2**31
            or (channel is not None and not _cbam_channel_ok(channel, x.shape[1]))
            or (spatial is not None and not _cbam_spatial_ok(spatial, x, light))):
        return None
    lib, cl = found if found is not None else (None, compiled)
    ch, sp = channel, spatial
    conv, norm, _ = (None, None, ()) if sp is None else _cbam_conv_norm(sp, light)
    bn = None
    if sp is not None and type(norm) is not nn.Identity:
        bn = _norm_args(norm, x.shape[0] * x.shape[2] * x.shape[3], 1)  # counts the batch: the last check
        if bn is None:
            return None
    return (_CbamGates.apply if found is not None else _compiled.cbam)(
        x, None if ch is None else ch.fc1.weight, None if ch is None else ch.fc1.bias,
        None if ch is None else ch.fc2.weight, None if ch is None else ch.fc2.bias,
        None if sp is None else conv.weight, None if sp is None else conv.bias,
        None if bn is None else norm.weight, None if bn is None else norm.bias,
        *((lib,) if found is not None else ()), cl, ch is not None, sp is not None,
        None if sp is None else (conv.padding, conv.dilation), bn, light)


def _moment_pool(lib, x, cl, variance: bool, weights):
    """The pooled (B, C, 1, 1) tensors: [mean], [mean, var] or [sum_p x * weights]."""
    b, c, h, w = x.shape
    dims = (b, c, h * w, cl, torch.get_num_threads())
    mean = x.new_empty(b, c, 1, 1)
    var = x.new_empty(b, c, 1, 1) if variance else None
    if weights is not None:
        lib.channel_weighted_pool(x.data_ptr(), weights.data_ptr(), *dims, mean.data_ptr())
    else:
        lib.channel_moments(x.data_ptr(), *dims, mean.data_ptr(), _native.ptr(var))
    return [mean] if var is None else [mean, var]


def _moment_scale(lib, x, cl, g_t, what: str):
    b, c, h, w = x.shape
    if g_t.shape != (b, c, 1, 1):
        raise RuntimeError(f"{what}: the factor must be (B, C, 1, 1) = {(b, c, 1, 1)}, got {tuple(g_t.shape)}")
    g = g_t.detach().to(torch.float32).contiguous()
    y = torch.empty_like(x)
    lib.scale_shift(x.data_ptr(), g.data_ptr(), None, b, c, h * w, cl, torch.get_num_threads(), y.data_ptr())
    return y, g


class _MomentPool(torch.autograd.Function):
    """First half of ``moment_gates``: x -> (pooled..., an alias of x for ``_MomentScale``).

    The two halves bracket the block's own small graph, factor_fn(pooled), which the autograd engine runs
    as it runs any graph: no nested ``torch.autograd.grad`` call and no graph kept on ctx. The alias carries
    dL/dy (not dL/dy * g) back from ``_MomentScale``, which leaves g in the shared ``link``; the backward here
    then writes the whole dL/dx in one pass, dy * g + the pooling's terms."""

    @staticmethod
    def forward(ctx, x, lib, cl, variance, weights, link):
        pooled = _moment_pool(lib, x, cl, variance, weights)
        ctx.save_for_backward(x, *pooled)
        ctx.lib, ctx.cl, ctx.weights, ctx.link = lib, cl, weights, link
        return (*pooled, x.view_as(x))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        x, *pooled = ctx.saved_tensors
        dpooled, dy = list(grads[:-1]), grads[-1]
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        lib, cl = ctx.lib, ctx.cl
        b, c, h, w = x.shape
        p = h * w
        dims = (b, c, p, cl, torch.get_num_threads())
        dpooled = [torch.zeros_like(t) if d is None else d.float().contiguous() for t, d in zip(pooled, dpooled)]
        g = ctx.link.get("g")
        if dy is None or g is None:  # y unused: only the pooling's own terms
            dy, g = torch.zeros_like(x), x.new_zeros(b, c, 1, 1)
        dy = dy.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        dx = torch.empty_like(x)
        if ctx.weights is not None:  # d s / dx = weights: dx = dy * g + ds * weights
            lib.weighted_grad_input(dy.data_ptr(), g.data_ptr(), ctx.weights.data_ptr(), dpooled[0].data_ptr(), *dims,
                                    dx.data_ptr())
        else:  # d mean / dx = 1 / P; d var / dx = 2 (x - mean) / P: dx = dy * g + (x - mean) * f + dmean / P
            e = dpooled[0] / p
            mean = f = None
            if len(pooled) == 2:
                mean, f = pooled[0], dpooled[1] * (2.0 / p)
            lib.moment_grad_input(dy.data_ptr(), g.data_ptr(), x.data_ptr(), _native.ptr(mean), _native.ptr(f),
                                  e.data_ptr(), *dims, dx.data_ptr())
        return dx, None, None, None, None, None


class _MomentScale(torch.autograd.Function):
    """Second half of ``moment_gates``: y = x * g; backward dL/dg = sum_p dy * x, and dL/dy passed on (see
    ``_MomentPool``)."""

    @staticmethod
    def forward(ctx, x_alias, g_t, lib, cl, link):
        y, g = _moment_scale(lib, x_alias, cl, g_t, "moment_gates")
        link["g"] = g
        ctx.save_for_backward(x_alias)
        ctx.lib, ctx.cl = lib, cl
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        lib, cl = ctx.lib, ctx.cl
        b, c, h, w = x.shape
        dy = dy.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        dg = None
        if ctx.needs_input_grad[1]:
            dg = x.new_empty(b, c, 1, 1)
            lib.scale_shift_reduce(x.data_ptr(), dy.data_ptr(), b, c, h * w, cl, torch.get_num_threads(),
                                   dg.data_ptr(), None)  # sum_p dy * x
        return (dy if ctx.needs_input_grad[0] else None), dg, None, None, None


def moment_gates(x: torch.Tensor, factor_fn, module: nn.Module, *, variance: bool = False,
                 weights: torch.Tensor | None = None) -> torch.Tensor | None:
    """``y = x * factor_fn(mean)`` -- or ``factor_fn(mean, var)`` with ``variance``, or ``factor_fn(s)`` with
    ``weights`` (C, H, W), s = sum_p x * weights (FcaNet's DCT coefficients) -- on the native kernels, or
    None where they do not apply (as ``pooled_gates``). mean and var (biased: divided by H * W) are over
    the positions, (B, C, 1, 1); the factor is (B, C, 1, 1). ``module`` is the block whose parameters
    factor_fn uses (their gradients come from the autograd graph of factor_fn itself); ``weights`` gets no
    gradient (a fixed filter).

    Full-size traffic of a training step: 7 |x| -- forward reads x for the moments and reads x and writes
    y = x * g; backward reads dy and x for sum_p dy * x, then reads dy and writes dL/dx = dy * g + dmean / P.
    With ``variance`` 9 |x|: the variance is a second pass over each cached sample and dL/dx adds
    2 dvar (x - mean) / P, reading x. Plain autograd of ``x * g(mean(x))`` moves about 11 |x|."""
    found = _native.target(x)
    if found is None:
        return None
    lib, cl = found
    if weights is not None:
        if variance or weights.shape != x.shape[1:] or weights.requires_grad:
            raise ValueError(f"moment_gates: weights must be a fixed (C, H, W) = {tuple(x.shape[1:])} filter without "
                             f"variance; got {tuple(weights.shape)}, variance={variance}")
        weights = weights.detach().to(torch.float32)
        weights = (weights.permute(1, 2, 0) if cl else weights).contiguous()  # laid out as the map: (P, C) or (C, P)
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(module)):
        with torch.no_grad():
            return _moment_scale(lib, x, cl, factor_fn(*_moment_pool(lib, x, cl, variance, weights)), "moment_gates")[0]
    link: dict = {}
    *pooled, x_alias = _MomentPool.apply(x, lib, cl, variance, weights, link)
    return _MomentScale.apply(x_alias, factor_fn(*pooled), lib, cl, link)


def _scse_pool(lib, x, cl, weight):
    """The mean over positions (B, C, 1, 1) and the 1x1 conv's logits without bias (B, 1, H, W)."""
    b, c, h, w = x.shape
    dims = (b, c, h * w, cl, torch.get_num_threads())
    mean = x.new_empty(b, c, 1, 1)
    lib.channel_moments(x.data_ptr(), *dims, mean.data_ptr(), None)
    return mean, _conv1x1_logits(lib, x, cl, weight)


def _scse_factors(x, gc_t, gs_t):
    b, c, h, w = x.shape
    if gc_t.shape != (b, c, 1, 1) or gs_t.shape != (b, 1, h, w):
        raise RuntimeError(f"scse_gates: the factors must be (B, C, 1, 1) and (B, 1, H, W), got {tuple(gc_t.shape)} "
                           f"and {tuple(gs_t.shape)}")
    return [t.detach().to(torch.float32).contiguous() for t in (gc_t, gs_t)]


def _scse_apply(lib, x, cl, gc, gs, add: bool):
    b, c, h, w = x.shape
    y = torch.empty_like(x)
    lib.scse_apply(x.data_ptr(), gc.data_ptr(), gs.data_ptr(), int(add), b, c, h * w, cl, torch.get_num_threads(),
                   y.data_ptr())
    return y


def _scse_forward(lib, x, cl, block, add: bool):
    """scSE without autograd."""
    gc, gs = _scse_factors(x, *block.factors(*_scse_pool(lib, x, cl, block.conv_spatial.weight)))
    return _scse_apply(lib, x, cl, gc, gs, add)


# With autograd, scse_gates is two ops around block.factors (as strip_gates):
#     x, w -> _ScsePool -> mean, logits, x1;  gc, gs = block.factors(mean, logits);  _ScseApply(x1, gc, gs) -> y
# _ScseApply's backward reduces dL/dgc, dL/dgs and hands dL/dy back through x1; _ScsePool's reduces the 1x1
# conv's weight gradient and writes dL/dx in one pass.

class _ScsePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lib, cl, link):
        mean, logits = _scse_pool(lib, x, cl, weight)
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.wshape = lib, cl, link, weight.shape
        ctx.w = weight.detach().to(torch.float32).reshape(-1).contiguous()
        return mean, logits, x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dmean, dlog, dy):
        (x,) = ctx.saved_tensors
        lib, cl, link = ctx.lib, ctx.cl, ctx.link
        b, c, h, w = x.shape
        dims = (b, c, h * w, cl, torch.get_num_threads())
        dlog = x.new_zeros(b, 1, h, w) if dlog is None else dlog.float().contiguous()
        dweight = _conv1x1_weight_grad(lib, x, cl, dlog, ctx.wshape) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            dy = torch.zeros_like(x) if dy is None else _in_layout(dy, cl)
            e = x.new_zeros(b, c, 1, 1) if dmean is None else (dmean.float() / (h * w)).contiguous()
            gc, gs = link["factors"]
            dx = torch.empty_like(x)
            lib.scse_grad_input(x.data_ptr(), dy.data_ptr(), gc.data_ptr(), gs.data_ptr(), int(link["add"]), e.data_ptr(),
                                dlog.data_ptr(), ctx.w.data_ptr(), *dims, dx.data_ptr())
        return dx, dweight, None, None, None


class _ScseApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gc_t, gs_t, lib, cl, link, add):
        gc, gs = _scse_factors(x, gc_t, gs_t)
        link["factors"], link["add"] = (gc, gs), add
        ctx.save_for_backward(x)
        ctx.lib, ctx.cl, ctx.link, ctx.dtypes = lib, cl, link, (gc_t.dtype, gs_t.dtype)
        return _scse_apply(lib, x, cl, gc, gs, add)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        b, c, h, w = x.shape
        dy = _in_layout(dy, ctx.cl)
        gc, gs = ctx.link["factors"]
        dgc, dgs = x.new_empty(b, c, 1, 1), x.new_empty(b, 1, h, w)
        ctx.lib.scse_reduce(x.data_ptr(), dy.data_ptr(), gc.data_ptr(), gs.data_ptr(), int(ctx.link["add"]), b, c, h * w,
                            ctx.cl, torch.get_num_threads(), dgc.data_ptr(), dgs.data_ptr())
        return ((dy if ctx.needs_input_grad[0] else None), dgc.to(ctx.dtypes[0]), dgs.to(ctx.dtypes[1]), None, None,
                None, None)


def scse_gates(x: torch.Tensor, block: nn.Module) -> torch.Tensor | None:
    """scSE on the native kernels, or None where they do not apply (as ``pooled_gates``; also for the "mult"
    aggregation). ``block.conv_spatial`` (C -> 1, 1x1) gives the spatial logits without its bias;
    ``block.factors(mean, logits)`` the two gates, (B, C, 1, 1) and (B, 1, H, W), with the bias added there."""
    conv = block.conv_spatial
    found = _native.target(x)
    if (found is None or block.aggregation not in ("max", "add") or conv.kernel_size != (1, 1)
            or conv.weight.dtype != torch.float32):
        return None
    lib, cl = found
    add = block.aggregation == "add"
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(block)):
        with torch.no_grad():
            return _scse_forward(lib, x, cl, block, add)
    link: dict = {}
    mean, logits, x1 = _ScsePool.apply(x, conv.weight, lib, cl, link)
    gc_t, gs_t = block.factors(mean, logits)
    return _ScseApply.apply(x1, gc_t, gs_t, lib, cl, link, add)


class _SumGates(torch.autograd.Function):
    """y = x * gc + x * gs for factors gc (B, C, 1, 1) and gs (B, 1, H, W) computed elsewhere (PSA's parallel
    layout) on scSE's "add" kernels: forward one pass (scse_apply); backward dL/dgc and dL/dgs in one pass
    (scse_reduce) and dL/dx = dy gc + dy gs in another (scse_apply of dL/dy). Saves x and the factors."""

    @staticmethod
    def forward(ctx, x, gc_t, gs_t, lib, cl):
        gc, gs = _scse_factors(x, gc_t, gs_t)
        ctx.save_for_backward(x, gc, gs)
        ctx.lib, ctx.cl, ctx.dtypes = lib, cl, (gc_t.dtype, gs_t.dtype)
        return _scse_apply(lib, x, cl, gc, gs, True)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, gc, gs = ctx.saved_tensors
        b, c, h, w = x.shape
        dy = _in_layout(dy, ctx.cl)
        dx = dgc = dgs = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dgc, dgs = x.new_empty(b, c, 1, 1), x.new_empty(b, 1, h, w)
            ctx.lib.scse_reduce(x.data_ptr(), dy.data_ptr(), gc.data_ptr(), gs.data_ptr(), 1, b, c, h * w, ctx.cl,
                                torch.get_num_threads(), dgc.data_ptr(), dgs.data_ptr())
            dgc, dgs = dgc.to(ctx.dtypes[0]), dgs.to(ctx.dtypes[1])
        if ctx.needs_input_grad[0]:
            dx = _scse_apply(ctx.lib, dy, ctx.cl, gc, gs, True)
        return dx, dgc, dgs, None, None


class _ProductGates(torch.autograd.Function):
    """y = x * gc * gs for factors gc (B, C, 1, 1) and gs (B, 1, H, W) computed elsewhere (PSA's sequential
    layout) on pooled_gates' kernels, with no pooling to differentiate through: forward one pass (apply_gates);
    backward dL/dgs (grad_spatial_factor, no maximum: +inf never ties), dL/dgc (grad_channel_factor, with no
    pooling terms) and dL/dx = dy gc gs (apply_gates of dL/dy), one pass each. Saves x and the factors."""

    @staticmethod
    def forward(ctx, x, gc_t, gs_t, lib, cl):
        gc, gs = _scse_factors(x, gc_t, gs_t)
        ctx.save_for_backward(x, gc, gs)
        ctx.lib, ctx.cl, ctx.dtypes = lib, cl, (gc_t.dtype, gs_t.dtype)
        return _apply(lib, x, cl, gc, gs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, gc, gs = ctx.saved_tensors
        lib, cl = ctx.lib, ctx.cl
        b, c, h, w = x.shape
        shape = (b, c, h * w, cl, torch.get_num_threads())
        dy = _in_layout(dy, cl)
        dx = dgc = dgs = None
        no_max = gs.new_full(gs.shape, float("inf"))  # no maximum to tie with: no pooling terms
        if ctx.needs_input_grad[2]:
            dgs, ties = x.new_empty(b, 1, h, w), x.new_empty(b, 1, h, w)
            lib.grad_spatial_factor(x.data_ptr(), gc.data_ptr(), dy.data_ptr(), no_max.data_ptr(), *shape,
                                    dgs.data_ptr(), ties.data_ptr())
            dgs = dgs.to(ctx.dtypes[1])
        if ctx.needs_input_grad[1]:
            zeros, ones = gs.new_zeros(gs.shape), gs.new_ones(gs.shape)
            dgc = x.new_empty(b, c, 1, 1)
            lib.grad_channel_factor(x.data_ptr(), gc.data_ptr(), gs.data_ptr(), dy.data_ptr(), zeros.data_ptr(),
                                    zeros.data_ptr(), no_max.data_ptr(), ones.data_ptr(), *shape, dgc.data_ptr())
            dgc = dgc.to(ctx.dtypes[0])
        if ctx.needs_input_grad[0]:
            dx = _apply(lib, dy, cl, gc, gs)
        return dx, dgc, dgs, None, None


def _outside_gates(x, gc, gs, op, forward):
    """``op`` (``_ProductGates`` / ``_SumGates``) on factors computed outside, or its forward alone where nothing
    needs a gradient; None where the kernels do not apply (then compute it in PyTorch)."""
    found = _native.target(x)
    if found is None:
        return None
    lib, cl = found
    if not torch.is_grad_enabled() or not (x.requires_grad or gc.requires_grad or gs.requires_grad):
        with torch.no_grad():
            return forward(lib, x, cl, *_scse_factors(x, gc, gs))
    return op.apply(x, gc, gs, lib, cl)


def product_gates(x: torch.Tensor, gc: torch.Tensor, gs: torch.Tensor) -> torch.Tensor | None:
    """``x * gc * gs`` (gc (B, C, 1, 1), gs (B, 1, H, W)) as one native op, or None where the kernels do not
    apply (then compute it in PyTorch)."""
    return _outside_gates(x, gc, gs, _ProductGates, _apply)


def sum_gates(x: torch.Tensor, gc: torch.Tensor, gs: torch.Tensor) -> torch.Tensor | None:
    """``x * gc + x * gs`` (gc (B, C, 1, 1), gs (B, 1, H, W)) as one native op, or None where the kernels do not
    apply (then compute it in PyTorch)."""
    return _outside_gates(x, gc, gs, _SumGates, lambda lib, x, cl, gc, gs: _scse_apply(lib, x, cl, gc, gs, True))


# ------------------------------------------------------------------------------------------------- ema
def _ema_forward(lib, x, x1, x2, cl, groups):
    """y and what backward needs: the branches as the kernels read them, s1, s2 and the gate."""
    b, c, h, w = x.shape
    g, p = groups, h * w
    x1c, x2c = x1.detach().contiguous(), x2.detach().contiguous()  # named: read by the kernels
    s1, s2, gate = x.new_empty(b * g, c // g), x.new_empty(b * g, c // g), x.new_empty(b * g, p)
    y = torch.empty_like(x)
    lib.ema_cross_forward(x.data_ptr(), x1c.data_ptr(), x2c.data_ptr(), b, c, g, p, cl, torch.get_num_threads(),
                          s1.data_ptr(), s2.data_ptr(), gate.data_ptr(), y.data_ptr())
    return y, (x1c, x2c, s1, s2, gate)


class _EmaCross(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x1, x2, lib, cl, groups):
        y, kept = _ema_forward(lib, x, x1, x2, cl, groups)
        ctx.save_for_backward(x, *kept)
        ctx.lib, ctx.cl, ctx.groups = lib, cl, groups
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, x1, x2, s1, s2, gate = ctx.saved_tensors
        need = ctx.needs_input_grad
        dy = _in_layout(dy, ctx.cl)
        dx = torch.empty_like(x) if need[0] else None
        dx1 = torch.empty_like(x1) if need[1] else None
        dx2 = torch.empty_like(x2) if need[2] else None
        b, c, h, w = x.shape
        ctx.lib.ema_cross_backward(x.data_ptr(), dy.data_ptr(), x1.data_ptr(), x2.data_ptr(), s1.data_ptr(),
                                   s2.data_ptr(), gate.data_ptr(), b, c, ctx.groups, h * w, ctx.cl,
                                   torch.get_num_threads(), _native.ptr(dx), _native.ptr(dx1), _native.ptr(dx2))
        return dx, dx1, dx2, None, None, None


def ema_gates(x: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, groups: int) -> torch.Tensor | None:
    """EMA's cross-spatial step on the native kernels, or None where they do not apply: from x (B, C, H, W) and
    the two grouped branches x1, x2 (B G, C / G, H, W), y = x * sigmoid(softmax(GAP(x1)) . x2 + softmax(GAP(x2)) . x1)
    with one map per group broadcast over its channels. The sigmoid is the kernels' own (relative error about
    2e-7 against torch's); the caller checks that its gate is a sigmoid."""
    found = _native.target(x)
    b, c, h, w = x.shape
    shape = (b * groups, c // groups, h, w)
    if found is None or any(tuple(t.shape) != shape or t.dtype != torch.float32 or t.device != x.device
                            for t in (x1, x2)):
        return None
    lib, cl = found
    if not torch.is_grad_enabled() or not (x.requires_grad or x1.requires_grad or x2.requires_grad):
        with torch.no_grad():
            return _ema_forward(lib, x, x1, x2, cl, groups)[0]
    return _EmaCross.apply(x, x1, x2, lib, cl, groups)


def _ema_branch_forward(lib, gx, gh, gw, gamma, beta, eps):
    n, cg, h, w = gx.shape
    ghc, gwc = gh.detach().contiguous(), gw.detach().contiguous()  # named: read by the kernels
    gam = None if gamma is None else gamma.detach().contiguous()
    bet = None if beta is None else beta.detach().contiguous()
    stats, x1 = gx.new_empty(n * cg, 2), torch.empty_like(gx)
    lib.ema_branch_forward(gx.data_ptr(), ghc.data_ptr(), gwc.data_ptr(), _native.ptr(gam), _native.ptr(bet), eps,
                           n, cg, h, w, torch.get_num_threads(), stats.data_ptr(), x1.data_ptr())
    return x1, (gx, ghc, gwc, gam, stats)


class _EmaBranch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, gh, gw, gamma, beta, eps, lib):
        x1, kept = _ema_branch_forward(lib, gx, gh, gw, gamma, beta, eps)
        ctx.save_for_backward(*kept)
        ctx.lib, ctx.shapes = lib, (gh.shape, gw.shape)
        return x1

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dx1):
        gx, gh, gw, gam, stats = ctx.saved_tensors
        need = ctx.needs_input_grad
        n, cg, h, w = gx.shape
        dx1 = dx1.contiguous()  # named: read by the kernels
        dgx = torch.empty_like(gx) if need[0] else None
        dgh = gx.new_empty(ctx.shapes[0]) if need[1] else None
        dgw = gx.new_empty(ctx.shapes[1]) if need[2] else None
        dgamma = gx.new_empty(cg) if need[3] else None
        dbeta = gx.new_empty(cg) if need[4] else None
        ctx.lib.ema_branch_backward(dx1.data_ptr(), gx.data_ptr(), gh.data_ptr(), gw.data_ptr(), _native.ptr(gam),
                                    stats.data_ptr(), n, cg, h, w, torch.get_num_threads(), _native.ptr(dgx),
                                    _native.ptr(dgh), _native.ptr(dgw), _native.ptr(dgamma), _native.ptr(dbeta))
        return dgx, dgh, dgw, dgamma, dbeta, None, None


def ema_branch(gx: torch.Tensor, gh: torch.Tensor, gw: torch.Tensor, norm: nn.Module) -> torch.Tensor | None:
    """EMA's 1x1 branch ``norm(gx * gh * gw)`` as one native op, or None where it does not apply: gx (N, cg, H, W)
    NCHW-contiguous, the strip gates gh (N, cg, H, 1) and gw (N, cg, 1, W), ``norm`` a default
    ``nn.GroupNorm(cg, cg)`` (one channel per group) without hooks."""
    n, cg, h, w = gx.shape
    if not (_native.applies(gx) and gx.is_contiguous() and type(norm) is nn.GroupNorm and norm.num_groups == cg
            and norm.num_channels == cg and _unhooked(norm) and tuple(gh.shape) == (n, cg, h, 1)
            and tuple(gw.shape) == (n, cg, 1, w) and gh.dtype == gw.dtype == torch.float32
            and all(t is None or t.dtype == torch.float32 for t in (norm.weight, norm.bias))):
        return None
    lib = _native.kernels()
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (gx, gh, gw, norm.weight, norm.bias)):
        with torch.no_grad():
            return _ema_branch_forward(lib, gx, gh, gw, norm.weight, norm.bias, float(norm.eps))[0]
    return _EmaBranch.apply(gx, gh, gw, norm.weight, norm.bias, float(norm.eps), lib)


# ------------------------------------------------------------------------------------ Selective Kernel
def _sk_norm_ok(norm: nn.Module, c: int, n: int) -> bool:
    """A BatchNorm2d (or SafeBatchNorm2d) that ``_small_graphs._norm_args`` reads as it is, checked before any
    branch counts its batch (so the plain path never sees a batch counted twice)."""
    if not (isinstance(norm, _NORMS) and type(norm).forward in (nn.BatchNorm2d.forward, _safe_forward())
            and norm.num_features == c and _float32(norm.weight, norm.bias, norm.running_mean, norm.running_var)):
        return False
    return n > 1 if _batch_stats(norm) else (norm.running_mean is not None and norm.running_var is not None)


def _batch_stats(norm: nn.Module) -> bool:
    """The BatchNorm normalises with the batch's statistics (as ``nn.BatchNorm2d.forward`` decides)."""
    return norm.training or (norm.running_mean is None and norm.running_var is None)


def _sk_branches(lib, cl, xs, norms, pool: bool = True):
    """Each branch's normalisation and s = sum_m mean_p relu(bn_m(x_m)) (B, C, 1, 1) (None without ``pool``)."""
    b, c, h, w = xs[0].shape
    s = xs[0].new_empty(b, c, 1, 1) if pool else None
    stats, scales = [], []
    for m, (x, norm) in enumerate(zip(xs, norms)):
        running_mean, running_var, batch_stats, momentum, eps = _norm_args(norm, b * h * w, c)
        st, ss = x.new_empty(2 * c), x.new_empty(2 * c)
        wt = None if norm.weight is None else norm.weight.detach()
        bs = None if norm.bias is None else norm.bias.detach()
        lib.sk_branch_forward(x.data_ptr(), b, c, h * w, cl, torch.get_num_threads(), int(batch_stats),
                              _native.ptr(wt), _native.ptr(bs), _native.ptr(running_mean), _native.ptr(running_var),
                              momentum, eps, int(m > 0), st.data_ptr(), ss.data_ptr(), _native.ptr(s))
        stats.append(st)
        scales.append(ss)
    return s, stats, scales


def _sk_weights(a_list, shape):
    out = []
    for a in a_list:
        if tuple(a.shape) != shape:
            raise RuntimeError(f"sk_gates: each branch weight must be (B, C, 1, 1) = {shape}, got {tuple(a.shape)}")
        out.append(a.detach().to(torch.float32).contiguous())
    return out


def _sk_select(lib, cl, xs, scales, a_list):
    b, c, h, w = xs[0].shape
    out = torch.empty_like(xs[0])
    for m in range(0, len(xs), 2):  # two branches per pass (the paper's M = 2: one pass)
        two = m + 1 < len(xs)
        lib.sk_select_forward(xs[m].data_ptr(), scales[m].data_ptr(), a_list[m].data_ptr(),
                              xs[m + 1].data_ptr() if two else None, scales[m + 1].data_ptr() if two else None,
                              a_list[m + 1].data_ptr() if two else None, int(m > 0), b, c, h * w, cl,
                              torch.get_num_threads(), out.data_ptr())
    return out


class _SkBranches(torch.autograd.Function):
    """First half of ``sk_gates``: the branches' conv outputs -> (s, an alias of each for ``_SkSelect``). The
    alias carries dL/dout back from ``_SkSelect``, which leaves the branch weights and the normalisations in
    ``link``; the backward here writes each branch's dL/dx_m, through the ReLU and the BatchNorm, in two passes."""

    @staticmethod
    def forward(ctx, lib, cl, norms, link, *tensors):
        m = len(norms)
        xs, weights = list(tensors[:m]), list(tensors[m:2 * m])
        s, stats, scales = _sk_branches(lib, cl, xs, norms)
        link["scales"] = scales
        ctx.save_for_backward(*xs, *stats, *scales, *[None if t is None else t.detach() for t in weights])
        ctx.lib, ctx.cl, ctx.m, ctx.link = lib, cl, m, link
        ctx.batch_stats = [_batch_stats(n) for n in norms]
        return (s, *[x.view_as(x) for x in xs])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, ds, *dys):
        m, lib, cl = ctx.m, ctx.lib, ctx.cl
        saved = ctx.saved_tensors
        xs, stats, scales, weights = saved[:m], saved[m:2 * m], saved[2 * m:3 * m], saved[3 * m:]
        b, c, h, w = xs[0].shape
        need = ctx.needs_input_grad[4:]
        a_list = ctx.link.get("a")
        ds = None if ds is None else ds.float().contiguous()
        grads_x, grads_w, grads_b = [], [], []
        for i in range(m):
            dy = dys[i]
            if dy is not None:
                dy = dy.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            a = a_list[i] if dy is not None and a_list is not None else None
            if a is None:
                dy = None
            dx = torch.empty_like(xs[i]) if need[i] else None
            dw = xs[i].new_empty(c) if weights[i] is not None and need[m + i] else None
            db = xs[i].new_empty(c) if need[2 * m + i] else None
            if dx is None and dw is None and db is None:
                grads_x.append(None), grads_w.append(None), grads_b.append(None)
                continue
            scratch = dx if dx is not None else torch.empty_like(xs[i])
            lib.sk_branch_backward(xs[i].data_ptr(), _native.ptr(dy), _native.ptr(a), _native.ptr(ds),
                                   stats[i].data_ptr(), scales[i].data_ptr(), _native.ptr(weights[i]),
                                   int(ctx.batch_stats[i]), b, c, h * w, cl, torch.get_num_threads(),
                                   scratch.data_ptr(), _native.ptr(dw), _native.ptr(db))
            grads_x.append(dx), grads_w.append(dw), grads_b.append(db)
        return (None, None, None, None, *grads_x, *grads_w, *grads_b)


class _SkSelect(torch.autograd.Function):
    """Second half of ``sk_gates``: out = sum_m a_m relu(bn_m(x_m)); backward dL/da_m = sum_p dout u_m, and
    dL/dout passed on (see ``_SkBranches``)."""

    @staticmethod
    def forward(ctx, lib, cl, link, m, *tensors):
        xs, a_t = list(tensors[:m]), tensors[m:]
        b, c = xs[0].shape[:2]
        a_list = _sk_weights(a_t, (b, c, 1, 1))
        link["a"] = a_list
        ctx.save_for_backward(*xs)
        ctx.lib, ctx.cl, ctx.m, ctx.scales = lib, cl, m, link["scales"]
        return _sk_select(lib, cl, xs, link["scales"], a_list)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        m, lib, cl = ctx.m, ctx.lib, ctx.cl
        xs = ctx.saved_tensors
        b, c, h, w = xs[0].shape
        dout = dout.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        need = ctx.needs_input_grad[4:]
        das = []
        for i in range(m):
            da = None
            if need[m + i]:
                da = xs[i].new_empty(b, c, 1, 1)
                lib.sk_select_reduce(xs[i].data_ptr(), ctx.scales[i].data_ptr(), dout.data_ptr(), b, c, h * w, cl,
                                     torch.get_num_threads(), da.data_ptr())
            das.append(da)
        return (None, None, None, None, *[dout if need[i] else None for i in range(m)], *das)


def sk_gates(xs: list[torch.Tensor], norms: list[nn.Module], acts: list[nn.Module], select_fn,
             module: nn.Module | None = None) -> torch.Tensor | None:
    """Selective Kernel's fuse and select on the native kernels, or None where they do not apply: with
    u_m = relu(norms[m](xs[m])) for the branches' conv outputs xs (B, C, H, W), s = sum_m mean_hw u_m
    (B, C, 1, 1), ``select_fn(s)`` -> the M branch weights (B, C, 1, 1) (the block's MLP, softmax and taps, run
    as autograd on s), out = sum_m a_m u_m. Applies for plain ``BatchNorm2d`` norms of C features and
    ``nn.ReLU`` acts without hooks; ``module``: the block whose parameters select_fn uses.

    Full-size traffic of a training step per branch: forward reads x_m three times (statistics, means, out)
    and writes out once for all branches; backward reads dout and x_m for dL/da_m, then twice more for the
    BatchNorm's sums and dL/dx_m, which it writes. u_m is never written or kept (the plain modules write the
    normalised map, the ReLU, two products and a sum, and keep three full-size maps per branch)."""
    if not xs or not (len(xs) == len(norms) == len(acts)):
        return None
    x0 = xs[0]
    found = _native.target(x0)
    if found is None:
        return None
    lib, cl = found
    b, c, h, w = x0.shape
    fmt = torch.channels_last if cl else torch.contiguous_format
    if not all(x.shape == x0.shape and x.dtype == torch.float32 and x.device == x0.device
               and x.is_contiguous(memory_format=fmt) for x in xs):
        return None
    if not (all(type(a) is nn.ReLU for a in acts) and all(_sk_norm_ok(n, c, b * h * w) for n in norms)
            and _unhooked(*norms, *acts)):
        return None
    if not torch.is_grad_enabled() or not (any(x.requires_grad for x in xs) or _trainable(module)
                                           or any(_trainable(n) for n in norms)):
        with torch.no_grad():
            s, _, scales = _sk_branches(lib, cl, xs, norms)
            return _sk_select(lib, cl, xs, scales, _sk_weights(select_fn(s), (b, c, 1, 1)))
    link: dict = {}
    weights = [n.weight for n in norms]
    biases = [n.bias for n in norms]
    s, *aliases = _SkBranches.apply(lib, cl, norms, link, *xs, *weights, *biases)
    a_list = list(select_fn(s))
    if len(a_list) != len(xs):
        raise RuntimeError(f"sk_gates: select_fn must return one weight per branch ({len(xs)}), got {len(a_list)}")
    return _SkSelect.apply(lib, cl, link, len(xs), *aliases, *a_list)


class _NormRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lib, cl, norm):
        b, c, h, w = x.shape
        (_, stats, scales) = _sk_branches(lib, cl, [x], [norm], pool=False)
        ones = x.new_ones(b, c)
        y = _sk_select(lib, cl, [x], scales, [ones])
        ctx.save_for_backward(x, stats[0], scales[0], None if weight is None else weight.detach(), ones)
        ctx.lib, ctx.cl = lib, cl
        ctx.batch_stats = _batch_stats(norm)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, stats, scales, weight, ones = ctx.saved_tensors
        b, c, h, w = x.shape
        need = ctx.needs_input_grad
        dy = dy.contiguous(memory_format=torch.channels_last if ctx.cl else torch.contiguous_format)
        dx = torch.empty_like(x)
        dw = x.new_empty(c) if weight is not None and need[1] else None
        db = x.new_empty(c) if need[2] else None
        ctx.lib.sk_branch_backward(x.data_ptr(), dy.data_ptr(), ones.data_ptr(), None, stats.data_ptr(),
                                   scales.data_ptr(), _native.ptr(weight), int(ctx.batch_stats), b, c, h * w, ctx.cl,
                                   torch.get_num_threads(), dx.data_ptr(), _native.ptr(dw), _native.ptr(db))
        return (dx if need[0] else None), dw, db, None, None, None


def norm_relu(x: torch.Tensor, norm: nn.Module, act: nn.Module) -> torch.Tensor | None:
    """``act(norm(x))`` for a plain ``BatchNorm2d`` of x's C channels and an ``nn.ReLU``, without hooks, on the
    native kernels (running statistics and batch counts updated as the module updates them), or None where they
    do not apply (then run the modules). Full-size traffic: forward reads x twice and writes y; backward reads x
    and dL/dy twice and writes dL/dx (the modules: BatchNorm's two passes each way, and the ReLU's pass each
    way over the normalised map, which they keep)."""
    found = _native.target(x)
    if found is None:
        return None
    lib, cl = found
    b, c, h, w = x.shape
    if not (type(act) is nn.ReLU and _sk_norm_ok(norm, c, b * h * w) and _unhooked(norm, act)):
        return None
    if not torch.is_grad_enabled() or not (x.requires_grad or _trainable(norm)):
        with torch.no_grad():
            _, _, scales = _sk_branches(lib, cl, [x], [norm], pool=False)
            return _sk_select(lib, cl, [x], scales, [x.new_ones(b, c)])
    return _NormRelu.apply(x, norm.weight, norm.bias, lib, cl, norm)


_NEAREST: dict = {}  # (size in, size out) -> F.interpolate(mode="nearest")'s source index of every output index


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """The source row of each of n_out rows when F.interpolate upsamples n_in rows by nearest neighbours, read off
    F.interpolate itself (so its rounding rule is the one used)."""
    key = (n_in, n_out)
    if key not in _NEAREST:
        src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
        _NEAREST[key] = F.interpolate(src, size=(n_out, 1), mode="nearest").view(n_out).to(torch.int32).contiguous()
    return _NEAREST[key]


def _nearest_args(x, s, cl):
    b, c, h, w = x.shape
    hs, ws = s.shape[2:]
    sl = (s.detach().permute(0, 2, 3, 1) if cl else s.detach()).to(torch.float32).contiguous()  # laid out as x
    return sl, _nearest_index(hs, h), _nearest_index(ws, w), (b, c, h, w, hs, ws, cl, torch.get_num_threads())


class _NearestGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, lib, cl):
        sl, ih, iw, dims = _nearest_args(x, s, cl)
        y = torch.empty_like(x)
        lib.nearest_gate_forward(x.data_ptr(), sl.data_ptr(), ih.data_ptr(), iw.data_ptr(), *dims, y.data_ptr())
        ctx.save_for_backward(x, sl, ih, iw)
        ctx.lib, ctx.dims = lib, dims
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, sl, ih, iw = ctx.saved_tensors
        b, c, h, w, hs, ws, cl, _ = ctx.dims
        dy = dy.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        ds = torch.empty_like(sl) if ctx.needs_input_grad[1] else None
        ctx.lib.nearest_gate_backward(x.data_ptr(), sl.data_ptr(), dy.data_ptr(), ih.data_ptr(), iw.data_ptr(),
                                      *ctx.dims, _native.ptr(dx), _native.ptr(ds))
        if ds is not None and cl:
            ds = ds.permute(0, 3, 1, 2)  # (B, C, Hs, Ws) again
        return dx, ds, None, None


def nearest_gate(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor | None:
    """``x * F.interpolate(s, size=x.shape[2:], mode="nearest")`` on the native kernels, or None where they do not
    apply: s (B, C, Hs, Ws) with Hs <= H, Ws <= W. One pass each way over x (forward reads x and writes y;
    backward reads dL/dy and x, writes dL/dx and sums dL/ds over each cell's positions); the upsampled factor
    (B, C, H, W) is never written (the plain expression writes it, multiplies, and in backward reduces it)."""
    found = _native.target(x)
    if found is None:
        return None
    lib, cl = found
    b, c, h, w = x.shape
    if not (s.dim() == 4 and s.shape[:2] == (b, c) and s.shape[2] <= h and s.shape[3] <= w
            and s.dtype == torch.float32 and s.device == x.device):
        return None
    if not torch.is_grad_enabled() or not (x.requires_grad or s.requires_grad):
        with torch.no_grad():
            sl, ih, iw, dims = _nearest_args(x, s, cl)
            y = torch.empty_like(x)
            lib.nearest_gate_forward(x.data_ptr(), sl.data_ptr(), ih.data_ptr(), iw.data_ptr(), *dims, y.data_ptr())
            return y
    return _NearestGate.apply(x, s, lib, cl)
