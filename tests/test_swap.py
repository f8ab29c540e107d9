"""swap_attention: FWA as a drop-in for timm MobileViT (v1) and MobileViTv2 attention."""
import copy

import pytest
import timm
import torch

from lolvit.nn import FastWindowAttention, swap_attention
from lolvit.nn.swap import PatchTokenFWA


def _attn_modules(model):
    from timm.models.mobilevit import MobileVitBlock, MobileVitV2Block

    return [layer.attn for m in model.modules() if isinstance(m, (MobileVitBlock, MobileVitV2Block))
            for layer in m.transformer]


def _count(modules):
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.fixture(scope="module", params=["mobilevit_xxs", "mobilevitv2_050"])
def pair(request):
    torch.manual_seed(0)
    base = timm.create_model(request.param, pretrained=False, num_classes=10).eval()
    swapped = swap_attention(copy.deepcopy(base), "fwa")
    return request.param, base, swapped


def test_output_shape_and_finite(pair):
    _, base, swapped = pair
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        y = swapped(x)
    assert y.shape == base(x).shape == (2, 10)
    assert torch.isfinite(y).all()


def test_param_count_change_equals_swapped_attention(pair):
    _, base, swapped = pair
    old, new = _attn_modules(base), _attn_modules(swapped)
    assert len(old) == len(new) > 0
    assert all(isinstance(m, PatchTokenFWA) and isinstance(m.attn, FastWindowAttention) for m in new)
    n_base = sum(p.numel() for p in base.parameters())
    n_swap = sum(p.numel() for p in swapped.parameters())
    assert n_swap - n_base == _count(new) - _count(old)
    assert n_swap != n_base


def test_non_attention_weights_kept(pair):
    _, base, swapped = pair
    sd_base, sd_swap = base.state_dict(), swapped.state_dict()
    kept = [k for k in sd_base if ".attn." not in k]
    assert kept and all(torch.equal(sd_base[k], sd_swap[k]) for k in kept)
    assert not [k for k in sd_swap if ".attn." not in k and k not in sd_base]
    assert all(k in sd_base or ".attn." in k for k in sd_swap)


def test_gradient_reaches_fwa(pair):
    _, _, swapped = pair
    model = copy.deepcopy(swapped).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    for m in _attn_modules(model):
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_non_square_and_non_divisible_input():
    model = swap_attention(timm.create_model("mobilevit_xxs", pretrained=False, num_classes=5).eval())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 100)).shape == (1, 5)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="no timm MobileViT"):
        swap_attention(timm.create_model("mobilenetv3_small_100", pretrained=False))
    with pytest.raises(ValueError, match="attention='fwa'"):
        swap_attention(timm.create_model("mobilevit_xxs", pretrained=False), "mhsa")
