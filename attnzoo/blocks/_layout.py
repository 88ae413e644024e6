"""Layouts for CPU speed: ``LayoutConv2d`` (an ``nn.Conv2d`` that calls small convolutions the fastest way on
CPU) and ``like_input`` (a broadcast factor in its input's memory layout).

Not a block module (the leading underscore keeps ``attnzoo.blocks`` discovery from importing it).
It is an ``nn.Conv2d`` (same parameters, state_dict keys, hooks and ``isinstance``); only how
the convolution is called on CPU differs, never what it computes.

Many gates convolve maps built inside the block -- CBAM's [mean_c; max_c] pair, BAM's C/r-wide
dilated branch, EMA's per-group maps -- with a few channels, and several blocks use depthwise
convolutions (LKA, LSKA, SK's branches at C <= 32, strip and ELA). oneDNN spends most of such a call
on set-up and layout while the arithmetic is small. On CPU, in this order:

* **A 1x1 conv of a pooled (B, C, 1, 1) vector** (SE's and CBAM's MLPs, SK's and ResNeSt's
  attention FCs, ...) runs as ``F.linear`` of the (B, C) vector with the weight viewed as
  (C_out, C_in); **of a strip** (B, C, L, 1) or (B, C, 1, L) (coordinate attention's convs) as one
  batched ``torch.matmul`` over the channels.
* **<= 4 channels in and out** (one group, stride 1), where the native kernels apply
  (``_native.applies``: eager float32, batch >= threads, built): ``_SmallConv``, a direct convolution
  over a zero-padded copy of each sample, one long vectorised loop per tap.
* **Depthwise** (groups = C_in = C_out, any stride: ge_theta's stride-2 gathers too) on a channels_last
  input, where the native kernels apply: ``_DepthwiseConv``, each output vector of 16 channels accumulated
  over the taps in registers (with a stride, the input gradient gathers over a zero-spread dL/dy),
  four positions of a row at a time (one load of each tap's weights for four products; in a one-off
  measurement that took LKA's 7x7 dilated forward at 128x16x28x28 from 6.6 to 2.2 ms, its weight
  gradient, four taps at a time, from 4.2 to 2.4 ms).
* **Grouped with 2 channels per group** (C_in = C_out, stride 1; SK's branches at C = 64 with its 32
  groups) on a channels_last input, where the native kernels apply: ``_GroupedConv``, the depthwise
  gather over two channel-spread copies of each padded sample. In a one-off measurement (Intel Xeon, 2
  threads, forward + backward) it took 0.70-0.77 of oneDNN's time at 128x64x7x7 and 16x64x14x14, 1.02 at
  32x64x56x56, but 1.6-1.7x at 4 channels per group and 4.1-4.5x at 8, which stay with oneDNN.
* Otherwise, without the kernels: a 1 -> 1 conv runs depthwise over the batch folded into the
  channels (``weight.expand``, so its gradient is the sum over the batch), and a small NCHW input
  (2 <= C_in <= 4, C_out <= 4) is converted to channels_last first (a copy of a tiny map).

``benchmarks/layouts.py`` (-> ``benchmarks/results/layouts_cpu.json``; torch 2.14, 2 threads, forward +
backward, with the kernels built) times them with the shapes the blocks produce in a ResNet-20 on
Fashion-MNIST (batch 128, 28x28) and at 56x56; LayoutConv2d / nn.Conv2d: a 7x7 conv 2 -> 1 over
(128, 2, 28, 28) 0.15, over (32, 2, 56, 56) 0.14; BAM's dilated 3x3 1 -> 1 over (128, 1, 28, 28) 0.14;
EMA's 3x3 1 -> 1 over (2048, 1, 28, 28) 0.07 and 2 -> 2 over (1024, 2, 28, 28) 0.18; the pooled-vector
1x1 convs 64 -> 4 0.92 and 4 -> 64 0.37 at batch 128. ``benchmarks/native.py`` times the depthwise
kernel inside its blocks (lka 0.16-0.65, lska 0.24-0.53 of the oneDNN path's time).

All are the same function (the same products, summed in a possibly different order; the kernels'
weight gradients are summed in double). On other devices, with padding modes other than zeros, and for
unbatched input the module is a plain ``nn.Conv2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _native

__all__ = ["LayoutConv2d", "combine_like", "keep_layout", "like_input"]

_SMALL = 4  # channel counts up to this are "small": the input converts to channels_last for almost nothing
# the largest map a reducing 1x1 conv runs as a matmul: at 32x64x56x56 (6.4M elements) oneDNN's was faster
_LINEAR_MAX = 2**21
_GROUPED_MAX = 2  # channels per group up to which the native grouped kernel runs: it lost to oneDNN at 4 (1.6-1.7x)


class LayoutConv2d(nn.Conv2d):
    """``nn.Conv2d``; on CPU: 1x1 convs of (B, C, 1, 1) maps run as ``F.linear``, 1 -> 1 convs depthwise over
    the batch, and small NCHW inputs convert to channels_last first."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if input.device.type != "cpu" or input.dim() != 4 or self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        n, c, h, w = input.shape
        if h == w == 1 and self.kernel_size == (1, 1) and self.groups == 1 and self.stride == (1, 1) and self.padding in ((0, 0), "valid"):
            return F.linear(input.reshape(n, c), weight.view(self.out_channels, c), bias).view(n, self.out_channels, 1, 1)
        if (self.kernel_size == (1, 1) and self.groups == 1 and self.stride == (1, 1) and (h == 1 or w == 1)
                and self.padding in ((0, 0), "valid")):
            # a 1x1 conv of a strip (B, C, L, 1) / (B, C, 1, L) -- coordinate attention's and ELA's pooled
            # strips -- as one batched matmul over the channels: oneDNN's convolution call costs more
            y = torch.matmul(weight.view(self.out_channels, c), input.reshape(n, c, h * w))  # a strip: a copy at most
            if bias is not None:
                y = y + bias.view(1, -1, 1)
            return y.view(n, self.out_channels, h, w)
        if self._reducing_pointwise(input):
            # a reducing 1x1 conv of a channels_last map (BAM's C -> C/r) as F.linear over its (B H W, C) view
            y = F.linear(input.permute(0, 2, 3, 1).reshape(-1, c), weight.view(self.out_channels, c), bias)
            return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)  # channels_last, as oneDNN's
        if self._native_ok(input):
            return _SmallConv.apply(input, weight, bias, self.padding, self.dilation)
        if self._native_depthwise_ok(input):
            return _DepthwiseConv.apply(input, weight, bias, self.padding, self.dilation, self.stride)
        if self._native_grouped_ok(input):
            return _GroupedConv.apply(input, weight, bias, self.padding, self.dilation, (1, 1))
        if self.in_channels == self.out_channels == 1 and self.groups == 1 and n > 1:
            y = F.conv2d(input.reshape(1, n, h, w), weight.expand(n, 1, *weight.shape[2:]),
                         None if bias is None else bias.expand(n), self.stride, self.padding, self.dilation, n)
            return y.reshape(n, 1, *y.shape[2:])
        if 1 < c <= _SMALL and self.out_channels <= _SMALL and not input.is_contiguous(memory_format=torch.channels_last):
            input = input.contiguous(memory_format=torch.channels_last)
        return super()._conv_forward(input, weight, bias)

    def _reducing_pointwise(self, input: torch.Tensor) -> bool:
        """A 1x1 conv (one group, stride 1, no padding) of a channels_last map of at most ``_LINEAR_MAX``
        elements to at most a quarter of its channels, where one matmul beats oneDNN's convolution call."""
        return (self.kernel_size == (1, 1) and self.groups == 1 and self.stride == (1, 1)
                and self.padding in ((0, 0), "valid") and 4 * self.out_channels <= self.in_channels
                and input.numel() <= _LINEAR_MAX and not input.is_contiguous()
                and input.is_contiguous(memory_format=torch.channels_last))

    def _native_ok(self, input: torch.Tensor) -> bool:
        """The native small-conv kernel applies: ``_small_ok`` and ``_native.applies`` (float32 CPU, eager,
        batch >= threads; see ``_SmallConv``)."""
        return self._small_ok(input) and _native.applies(input)

    def _small_ok(self, input: torch.Tensor) -> bool:
        """The conv is one the small-conv kernel computes: <= 4 channels in and out, one group, stride 1,
        numeric padding, float32 weights, a map of more than one position."""
        return (self.in_channels <= _SMALL and self.out_channels <= _SMALL and self.groups == 1
                and self.stride == (1, 1) and not isinstance(self.padding, str) and self.weight.dtype == torch.float32
                and input.shape[2] * input.shape[3] > 1)


    def _native_depthwise_ok(self, input: torch.Tensor) -> bool:
        """The native depthwise kernel applies: groups == channels in == out, any stride, numeric padding,
        input in channels_last, and ``_native.applies`` (see ``_DepthwiseConv``)."""
        return (self.groups == self.in_channels == self.out_channels > 1
                and not isinstance(self.padding, str) and self.weight.dtype == torch.float32
                and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)
                and _native.applies(input))


    def _native_grouped_ok(self, input: torch.Tensor) -> bool:
        """The native grouped kernel applies: channels in == out, 2 to ``_GROUPED_MAX`` channels per group, stride
        1, numeric padding, input in channels_last, and ``_native.applies`` (see ``_GroupedConv``)."""
        return (self.groups > 1 and self.in_channels == self.out_channels
                and 2 <= self.in_channels // self.groups <= _GROUPED_MAX and self.stride == (1, 1)
                and not isinstance(self.padding, str) and self.weight.dtype == torch.float32
                and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)
                and _native.applies(input))


