"""Shared fast paths for the blocks: fewer passes over the feature map, fewer saved tensors.

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it as
one). Every function here computes exactly the function of the plain PyTorch expression named in its
docstring; the custom autograd path is used only in eager mode with gradients on (``use_fused``),
so ``torch.compile`` (which fuses the plain expression itself) and ONNX export (``torch.export``
traces under the compiler) always see plain aten ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _native
from ._pool import pool_mean

__all__ = ["use_fused", "is_sigmoid", "shuffle_attention", "simam_fused", "conv1x1_cat", "conv1x1_fused", "affine_sigmoid_gate",
           "max_of_gates"]


def is_sigmoid(gate: nn.Module) -> bool:
    """The gate is the logistic sigmoid (torch's or timm's), the one the fused paths hard-code."""
    return type(gate).__name__ == "Sigmoid" and type(gate).__module__ in ("torch.nn.modules.activation", "timm.layers.activations")


def use_fused(x: torch.Tensor) -> bool:
    """True in eager autograd (training) on float32/float64; False while compiling/exporting, without
    gradients, or in float16/bfloat16 (the plain paths keep their statistics in float32 there)."""
    return (torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and x.dtype in (torch.float32, torch.float64))


def conv1x1_cat(x: torch.Tensor, convs: list[nn.Conv2d]) -> torch.Tensor:
    """``torch.cat([conv(x) for conv in convs], 1)`` for 1x1 convs, as one convolution (see conv1x1_fused)."""
    weight = torch.cat([c.weight for c in convs])  # (sum C_out, C_in, 1, 1)
    if any(c.bias is not None for c in convs):
        bias = torch.cat([c.bias if c.bias is not None else c.weight.new_zeros(c.out_channels) for c in convs])
    else:
        bias = None
    return F.conv2d(x, weight, bias)


def conv1x1_fused(x: torch.Tensor, convs: list[nn.Conv2d]) -> list[torch.Tensor]:
    """``[conv(x) for conv in convs]`` for 1x1 convs on the same input, as one convolution.

    One GEMM reads x once instead of ``len(convs)`` times, and backward computes one input gradient
    instead of summing several. A conv without bias contributes zeros to the concatenated bias
    (which receives no gradient there, so the result is the same function with the same gradients).
    """
    return list(conv1x1_cat(x, convs).split([c.out_channels for c in convs], dim=1))


def _gate_forward(x, s, t, shuffle):
    """x * sigmoid(x * s + t), channel-shuffled by 2 into a fresh tensor if ``shuffle``."""
    a = (x * s).add_(t).sigmoid_()  # (B, C, H, W); in place: faster than addcmul's broadcast on CPU
    if not shuffle:
        return a.mul_(x)
    b, c, h, w = x.shape
    out = torch.empty_like(x)  # same memory format as x
    # out[:, 2j + i] = y[:, i * C/2 + j]: view out as (B, 2, C/2, H, W) in y's channel order
    torch.mul(x.view(b, 2, c // 2, h, w), a.view(b, 2, c // 2, h, w), out=out.view(b, c // 2, 2, h, w).transpose(1, 2))
    return out


def _gate_backward(x, s, t, grad_out, shuffle):
    """dL/dx (direct terms), dL/ds and dL/dt (B, C, 1, 1) of ``_gate_forward``."""
    b, c, h, w = x.shape
    if shuffle:  # bring the gradient back into y's channel order
        grad_y = grad_out.view(b, c // 2, 2, h, w).transpose(1, 2).reshape(b, c, h, w)
    else:
        grad_y = grad_out
    a = (x * s).add_(t).sigmoid_()  # recomputed
    grad_x = grad_y * a  # the direct term, dL/dy * a
    gz = torch.addcmul(grad_x, grad_x, a, value=-1).mul_(x)  # dL/dz = dL/dy * a * (1 - a) * x
    grad_s = (gz * x).sum((2, 3), keepdim=True)
    grad_t = gz.sum((2, 3), keepdim=True)
    grad_x.add_(gz.mul_(s))  # + dL/dz * s (gz is not needed any more)
    return grad_x, grad_s, grad_t


def channel_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) mean and 1 / sqrt(biased var + eps) over H x W, each (B, C).

    GroupNorm's kernel with one group per channel does it in one numerically stable pass
    (torch.var_mean is several times slower on CPU), but it is slow in channels_last on small maps.
    There the two-pass form (the mean; then the mean of (x - mean)^2) is used: in
    ``benchmarks/layouts.py`` (channels_last, forward) it took 0.23 of GroupNorm's time at
    128x16x28x28 and 0.33 at 16x256x14x14. From 2048 positions up GroupNorm's kernel is kept (at
    32x64x56x56 the two forms are within noise of each other)."""
    b, c, h, w = x.shape
    if h * w < 2048 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        mu = pool_mean(x, (2, 3))  # (B, C, 1, 1)
        var = (x - mu).square_().sum((2, 3)) / (h * w)
        return mu.view(b, c), (var + eps).rsqrt_()
    _, mu, rstd = torch.native_group_norm(x, None, None, b, c, h * w, c, eps)
    return mu, rstd


