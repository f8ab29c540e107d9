import math

import pytest
import torch
import torch.nn.functional as F

from lolvit.nn import ACTIVATIONS, ATTENTIONS, build_attention
from lolvit.nn.attention import AgentAttention, FastWindowAttention, SeparableSelfAttention
from lolvit.nn.functional import drelu, fawa

SIZES = [(4, 4), (3, 7), (7, 5), (1, 6), (9, 2)]


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
@pytest.mark.parametrize("H,W", SIZES)
def test_forward_backward_shapes(name, H, W):
    attn = build_attention(name, 32, heads=4, fold=2, agents=4)
    x = torch.randn(2, H * W, 32, requires_grad=True)
    out, cache = attn(x, H, W)
    assert out.shape == x.shape
    assert (cache is not None) == name.startswith("fwa")
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for n, p in attn.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {n}"


def fwa_reference(attn: FastWindowAttention, x, H, W, activation):
    """FWA straight from Eqs. 2-5: project all tokens, FAWA per head, normalise, 1x1 K/V, DReLu."""
    B, N, C = x.shape
    h, D = attn.heads, attn.head_dim
    q, tok = attn.qt(x).chunk(2, dim=-1)
    q = q.reshape(B, N, h, D).transpose(1, 2)
    tok = tok.reshape(B, N, h, D).transpose(1, 2)
    keys = fawa(tok, H, W, attn.window, attn.fold)
    keys = F.layer_norm(keys, (keys.shape[-1],))
    k, v = attn.kv(keys).chunk(2, dim=-1)
    weights = drelu(q @ k.transpose(-2, -1) / math.sqrt(D), attn.dp, attn.eps, activation)
    o = (weights @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(o)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("H,W,window,fold", [(4, 4, 1, 1), (5, 7, 1, 2), (6, 9, 2, 2), (3, 7, 1, 4)])
def test_fwa_matches_equations(activation, H, W, window, fold):
    attn = build_attention("fwa", 24, heads=3, fold=fold, window=window, activation=activation)
    x = torch.randn(2, H * W, 24)
    out, _ = attn(x, H, W)
    torch.testing.assert_close(out, fwa_reference(attn, x, H, W, activation), rtol=1e-4, atol=1e-5)


def test_fwa_key_length_and_cache_shape():
    attn = build_attention("fwa", 32, heads=4, fold=2)
    _, cache = attn(torch.randn(1, 10 * 14, 32), 10, 14)
    assert cache.shape == (1, 4, 7, 2 * 8)
    _, cache = attn(torch.randn(1, 10 * 15, 32), 10, 15)
    assert cache.shape == (1, 4, 8, 2 * 8)


def test_fwa_uses_given_cache():
    attn = build_attention("fwa", 16, heads=2)
    x = torch.randn(1, 12, 16)
    _, cache = attn(x, 3, 4)
    out_same, c2 = attn(x, 3, 4, cache)
    assert c2 is cache
    torch.testing.assert_close(out_same, attn(x, 3, 4)[0])
    out_other, _ = attn(x, 3, 4, torch.randn_like(cache))
    assert not torch.allclose(out_other, out_same)


def test_fwa_dp_is_learnable_scalar():
    attn = build_attention("fwa", 16, heads=2)
    assert attn.dp.shape == () and attn.dp.item() == 0.5
    attn(torch.randn(1, 12, 16), 3, 4)[0].sum().backward()
    assert attn.dp.grad is not None and attn.dp.grad.item() != 0.0
    assert "dp" not in dict(build_attention("fwa_softmax", 16, heads=2).named_parameters())


def test_fwa_softmax_matches_reference():
    attn = build_attention("fwa_softmax", 16, heads=2, fold=2)
    x = torch.randn(2, 20, 16)
    B, N, C = x.shape
    q, _ = attn.qt(x).chunk(2, -1)
    q = q.reshape(B, N, 2, 8).transpose(1, 2)
    k, v = attn.kv(attn.keys(x, 4, 5)).chunk(2, -1)
    ref = attn.proj(((q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x, 4, 5)[0], ref, rtol=1e-4, atol=1e-5)


def test_mhsa_matches_softmax_attention():
    attn = build_attention("mhsa", 16, heads=2)
    x = torch.randn(2, 12, 16)
    q, k, v = attn.qkv(x).reshape(2, 12, 3, 2, 8).permute(2, 0, 3, 1, 4)
    ref = attn.proj(((q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1) @ v).transpose(1, 2).reshape(2, 12, 16))
    torch.testing.assert_close(attn(x, 3, 4)[0], ref, rtol=1e-4, atol=1e-5)


def test_ssa_matches_mobilevitv2_definition():
    attn = SeparableSelfAttention(16)
    x = torch.randn(2, 12, 16)
    qkv = attn.qkv(x)
    i, k, v = qkv[..., :1], qkv[..., 1:17], qkv[..., 17:]
    context = sum(torch.softmax(i, dim=1)[:, t] * k[:, t] for t in range(12))  # (B, 16)
    ref = attn.proj(F.relu(v) * context[:, None])
    torch.testing.assert_close(attn(x, 3, 4)[0], ref, rtol=1e-4, atol=1e-5)


def test_agent_biases_resize_to_input():
    attn = AgentAttention(16, heads=2, agents=9, bias_size=5)
    for H, W in [(2, 3), (5, 5), (11, 7)]:
        out, _ = attn(torch.randn(1, H * W, 16), H, W)
        assert out.shape == (1, H * W, 16)
    b = attn._bias(attn.an_bias, attn.ah_bias, attn.aw_bias, 5, 5)
    torch.testing.assert_close(
        b.reshape(2, 9, 5, 5), attn.an_bias + attn.ah_bias[..., None] + attn.aw_bias[..., None, :]
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_drelu_attention_no_overflow_under_autocast(dtype):
    attn = build_attention("fwa", 32, heads=1)
    with torch.no_grad():
        attn.kv.weight.fill_(0.0)
        attn.kv.bias[:32].fill_(400.0)  # every key = 400: q.k = 32 * 400 * 400 overflows fp16 (max 65504)
        attn.kv.bias[32:].fill_(0.01)  # small values: the attention output itself fits fp16
        attn.qt.weight.fill_(0.0)
        attn.qt.bias.fill_(400.0)
    x = torch.randn(1, 16, 32)
    q = attn.qt(x)[..., :32]
    assert not torch.isfinite((q.half() @ q.half().transpose(-2, -1))).all()  # fp16 would overflow
    with torch.autocast("cpu", dtype=dtype):
        out, _ = attn(x, 4, 4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), attn(x, 4, 4)[0], rtol=2e-2, atol=2e-2 * attn(x, 4, 4)[0].abs().max().item())


def test_bad_construction():
    with pytest.raises(ValueError, match="unknown attention"):
        build_attention("linformer", 16)
    with pytest.raises(ValueError, match="divide"):
        build_attention("fwa", 30, heads=4)
    with pytest.raises(ValueError, match="unknown DReLu activation"):
        build_attention("fwa", 16, heads=2, activation="gelu")
    with pytest.raises(TypeError):
        build_attention("mhsa", 16.0, heads=2)
    with pytest.raises(ValueError, match="agents must be a positive int"):
        build_attention("agent", 16, heads=2, agents=0)


@pytest.mark.parametrize("name", ["fwa", "fwa_softmax", "mhsa", "agent", "ssa"])
def test_zero_dim_is_a_clear_error(name):
    with pytest.raises(ValueError, match="dim must be >= 1"):
        build_attention(name, 0, heads=1)


@pytest.mark.parametrize("dp_init", [0.0, -1e-6, -1.0])
def test_fwa_rejects_non_positive_dp_init(dp_init):
    with pytest.raises(ValueError, match="dp_init"):
        build_attention("fwa", 16, heads=2, dp_init=dp_init)


def test_flops_counted_per_head_for_one_fwa_layer():
    """count_flops counts FWA's per-head products (Eqs. 2-3), not the block-diagonal kernel's zeros."""
    from lolvit.nn import LOLViTBlock
    from lolvit.tasks.summary import count_flops

    block = LOLViTBlock(16, 32, depth=1, heads=4, fold=2, patch=1).eval()
    H, W, d, h, D, fold = 6, 8, 32, 4, 8, 2
    N, n = H * W, 4  # n = ceil(W / fold) keys
    hand = (
        2 * N * d * d  # Query half of the shared projection, N tokens
        + 2 * W * d * d  # Token half on the W column sums (FAWA is linear)
        + 2 * h * n * (fold * D) * (2 * D)  # shared 1x1 key/value projection (Eq. 5)
        + 2 * (2 * h * N * n * D)  # Q K^T and weights x V, per head
        + 2 * N * d * d  # output projection
    )
    _, per_module = count_flops(block, (H, W), in_chans=16)
    assert per_module["LOLViTBlock.layers.0.attn"] == hand
    assert block.layers[0].attn.per_head is False  # restored after counting
    x = torch.randn(2, 16, H, W)
    with torch.no_grad():
        ref = block(x)
        block.layers[0].attn.per_head = True
        torch.testing.assert_close(block(x), ref)


def test_lolvit_gflops_at_640():
    """The backbone FLOPs of issue 11 #12 (5.29 / 8.54 G at 640 px, per head)."""
    import timm
    from lolvit.tasks.summary import backbone_rows

    for name, gflops in (("lolvit_s", 5.290), ("lolvit_x", 8.535)):
        rows = backbone_rows(timm.create_model(name), name, (640, 640))
        assert sum(r.flops for r in rows) / 1e9 == pytest.approx(gflops, abs=5e-4)


@pytest.mark.parametrize("agents,grid", [(49, (7, 7)), (48, (6, 8)), (12, (3, 4)), (3, (1, 3)), (10, (2, 5))])
def test_agent_counts_pool_to_near_square_grids(agents, grid):
    attn = AgentAttention(16, heads=2, agents=agents)
    assert attn.pool == grid and attn.an_bias.shape[1] == agents
    out, _ = attn(torch.randn(2, 6 * 9, 16), 6, 9)
    assert out.shape == (2, 54, 16)


def test_drelu_divisor_queries_divides_by_query_length():
    torch.manual_seed(0)
    keys = build_attention("fwa", 16, heads=2, fold=2)
    queries = build_attention("fwa", 16, heads=2, fold=2, drelu_divisor="queries")
    queries.load_state_dict(keys.state_dict())
    H, W = 3, 8
    n = 4  # ceil(8 / 2) keys, N = 24 queries
    x = torch.randn(2, H * W, 16)
    with torch.no_grad():
        a = keys.mix(keys.qt(x)[..., :16], *keys.kv(keys.keys(x, H, W)).chunk(2, dim=-1))
        b = queries.mix(queries.qt(x)[..., :16], *queries.kv(queries.keys(x, H, W)).chunk(2, dim=-1))
    torch.testing.assert_close(b * (H * W), a * n)
    with pytest.raises(ValueError, match="drelu_divisor"):
        build_attention("fwa", 16, heads=2, drelu_divisor="n")
