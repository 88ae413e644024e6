"""mhsa's alignment-score functions and its hard (top-k) variant, each against a reference written
here from the published formula with explicit loops over (query, key) pairs on a tiny map; and
mhsa / axial after .half() / .bfloat16() with no autocast."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnzoo import create_attn
from attnzoo.blocks.mhsa import SCORES

C, HEADS, H, W = 4, 2, 2, 3
D = C // HEADS


def _randomized(block, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return block


def _projections(block, x):
    """q, k, v per head as python-indexable tensors: [head][position] -> (d,)."""
    wq = block.qkv.weight[:, :, 0, 0]  # (parts*C, C)
    feats = x[0].reshape(C, -1).T  # (N, C)
    proj = feats @ wq.T  # (N, parts*C)
    parts = proj.shape[1] // C
    q = proj[:, :C].reshape(-1, HEADS, D).transpose(0, 1)  # (heads, N, d)
    k = proj[:, C:2 * C].reshape(-1, HEADS, D).transpose(0, 1) if parts == 3 else None
    v = proj[:, -C:].reshape(-1, HEADS, D).transpose(0, 1)
    return q, k, v


def _score(block, name, q_i, k_j, head, dy, dx):
    """One e_ij from the paper's formula."""
    if name == "scaled_dot":
        return torch.dot(q_i, k_j) / math.sqrt(D)
    if name == "dot":
        return torch.dot(q_i, k_j)
    if name == "general":
        return q_i @ block.w_a[head] @ k_j
    if name == "additive":
        return torch.dot(block.v_a[head], torch.tanh(q_i + k_j))
    if name == "cosine":
        beta = block.log_beta.exp()[head, 0, 0]
        return beta * torch.dot(q_i, k_j) / (q_i.norm() * k_j.norm())
    if name == "location":  # the query against the row of W_a that the key's offset generates
        off = torch.tensor([dy, dx], dtype=torch.float32)
        off = torch.sign(off) * torch.log1p(off.abs())
        r = block.loc(off).reshape(HEADS, D)[head]
        return torch.dot(q_i, r)
    raise AssertionError(name)


@torch.no_grad()
def _reference(block, name, x, topk=None):
    q, k, v = _projections(block, x)
    pos = [(i // W, i % W) for i in range(H * W)]
    out = torch.zeros(HEADS, H * W, D)
    for hd in range(HEADS):
        for i in range(H * W):
            e = torch.stack([
                _score(block, name, q[hd, i], k[hd, j] if k is not None else None, hd,
                       pos[i][0] - pos[j][0], pos[i][1] - pos[j][1])
                for j in range(H * W)
            ])
            if topk is not None:
                kept = sorted(range(H * W), key=lambda j: -float(e[j]))[:topk]
                e = torch.stack([e[j] if j in kept else torch.tensor(float("-inf")) for j in range(H * W)])
            a = torch.softmax(e, 0)
            out[hd, i] = sum(a[j] * v[hd, j] for j in range(H * W))
    att = out.transpose(0, 1).reshape(H * W, C).T.reshape(1, C, H, W)  # heads concatenated
    y = F.conv2d(att, block.proj.weight, block.proj.bias)
    return x + block.gamma * y


@pytest.mark.parametrize("score", SCORES)
def test_each_score_matches_its_formula_on_a_tiny_map(score):
    block = _randomized(create_attn("mhsa", C, num_heads=HEADS, score=score, rel_pos=False)).eval()
    x = torch.randn(1, C, H, W)
    torch.testing.assert_close(block(x), _reference(block, score, x), rtol=1e-4, atol=1e-5)


def test_default_score_is_scaled_dot_with_the_position_bias_unchanged():
    """mhsa's default output = softmax(q k^T / sqrt(d) + B_rel) v, its behaviour before score= existed."""
    block = _randomized(create_attn("mhsa", C, num_heads=HEADS)).eval()
    assert block.score == "scaled_dot"
    x = torch.randn(2, C, H, W)
    q, k, v = block.qkv(x).reshape(2, 3, HEADS, D, H * W).transpose(-1, -2).unbind(1)
    logits = q @ k.transpose(-1, -2) / math.sqrt(D) + block.position_bias(H, W, x.device)
    out = (logits.softmax(-1) @ v).transpose(-1, -2).reshape(2, C, H, W)
    torch.testing.assert_close(block(x), x + block.gamma * block.proj(out), rtol=1e-5, atol=1e-6)


def test_fused_and_explicit_paths_agree_for_every_fused_score():
    """The SDPA path (no tap) and the explicit-weights path (tap active) give the same output."""
    for score in ("scaled_dot", "dot", "general", "cosine"):
        block = _randomized(create_attn("mhsa", C, num_heads=HEADS, score=score)).eval()
        x = torch.randn(2, C, 3, 4)
        y_fused = block(x)
        block.tap.active = True
        y_explicit = block(x)
        torch.testing.assert_close(y_fused, y_explicit, rtol=1e-5, atol=1e-5)


def test_fixed_cosine_temperature_is_not_learned():
    block = create_attn("mhsa", C, num_heads=HEADS, score="cosine", cosine_temperature=5.0)
    assert "log_beta" not in dict(block.named_parameters())
    assert torch.allclose(block.log_beta.exp(), torch.tensor(5.0))


@pytest.mark.parametrize("score", ["general", "additive", "cosine", "location"])
def test_every_parameter_of_each_score_gets_a_gradient(score):
    block = _randomized(create_attn("mhsa", C, num_heads=HEADS, score=score)).train()
    x = torch.randn(2, C, 3, 4)
    (block(x) * torch.randn(2, C, 3, 4)).sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"mhsa(score={score}).{pname} gets no gradient"


def test_unknown_score_names_the_choices():
    with pytest.raises(ValueError, match="unknown score 'luong'.*scaled_dot"):
        create_attn("mhsa", C, score="luong")


# -- hard attention ----------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
def test_topk_equals_a_dense_softmax_with_the_other_keys_masked(score):
    block = _randomized(create_attn("mhsa", C, num_heads=HEADS, score=score, topk=2, rel_pos=False)).eval()
    x = torch.randn(1, C, H, W)
    torch.testing.assert_close(block(x), _reference(block, score, x, topk=2), rtol=1e-4, atol=1e-5)


def test_topk_weights_have_exactly_k_nonzero_keys_per_query():
    block = _randomized(create_attn("mhsa", C, num_heads=HEADS, topk=3)).eval()
    seen = []
    block.tap.register_forward_hook(lambda m, i, o: seen.append(o))
    block.tap.active = True
    block(torch.randn(2, C, 4, 4))
    weights = seen[0].reshape(2, HEADS, 16, 16)
    assert ((weights > 0).sum(-1) == 3).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, 16))


