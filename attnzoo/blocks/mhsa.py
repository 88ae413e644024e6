"""Multi-head self-attention over all H x W positions of a feature map (BoTNet-style), with every
alignment-score function of the attention literature and an optional hard (top-k) variant.

Paper: A. Srinivas, T.-Y. Lin, N. Parmar, J. Shlens, P. Abbeel, A. Vaswani, "Bottleneck
Transformers for Visual Recognition", CVPR 2021. https://arxiv.org/abs/2101.11605

    q, k, v = Wq x, Wk x, Wv x                       1x1 projections, heads h, d = C / h per head
    A = softmax(e(q, k) + B_rel)                     over all N = H*W key positions
    y = x + gamma * Wo (A v)                         residual with a learnable per-channel scale

Score functions ``score=`` (per head; query q_i, key k_j, both d-dimensional; s = query, h = key in
the papers' notation, here both projections of the same map since this is self-attention):

* ``"scaled_dot"`` (default): e_ij = q_i . k_j / sqrt(d). Vaswani et al. 2017, "Attention Is All
  You Need", https://arxiv.org/abs/1706.03762.
* ``"dot"``: e_ij = q_i . k_j. Luong, Pham, Manning 2015, "Effective Approaches to Attention-based
  Neural Machine Translation", https://arxiv.org/abs/1508.04025.
* ``"general"``: e_ij = q_i^T W_a k_j, one d x d matrix W_a per head (Luong 2015). NOTE: W_a starts
  at I / sqrt(d), so an untrained ``general`` block computes what ``scaled_dot`` computes.
* ``"additive"``: e_ij = v_a^T tanh(W_1 s_i + W_2 h_j) (Bahdanau, Cho, Bengio 2015, "Neural Machine
  Translation by Jointly Learning to Align and Translate", https://arxiv.org/abs/1409.0473). Here
  W_1 s_i is the query projection q_i and W_2 h_j the key projection k_j (both 1x1 convolutions of
  the map, so no second pair of matrices is stacked on them); v_a is one d-vector per head.
  NOTE: it builds a (B, heads, N, N, d) tensor: memory O(N^2 d), use it on small maps.
* ``"cosine"``: e_ij = beta * cos(q_i, k_j), content-based addressing (Graves, Wayne, Danihelka
  2014, "Neural Turing Machines", https://arxiv.org/abs/1410.5401). NOTE: in the NTM the key strength
  beta is emitted per step by the controller; here it is one learnable beta per head, parametrised
  as exp(log beta), starting at 10 (as Swin V2's scaled cosine attention), or a fixed number given
  as ``cosine_temperature=`` (then nothing about beta is learned).
* ``"location"``: a = softmax(W_a s), scores from the query alone (Luong 2015). NOTE: Luong's W_a
  maps the query to one score per source position, a matrix whose size is the sequence length;
  over a feature map of any size the row of W_a for key j is instead generated from the offset
  (dy, dx) of key j from query i: e_ij = q_i . r(dy, dx), with r a small MLP (2 -> hidden -> heads*d)
  of the log-spaced offset, so the score depends on the query and on where the key is, never on
  the key's content, and the block works at any H x W. The key projection is not built.

``scaled_dot``, ``dot``, ``general`` and ``cosine`` run through
``torch.nn.functional.scaled_dot_product_attention`` (for ``general`` the query is first multiplied
by W_a, for ``cosine`` q and k are normalised and beta folded into q); ``additive`` and ``location``
build the (B, heads, N, N) logits explicitly.

Hard attention, ``topk=k``: each query attends only to its k highest-scoring keys (scores including
the position bias); the others are masked to -inf before the softmax, so the weights are a softmax
over the k selected keys (Xu et al. 2015 name attention on a subset "hard"; this is its
deterministic top-k form). Gradients: the selected logits receive the softmax's gradient, so q, k
(through the score function), W_a / v_a / beta and the position bias learn from the selected
pairs, and every selected value v_j gets the gradient of its weight; the selection itself (which
keys are in the top k) is piecewise constant in the scores and gets no gradient, and the masked
keys' scores get exactly zero gradient. ``topk >= N`` is dense attention. The top-k path always
builds the logits explicitly (no SDPA). ``mhsa_topk`` is ``mhsa(topk=16)``. NOTE: Xu et al.'s hard
attention samples one location (trained with REINFORCE); the top-k form here is deterministic,
needs no sampling or variance reduction, and with k = 1 is the greedy version of theirs.

NOTE (departures from BoTNet, and why):
* BoTNet's relative-position logits use learned embeddings of a fixed feature size. To work at any
  H x W, the 2-D relative position bias ``B_rel`` here is a continuous position bias (Liu et al.,
  "Swin Transformer V2", 2022, https://arxiv.org/abs/2111.09883): a small MLP maps the log-spaced
  offset (dy, dx) to one bias per head, evaluated for the offsets the input actually has. Its
  offset table is built in the MLP's dtype, so the block runs after ``.half()`` / ``.bfloat16()``.
* BoTNet uses MHSA *in place of* a 3x3 convolution; as a drop-in block it is wrapped in a residual
  with a per-channel scale ``gamma`` (``layer_scale_init=0`` starts the block as the identity, as in
  ReZero, Bachlechner et al. 2020) and an output projection ``Wo``.
* q, k, v have no bias (as BoTNet): a key bias only shifts every logit of a query by a constant,
  which softmax ignores, so it would be a parameter that never learns.
* timm's ``attn_layer`` / ``se_layer`` keyword arguments ``act_layer``, ``gate_layer``,
  ``rd_ratio``, ``rd_channels``, ``rd_divisor``, ``force_act_layer`` and ``rd_round_fn`` do not
  apply (no reduction bottleneck, no activation, softmax is the gate) and are ignored.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..factory import SCORE_FUNCTIONS, register_attn
from .base import AttnTap, BiaslessLinear, check_channels, check_heads, check_input

__all__ = ["MultiHeadSelfAttn2d", "relative_offsets", "SCORES", "check_topk"]

SCORES = SCORE_FUNCTIONS  # ("scaled_dot", "dot", "general", "additive", "cosine", "location")
_FUSED = ("scaled_dot", "dot", "general", "cosine")  # scores that SDPA computes


def relative_offsets(h: int, w: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Table of the (2h-1)(2w-1) possible offsets (dy, dx) and, for every (query, key) pair of an
    h x w grid, the index of its offset in that table: ((2h-1)(2w-1), 2) ``dtype``, (h*w, h*w) long."""
    dy = torch.arange(-(h - 1), h, device=device, dtype=dtype)
    dx = torch.arange(-(w - 1), w, device=device, dtype=dtype)
    table = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2)  # (T, 2)
    ys = torch.arange(h, device=device).repeat_interleave(w)  # (N,) row of each position
    xs = torch.arange(w, device=device).repeat(h)  # (N,) column of each position
    rel_y = ys[:, None] - ys[None, :] + (h - 1)  # (N, N) in [0, 2h-2]
    rel_x = xs[:, None] - xs[None, :] + (w - 1)  # (N, N) in [0, 2w-2]
    return table, rel_y * (2 * w - 1) + rel_x


