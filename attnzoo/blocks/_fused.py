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

__all__ = ["use_fused", "is_sigmoid", "centred_energy_gate", "conv1x1_cat", "conv1x1_fused", "affine_sigmoid_gate"]


def is_sigmoid(gate: nn.Module) -> bool:
    """The gate is the logistic sigmoid (torch's or timm's), the one the fused paths hard-code."""
    return type(gate).__name__ == "Sigmoid" and type(gate).__module__ in ("torch.nn.modules.activation", "timm.layers.activations")


def use_fused(x: torch.Tensor) -> bool:
    """True in eager autograd (training); False while compiling/exporting or without gradients."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


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


class _AffineSigmoidGate(torch.autograd.Function):
    """y = x * sigmoid(x * s + t) (s, t per sample and channel), written channel-shuffled by 2 if asked.

    Saves only x, s and t (the plain expression saves x, x * s + t's sigmoid and the product's
    inputs: three full-size tensors); the sigmoid is recomputed in backward. The channel shuffle
    is folded into the multiply's output strides, so it costs no extra copy.
    """

    @staticmethod
    def forward(ctx, x, s, t, shuffle):
        ctx.save_for_backward(x, s, t)
        ctx.shuffle = shuffle
        a = torch.addcmul(t, x, s).sigmoid_()  # (B, C, H, W)
        if not shuffle:
            return a.mul_(x)
        b, c, h, w = x.shape
        out = torch.empty_like(x)  # same memory format as x
        # out[:, 2j + i] = y[:, i * C/2 + j]: view out as (B, 2, C/2, H, W) in y's channel order
        torch.mul(x.view(b, 2, c // 2, h, w), a.view(b, 2, c // 2, h, w),
                  out=out.view(b, c // 2, 2, h, w).transpose(1, 2))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, s, t = ctx.saved_tensors
        b, c, h, w = x.shape
        if ctx.shuffle:  # bring the gradient back into y's channel order (a view, no copy)
            grad_y = grad_out.view(b, c // 2, 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        else:
            grad_y = grad_out
        a = torch.addcmul(t, x, s).sigmoid_()  # recomputed
        grad_x = grad_y * a  # the direct term, dL/dy * a
        gz = a.neg_().add_(1).mul_(x).mul_(grad_x)  # dL/dz = dL/dy * x * a * (1 - a), in a's buffer
        grad_s = (gz * x).sum((2, 3), keepdim=True) if ctx.needs_input_grad[1] else None
        grad_t = gz.sum((2, 3), keepdim=True) if ctx.needs_input_grad[2] else None
        grad_x.addcmul_(gz, s)  # + dL/dz * s
        return grad_x, grad_s, grad_t, None


def affine_sigmoid_gate(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, shuffle: bool = False) -> torch.Tensor:
    """``y = x * sigmoid(x * s + t)``, then ShuffleNet's channel shuffle by 2 if ``shuffle``.

    ``s`` and ``t`` broadcast as (B, C, 1, 1). Custom autograd in eager training (see module doc).
    """
    if use_fused(x) and s.shape[2:] == (1, 1) and t.shape[2:] == (1, 1):
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        return _AffineSigmoidGate.apply(x, s.expand(x.shape[0], x.shape[1], 1, 1), t.expand(x.shape[0], x.shape[1], 1, 1), shuffle)
    y = x * torch.sigmoid(torch.addcmul(t, x, s))
    if shuffle:
        b, c, h, w = x.shape
        y = y.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
    return y


class _CentredEnergyGate(torch.autograd.Function):
    """y = x * sigmoid((x - mu)^2 * k + 0.5) with mu, k per (sample, channel): SimAM's product.

    Saves x, mu and k only (the plain expression keeps (x - mu)^2, the energy and its sigmoid,
    three full-size tensors); backward recomputes them in place.
    """

    @staticmethod
    def forward(ctx, x, mu, k):
        ctx.save_for_backward(x, mu, k)
        a = (x - mu).square_().mul_(k).add_(0.5).sigmoid_()  # (B, C, H, W)
        return a.mul_(x)

    @staticmethod
    def backward(ctx, grad_y):
        x, mu, k = ctx.saved_tensors
        c = x - mu  # (B, C, H, W)
        a = torch.addcmul(torch.full_like(k, 0.5), c.square(), k).sigmoid_()  # recomputed sigmoid
        grad_x = grad_y * a  # direct term
        gz = a.neg_().add_(1).mul_(grad_x).mul_(x)  # dL/dz = dL/dy * x * a * (1 - a), in a's buffer
        grad_k = (gz * c.square()).sum((2, 3), keepdim=True) if ctx.needs_input_grad[2] else None
        gc = gz.mul_(c).mul_(2 * k)  # dL/dz * dz/dc, dz/dc = 2 c k
        grad_mu = -gc.sum((2, 3), keepdim=True) if ctx.needs_input_grad[1] else None
        grad_x.add_(gc)
        return grad_x, grad_mu, grad_k


def centred_energy_gate(x: torch.Tensor, mu: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid((x - mu)^2 * k + 0.5)`` (custom autograd in eager training, see module doc)."""
    if use_fused(x):
        return _CentredEnergyGate.apply(x, mu, k)
    return x * torch.sigmoid((x - mu).square() * k + 0.5)