class _GatherConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C / cg)`` of a channels_last x with C in == C out and
    cg = weight.shape[1] channels per group, on the native gather kernels (``_native.c``: one output vector of 16
    channels accumulated over the taps in registers; cg == 1 the depthwise ``dw_*``, else the grouped ``gw_*`` over
    cg channel-spread copies of each padded sample; a stride, depthwise only). Output channels_last; the weight
    gradient summed in double."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation, stride):
        b, c, h, w = x.shape
        cg, (kh, kw) = weight.shape[1], weight.shape[2:]
        wt = weight.detach().contiguous()
        grouped = (cg,) if cg > 1 else ()
        strides = () if grouped else tuple(stride)  # the grouped kernels have stride 1 only
        dims = (b, c, h, w, *grouped, kh, kw, padding[0], padding[1], dilation[0], dilation[1], *strides,
                torch.get_num_threads())
        span_h, span_w = h + 2 * padding[0] - dilation[0] * (kh - 1), w + 2 * padding[1] - dilation[1] * (kw - 1)
        ho, wo = (span_h - 1) // stride[0] + 1, (span_w - 1) // stride[1] + 1
        if span_h < 1 or span_w < 1:
            raise RuntimeError(f"conv2d: the {kh}x{kw} kernel (dilation {dilation}) is larger than the padded "
                               f"{h}x{w} input")
        y = x.new_empty(b, ho, wo, c).permute(0, 3, 1, 2)  # (B, C, Ho, Wo) in channels_last
        b32 = None if bias is None else bias.detach().contiguous()  # named: a temporary could be freed first
        prefix = "gw" if grouped else "dw"
        getattr(_native.kernels(), f"{prefix}_forward_cl")(x.data_ptr(), wt.data_ptr(), _native.ptr(b32), *dims,
                                                            y.data_ptr())
        ctx.save_for_backward(x, wt)
        ctx.dims, ctx.has_bias, ctx.prefix = dims, bias is not None, prefix
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, wt = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        lib = _native.kernels()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)
            getattr(lib, f"{ctx.prefix}_grad_input_cl")(dy.data_ptr(), wt.data_ptr(), *ctx.dims, dx.data_ptr())
        if ctx.needs_input_grad[1]:
            dw = torch.empty_like(wt)
            getattr(lib, f"{ctx.prefix}_grad_weight_cl")(x.data_ptr(), dy.data_ptr(), *ctx.dims, dw.data_ptr())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 2, 3))
        return dx, dw, db, None, None, None


