"""Local self-attention blocks (halo, window, neighborhood, lambda) against timm with copied weights
or against dense references written here, and the registry's scope / hardness / score taxonomy."""
from __future__ import annotations

import pytest
import torch
from timm.layers.halo_attn import HaloAttn
from timm.layers.lambda_layer import LambdaLayer

from attnzoo import create_attn, list_attn, register_attn
from attnzoo.factory import ATTN_REGISTRY, HARDNESS, SCOPES, SCORE_FUNCTIONS, attn_info

C = 16


def _randomized(block, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return block


def _capture(block, x):
    seen = []
    handle = block.tap.register_forward_hook(lambda m, i, o: seen.append(o))
    block.tap.active = True
    block(x)
    block.tap.active = False
    handle.remove()
    return seen[0]


# -- taxonomy ---------------------------------------------------------------------------------


def test_every_block_has_a_valid_scope_hardness_and_score():
    for name in list_attn():
        meta = attn_info(name).metadata
        self_attn = meta["family"] == "self-attention"
        assert meta["scope"] in (SCOPES if self_attn else (None,)), name
        assert meta["hardness"] in (HARDNESS if self_attn else (None,)), name
        assert meta["score"] is None or meta["score"] in SCORE_FUNCTIONS, name


def test_list_attn_filters_on_scope_hardness_and_score():
    assert {"halo", "window", "window_shifted", "neighborhood"} <= set(list_attn(scope="local"))
    assert "mhsa" not in list_attn(scope="local") and "mhsa" in list_attn(scope="global")
    assert "mhsa_topk" in list_attn(hardness="hard") and "mhsa" not in list_attn(hardness="hard")
    assert all(attn_info(n).metadata["scope"] == "local" for n in list_attn(scope="local"))
    assert "mhsa" in list_attn(score="scaled_dot") and "se" not in list_attn(score="scaled_dot")
    assert list_attn("window*", scope="local") == ["window", "window_shifted"]


@pytest.mark.parametrize("key,value", [("scope", "near"), ("hardness", "firm"), ("score", "luong")])
def test_list_attn_rejects_an_unknown_value_naming_the_choices(key, value):
    with pytest.raises(ValueError, match=f"unknown {key} '{value}'; choose one of"):
        list_attn(**{key: value})


def test_register_attn_validates_the_taxonomy_and_fills_defaults():
    meta = dict(paper="p", authors="a", year=2020, link="https://x")
    with pytest.raises(ValueError, match="scope must be one of"):
        register_attn("_bad_scope", torch.nn.Identity, family="self-attention", scope="near", **meta)
    with pytest.raises(ValueError, match="score must be one of"):
        register_attn("_bad_score", torch.nn.Identity, family="self-attention", score="concat", **meta)
    assert "_bad_scope" not in ATTN_REGISTRY and "_bad_score" not in ATTN_REGISTRY
    register_attn("_sa_default", torch.nn.Identity, family="self-attention", **meta)
    register_attn("_ch_default", torch.nn.Identity, family="channel", **meta)
    try:
        sa, ch = attn_info("_sa_default").metadata, attn_info("_ch_default").metadata
        assert (sa["scope"], sa["hardness"], sa["score"]) == ("global", "soft", None)
        assert (ch["scope"], ch["hardness"], ch["score"]) == (None, None, None)
    finally:
        ATTN_REGISTRY.unregister("_sa_default")
        ATTN_REGISTRY.unregister("_ch_default")


# -- halo -------------------------------------------------------------------------------------


def _halo_pair(block_size, halo_size, mask_padding, heads=2):
    torch.manual_seed(0)
    theirs = HaloAttn(C, num_heads=heads, block_size=block_size, halo_size=halo_size).eval()
    ours = create_attn("halo", C, num_heads=heads, block_size=block_size, halo_size=halo_size,
                       mask_padding=mask_padding).eval()
    with torch.no_grad():  # timm's tables have 2h unused leading rows
        ours.q.weight.copy_(theirs.q.weight)
        ours.kv.weight.copy_(theirs.kv.weight)
        ours.rel_h.copy_(theirs.pos_embed.height_rel[2 * halo_size:])
        ours.rel_w.copy_(theirs.pos_embed.width_rel[2 * halo_size:])
    return ours, theirs


@pytest.mark.parametrize("block_size,halo_size,size", [(4, 1, (8, 8)), (4, 2, (8, 12)), (2, 1, (6, 4))])
def test_halo_matches_timm_haloattn_with_copied_weights(block_size, halo_size, size):
    ours, theirs = _halo_pair(block_size, halo_size, mask_padding=False)
    x = torch.randn(2, C, *size)
    ref = theirs(x)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(ours.attend(x), ref, rtol=1e-5, atol=1e-5)


def test_masked_halo_matches_timm_where_no_window_touches_the_border():
    ours, theirs = _halo_pair(4, 2, mask_padding=True)
    x = torch.randn(2, C, 12, 12)
    got, ref = ours.attend(x), theirs(x)
    torch.testing.assert_close(got[:, :, 4:8, 4:8], ref[:, :, 4:8, 4:8], rtol=1e-5, atol=1e-5)  # the centre block
    assert not torch.allclose(got[:, :, :4, :4], ref[:, :, :4, :4], atol=1e-4)  # border: padding masked here


def test_halo_attends_only_within_block_plus_halo_and_never_to_padding():
    block = _randomized(create_attn("halo", C, num_heads=2, block_size=3, halo_size=1)).eval()
    h, w = 7, 5  # not multiples of 3: padded at the bottom and right
    weights = _capture(block, torch.randn(2, C, h, w)).reshape(2, 2, h, w, h, w)
    torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, 2, h, w))  # no weight left on padding
    for qy in range(h):
        for qx in range(w):
            by, bx = qy // 3 * 3, qx // 3 * 3
            outside = torch.ones(h, w, dtype=torch.bool)
            outside[max(by - 1, 0):by + 4, max(bx - 1, 0):bx + 4] = False
            assert (weights[:, :, qy, qx][:, :, outside] == 0).all()


