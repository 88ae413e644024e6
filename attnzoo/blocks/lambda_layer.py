"""Lambda layer (LambdaNetworks): each query is multiplied by a linear function ("lambda")
summarising its context, content and position, instead of attending with a softmax over keys.

Paper: I. Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021.
https://arxiv.org/abs/2102.08602

    q = BN(W_q x) (heads h, |k| each), k = softmax_positions(W_k x) (|k|), v = BN(W_v x) (|v| = C/h)
    content lambda  lambda_c = k v^T                               (|k| x |v|, shared by all queries)
    position lambda lambda_p(n) = sum_m E_{n,m} v_m, with E a local r x r "lambda convolution"
                    (one r x r kernel per key dimension, applied to every value channel, Sec. 4.2)
    out_n = q_n (lambda_c + lambda_p(n))                           per head, concatenated
    y = x + gamma * W_o out                                        residual with a per-channel scale

The lambda convolution makes the position term work at any H x W (zero-padded at the borders,
as any convolution: outside positions carry no value). Defaults follow timm's LambdaLayer
(4 heads, |k| = 16, r = 9, intra-depth |u| = 1).

Parity with ``timm.layers.lambda_layer.LambdaLayer`` (``r`` set, weights copied;
tests/test_local_attention.py): ``attend(x)`` equals timm's output (timm's module is the layer
alone, with no residual and no output projection). The lambda convolution here is a Conv2d over
each value channel, weight (|k|, 1, r, r), where timm uses a Conv3d of weight (|k|, 1, r, r, 1):
the same numbers.

NOTE (departures, and why):
* Intra-depth |u| = 1 and only the local (lambda-convolution) position lambdas, as timm; the
  paper's global relative-position variant needs a fixed map size.
* As a drop-in block the layer is wrapped in a residual with a per-channel scale ``gamma``
  (``layer_scale_init=0`` starts it as the identity) and an output projection ``W_o``; the paper
  uses it in place of the 3x3 conv of a bottleneck. Only stride 1.
* The batch norms are ``SafeBatchNorm2d`` (train mode works on a single value per channel).
* timm's keyword arguments: ``rd_ratio`` / ``rd_channels`` / ``rd_divisor``, when given, set the
  query width h|k| (|k| = make_divisible(C * rd_ratio, rd_divisor) // h, timm's ``qk_ratio``
  rule) instead of ``dim_head``; ``act_layer``, ``gate_layer``, ``force_act_layer`` and
  ``rd_round_fn`` do not apply and are ignored. ``tap`` shows the key softmax over positions,
  averaged over the |k| key channels, as a (B, 1, H, W) spatial map: where the content lambda
  draws its context from.
"""
from __future__ import annotations

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_heads, check_input, reduced_channels

__all__ = ["LambdaLayer2d"]


@register_attn(
    "lambda",
    family="self-attention",
    paper="LambdaNetworks: Modeling Long-Range Interactions Without Attention",
    authors="Bello",
    year=2021,
    link="https://arxiv.org/abs/2102.08602",
    scope="global",
    hardness="soft",
    score=None,
)
class LambdaLayer2d(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        dim_head: int = 16,
        r: int = 9,
        qkv_bias: bool = False,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        layer_scale_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_channels("lambda", channels)
        self.num_heads = check_heads("lambda", channels, num_heads)
        if isinstance(r, bool) or not isinstance(r, int) or r < 1 or r % 2 == 0:
            raise ValueError(f"lambda: r (lambda convolution size) must be an odd positive int, got {r!r}")
        if rd_ratio is not None or rd_channels is not None:
            width = reduced_channels("lambda", channels, 1.0 if rd_ratio is None else rd_ratio, rd_channels, rd_divisor)
            self.dim_k = max(1, width // num_heads)
        else:
            if isinstance(dim_head, bool) or not isinstance(dim_head, int) or dim_head < 1:
                raise ValueError(f"lambda: dim_head must be a positive int, got {dim_head!r}")
            self.dim_k = dim_head
        self.rd_channels = num_heads * self.dim_k  # query width
        self.dim_v = channels // num_heads
        self.r = r
        self.qkv = nn.Conv2d(channels, num_heads * self.dim_k + self.dim_k + self.dim_v, 1, bias=qkv_bias)
        self.norm_q = SafeBatchNorm2d(num_heads * self.dim_k)
        self.norm_v = SafeBatchNorm2d(self.dim_v)
        self.conv_lambda = nn.Conv2d(1, self.dim_k, r, padding=r // 2)  # E: one r x r kernel per key dim
        self.proj = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.tap = AttnTap("spatial")

    def extra_repr(self) -> str:
        return f"dim_k={self.dim_k}, dim_v={self.dim_v}, r={self.r}"

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The lambda layer's output (B, C, H, W) before W_o and the residual (timm's LambdaLayer)."""
        b, c, h, w = x.shape
        m, dk, dv, heads = h * w, self.dim_k, self.dim_v, self.num_heads
        q, k, v = self.qkv(x).split([heads * dk, dk, dv], dim=1)
        q = self.norm_q(q).reshape(b, heads, dk, m).transpose(-1, -2)  # (B, heads, M, |k|)
        v = self.norm_v(v)  # (B, |v|, H, W)
        k = k.reshape(b, dk, m).softmax(-1)  # (B, |k|, M): normalised over positions
        if self.tap.active:
            self.tap(k.mean(1).reshape(b, 1, h, w))
        v_seq = v.reshape(b, dv, m).transpose(-1, -2)  # (B, M, |v|)
        content = q @ (k @ v_seq).unsqueeze(1)  # (B, heads, M, |v|)
        pos_lam = self.conv_lambda(v.reshape(b * dv, 1, h, w))  # (B*|v|, |k|, H, W)
        pos_lam = pos_lam.reshape(b, dv, dk, m).permute(0, 3, 2, 1)  # (B, M, |k|, |v|)
        position = torch.einsum("bnmk,bmkv->bnmv", q, pos_lam)  # (B, heads, M, |v|)
        return (content + position).transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)

    def forward(self, x):
        check_input(self, x)
        return x + self.gamma * self.proj(self.attend(x))