class _ShuffleAttn(torch.autograd.Function):
    """SA-Net's whole block: statistics, both gates, product and shuffle, with a closed-form backward.

    x: (B, C, H, W); cw, cb, sw, sb: (C/2G,) per-channel W1, b1, W2, b2; G groups. Per group the
    first C/2G channels get sigmoid(W1 * mean + b1), the last C/2G sigmoid(W2 * GN(x) + b2); both are
    x * sigmoid(x * s + t) with per-(sample, channel) s, t, so one var_mean pass gives every
    statistic and the gradients of the statistics fold into two per-channel coefficients of dL/dx
    (no autograd graph through the reductions). Saves x and (B, C) vectors only.
    """

    @staticmethod
    def forward(ctx, x, cw, cb, sw, sb, groups, eps):
        b, c, h, w = x.shape
        half = c // (2 * groups)
        lib, cl = _native.target(x) or (None, None)
        if lib is not None:  # the native kernels (_native.c): statistics, gate, product and shuffle in C
            mu, var = x.new_empty(b, c), x.new_empty(b, c)
            lib.channel_moments(x.data_ptr(), b, c, h * w, cl, torch.get_num_threads(), mu.data_ptr(), var.data_ptr())
            rstd = (var + eps).rsqrt_()
        else:
            mu, rstd = channel_stats(x, eps)  # (B, C) each
        mu = mu.view(b, c, 1, 1)
        mu4 = mu.view(b, groups, 2, half)
        rstd = rstd.view(b, groups, 2, half)[:, :, 1]  # (B, G, C/2G), spatial halves
        s_sp = sw * rstd
        s = torch.stack([torch.zeros_like(s_sp), s_sp], 2).view(b, c, 1, 1)
        t = torch.stack([cw * mu4[:, :, 0] + cb, sb - s_sp * mu4[:, :, 1]], 2).view(b, c, 1, 1)
        ctx.save_for_backward(x, mu, rstd, s, t, cw, sw)
        ctx.groups, ctx.lib, ctx.cl = groups, lib, cl
        if lib is None:
            return _gate_forward(x, s, t, True)
        y = torch.empty_like(x)
        lib.affine_gate_forward(x.data_ptr(), s.data_ptr(), t.data_ptr(), 1, b, c, h * w, cl, torch.get_num_threads(),
                                y.data_ptr())
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, mu, rstd, s, t, cw, sw = ctx.saved_tensors
        b, c, h, w = x.shape
        g, half, n = ctx.groups, c // (2 * ctx.groups), h * w
        lib, cl = ctx.lib, ctx.cl
        if lib is None:
            grad_x, grad_s, grad_t = _gate_backward(x, s, t, grad_out, True)
        else:
            grad_out = grad_out.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            grad_s, grad_t = x.new_empty(b, c, 1, 1), x.new_empty(b, c, 1, 1)
            lib.affine_gate_reduce(x.data_ptr(), grad_out.data_ptr(), s.data_ptr(), t.data_ptr(), 1, b, c, n, cl,
                                   torch.get_num_threads(), grad_s.data_ptr(), grad_t.data_ptr())
        gs, gt, mu4 = grad_s.view(b, g, 2, half), grad_t.view(b, g, 2, half), mu.view(b, g, 2, half)
        # channel half: t = cw * mu + cb (s = 0)
        grad_cw = (gt[:, :, 0] * mu4[:, :, 0]).sum((0, 1))
        grad_cb = gt[:, :, 0].sum((0, 1))
        gmu_ch = gt[:, :, 0] * cw
        # spatial half: s = sw * rstd, t = sb - s * mu
        s_sp = s.view(b, g, 2, half)[:, :, 1]
        gs_total = gs[:, :, 1] - gt[:, :, 1] * mu4[:, :, 1]
        grad_sw = (gs_total * rstd).sum((0, 1))
        grad_sb = gt[:, :, 1].sum((0, 1))
        gmu_sp = -gt[:, :, 1] * s_sp
        gvar_sp = gs_total * sw * (-0.5) * rstd.pow(3)
        gmu = torch.stack([gmu_ch, gmu_sp], 2).view(b, c, 1, 1)
        gvar = torch.stack([torch.zeros_like(gvar_sp), gvar_sp], 2).view(b, c, 1, 1)
        # d mean / dx = 1/N; d var / dx = 2 (x - mu) / N: dL/dx += x * beta + alpha
        beta = gvar * (2.0 / n)
        alpha = gmu / n - beta * mu
        if lib is None:
            grad_x.add_((x * beta).add_(alpha))
        else:  # the direct terms and x * beta + alpha in one pass
            grad_x = torch.empty_like(x)
            beta, alpha = beta.contiguous(), alpha.contiguous()
            lib.affine_gate_grad_input(x.data_ptr(), grad_out.data_ptr(), s.data_ptr(), t.data_ptr(), beta.data_ptr(),
                                       alpha.data_ptr(), 1, b, c, n, cl, torch.get_num_threads(), grad_x.data_ptr())
        return grad_x, grad_cw, grad_cb, grad_sw, grad_sb, None, None


