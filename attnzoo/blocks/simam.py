"""SimAM: a simple, parameter-free attention module.

Paper: L. Yang, R.-Y. Zhang, L. Li, X. Xie, "SimAM: A Simple, Parameter-Free Attention Module for
Convolutional Neural Networks", ICML 2021. https://proceedings.mlr.press/v139/yang21o.html

Each neuron t of a channel gets the inverse of its minimal energy (Eq. 5-6):

    mu      = mean_{h,w} x_c,   sigma^2 = sum_{h,w} (x_c - mu)^2 / (M - 1),   M = H * W
    1/e_t*  = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2
    y       = x * sigmoid(1/e*)                                             (Eq. 7)

A neuron that stands out from its channel (large (t - mu)^2) has low energy and a high weight.
Defaults: ``e_lambda=1e-4`` (the paper's lambda). No parameters; ``channels`` is taken only for the
block contract (it checks its input has that many).

NOTE: on a 1x1 map M - 1 = 0 and the paper's sigma^2 is 0/0; the divisor is ``max(M - 1, 1)``, so a
1x1 map gets sigma^2 = 0, 1/e* = 1/2 and the gate sigmoid(1/2) for every neuron, instead of NaN.
NOTE: the weights are 3-D (one per neuron, (B, C, H, W)), so the tap is of kind "spatial" with C
maps. The zoo's issue lists SimAM under channel attention, but its weights are full 3-D attention
(the paper's Fig. 1), so the registry family is "channel+spatial".
Implementation: with the sigmoid gate and nothing capturing the tap, in eager float32 on CPU with a
batch of at least the thread count, the block is one native op (``_pooled_gates.simam_gate``:
statistics, gate and output per cached sample; the sigmoid is the kernels' own, relative error about
2e-7 against torch's). Elsewhere in eager training it is one custom autograd op
(``_fused.simam_fused``) whose backward keeps only x (the plain expression keeps three full-size
intermediates). Under ``torch.compile`` on CPU the same native op runs as a custom op
(``_compiled.py``); other compiled devices
and ONNX export / ``torch.export`` see the plain expression.
"""
from __future__ import annotations

from torch import nn

from ..factory import register_attn
from ._fused import is_sigmoid, simam_fused, use_fused
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._pool import pool_mean
from ._pooled_gates import simam_gate

__all__ = ["SimAM"]


@register_attn(
    "simam",
    family="channel+spatial",
    paper="SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks",
    authors="Yang, Zhang, Li, Xie",
    year=2021,
    link="https://proceedings.mlr.press/v139/yang21o.html",
)
class SimAM(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        e_lambda: float = 1e-4,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("simam", channels)
        if isinstance(e_lambda, bool) or not isinstance(e_lambda, (int, float)) or e_lambda <= 0:
            raise ValueError(f"simam: e_lambda must be a positive float (the paper uses 1e-4), got {e_lambda!r}")
        self.e_lambda = float(e_lambda)
        self.gate = resolve_layer("simam", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        n = max(x.shape[2] * x.shape[3] - 1, 1)  # M - 1 neighbours; 1 on a 1x1 map (see NOTE)
        if is_sigmoid(self.gate) and not (self.tap.active or self.tap._forward_hooks):
            y = simam_gate(x, self.e_lambda, n)  # the native CPU kernels (_pooled_gates.py) where they apply
            if y is not None:
                return y
            if use_fused(x):
                return simam_fused(x, self.e_lambda, n)  # eager training elsewhere: one custom op, saves only x
        d = (x - pool_mean(x, (2, 3))).pow(2)  # (B, C, H, W): (t - mu)^2
        var = d.sum((2, 3), keepdim=True) / n  # (B, C, 1, 1): sigma^2
        e_inv = d / (4 * (var + self.e_lambda)) + 0.5  # (B, C, H, W): 1 / e_t*
        return x * self.tap(self.gate(e_inv))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, e_lambda={self.e_lambda:g}"