def test_halo_uses_rd_ratio_for_the_query_key_width():
    block = create_attn("halo", 64, num_heads=4, rd_ratio=0.25)
    assert block.rd_channels == 16 and block.dim_qk == 4 and block.q.out_channels == 16
    assert block(torch.randn(1, 64, 5, 5)).shape == (1, 64, 5, 5)


# -- window -----------------------------------------------------------------------------------


def _window_reference(block, x):
    """Dense N x N attention: a query sees the keys of its (shifted) window only, in map coordinates."""
    b, c, h, w = x.shape
    mh, mw, sh, sw = block._geometry(h, w)
    m, heads, d = block.window_size, block.num_heads, block.head_dim
    q, k, v = block.qkv(x).reshape(b, 3, heads, d, h * w).transpose(-1, -2).unbind(1)
    ys = torch.arange(h).repeat_interleave(w)
    xs = torch.arange(w).repeat(h)
    same = (((ys[:, None] - sh) // mh) == ((ys[None, :] - sh) // mh)) & (((xs[:, None] - sw) // mw) == ((xs[None, :] - sw) // mw))
    dy = (ys[:, None] - ys[None, :]).clamp(1 - m, m - 1) + m - 1  # clamped where masked anyway
    dx = (xs[:, None] - xs[None, :]).clamp(1 - m, m - 1) + m - 1
    bias = block.rel_bias[:, dy, dx]
    logits = (q @ k.transpose(-1, -2)) * d**-0.5 + bias
    out = logits.masked_fill(~same, float("-inf")).softmax(-1) @ v
    return x + block.gamma * block.proj(out.transpose(-1, -2).reshape(b, c, h, w))


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [(8, 8), (9, 11), (3, 10)])
def test_window_attention_matches_a_dense_masked_reference(shift, size):
    block = _randomized(create_attn("window", C, num_heads=2, window_size=4, shift=shift)).eval()
    x = torch.randn(2, C, *size)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _window_reference(block, x), rtol=1e-4, atol=1e-5)


def test_shifted_windows_connect_positions_that_plain_windows_separate():
    plain = _randomized(create_attn("window", C, num_heads=2, window_size=4)).eval()
    shifted = create_attn("window", C, num_heads=2, window_size=4, shift=True).eval()
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(1, C, 8, 8)
    wp = _capture(plain, x).reshape(1, 2, 8, 8, 8, 8)
    ws = _capture(shifted, x).reshape(1, 2, 8, 8, 8, 8)
    assert (wp[0, :, 3, 3, 4, 4] == 0).all() and (ws[0, :, 3, 3, 4, 4] > 0).all()  # (3,3) and (4,4)
    # wrapped-around pieces stay apart: the first and last rows never share a shifted window
    assert (ws[0, :, 0, 0, 7, 0] == 0).all()


