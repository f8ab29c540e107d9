"""The speed/memory work (issue 3, item 7) keeps the math: FWA's chunked inference path, the
block-diagonal head layout and fuse(channels_last=True) give the reference outputs."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import lolvit  # noqa: F401  (registers the models)
from lolvit.nn import build_attention, fuse
from lolvit.nn.functional import drelu


def _reference_fwa(attn, x, H, W):
    """Eqs. 2-5 written head by head with explicit transposes (the unoptimised form)."""
    d, h = attn.dim, attn.heads
    B, N, _ = x.shape
    q = F.linear(x, attn.qt.weight[:d], attn.qt.bias[:d]).reshape(B, N, h, -1).transpose(1, 2)
    keys = attn.keys(x, H, W)
    k, v = attn.kv(keys).chunk(2, dim=-1)
    w = drelu(q @ k.transpose(-2, -1) * attn.scale, attn.dp, attn.eps, attn.activation)
    return attn.proj((w @ v).transpose(1, 2).reshape(B, N, d))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "relu6", "silu"])
@pytest.mark.parametrize("fold", [1, 2])
def test_fwa_matches_reference_with_and_without_chunks(activation, fold):
    torch.manual_seed(0)
    attn = build_attention("fwa", 24, 4, fold=fold, activation=activation).eval()
    x = torch.randn(5, 6 * 7, 24)
    ref = _reference_fwa(attn, x, 6, 7)
    y, _ = attn(x, 6, 7)  # autograd enabled: single-pass path
    assert torch.allclose(y, ref, atol=1e-5)
    attn.score_chunk = 2 * 42 * 4 * 7  # two batch items per chunk -> 3 chunks
    with torch.no_grad():
        y_chunked, keys = attn(x, 6, 7)
        y_cached, _ = attn(x, 6, 7, keys)
    assert torch.allclose(y_chunked, ref, atol=1e-5) and torch.allclose(y_cached, ref, atol=1e-5)


def test_fwa_gradients_reach_every_parameter():
    attn = build_attention("fwa", 16, 2)
    out, _ = attn(torch.randn(2, 12, 16), 3, 4)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.parameters())


def test_fwa_bf16_autocast_keeps_fp32_weights():
    attn = build_attention("fwa", 16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attn(torch.randn(2, 12, 16), 3, 4)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_fuse_channels_last_same_output_and_keys():
    torch.manual_seed(0)
    model = timm.create_model("lolvit_s", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        fused = fuse(copy.deepcopy(model), channels_last=True)
        out = fused(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert fused.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(fuse(copy.deepcopy(model)).state_dict()) == set(fused.state_dict())


def test_scripted_model_matches_eager():
    model = timm.create_model("lolvit_s", num_classes=3).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def _randomise_bn(model):
    """Non-trivial BN statistics and affine parameters, so that folding is really exercised."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("name", ["lolvit_s", "lolvit_x"])
def test_fuse_default_matches_unfused_at_odd_sizes(name, channels_last):
    torch.manual_seed(0)
    model = _randomise_bn(timm.create_model(name, num_classes=5))
    fused = fuse(copy.deepcopy(model), channels_last=channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for shape in [(1, 3, 33, 47), (2, 3, 71, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref, out = model(x), fused(x)
            feats = fused.forward_features(x)
        assert (out - ref).abs().max().item() <= 1e-4
        assert feats.shape == model.forward_features(x).shape
        assert feats.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("name", ["mobilevit_xxs"])
def test_fuse_keeps_the_activation_of_timm_batchnormact(name):
    """Regression: BatchNormAct2d (timm's ConvNormAct) applies its activation inside the BN
    module; folding it to Identity dropped the SiLU (mobilevit_xxs output error ~2)."""
    torch.manual_seed(0)
    model = _randomise_bn(timm.create_model(name, num_classes=7))
    x = torch.randn(1, 3, 67, 75)
    with torch.no_grad():
        ref = model(x)
        out = fuse(copy.deepcopy(model))(x)
    assert (out - ref).abs().max().item() <= 1e-4


def test_fuse_leaves_unknown_batchnorm_subclasses_alone():
    class ScaledBN(torch.nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), ScaledBN(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    model = _randomise_bn(Block())
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        ref = model(x)
        fused = fuse(copy.deepcopy(model))
        assert isinstance(fused.bn, ScaledBN)
        assert torch.allclose(fused(x), ref, atol=1e-5)


@pytest.mark.slow
def test_lolvit_compile_two_sizes_one_graph():
    """lolvit.compile: fused + torch.compile(dynamic=True); a second input size (and batch)
    reuses the first graph and both match the eager model."""
    from torch._dynamo.utils import counters

    import lolvit

    torch.manual_seed(0)
    model = _randomise_bn(timm.create_model("lolvit_s", num_classes=5))
    ref = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    compiled = lolvit.compile(model)
    with torch.inference_mode():
        for shape in [(2, 3, 64, 96), (3, 3, 128, 96)]:
            x = torch.randn(*shape)
            assert (compiled(x) - ref(x)).abs().max().item() <= 1e-4
    assert counters["stats"]["unique_graphs"] == 1
    with pytest.raises(TypeError, match="nn.Module"):
        lolvit.compile(lambda x: x)
