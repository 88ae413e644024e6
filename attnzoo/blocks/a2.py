"""Double Attention (A^2) block: gather global descriptors, then distribute them to every position.

Paper: Y. Chen, Y. Kalantidis, J. Li, S. Yan, J. Feng, "A^2-Nets: Double Attention Networks",
NeurIPS 2018. https://arxiv.org/abs/1810.11579

With N = H*W positions, A = phi(X) (c_m, N), B = theta(X) (c_n, N), V = rho(X) (c_n, N), all 1x1 convs:

    G_gather = A softmax_N(B)^T                    (c_m, c_n): c_n second-order attention poolings (Eq. 5)
    z_j      = G_gather softmax_{c_n}(V_j)         each position picks a mix of the c_n descriptors (Eq. 6)
    Y        = X + W_out Z                         1x1 conv c_m -> C, residual (Sec. 3.3)

Defaults: c_m = c_n = C/4 (``rd_ratio=0.25``), set either with ``c_m=`` / ``c_n=``.

Both steps together are one row-stochastic position-to-position map,
``W = softmax_{c_n}(V)^T softmax_N(B)`` (N, N), with ``Z = A W^T``; that map is what the
``"query"`` tap receives, (B, 1, N, H, W), built only while it is captured.

NOTE (departures, and why):
* theta (the gather logits) has no bias: a bias adds a constant per descriptor across all N
  positions, which the softmax over N removes, so it could never learn.
* The default widths c_m = c_n = C/4 are this library's choice for a drop-in block; the paper sets
  the reduced widths per network and does not fix one ratio.
Implementation: phi, theta and rho run as one 1x1 convolution (their weights concatenated at each call,
``_fused.conv1x1_cat``), so x is read once and backward forms one input gradient; the parameters
and state-dict keys are the separate convolutions'.
"""
from __future__ import annotations

from torch import nn

from ..factory import register_attn
from ._fused import conv1x1_fused
from .base import AttnTap, check_channels, check_input, reduced_channels

__all__ = ["DoubleAttn"]


def _width(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"a2: {name} must be a positive int (or None for C * rd_ratio), got {value!r}")
    return value


@register_attn(
    "a2",
    family="self-attention",
    paper="A^2-Nets: Double Attention Networks",
    authors="Chen, Kalantidis, Li, Yan, Feng",
    year=2018,
    link="https://arxiv.org/abs/1810.11579",
)
class DoubleAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        c_m: int | None = None,
        c_n: int | None = None,
        rd_ratio: float = 0.25,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.channels = check_channels("a2", channels)
        both_given = c_m is not None and c_n is not None
        reduced = 0 if both_given else reduced_channels("a2", channels, rd_ratio, rd_channels, rd_divisor)
        self.c_m = _width("c_m", c_m, reduced)
        self.c_n = _width("c_n", c_n, reduced)
        self.rd_channels = self.c_m
        self.phi = nn.Conv2d(channels, self.c_m, 1)  # features A
        self.theta = nn.Conv2d(channels, self.c_n, 1, bias=False)  # gather attention maps B
        self.rho = nn.Conv2d(channels, self.c_n, 1)  # distribution attention vectors V
        self.proj = nn.Conv2d(self.c_m, channels, 1)
        self.tap = AttnTap("query")

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        feats, gather, distribute = (t.flatten(2) for t in conv1x1_fused(x, [self.phi, self.theta, self.rho]))  # one GEMM
        gather = gather.softmax(-1).to(feats.dtype)  # (B, c_n, N), sums to 1 over N
        distribute = distribute.softmax(1).to(feats.dtype)  # (B, c_n, N), sums to 1 over c_n
        descriptors = feats @ gather.transpose(1, 2)  # (B, c_m, c_n)
        z = descriptors @ distribute  # (B, c_m, N)
        if self.tap.active:  # build the position-to-position map only while it is being captured
            weights = distribute.transpose(1, 2) @ gather  # (B, N, N), rows sum to 1
            self.tap(weights.reshape(b, 1, h * w, h, w))  # (B, 1, Nq, H, W)
        return x + self.proj(z.reshape(b, self.c_m, h, w))  # (B, C, H, W)