# -- neighborhood -----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["blocked", "gather"])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (9, 10), (12, 7), (4, 16)])
def test_neighborhood_efficient_and_naive_paths_agree(size, impl):
    fast = _randomized(create_attn("neighborhood", C, num_heads=2, kernel_size=5, impl=impl)).eval()
    naive = create_attn("neighborhood", C, num_heads=2, kernel_size=5, impl="naive").eval()
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, C, *size, requires_grad=True)
    y_fast, y_naive = fast(x), naive(x)
    torch.testing.assert_close(y_fast, y_naive, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_fast)
    (gx_fast,) = torch.autograd.grad(y_fast, x, g)
    (gx_naive,) = torch.autograd.grad(y_naive, x, g)
    torch.testing.assert_close(gx_fast, gx_naive, rtol=1e-4, atol=1e-5)


def test_neighborhood_has_exactly_k_squared_keys_centred_or_shifted_inside_at_the_border():
    block = _randomized(create_attn("neighborhood", C, num_heads=2, kernel_size=3)).eval()
    weights = _capture(block, torch.randn(1, C, 6, 6)).reshape(1, 2, 6, 6, 6, 6)
    assert ((weights > 0).sum((-2, -1)) == 9).all()
    assert (weights[0, :, 3, 3, 2:5, 2:5] > 0).all()  # centred
    assert (weights[0, :, 0, 0, 0:3, 0:3] > 0).all()  # corner: shifted to stay inside


def test_neighborhood_equals_full_attention_when_the_kernel_covers_the_map():
    block = _randomized(create_attn("neighborhood", C, num_heads=2, kernel_size=9)).eval()
    x = torch.randn(2, C, 5, 5)
    q, k, v = block.qkv(x).reshape(2, 3, 2, C // 2, 25).transpose(-1, -2).unbind(1)
    ys, xs = torch.arange(5).repeat_interleave(5), torch.arange(5).repeat(5)
    bias = block.rel_bias[:, ys[None] - ys[:, None] + 8, xs[None] - xs[:, None] + 8]  # key - query
    out = ((q @ k.transpose(-1, -2)) * (C // 2) ** -0.5 + bias).softmax(-1) @ v
    ref = x + block.gamma * block.proj(out.transpose(-1, -2).reshape(2, C, 5, 5))
    torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-5)


def test_neighborhood_rejects_an_even_kernel():
    with pytest.raises(ValueError, match="kernel_size must be an odd positive int"):
        create_attn("neighborhood", C, kernel_size=4)


# -- lambda -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (5, 7)])
def test_lambda_matches_timm_lambdalayer_with_copied_weights(size):
    torch.manual_seed(0)
    theirs = LambdaLayer(C, num_heads=2, dim_head=4, r=3)
    with torch.no_grad():  # non-trivial batch-norm statistics, so the norms are really compared
        for bn in (theirs.norm_q, theirs.norm_v):
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.copy_(torch.randn_like(t))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    theirs.eval()
    ours = create_attn("lambda", C, num_heads=2, dim_head=4, r=3).eval()
    state = theirs.state_dict()
    state["conv_lambda.weight"] = state["conv_lambda.weight"][..., 0]  # Conv3d (k,1,r,r,1) -> Conv2d (k,1,r,r)
    missing = ours.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["gamma", "proj.bias", "proj.weight"]
    x = torch.randn(2, C, *size)
    ref = theirs(x)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(ours.attend(x), ref, rtol=1e-5, atol=1e-5)


def test_lambda_uses_rd_ratio_for_the_query_width():
    block = create_attn("lambda", 64, num_heads=4, rd_ratio=0.5)
    assert block.rd_channels == 32 and block.dim_k == 8
    assert block(torch.randn(1, 64, 5, 5)).shape == (1, 64, 5, 5)


# -- half precision without autocast ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["halo", "window", "window_shifted", "neighborhood", "lambda"])
def test_local_block_runs_in_half_precision_without_autocast(name, dtype):
    block = _randomized(create_attn(name, C)).eval().to(dtype)
    x = torch.randn(2, C, 9, 10).to(dtype)
    y = block(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = block.float()(x.float())
    assert ((y.float() - ref).norm() / ref.norm()) < 0.05