def shuffle_attention(x, cw, cb, sw, sb, groups: int, eps: float) -> torch.Tensor:
    """SA-Net's block with the sigmoid gate as one custom autograd op (eager training only; the
    caller uses its plain expression otherwise). cw, cb, sw, sb are (1, C/2G, 1, 1) parameters."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    return _ShuffleAttn.apply(x, cw.view(-1), cb.view(-1), sw.view(-1), sb.view(-1), groups, eps)


def affine_sigmoid_gate(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, shuffle: bool = False) -> torch.Tensor:
    """``y = x * sigmoid(x * s + t)``, then ShuffleNet's channel shuffle by 2 if ``shuffle``: the plain
    expression of ``_ShuffleAttn``'s product (what compile and export see)."""
    y = x * torch.sigmoid(torch.addcmul(t, x, s))
    if shuffle:
        b, c, h, w = x.shape
        y = y.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
    return y

class _SimAM(torch.autograd.Function):
    """SimAM's whole block, y = x * sigmoid((x - mu)^2 / (4 (sigma^2 + lambda)) + 0.5), with
    sigma^2 = sum (x - mu)^2 / n, mu and sigma^2 per (sample, channel) over H x W.

    Saves x, mu and k = 1 / (4 (sigma^2 + lambda)) only (the plain expression keeps (x - mu)^2,
    the energy and its sigmoid: three full-size tensors); the gradients of mu and sigma^2 fold into
    dL/dx in closed form, so no autograd graph runs through the reductions.
    """

    @staticmethod
    def forward(ctx, x, e_lambda, n):
        mu = pool_mean(x, (2, 3))  # (B, C, 1, 1)
        c = x - mu  # (B, C, H, W)
        a = c.square_()  # (x - mu)^2, in c's buffer
        k = 1.0 / (4 * (a.sum((2, 3), keepdim=True) / n + e_lambda))  # (B, C, 1, 1)
        ctx.save_for_backward(x, mu, k)
        ctx.n = n
        return a.mul_(k).add_(0.5).sigmoid_().mul_(x)

    @staticmethod
    def backward(ctx, grad_y):
        x, mu, k = ctx.saved_tensors
        n, npos = ctx.n, x.shape[2] * x.shape[3]
        c = x - mu  # (B, C, H, W)
        csq = c.square()
        a = (csq * k).add_(0.5).sigmoid_()  # recomputed sigmoid
        grad_x = grad_y * a  # direct term
        gz = torch.addcmul(grad_x, grad_x, a, value=-1).mul_(x)  # dL/dz = dL/dy * a * (1 - a) * x
        grad_var = (gz * csq).sum((2, 3), keepdim=True) * (-4 * k.square())  # via k = 1 / (4 (var + lambda))
        gc = gz.mul_(c).mul_(2 * k)  # dL/dz * dz/dc, dz/dc = 2 c k
        grad_mu = -gc.sum((2, 3), keepdim=True)
        grad_x.add_(gc)
        # var = sum c^2 / n: d/dx = 2 c / n (its mu-dependence sums to 0); mu = mean: d/dx = 1 / N
        grad_x.add_(c.mul_(grad_var * (2.0 / n)).add_(grad_mu / npos))
        return grad_x, None, None