class _DepthwiseConv(_GatherConv):
    """Depthwise (groups = C): oneDNN's backward of these convolutions was the most expensive op of lka, lska and
    sk on CPU. Its own name, so that a graph says which kernel ran."""


class _GroupedConv(_GatherConv):
    """2 to ``_GROUPED_MAX`` channels per group (sk's branches at C = 64)."""


def _conv_dims(x, weight, padding, dilation):
    b, ci, h, w = x.shape
    co, _, kh, kw = weight.shape
    return (b, ci, co, h, w, kh, kw, padding[0], padding[1], dilation[0], dilation[1], torch.get_num_threads())


class _SmallConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, 1, padding, dilation)`` for a few channels, on the native kernels
    (``_native.c``: direct loops over a zero-padded copy of each sample, one pass per output row).

    For the maps the gates convolve -- CBAM's [mean; max] pair into one channel, 7x7 -- oneDNN spends
    most of the call on set-up and layout while the arithmetic is a few MFLOP: the 7x7 conv 2 -> 1 over
    (128, 2, 28, 28) took 1.1 ms forward and 1.7 ms backward. Output NCHW; the input is made NCHW
    (a map of <= 4 channels: one small copy). The weight gradient is summed in double."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        x, w, y = small_conv_forward(x, weight, bias, padding, dilation)
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        return (*small_conv_backward(x, w, dy, ctx.padding, ctx.dilation, ctx.needs_input_grad[:2],
                                     ctx.has_bias and ctx.needs_input_grad[2]), None, None)