def test_topk_gradient_reaches_only_the_selected_values():
    """Values of keys no query selected get zero gradient; selected ones get a nonzero one."""
    block = _randomized(create_attn("mhsa", C, num_heads=1, topk=1, rel_pos=False)).eval()
    x = torch.randn(1, C, 3, 3)
    q, k, v = block.qkv(x).reshape(1, 3, 1, C, 9).transpose(-1, -2).unbind(1)
    v = v.detach().requires_grad_()
    logits = q @ k.transpose(-1, -2) / math.sqrt(C)
    from attnzoo.blocks.mhsa import topk_mask_

    out = topk_mask_(logits, 1).softmax(-1) @ v
    out.sum().backward()
    chosen = logits.argmax(-1).unique()
    grad_rows = v.grad[0, 0].abs().sum(-1)
    assert (grad_rows[chosen] > 0).all()
    others = [j for j in range(9) if j not in chosen.tolist()]
    assert (grad_rows[others] == 0).all()


def test_topk_at_least_n_is_dense_attention():
    dense = _randomized(create_attn("mhsa", C, num_heads=HEADS)).eval()
    hard = create_attn("mhsa", C, num_heads=HEADS, topk=100).eval()
    hard.load_state_dict(dense.state_dict())
    x = torch.randn(2, C, 3, 3)
    torch.testing.assert_close(hard(x), dense(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("topk", [0, -1, 1.5, True])
def test_topk_rejects_what_is_not_a_positive_int(topk):
    with pytest.raises(ValueError, match="topk must be a positive int"):
        create_attn("mhsa", C, topk=topk)


# -- half precision without autocast (issue 12, deliverable 6) ---------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("spec", ["mhsa", "axial", "mhsa_topk", "mhsa(score='location')", "mhsa(score='additive')",
                                  "mhsa(score='cosine')", "mhsa(score='general')"])
def test_block_runs_in_half_precision_without_autocast(spec, dtype):
    block = _randomized(create_attn(spec, 16)).eval().to(dtype)
    x = torch.randn(2, 16, 5, 6).to(dtype)
    y = block(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = block.float()(x.float())
    assert ((y.float() - ref).norm() / ref.norm()) < 0.05
