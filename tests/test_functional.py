import math

import pytest
import torch

from lolvit.nn.functional import ACTIVATIONS, drelu, fawa, num_keys


def fawa_loop(tokens, H, W, window, fold):
    """Eq. 4 written out: w_i = sum_{j=i*P}^{(i+1)*P-1} sum_t d_{t*F+j}, F = W, then Fold."""
    B, h, N, D = tokens.shape
    n_win = math.ceil(W / window)
    keys = torch.zeros(B, h, n_win, D, dtype=torch.float64)
    for i in range(n_win):
        for j in range(i * window, min((i + 1) * window, W)):
            for t in range(N // W):
                keys[:, :, i] += tokens[:, :, t * W + j].double()
    n = math.ceil(n_win / fold)
    out = torch.zeros(B, h, n, fold * D, dtype=torch.float64)
    for i in range(n):
        for f in range(fold):
            if i * fold + f < n_win:
                out[:, :, i, f * D:(f + 1) * D] = keys[:, :, i * fold + f]
    return out


@pytest.mark.parametrize("H,W", [(4, 4), (3, 7), (5, 2), (1, 9), (6, 1)])
@pytest.mark.parametrize("window,fold", [(1, 1), (2, 1), (1, 2), (1, 4), (2, 3), (3, 2)])
def test_fawa_matches_eq4_loop(H, W, window, fold):
    tokens = torch.randn(2, 3, H * W, 5)
    out = fawa(tokens, H, W, window, fold)
    assert out.shape == (2, 3, num_keys(W, window, fold), fold * 5)
    torch.testing.assert_close(out.double(), fawa_loop(tokens, H, W, window, fold), rtol=1e-5, atol=1e-5)


def test_fawa_key_length_follows_width():
    for W, f, n in [(28, 1, 28), (14, 2, 7), (7, 4, 2), (48, 1, 48), (24, 2, 12), (12, 4, 3)]:
        assert fawa(torch.randn(1, 1, 3 * W, 2), 3, W, 1, f).shape[-2] == n


def test_fawa_gradients_flow():
    tokens = torch.randn(1, 2, 12, 4, requires_grad=True)
    fawa(tokens, 3, 4, 1, 2).sum().backward()
    torch.testing.assert_close(tokens.grad, torch.ones_like(tokens))


def test_fawa_bad_input():
    with pytest.raises(ValueError, match="token count"):
        fawa(torch.randn(1, 1, 10, 4), 3, 4)
    with pytest.raises(ValueError, match="window and fold"):
        fawa(torch.randn(1, 1, 12, 4), 3, 4, window=0)


def drelu_reference(x, dp, eps, activation):
    act = {
        "relu": lambda v: max(v, 0.0),
        "leaky_relu": lambda v: v if v > 0 else 0.01 * v,
        "relu6": lambda v: min(max(v, 0.0), 6.0),
        "silu": lambda v: v / (1 + math.exp(-v)),
    }[activation]
    n = x.shape[-1]
    flat = [act(v) / ((dp + eps) * n) for v in x.flatten().tolist()]
    return torch.tensor(flat, dtype=torch.float64).reshape(x.shape)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_drelu_matches_eq3(activation):
    scores = torch.randn(2, 3, 5, 7) * 4
    dp = torch.tensor(0.5)
    out = drelu(scores, dp, 1e-6, activation)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), drelu_reference(scores, 0.5, 1e-6, activation), rtol=1e-5, atol=1e-6)


def test_drelu_divides_by_key_length():
    scores = torch.ones(1, 4, 10)
    assert torch.allclose(drelu(scores, torch.tensor(1.0), 0.0), torch.full((1, 4, 10), 0.1))
    # each row of ReLU weights sums to O(1) whatever the key length
    for n in (4, 16, 64):
        assert drelu(torch.ones(1, 1, n), torch.tensor(1.0), 0.0).sum().item() == pytest.approx(1.0)


def test_drelu_fp32_from_half_inputs():
    scores = torch.full((1, 2, 3), 60000.0, dtype=torch.float16)
    out = drelu(scores, torch.tensor(0.5, dtype=torch.float16))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_drelu_unknown_activation():
    with pytest.raises(ValueError, match="unknown DReLu activation"):
        drelu(torch.randn(2, 2), torch.tensor(0.5), activation="gelu")


def test_drelu_divisor_keys_or_queries():
    scores = torch.ones(1, 6, 3)  # N = 6 queries, n = 3 keys
    dp = torch.tensor(1.0)
    assert torch.allclose(drelu(scores, dp, 0.0), torch.full((1, 6, 3), 1 / 3))
    assert torch.allclose(drelu(scores, dp, 0.0, divisor="queries"), torch.full((1, 6, 3), 1 / 6))
    with pytest.raises(ValueError, match="drelu_divisor"):
        drelu(scores, dp, divisor="n")
