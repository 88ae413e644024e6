"""External Attention: attention against two small learnable memories instead of the input itself.

Paper: M.-H. Guo, Z.-N. Liu, T.-J. Mu, S.-M. Hu, "Beyond Self-attention: External Attention using
Two Linear Layers for Visual Tasks", 2021 (TPAMI 2022). https://arxiv.org/abs/2105.02358

With F = W_in X (N, C) the N = H*W input features and memories M_k, M_v (S x C, S = 64):

    A~     = F M_k^T                                 (N, S) affinities to the S memory units (Eq. 5)
    A^     = softmax over N of A~ (per unit s)       double normalisation (Eq. 7):
    a_ij   = A^_ij / sum_j' A^_ij'                     then l1 over the S units of each position
    Y      = X + BN(W_out (A M_v))                   the EA block: 1x1 convs in/out, BN, residual

M_k and M_v are 1x1 convolutions without bias (``mem_k``: C -> S, ``mem_v``: S -> C). M_v starts
as M_k^T, as in the authors' code.

Memory tying (``tie_memories``). The paper names two memories, M_k and M_v, and so this block
learns them independently by default (``tie_memories=False``). The authors' code sets
``linear_1.weight.data = linear_0.weight.data.permute(1, 0, 2)``: M_v becomes a transposed *view*
of M_k's storage, so while the module stays on the device and dtype it was built with, every
optimizer step writes both parameters' updates into the same storage and M_v = M_k^T holds for the
whole of training (for SGD the shared storage moves by -lr * (g_k + g_v^T), with weight decay counted
twice, once per parameter). Any per-parameter conversion (``.to(device)``, ``.cuda()``, ``.double()``)
copies each parameter separately and silently unties them, after which they train independently
from the transposed start, as here. ``tie_memories=True`` ties them by construction: one parameter
M_k (``mem_k.weight``), M_v = M_k^T in every forward, so the gradient is g_k + g_v^T (the authors'
SGD step, weight decay counted once), the tie survives ``.to()``, and the state dict has no
``mem_v.weight``.

NOTE (departures, and why):
* The authors' EA block ends with a ReLU after the residual sum; as a drop-in block that would
  clip the host network's negative features, so it is off by default (``out_act=True`` restores it).
* ``W_in`` has no bias: its bias adds M_k b to every position's affinity to unit s, a constant
  across N that the softmax over N removes, so it could never learn.
* The l1 step divides by ``eps + sum`` (eps = 1e-9 in float32, as the authors' code); the sum is
  over positive softmax values, so it never reaches 0 and the eps only guards underflow.
* Tap: the block multiplies no factor into its input and does not mix positions (each position is
  rebuilt from the memory); ``self.tap`` (kind ``"spatial"``) receives each memory unit's softmax
  over positions as (B, S, H, W), one spatial map per unit, as ``gc`` taps its pooling weights.
  The tapped maps are those before the l1 step: after it every position's weights sum to 1 over S,
  so their mean over units would be the constant 1/S and show nothing.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..factory import register_attn
from .base import AttnTap, SafeBatchNorm2d, check_channels, check_input, resolve_layer

__all__ = ["ExternalAttn"]


@register_attn(
    "external",
    family="self-attention",
    paper="Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks",
    authors="Guo, Liu, Mu, Hu",
    year=2021,
    link="https://arxiv.org/abs/2105.02358",
)
class ExternalAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        memory_size: int = 64,
        out_act: bool = False,
        eps: float = 1e-9,
        act_layer: str | type[nn.Module] = "relu",
        tie_memories: bool = False,
    ) -> None:
        super().__init__()
        self.channels = check_channels("external", channels)
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
            raise ValueError(f"external: memory_size (the paper's S) must be a positive int, got {memory_size!r}; the paper uses 64")
        self.memory_size = memory_size
        self.eps = float(eps)
        self.conv_in = nn.Conv2d(channels, channels, 1, bias=False)
        self.mem_k = nn.Conv2d(channels, memory_size, 1, bias=False)
        self.tie_memories = bool(tie_memories)
        if self.tie_memories:
            self.mem_v = None  # M_v = M_k^T in forward
        else:
            self.mem_v = nn.Conv2d(memory_size, channels, 1, bias=False)
            self.mem_v.weight.data.copy_(self.mem_k.weight.data.transpose(0, 1))  # M_v = M_k^T at init
        self.conv_out = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = SafeBatchNorm2d(channels)
        self.act = resolve_layer("external", "act_layer", act_layer)() if out_act else nn.Identity()
        self.tap = AttnTap("spatial")

    def forward(self, x):
        check_input(self, x)
        b, c, h, w = x.shape
        attn = self.mem_k(self.conv_in(x)).flatten(2)  # (B, S, N)
        attn = attn.softmax(-1)  # (B, S, N), each memory unit's weights sum to 1 over N
        self.tap(attn.reshape(b, self.memory_size, h, w))  # (B, S, H, W): where each unit reads
        attn = attn / (self.eps + attn.sum(1, keepdim=True))  # (B, S, N), each position's sum to 1 over S
        attn = attn.reshape(b, self.memory_size, h, w)  # (B, S, H, W)
        if self.mem_v is None:
            y = F.conv2d(attn, self.mem_k.weight.transpose(0, 1))  # (B, C, H, W), M_v = M_k^T
        else:
            y = self.mem_v(attn)  # (B, C, H, W)
        return self.act(x + self.norm(self.conv_out(y)))