def simam_fused(x: torch.Tensor, e_lambda: float, n: int) -> torch.Tensor:
    """SimAM with the sigmoid gate as one custom autograd op (eager training; see ``_SimAM``)."""
    return _SimAM.apply(x, e_lambda, n)


class _MaxOfGates(torch.autograd.Function):
    """``torch.maximum(x * gc, x * gs)`` with gc (B, C, 1, 1), gs (B, 1, H, W): scSE's max-out.

    Autograd's backward of ``maximum`` compares the two products twice and masks with
    ``masked_fill`` (slow on CPU), and each product's own backward adds a full-size pass. Here the
    selector m = (sign(x*gc - x*gs) + 1) / 2 (1 where cSE wins, 0 where sSE wins, 1/2 at a tie, as
    ``maximum`` splits a tie) is built from the same rounded products, and
    dL/dx = dL/dy * (gs + m (gc - gs)), dL/dgc = sum_HW dL/dy x m, dL/dgs = sum_C dL/dy x (1 - m).
    Saves x and the two factors only.
    """

    @staticmethod
    def forward(ctx, x, gc, gs):
        ctx.save_for_backward(x, gc, gs)
        a = x * gc
        return torch.maximum(a, x * gs, out=a)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, gc, gs = ctx.saved_tensors
        b = x * gs
        m = (x * gc).sub_(b).sign_().add_(1).mul_(0.5)  # (B, C, H, W) selector
        p = torch.mul(grad_y, x, out=b)  # dL/dy * x, in b's buffer
        pm = p * m
        grad_gc = pm.sum((2, 3), keepdim=True)
        grad_gs = p.sum(1, keepdim=True).sub_(pm.sum(1, keepdim=True))
        grad_x = torch.addcmul(gs, m, gc - gs, out=m).mul_(grad_y)  # dL/dy * (gs + m (gc - gs)), in m's buffer
        return grad_x, grad_gc, grad_gs


def max_of_gates(x: torch.Tensor, gc: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """``torch.maximum(x * gc, x * gs)`` as one custom autograd op (eager training; see ``_MaxOfGates``)."""
    return _MaxOfGates.apply(x, gc, gs)
