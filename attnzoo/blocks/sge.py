"""Spatial Group-wise Enhance.

Paper: X. Li, X. Hu, J. Yang, "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", 2019. https://arxiv.org/abs/1905.09646

Channels are split into G groups; within a group x_i is the (C/G)-vector at position i:

    g   = mean_i x_i                                  group mean vector (global average pooling)
    c_i = g . x_i                                     similarity of each position with the mean
    n_i = (c_i - mean(c)) / (std(c) + eps)            normalized over the H*W positions
    a_i = gamma * n_i + beta                          one (gamma, beta) per group
    y_i = x_i * sigmoid(a_i)

Defaults are the paper's: G = 64, gamma initialized to 0 and beta to 1 (so the block starts as a
constant gate sigmoid(1) and learns to enhance). The per-position factor, broadcast to its group's
channels, passes through ``self.tap`` as a (B, C, H, W) map (kind "spatial").

``groups``: ``None`` (default) is the paper's 64, lowered to the largest count <= 64 that divides C
when C has fewer or incompatible channels (C = 16 -> 16, C = 32 -> 32, C = 48 -> 48, C = 64 -> 64,
C = 96 -> 48), so the block works in small networks. An explicit ``groups`` must divide C; otherwise
a ValueError lists the valid counts.

NOTE (the spread, Eq. 4): ``std(c)`` is the population standard deviation over the H*W positions
(divide by N = H*W, as the paper's sigma), and eps = 1e-5 is added to it, outside the square root, as
in the paper and the authors' code. ``spread`` offers the two other forms:

* ``spread="std"`` (default): n = (c - mean) / (sqrt(var_N(c)) + eps), the paper's Eq. 4.
* ``spread="unbiased_std"``: n = (c - mean) / (sqrt(var_{N-1}(c)) + eps), the authors' code exactly
  (``t.std()``, Bessel-corrected); it differs from the default by a factor sqrt(N / (N - 1)) on the
  std (+3.3% at 4x4, +0.05% at 32x32). On a 1x1 map (N = 1, where the authors' form is 0 / 0 = NaN)
  it falls back to the population std, which gives n = 0.
* ``spread="sqrt_var"``: n = (c - mean) / sqrt(var_N(c) + eps), the form of earlier attnzoo versions;
  it floors the spread at sqrt(eps) = 3.2e-3, where the other two let it shrink to 0, so it differs
  from them by up to tens of percent in groups whose c varies little over the map.

The variance is clamped at 1e-24 before its square root in the first two forms, so a constant map
(std 0) has a zero gradient instead of the infinite one of sqrt at 0; this moves the std by at most
1e-12, far below eps. The statistics are computed in float32 under autocast.

Speed (CPU): in eager float32 with a batch of at least the thread count, and nothing capturing the tap
(a captured tap needs the full factor), the block is one native op (``_pooled_gates.group_gates``); for
``spread`` std and unbiased_std with the sigmoid gate it takes one sample at a time while the sample is in
cache -- group means, similarities, their normalisation, affine and sigmoid, the product -- so the
similarity and factor maps are never written, and backward recomputes them from x (only x is saved).
``torch.compile`` on CPU calls that op as a custom op (``_compiled.py``). Elsewhere the PyTorch expression
runs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, resolve_layer
from ._layout import like_input
from ._fused import is_sigmoid
from ._pool import pool_mean
from ._pooled_gates import group_gates

__all__ = ["SpatialGroupEnhance", "resolve_groups"]

PAPER_GROUPS = 64
SPREADS = ("std", "unbiased_std", "sqrt_var")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_groups(block: str, channels: int, groups: int | None, per_group: int = 1, paper: int = PAPER_GROUPS) -> int:
    """The group count G for ``channels``: every group holds a multiple of ``per_group`` channels.

    ``groups=None`` takes the paper's ``paper`` groups, lowered to the largest valid count when
    ``channels`` does not allow it. An explicit count that does not fit raises a ValueError listing
    the valid ones.
    """
    check_channels(block, channels)
    if channels % per_group:
        raise ValueError(f"{block}: channels={channels} must be a multiple of {per_group} "
                         f"(each group is split into {per_group} equal parts)")
    valid = _divisors(channels // per_group)  # G is valid iff G * per_group divides C
    if groups is None:
        return max(g for g in valid if g <= paper)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{block}: groups must be a positive int or None, got {groups!r}")
    if groups not in valid:
        need = f"{per_group} * groups" if per_group > 1 else "groups"
        raise ValueError(
            f"{block}: groups={groups} does not fit channels={channels} ({need} must divide the channels); "
            f"valid group counts for {channels} channels: {', '.join(map(str, valid))} "
            f"(or groups=None for the paper's {paper}, lowered to fit)"
        )
    return groups


@register_attn(
    "sge",
    family="spatial",
    paper="Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks",
    authors="Li, Hu, Yang",
    year=2019,
    link="https://arxiv.org/abs/1905.09646",
)
class SpatialGroupEnhance(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        groups: int | None = None,
        eps: float = 1e-5,
        gate_layer: str | type[nn.Module] = "sigmoid",
        spread: str = "std",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.groups = resolve_groups("sge", channels, groups)
        if not eps > 0:
            raise ValueError(f"sge: eps must be > 0 (it keeps the std finite on constant maps), got {eps!r}")
        self.eps = eps
        if spread not in SPREADS:
            raise ValueError(f"sge: spread must be one of {SPREADS} ('std' is the paper's Eq. 4), got {spread!r}")
        self.spread = spread
        self.weight = nn.Parameter(torch.zeros(1, self.groups, 1, 1))  # gamma, per group
        self.bias = nn.Parameter(torch.ones(1, self.groups, 1, 1))  # beta, per group
        self.gate = resolve_layer("sge", "gate_layer", gate_layer)()
        self.tap = AttnTap("spatial")

    def factor(self, sim, dtype=None):
        """a (B, G, H, W) from the similarities c_i (B, G, H, W): normalised over the positions (in float32),
        then affine and gate in ``dtype`` (default: sim's)."""
        h, w = sim.shape[2:]
        dtype = dtype or sim.dtype
        sim = sim.float()
        dof = h * w - 1 if self.spread == "unbiased_std" and h * w > 1 else h * w  # N - 1 or N
        centred = sim - pool_mean(sim, (2, 3))  # (B, G, H, W)
        var = centred.square().sum((2, 3), keepdim=True) / dof  # (B, G, 1, 1)
        if self.spread == "sqrt_var":
            n = centred * torch.rsqrt(var + self.eps)  # (B, G, H, W)
        else:
            n = centred / (var.clamp_min(1e-24).sqrt() + self.eps)  # (B, G, H, W)
        return self.gate(n.to(dtype) * self.weight + self.bias)  # (B, G, H, W)

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        g = self.groups
        if not (self.tap.active or self.tap._forward_hooks):  # the tap needs the full factor: plain path
            sge = None  # the paper's spreads with a sigmoid gate: the factor in the kernels as well
            if self.spread in ("std", "unbiased_std") and is_sigmoid(self.gate):
                sge = (self.weight, self.bias, self.eps, h * w - 1 if self.spread == "unbiased_std" and h * w > 1 else h * w)
            y = group_gates(x, g, self.factor, self, sge=sge)  # the native CPU kernels (_pooled_gates.py) where they apply
            if y is not None:
                return y
        xg = x.reshape(b, g, c // g, h, w)  # (B, G, C/G, H, W)
        mean = pool_mean(xg, (3, 4), keepdim=False).unsqueeze(2)  # (B, G, 1, C/G): the group mean vectors
        sim = (mean @ xg.flatten(3)).view(b, g, h, w).float()  # (B, G, H, W): g . x_i, a GEMV (no full temp), float32
        a = self.factor(sim, x.dtype)  # (B, G, H, W)
        if self.tap.active or self.tap._forward_hooks:  # the full (B, C, H, W) factor only while captured
            a = a.unsqueeze(2).expand(b, g, c // g, h, w).reshape(b, c, h, w)  # (B, C, H, W)
            return x * self.tap(a)
        a = like_input(a, x)  # channels_last if x is: the product below then keeps x's layout
        return (xg * a.unsqueeze(2)).view(b, c, h, w)  # broadcast over each group's channels, no copy

    def extra_repr(self) -> str:
        return f"groups={self.groups}, spread={self.spread!r}"
