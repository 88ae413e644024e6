"""Every registered block in float16 and bfloat16 without autocast (``block.half()``, ``.bfloat16()``).

The output keeps the input's dtype and is finite, and so are the gradients, in train and eval mode,
on a 1x1 map (zero variance: the case where normalisations divide by their eps), a constant map, and
a small odd map, with the blocks' own initialisation and with random weights (so a zero-initialised
branch cannot hide an overflow). Runs on CPU, where torch 2.14 has half and bfloat16 kernels for
every op the blocks use.
"""
from __future__ import annotations

import pytest
import torch

from attnzoo import create_attn, list_attn

BLOCKS = list_attn()
DTYPES = [torch.float16, torch.bfloat16]
C = 32

# Their position-bias table is built in float32 and fed to a half-precision Linear ("mat1 and mat2
# must have the same dtype"). Fixed on branch h/localattn (mhsa.py / axial.py are that helper's files);
# remove them from this set at merge: test_known_half_precision_failures_are_still_failures then fails.
WORKING = BLOCKS


def _randomize_(block: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
    return block


def _inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "1x1": torch.randn(2, C, 1, 1, generator=g).to(dtype),
        "constant": torch.full((2, C, 4, 4), 0.5).to(dtype),
        "5x7": (3 * torch.randn(2, C, 5, 7, generator=g)).to(dtype),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", WORKING)
def test_block_runs_in_low_precision_without_autocast(name, dtype):
    for random_weights in (False, True):
        torch.manual_seed(0)
        block = create_attn(name, C)
        if random_weights:
            _randomize_(block)
        block = block.to(dtype)
        assert all(p.dtype == dtype for p in block.parameters())
        for train in (True, False):
            block.train(train)
            for what, x in _inputs(dtype).items():
                x = x.clone().requires_grad_()
                y = block(x)
                where = f"{name} ({what}, train={train}, random weights={random_weights})"
                assert y.dtype == dtype, f"{where} returned {y.dtype} for a {dtype} input"
                assert y.shape == x.shape
                assert torch.isfinite(y).all(), f"{where} gave non-finite values in {dtype}"
                block.zero_grad()
                y.float().square().mean().backward()
                assert torch.isfinite(x.grad).all(), f"{where}: non-finite input gradient in {dtype}"
                for k, p in block.named_parameters():
                    assert p.grad is None or torch.isfinite(p.grad).all(), f"{where}: non-finite grad of {k}"


def test_low_precision_matches_float32_closely():
    """Not just finite: the bfloat16/float16 block computes the float32 block's function."""
    torch.manual_seed(0)
    x = torch.randn(2, C, 6, 6)
    for name in ("se", "cbam", "sge", "shuffle", "gct"):
        ref = _randomize_(create_attn(name, C)).eval()
        want = ref(x)
        for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
            low = _randomize_(create_attn(name, C)).to(dtype).eval()
            got = low(x.to(dtype)).float()
            assert torch.allclose(got, want, atol=tol, rtol=tol), (name, dtype, (got - want).abs().max())