def _log_offsets(table: torch.Tensor) -> torch.Tensor:
    return torch.sign(table) * torch.log1p(table.abs())  # log-spaced offsets, as Swin V2


def check_topk(block: str, topk) -> int | None:
    if topk is None:
        return None
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"{block}: topk must be a positive int (keys each query keeps) or None (dense), got {topk!r}")
    return topk


def topk_mask_(logits: torch.Tensor, topk: int) -> torch.Tensor:
    """Logits with all but each query's ``topk`` largest set to -inf (along the last axis).

    The indices come from ``torch.topk``: exactly k keys stay even when scores tie."""
    k = min(topk, logits.shape[-1])
    idx = logits.detach().topk(k, dim=-1).indices  # (..., Nq, k): the selection, no gradient
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)
    return logits.masked_fill(~keep, float("-inf"))


@register_attn(
    "mhsa",
    family="self-attention",
    paper="Bottleneck Transformers for Visual Recognition",
    authors="Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani",
    year=2021,
    link="https://arxiv.org/abs/2101.11605",
    scope="global",
    hardness="soft",
    score="scaled_dot",
)
class MultiHeadSelfAttn2d(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        score: str = "scaled_dot",
        topk: int | None = None,
        cosine_temperature: float | None = None,
        rel_pos: bool = True,
        rel_pos_hidden: int = 64,
        layer_scale_init: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_channels("mhsa", channels)
        self.num_heads = check_heads("mhsa", channels, num_heads)
        if score not in SCORES:
            raise ValueError(f"mhsa: unknown score {score!r}; choose one of {SCORES}")
        self.score = score
        self.topk = check_topk("mhsa", topk)
        self.head_dim = d = channels // num_heads
        self.attn_drop = attn_drop
        parts = 2 if score == "location" else 3  # location scores never look at a key
        self.qkv = nn.Conv2d(channels, parts * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.rel_pos = (
            nn.Sequential(nn.Linear(2, rel_pos_hidden), nn.ReLU(inplace=True), BiaslessLinear(rel_pos_hidden, num_heads))
            if rel_pos
            else None
        )
        if score == "general":
            self.w_a = nn.Parameter(torch.eye(d).expand(num_heads, d, d) * d**-0.5)  # (heads, d, d)
        elif score == "additive":
            self.v_a = nn.Parameter(torch.randn(num_heads, d) * d**-0.5)  # (heads, d)
        elif score == "cosine":
            if cosine_temperature is None:
                self.log_beta = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
            else:
                if not cosine_temperature > 0:
                    raise ValueError(f"mhsa: cosine_temperature must be > 0 or None (learned), got {cosine_temperature!r}")
                self.register_buffer("log_beta", torch.full((num_heads, 1, 1), math.log(cosine_temperature)))
        elif score == "location":
            self.loc = nn.Sequential(nn.Linear(2, rel_pos_hidden), nn.ReLU(inplace=True), nn.Linear(rel_pos_hidden, num_heads * d))
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.tap = AttnTap("query")

    def extra_repr(self) -> str:
        return f"score={self.score!r}, topk={self.topk}"

    def position_bias(self, h: int, w: int, device) -> torch.Tensor:
        """(heads, N, N) additive attention bias for an h x w map, in the MLP's dtype."""
        table, index = relative_offsets(h, w, device, self.rel_pos[0].weight.dtype)
        bias = self.rel_pos(_log_offsets(table))  # (T, heads)
        return bias[index].permute(2, 0, 1)  # (heads, N, N)

    def _fused_inputs(self, q, k):
        """q', k', scale with e(q, k) = scale * q' . k' for the scores SDPA computes."""
        if self.score == "scaled_dot":
            return q, k, self.head_dim**-0.5
        if self.score == "dot":
            return q, k, 1.0
        if self.score == "general":
            return q @ self.w_a.to(q.dtype), k, 1.0  # (B, heads, N, d) @ (heads, d, d)
        beta = self.log_beta.exp().to(q.dtype)  # cosine: (heads, 1, 1)
        return F.normalize(q, dim=-1) * beta, F.normalize(k, dim=-1), 1.0

    def logits(self, q, k, h: int, w: int) -> torch.Tensor:
        """(B, heads, N, N) scores e(q_i, k_j), without the position bias; q, k (B, heads, N, d)."""
        if self.score in _FUSED:
            q2, k2, scale = self._fused_inputs(q, k)
            return (q2 @ k2.transpose(-1, -2)) * scale
        if self.score == "additive":
            hidden = torch.tanh(q[:, :, :, None, :] + k[:, :, None, :, :])  # (B, heads, N, N, d)
            return (hidden * self.v_a[None, :, None, None, :].to(q.dtype)).sum(-1)
        # location: e_ij = q_i . r(offset_ij)
        table, index = relative_offsets(h, w, q.device, self.loc[0].weight.dtype)
        r = self.loc(_log_offsets(table)).reshape(-1, self.num_heads, self.head_dim)  # (T, heads, d)
        per_offset = q @ r.permute(1, 2, 0).to(q.dtype)  # (B, heads, N, T)
        n = h * w
        return per_offset.gather(-1, index.expand(q.shape[0], self.num_heads, n, n))  # (B, heads, N, N)

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        n = h * w
        parts = 2 if self.score == "location" else 3
        qkv = self.qkv(x).reshape(b, parts, self.num_heads, self.head_dim, n)  # (B, parts, heads, d, N)
        qkv = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, N, d)
        q, v = qkv[0], qkv[-1]
        k = qkv[1] if parts == 3 else q  # location: k unused
        bias = self.position_bias(h, w, x.device).to(q.dtype) if self.rel_pos is not None else None
        fused = self.score in _FUSED and self.topk is None
        weights = None
        if fused:
            q2, k2, scale = self._fused_inputs(q, k)
            out = F.scaled_dot_product_attention(
                q2, k2, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=scale
            )  # (B, heads, N, d)
        if not fused or self.tap.active:  # explicit weights: needed, or being captured
            logits = self.logits(q, k, h, w)  # (B, heads, N, N)
            if bias is not None:
                logits = logits + bias
            if self.topk is not None:
                logits = topk_mask_(logits, self.topk)
            weights = logits.softmax(-1)
        if not fused:
            out = F.dropout(weights, self.attn_drop, self.training) @ v  # (B, heads, N, d)
        if self.tap.active:
            self.tap(weights.reshape(b, self.num_heads, n, h, w))  # (B, heads, Nq, H, W)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.gamma * self.proj(out)



register_attn(
    "mhsa_topk",
    functools.partial(MultiHeadSelfAttn2d, topk=16),
    family="self-attention",
    paper="Show, Attend and Tell: Neural Image Caption Generation with Visual Attention (hard attention); "
    "top-k over Bottleneck Transformers' MHSA",
    authors="Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel, Bengio (hard attention); Srinivas et al. (MHSA)",
    year=2015,
    link="https://arxiv.org/abs/1502.03044",
    scope="global",
    hardness="hard",
    score="scaled_dot",
)