def small_conv_forward(x, weight, bias, padding, dilation):
    """The native small convolution's forward: (x made NCHW-contiguous, the weight as the kernels read it,
    y in NCHW); the arguments are those of ``F.conv2d`` with stride 1 and one group."""
    x = x.contiguous()
    w = weight.detach().contiguous()
    dims = _conv_dims(x, w, padding, dilation)
    b, _, co, h, wd, kh, kw, ph, pw, dh, dw, _ = dims
    ho, wo = h + 2 * ph - dh * (kh - 1), wd + 2 * pw - dw * (kw - 1)
    if ho < 1 or wo < 1:
        raise RuntimeError(f"conv2d: the {kh}x{kw} kernel (dilation {dilation}) is larger than the padded "
                           f"{h}x{wd} input")
    y = x.new_empty(b, co, ho, wo)
    b32 = None if bias is None else bias.detach().contiguous()  # named: a temporary could be freed first
    _native.kernels().conv_small_forward(x.data_ptr(), w.data_ptr(), _native.ptr(b32), *dims, y.data_ptr())
    return x, w, y


def small_conv_backward(x, w, dy, padding, dilation, needs: tuple[bool, bool], needs_bias: bool):
    """(dL/dx, dL/dweight, dL/dbias) of ``small_conv_forward`` (None where not needed)."""
    dy = dy.contiguous()
    dims = _conv_dims(x, w, padding, dilation)
    lib = _native.kernels()
    dx = dw = db = None
    if needs[0]:
        dx = torch.empty_like(x)
        lib.conv_small_grad_input(dy.data_ptr(), w.data_ptr(), *dims, dx.data_ptr())
    if needs[1]:
        dw = torch.empty_like(w)
        lib.conv_small_grad_weight(x.data_ptr(), dy.data_ptr(), *dims, dw.data_ptr())
    if needs_bias:
        db = dy.sum((0, 2, 3))
    return dx, dw, db


def like_input(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` (a small factor broadcast against ``x``) in ``x``'s memory layout: channels_last if ``x`` is.

    A factor such as CoordAttention's (B, C, H, 1) comes out of its 1x1 conv in the contiguous
    layout; multiplied with a channels_last ``x`` it is then read with stride H along the output's
    innermost (channel) axis, a slow strided loop on CPU. Converting ``t`` copies only the factor."""
    if (t.dim() == 4 and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)):
        return t.contiguous(memory_format=torch.channels_last)
    return t


class _KeepLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        ctx.channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        if ctx.channels_last and not grad.is_contiguous(memory_format=torch.channels_last):
            grad = grad.contiguous(memory_format=torch.channels_last)
        return grad


def keep_layout(t: torch.Tensor) -> torch.Tensor:
    """``t``, with its gradient brought back to ``t``'s channels_last layout in backward.

    Indexing and stacking build gradients from zeros in the contiguous layout; reaching a
    conv-BN-ReLU of a channels_last map that way, every backward op there mixes layouts and takes a
    slow strided path on CPU (ResNeSt's split attention, where the ReLU's backward was the most
    expensive op of the block's training step). One copy of the gradient here is far cheaper.
    Identity in forward."""
    if t.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _KeepLayout.apply(t)
    return t


def combine_like(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, op=torch.add) -> torch.Tensor:
    """``op(a, b)`` of two broadcast factors (e.g. (B, C, 1, 1) and (B, 1, H, W)) laid out like ``x``.

    Neither factor says which layout the full-size result should take, so torch gives it the
    contiguous one, and every later op with a channels_last ``x`` (the product, the gate, their
    backward) mixes layouts. Broadcasting in (B, H, W, C) order gives the result x's layout for free."""
    if (x.dim() == 4 and a.dim() == 4 and b.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()):
        return op(a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return op(a, b)
