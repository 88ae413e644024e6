"""FcaNet: multi-spectral channel attention (FCA).

Paper: Z. Qin, P. Zhang, F. Wu, X. Li, "FcaNet: Frequency Channel Attention Networks", ICCV 2021.
https://arxiv.org/abs/2012.11879

    B^{u,v}_{i,j} = cos(pi u (i + 1/2) / H) * cos(pi v (j + 1/2) / W)        2-D DCT basis (Eq. 1)
    X = [X^0, ..., X^{n-1}]            channels split into n groups, one frequency (u_k, v_k) each
    Freq^k = sum_{i,j} X^k_{:,i,j} B^{u_k,v_k}_{i,j}                            (Eq. 8-9)
    s = sigmoid(W2 relu(W1 [Freq^0, ..., Freq^{n-1}]))                         SE excitation (Eq. 10)
    y = x * s

The frequency (0, 0) is global average pooling up to a constant (the paper's Theorem 1), so FCA with
one frequency is SE. The frequencies come from the paper's selection on a 7x7 reference grid:
``freq_sel="top16"`` (default, the paper's best), ``top1..top32``, ``low1..low32`` (lowest first,
zig-zag) and ``bot1..bot32`` (the worst-ranked), the rankings the authors published.

Defaults: ``freq_sel="top16"``, ``rd_ratio=1/16`` with ``rd_divisor=1``, no FC biases (as in the
authors' code), ReLU, sigmoid.

NOTE (any H x W): the DCT filters are computed in ``forward`` for the input's own H x W (a few
cosines of length H and W; no fixed size, nothing cached). A reference frequency u on the 7x7 grid
becomes ``floor(u * H / 7)`` on an H-row map (likewise v with W), which keeps the same number of
half-cycles across the map. For H a multiple of 7 this is exactly the authors' ``u * (H // 7)``.
For maps smaller than 7 several reference frequencies collapse onto the same index, e.g. at H = 3,
u = 0..6 -> 0, 0, 0, 1, 1, 2, 2, and at 1x1 every frequency is (0, 0): FCA degrades gracefully to SE.
The authors instead adaptive-average-pool the input to a fixed per-stage size (56, 28, 14, 7).
NOTE (scale): ``dct_norm="mean"`` (default) divides the filters by H*W, so Freq^{(0,0)} equals the
channel mean exactly and the descriptor's scale does not depend on the map size (the block sees
many sizes here). The paper's Eq. 1 omits normalization constants; ``dct_norm="ortho"`` gives the
authors' code's orthonormal DCT-II filters (sqrt(1/H) for u = 0, sqrt(2/H) otherwise, per axis).
NOTE (channel groups): the authors require C divisible by the number of frequencies n. Here channel
c takes frequency ``floor(c * n' / C)`` with n' = min(n, C): identical to theirs when n divides C,
near-equal groups otherwise, and the top-C frequencies, one channel each, when C < n.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..factory import register_attn
from .base import AttnTap, check_channels, check_input, reduced_channels, resolve_layer
from ._layout import LayoutConv2d
from ._pooled_gates import moment_gates

__all__ = ["MultiSpectralAttn", "fca_frequencies"]

# The authors' published frequency rankings on the 7x7 grid, as (u = row index, v = column index).
_RANKINGS = {
    "top": (
        [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1],
        [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3],
    ),
    "low": (
        [0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4],
        [0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3],
    ),
    "bot": (
        [6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6],
        [6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3],
    ),
}
_COUNTS = (1, 2, 4, 8, 16, 32)
_REFERENCE_GRID = 7
_NORMS = ("mean", "ortho")


def fca_frequencies(freq_sel: str) -> list[tuple[int, int]]:
    """The (u, v) frequencies on the 7x7 grid that a selection such as ``"top16"`` names."""
    choices = [f"{k}{n}" for k in _RANKINGS for n in _COUNTS]
    if not isinstance(freq_sel, str) or freq_sel not in choices:
        raise ValueError(f"fca: freq_sel must be one of {choices} (the paper's default is 'top16'), got {freq_sel!r}")
    us, vs = _RANKINGS[freq_sel[:3]]
    n = int(freq_sel[3:])
    return list(zip(us[:n], vs[:n]))


@register_attn(
    "fca",
    family="channel",
    paper="FcaNet: Frequency Channel Attention Networks",
    authors="Qin, Zhang, Wu, Li",
    year=2021,
    link="https://arxiv.org/abs/2012.11879",
)
class MultiSpectralAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        freq_sel: str = "top16",
        dct_norm: str = "mean",
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("fca", channels)
        freqs = fca_frequencies(freq_sel)
        if dct_norm not in _NORMS:
            raise ValueError(f"fca: dct_norm must be one of {_NORMS}, got {dct_norm!r}")
        self.freq_sel = freq_sel
        self.dct_norm = dct_norm
        n = min(len(freqs), channels)
        group = [c * n // channels for c in range(channels)]  # frequency index of each channel
        # reference-grid frequencies per channel, (C,); mapped to the input's H, W in forward
        self.register_buffer("freq_u", torch.tensor([freqs[g][0] for g in group]), persistent=False)
        self.register_buffer("freq_v", torch.tensor([freqs[g][1] for g in group]), persistent=False)
        self.rd_channels = reduced_channels("fca", channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = LayoutConv2d(channels, self.rd_channels, 1, bias=False)
        self.act = resolve_layer("fca", "act_layer", act_layer)(inplace=True)
        self.fc2 = LayoutConv2d(self.rd_channels, channels, 1, bias=False)
        self.gate = resolve_layer("fca", "gate_layer", gate_layer)()
        self.tap = AttnTap("channel")

    def _axis_basis(self, freq: torch.Tensor, size: int) -> torch.Tensor:
        """Per-channel 1-D DCT-II rows for a map side of ``size``, (C, size)."""
        k = torch.div(freq * size, _REFERENCE_GRID, rounding_mode="floor").float()  # (C,) frequency index
        pos = torch.arange(size, device=freq.device).float() + 0.5  # (size,)
        basis = torch.cos((math.pi / size) * k[:, None] * pos[None, :])  # (C, size)
        if self.dct_norm == "mean":
            return basis / size
        return basis * torch.sqrt((1.0 + (k > 0).float()) / size)[:, None]  # orthonormal DCT-II

    def dct_filters(self, height: int, width: int) -> torch.Tensor:
        """The (C, H, W) DCT filters this block applies to an H x W input."""
        return self._axis_basis(self.freq_u, height)[:, :, None] * self._axis_basis(self.freq_v, width)[:, None, :]

    def from_pooled(self, s):
        """The channel factor from the DCT coefficients s (B, C, 1, 1)."""
        return self.tap(self.gate(self.fc2(self.act(self.fc1(s)))))

    def forward(self, x):
        check_input(self, x)
        filters = self.dct_filters(x.shape[2], x.shape[3]).to(x.dtype)  # (C, H, W)
        y = moment_gates(x, self.from_pooled, self, weights=filters)  # native CPU kernels where they apply
        if y is not None:
            return y
        s = (x * filters).sum((2, 3), keepdim=True)  # (B, C, 1, 1): one DCT coefficient per channel
        return x * self.from_pooled(s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, freq_sel={self.freq_sel!r}, dct_norm={self.dct_norm!r}"
