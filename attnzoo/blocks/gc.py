"""Global Context (GC) block.

Paper: Y. Cao, J. Xu, S. Lin, F. Wei, H. Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond", ICCVW 2019. https://arxiv.org/abs/1904.11492

    a_j = softmax_j(W_k x_j)                    context modeling: 1x1 conv C -> 1, softmax over H*W
    c   = sum_j a_j x_j                         global context, (B, C)
    t   = W_v2 relu(LN(W_v1 c))                 transform: bottleneck C -> C/r -> C, r = 16
    y_i = x_i + t                               fusion by addition (Eq. 4, the paper's best, Table 2d)

With ``fuse_scale=True`` the transform also (or instead) rescales: ``y_i = x_i * gate(t_s)`` with its
own transform t_s (timm's default arrangement, ``gate_layer="sigmoid"``).

Family "channel": the output at every position changes by the same per-channel term (an offset, or
a factor with ``fuse_scale``) computed from one global context vector; the softmax map over H*W only
weights the pooling that builds that vector and is never applied to the output's positions. GC is
an SE block whose average pooling is replaced by attention pooling.

Taps: ``tap`` (kind "spatial") sees the context weights a, (B, 1, H, W), which multiply x inside the
pooling; ``tap_channel`` (kind "channel", only with ``fuse_scale``) sees the scale gate.

Defaults: ``fuse_add=True, fuse_scale=False``, ``rd_ratio=1/16`` (the paper's r = 16) with
``rd_divisor=1``, ReLU, LayerNorm eps 1e-5 (``nn.LayerNorm``'s, as in the authors' code).
Initialization as in the authors' code: the context conv is Kaiming-normal (fan_in) and the last
conv of the add transform is zero, so a fresh add-fused block is the identity.

NOTE: the context conv W_k has no bias: softmax over H*W is invariant to adding a constant, so a bias
could never change the output nor receive a gradient. The paper's W_k and the authors' code have
one; timm's ``GlobalContext`` too (it has no effect there either).
NOTE (timm parity): timm's ``GlobalContext`` defaults to ``fuse_add=False, fuse_scale=True,
rd_ratio=1/8`` with LayerNorm eps 1e-6 and zeroes only the add transform's last weight (not its
bias). Built with the same fusion and ratio, this block takes timm's state_dict (attribute names
``conv_attn``, ``mlp_add``/``mlp_scale`` with ``fc1``, ``norm``, ``fc2`` match; timm's extra
``conv_attn.bias`` is dropped) and gives the same output up to the LayerNorm eps.

Speed (CPU): in eager float32 with a batch of at least the thread count the block is one native op
(``_pooled_gates.context_gates``: logits, attention pooling and y = x * scale + add in three passes,
three backward); its softmax, MLPs, gate and taps stay ordinary modules. Elsewhere the PyTorch
expression runs.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, reduced_channels, resolve_layer
from ._layout import LayoutConv2d
from ._pooled_gates import context_gates

__all__ = ["GlobalContext"]


class ContextTransform(nn.Module):
    """1x1 conv C -> C/r, LayerNorm over the C/r channels, activation, 1x1 conv C/r -> C."""

    def __init__(self, channels: int, rd_channels: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = LayoutConv2d(channels, rd_channels, 1, bias=True)
        self.norm = nn.LayerNorm(rd_channels)
        self.act = act_layer(inplace=True)
        self.fc2 = LayoutConv2d(rd_channels, channels, 1, bias=True)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        b = context.shape[0]
        t = self.fc1(context).reshape(b, -1)  # (B, C/r): the context is one position
        t = self.act(self.norm(t)).reshape(b, -1, 1, 1)  # (B, C/r, 1, 1)
        return self.fc2(t)  # (B, C, 1, 1)


@register_attn(
    "gc",
    family="channel",
    paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
    authors="Cao, Xu, Lin, Wei, Hu",
    year=2019,
    link="https://arxiv.org/abs/1904.11492",
)
class GlobalContext(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        fuse_add: bool = True,
        fuse_scale: bool = False,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("gc", channels)
        if not (fuse_add or fuse_scale):
            raise ValueError("gc: at least one of fuse_add, fuse_scale must be True (the paper's default is fuse_add)")
        self.rd_channels = reduced_channels("gc", channels, rd_ratio, rd_channels, rd_divisor)
        act = resolve_layer("gc", "act_layer", act_layer)
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=False)
        self.mlp_add = ContextTransform(channels, self.rd_channels, act) if fuse_add else None
        self.mlp_scale = ContextTransform(channels, self.rd_channels, act) if fuse_scale else None
        self.gate = resolve_layer("gc", "gate_layer", gate_layer)() if fuse_scale else None
        self.tap = AttnTap("spatial")
        self.tap_channel = AttnTap("channel") if fuse_scale else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        if self.mlp_add is not None:
            nn.init.zeros_(self.mlp_add.fc2.weight)
            nn.init.zeros_(self.mlp_add.fc2.bias)

    def attention(self, logits):
        """The softmax over positions of the (B, 1, H, W) logits, through the tap."""
        b, _, h, w = logits.shape
        return self.tap(F.softmax(logits.reshape(b, 1, h * w), dim=-1).reshape(b, 1, h, w))

    def context_factors(self, context):
        """(scale, add) from the (B, C, 1, 1) context, each (B, C, 1, 1) or None where not fused."""
        scale = None if self.mlp_scale is None else self.tap_channel(self.gate(self.mlp_scale(context)))
        add = None if self.mlp_add is None else self.mlp_add(context)
        return scale, add

    def forward(self, x):
        check_input(self, x)
        y = context_gates(x, self)  # the native CPU kernels (_pooled_gates.py) where they apply
        if y is not None:
            return y
        b, c, h, w = x.shape
        attn = self.attention(self.conv_attn(x)).reshape(b, h * w, 1)  # (B, H*W, 1)
        context = torch.bmm(x.reshape(b, c, h * w), attn.to(x.dtype)).reshape(b, c, 1, 1)  # (B, C, 1, 1)
        scale, add = self.context_factors(context)
        out = x
        if scale is not None:
            out = out * scale
        if add is not None:
            out = out + add
        return out
