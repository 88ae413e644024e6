"""Polarized Self-Attention, parallel (``psa``) and sequential (``psa_s``) layouts.

Paper: H. Liu, F. Liu, X. Fan, D. Huang, "Polarized Self-Attention: Towards High-quality Pixel-wise
Regression", 2021. https://arxiv.org/abs/2107.00782

Channel-only branch (spatial collapsed, channels kept at C/2 inside):

    A_ch(X) = sigmoid(LN(W_z(W_v(X) . softmax_HW(W_q(X)))))     W_v: C -> C/2, W_q: C -> 1,
                                                                W_z: C/2 -> C, LN over C; (B, C, 1, 1)
    Z_ch = A_ch(X) * X

Spatial-only branch (channels collapsed, spatial kept):

    A_sp(X) = sigmoid(softmax_C(GAP(W_q'(X))) . W_v'(X))       W_q', W_v': C -> C/2; (B, 1, H, W)
    Z_sp = A_sp(X) * X

Layouts: parallel PSA_p(X) = Z_ch(X) + Z_sp(X) (``psa``, the registry default); sequential
PSA_s(X) = Z_sp(Z_ch(X)) (``psa_s``). All W are 1x1 convs.

NOTE: the 1x1 convs have no bias, as in the authors' code (for W_q a bias would only shift every
softmax logit by one constant, which softmax ignores). The inner width is
``make_divisible(C * rd_ratio, rd_divisor=1)`` with the paper's rd_ratio = 1/2. At H = W = 1 the
softmax over positions is 1 and W_q gets no gradient.

``form="paper"`` (default) follows the paper's equations above in both layouts. The authors'
released code (DeLightCMU/PSA, classes ``PSA_p`` and ``PSA_s``) departs from them differently in
each layout; ``form="authors"`` reproduces it op for op (inner width C // 2, floored):

* parallel (``PSA_p``): the channel branch has no LayerNorm, sigmoid(W_z(...)) with W_z: C/2 -> C;
  the spatial branch has no softmax over channels and instead applies a softmax over the H*W
  positions to the product: sigmoid(softmax_HW(GAP(W_q'(X)) . W_v'(X))).
* sequential (``PSA_s``): the channel branch's W_z is a bottleneck C/2 -> C/8 -> C,
  W_z2(relu(LN(W_z1(.)))), both 1x1 convs with bias and the LayerNorm (affine, eps 1e-5) over the
  C/8 channels (``(C // 2) // 4``); the spatial branch applies the softmax over H*W to each channel
  of W_v'(X) before the product, again with no softmax over channels:
  sigmoid(GAP(W_q'(X)) . softmax_HW(W_v'(X))).

Speed: the 1x1 convs run as matmuls of X's (B, H*W, C) view: W_v, W_q (and W_v' in the parallel layout) as
one, with their stacked weights; in the sequential one W_v'(Z_ch) as X times W_v' scaled by each sample's
A_ch, so Z_ch = A_ch X is never formed. W_q' runs on the pooled vector instead of the map (GAP commutes
with a 1x1 conv without bias; GAP(Z_ch) = A_ch GAP(X)). The same function, without one oneDNN convolution
per W or a copy of each projection to flatten it. The output, X A_ch + X A_sp (parallel) or X A_ch A_sp
(sequential), is one native op where the CPU kernels apply (``_pooled_gates.sum_gates`` / ``product_gates``:
one pass forward, one per gradient backward, nothing but X and the factors saved). The modules run as such
where one of them has a hook or is not a plain conv.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_input, reduced_channels, resolve_layer
from ._layout import LayoutConv2d
from ._pool import pool_mean
from ._pooled_gates import product_gates, sum_gates
from ._small_graphs import _unhooked

__all__ = ["PolarizedSelfAttn", "LAYOUTS", "FORMS"]

LAYOUTS = ("parallel", "sequential")
FORMS = ("paper", "authors")

_META = dict(
    family="channel+spatial",
    paper="Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
    authors="Liu, Liu, Fan, Huang",
    year=2021,
    link="https://arxiv.org/abs/2107.00782",
)


@register_attn("psa", **_META)
class PolarizedSelfAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        layout: str = "parallel",
        rd_ratio: float = 1.0 / 2,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        gate_layer: str | type[nn.Module] = "sigmoid",
        form: str = "paper",
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"psa: layout must be one of {LAYOUTS}, got {layout!r}")
        if form not in FORMS:
            raise ValueError(f"psa: form must be one of {FORMS} ('paper': the equations; 'authors': the released code), got {form!r}")
        self.channels = channels
        self.layout = layout
        self.form = form
        self.rd_channels = rd = reduced_channels("psa", channels, rd_ratio, rd_channels, rd_divisor)
        if form == "authors" and rd_channels is None and rd_divisor == 1:
            self.rd_channels = rd = max(1, int(channels * rd_ratio))  # the authors' planes // 2
        gate = resolve_layer("psa", "gate_layer", gate_layer)
        # channel-only branch
        self.ch_wv = nn.Conv2d(channels, rd, 1, bias=False)
        self.ch_wq = LayoutConv2d(channels, 1, 1, bias=False)
        if form == "authors" and layout == "sequential":  # PSA_s's bottleneck C/2 -> C/8 -> C
            rd4 = max(1, rd // 4)
            self.ch_wz = LayoutConv2d(rd, rd4, 1, bias=True)
            self.ln = nn.LayerNorm(rd4)
            self.ch_act = nn.ReLU(inplace=True)
            self.ch_wz2 = LayoutConv2d(rd4, channels, 1, bias=True)
        else:
            self.ch_wz = LayoutConv2d(rd, channels, 1, bias=False)
            self.ln = nn.LayerNorm(channels) if form == "paper" else nn.Identity()
        self.gate_channel = gate()
        # spatial-only branch
        self.sp_wv = nn.Conv2d(channels, rd, 1, bias=False)
        self.sp_wq = nn.Conv2d(channels, rd, 1, bias=False)
        self.gate_spatial = gate()
        self.tap_channel = AttnTap("channel")
        self.tap_spatial = AttnTap("spatial")

    def _fast(self, x) -> bool:
        """The four 1x1 convs may run as matmuls over x's (B, H*W, C) view (``_projections``): plain, unhooked
        convs without bias (a hook would not see its module run) on a 4-D input."""
        convs = (self.ch_wv, self.ch_wq, self.sp_wv, self.sp_wq)
        return x.dim() == 4 and all(type(m) in (nn.Conv2d, LayoutConv2d) and m.bias is None for m in convs) and _unhooked(*convs)

    @staticmethod
    def _tokens(x):
        """x (B, C, H, W) as (B, H*W, C): a view in NCHW and in channels_last (no copy)."""
        b, c, h, w = x.shape
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        return x.flatten(2).transpose(1, 2)

    def _projections(self, x, convs):
        """The 1x1 convs ``convs`` of x as one matmul of x's token view with their stacked weights: one
        (B, H*W, C_out) view per conv."""
        c = x.shape[1]
        weight = torch.cat([m.weight.view(m.out_channels, c) for m in convs]) if len(convs) > 1 else convs[0].weight.view(-1, c)
        return torch.matmul(self._tokens(x), weight.t()).split([m.out_channels for m in convs], dim=-1)

    def channel_attn(self, x, proj=None):
        """A_ch(x), (B, C, 1, 1); ``proj``: W_v(x), W_q(x) as (B, H*W, .) views (``_projections``), or None."""
        b, c = x.shape[:2]
        if proj is None:
            v = self.ch_wv(x).flatten(2)  # (B, C/2, H*W)
            q = self.ch_wq(x).flatten(2).softmax(-1)  # (B, 1, H*W), softmax over positions
        else:
            v, q = proj[0].transpose(1, 2), proj[1].transpose(1, 2).softmax(-1)
        z = self.ch_wz((v @ q.transpose(1, 2)).unsqueeze(-1))  # (B, C, 1, 1); (B, C/8, 1, 1) in PSA_s
        if self.form == "authors" and self.layout == "sequential":
            z = self.ch_act(self.ln(z.flatten(1))).reshape(b, -1, 1, 1)  # (B, C/8, 1, 1)
            return self.gate_channel(self.ch_wz2(z))  # (B, C, 1, 1)
        z = self.ln(z.reshape(b, c))  # (B, C), LayerNorm over channels (paper)
        return self.gate_channel(z).reshape(b, c, 1, 1)  # (B, C, 1, 1)

    def spatial_attn(self, x, v_tokens=None, pooled=None):
        """A_sp(x), (B, 1, H, W); ``v_tokens``: W_v'(x) as a (B, H*W, C/2) view (``_projections``), or None.
        With it, GAP(W_q'(x)) is W_q'(GAP(x)) (a 1x1 conv without bias commutes with the mean): the
        conv runs on the pooled vector (``pooled``, GAP(x) (B, C), or None to take it), not on the map."""
        b, c, h, w = x.shape
        if v_tokens is None:
            q = pool_mean(self.sp_wq(x), (2, 3), keepdim=False).unsqueeze(1)  # (B, 1, C/2), GAP
            v = self.sp_wv(x).flatten(2)  # (B, C/2, H*W)
        else:
            pooled = pool_mean(x, (2, 3), keepdim=False) if pooled is None else pooled
            q = F.linear(pooled, self.sp_wq.weight.view(-1, c)).unsqueeze(1)
            v = v_tokens.transpose(1, 2)
        if self.form == "paper":
            a = q.softmax(-1) @ v  # (B, 1, H*W), softmax over channels
        elif self.layout == "parallel":
            a = (q @ v).softmax(-1)  # (B, 1, H*W), PSA_p: softmax over positions after the product
        else:
            a = q @ v.softmax(-1)  # (B, 1, H*W), PSA_s: softmax over positions of each channel of v
        return self.gate_spatial(a.reshape(b, 1, h, w))  # (B, 1, H, W)

    def forward(self, x):
        check_input(self, x)
        fast = self._fast(x)
        if self.layout == "sequential" and not fast:
            z_ch = x * self.tap_channel(self.channel_attn(x))  # (B, C, H, W)
            return z_ch * self.tap_spatial(self.spatial_attn(z_ch))
        if self.layout == "sequential":  # Z_ch = X A_ch is never formed: its projections from X's, per sample
            b, c = x.shape[:2]
            a_ch = self.tap_channel(self.channel_attn(x, self._projections(x, (self.ch_wv, self.ch_wq))))
            g = a_ch.view(b, 1, c)
            v = torch.matmul(self._tokens(x), (self.sp_wv.weight.view(1, -1, c) * g).transpose(1, 2))  # W_v'(Z_ch)
            pooled = pool_mean(x, (2, 3), keepdim=False) * g.view(b, c)  # GAP(Z_ch) = A_ch GAP(X)
            a_sp = self.tap_spatial(self.spatial_attn(x, v, pooled))
            y = product_gates(x, a_ch, a_sp)  # the native CPU kernels where they apply: one pass
            return x * a_ch * a_sp if y is None else y
        proj = self._projections(x, (self.ch_wv, self.ch_wq, self.sp_wv)) if fast else None  # one matmul
        a_ch = self.tap_channel(self.channel_attn(x, None if proj is None else proj[:2]))  # (B, C, 1, 1)
        a_sp = self.tap_spatial(self.spatial_attn(x, None if proj is None else proj[2]))  # (B, 1, H, W)
        y = sum_gates(x, a_ch, a_sp)  # the native CPU kernels where they apply: one pass, no Z_ch written
        return x * a_ch + x * a_sp if y is None else y


register_attn("psa_s", functools.partial(PolarizedSelfAttn, layout="sequential"), **_META)
