from unittest import mock

import pytest
import torch

import lolvit.nn.attention as attention_mod
from lolvit.nn import FeatureFusion, GhostConv, GhostNetBlock, LOLViTBlock, MobileViTFusion
from lolvit.tasks.summary import count_params


def test_ghostconv_params():
    assert count_params(GhostConv(32, 64)) == 32 * (32 + 29)


@pytest.mark.parametrize(
    "c1,c2,s,se,expected",
    [
        (16, 32, 1, False, 2448), (32, 48, 2, False, 6872), (48, 48, 1, False, 6696), (48, 64, 2, True, 17208),
        (64, 96, 2, True, 30288), (96, 128, 2, True, 60528), (128, 192, 2, True, 109728),
        (32, 32, 1, False, 3440), (32, 64, 2, False, 8160), (64, 64, 1, False, 10976),
    ],
)
def test_ghostnet_block_rows(c1, c2, s, se, expected):
    block = GhostNetBlock(c1, c2, s, se)
    assert count_params(block) == expected
    y = block(torch.randn(2, c1, 9, 11))
    assert y.shape == (2, c2, -(-9 // s), -(-11 // s))


def test_fusion_param_formulas():
    for c in (64, 96, 128):
        assert count_params(FeatureFusion(c)) == 5 * c * c + 82 * c
        assert count_params(MobileViTFusion(c)) == 18 * c * c + 2 * c


def _count_fawa(block, x):
    calls = []
    original = attention_mod.column_sums

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    with mock.patch.object(attention_mod, "column_sums", counting):
        out = block(x)
    return out, len(calls)


def test_cache_identical_for_single_layer():
    torch.manual_seed(0)
    a = LOLViTBlock(32, 48, depth=1, fold=2, cache=True).eval()
    b = LOLViTBlock(32, 48, depth=1, fold=2, cache=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 32, 7, 9)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_cache_skips_fawa_in_later_layers():
    cached = LOLViTBlock(32, 48, depth=3, fold=2, cache=True).eval()
    uncached = LOLViTBlock(32, 48, depth=3, fold=2, cache=False).eval()
    assert count_params(cached) == count_params(uncached)
    uncached.load_state_dict(cached.state_dict())
    x = torch.randn(1, 32, 6, 8)
    out_c, n_c = _count_fawa(cached, x)
    out_u, n_u = _count_fawa(uncached, x)
    assert (n_c, n_u) == (1, 3)
    assert out_c.shape == out_u.shape
    assert not torch.allclose(out_c, out_u)  # later layers really use the first layer's keys


@pytest.mark.parametrize("attention", ["fwa", "fwa_softmax", "mhsa", "agent", "ssa"])
@pytest.mark.parametrize("fusion", ["feature_fusion", "mobilevit"])
def test_lolvit_block_any_attention(attention, fusion):
    block = LOLViTBlock(32, 48, depth=2, heads=4, fold=2, patch=2, attention=attention, fusion=fusion)
    x = torch.randn(2, 32, 5, 7, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.mean().backward()
    assert torch.isfinite(x.grad).all()


def test_block_bad_args():
    with pytest.raises(ValueError, match="fusion"):
        LOLViTBlock(32, 48, fusion="add")
    with pytest.raises(ValueError, match="depth"):
        LOLViTBlock(32, 48, depth=0)
    with pytest.raises(ValueError, match="stride"):
        GhostNetBlock(16, 16, 3)


@pytest.mark.parametrize("ratio", [0, -2.0, 0.01])
def test_transformer_layer_rejects_empty_mlp(ratio):
    from lolvit.nn import TransformerLayer

    with pytest.raises(ValueError, match="mlp_ratio"):
        TransformerLayer(16, "fwa", 2, mlp_ratio=ratio)


def test_lolvit_block_empty_batch():
    block = LOLViTBlock(16, 24, depth=2, heads=2, fold=2).eval()
    with torch.no_grad():
        assert block(torch.zeros(0, 16, 5, 7)).shape == (0, 16, 5, 7)


def test_token_patches_are_mobilevit_sequences():
    """patch_mode='tokens': attention runs over the patch grid, one sequence per pixel position."""
    torch.manual_seed(0)
    block = LOLViTBlock(8, 16, heads=2, fold=1, patch=2, patch_mode="tokens").eval()
    assert block.layers[0].attn.window == 1
    seen = []
    original = block.layers[0].attn.forward

    def spy(x, H, W, cache=None):
        seen.append((tuple(x.shape), H, W))
        return original(x, H, W, cache)

    block.layers[0].attn.forward = spy
    with torch.no_grad():
        out = block(torch.randn(3, 8, 7, 10))  # 7 rows: padded to 8, cropped back
    assert out.shape == (3, 8, 7, 10)
    assert seen == [((3 * 4, 4 * 5, 16), 4, 5)]
    window = LOLViTBlock(8, 16, heads=2, fold=1, patch=2, patch_mode="window")
    assert window.layers[0].attn.window == 2 and window.patch == 1
    one = LOLViTBlock(8, 16, heads=2, patch=1, patch_mode="tokens").eval()
    ref = LOLViTBlock(8, 16, heads=2, patch=1, patch_mode="window").eval()
    ref.load_state_dict(one.state_dict())
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(one(x), ref(x))  # both readings agree for P = 1
    with pytest.raises(ValueError, match="patch_mode"):
        LOLViTBlock(8, 16, heads=2, patch_mode="pixels")


@pytest.mark.slow
def test_compiled_training_dynamic_shapes(tmp_path, monkeypatch):
    """torch.compile(dynamic=True) forward + backward at two sizes (Inductor used to fail on the
    token-to-map view: 'cannot determine truth value of Relational')."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    block = LOLViTBlock(16, 24, depth=2, heads=2, fold=2).train()
    compiled = torch.compile(block, dynamic=True)
    for size in [(4, 6), (5, 7)]:
        x = torch.randn(2, 16, *size)
        out = compiled(x)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
        block.zero_grad()
        ref = block(x)
        ref.square().mean().backward()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        for n, p in block.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-5)
        block.zero_grad()
    torch._dynamo.reset()
