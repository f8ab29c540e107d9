"""Parameter-free building blocks of Fast Window Attention.

* :func:`fawa` -- Full-scene Adaptive Window Aggregation (Eq. 4) plus Fold.
* :func:`drelu` -- Dynamic sequence length ReLU attention weights (Eq. 3).

Token order is row-major: token index ``y * W + x`` for a feature map of height ``H``
and width ``W``.
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS: List[str] = ["relu", "leaky_relu", "relu6", "silu"]


def num_keys(width: int, window: int = 1, fold: int = 1) -> int:
    """Key-sequence length n = ceil(ceil(W / window) / fold) (Sec. 4.3)."""
    windows = (width + window - 1) // window
    return (windows + fold - 1) // fold


def column_sums(tokens: Tensor, height: int, width: int) -> Tensor:
    """Sum every column of the token map: (..., H*W, D) -> (..., W, D).

    This is the inner sum of Eq. 4, ``sum_t d_{t*F + j}`` with chunk length F = W.
    """
    lead = tokens.shape[:-2]
    return tokens.reshape(lead + (height, width, tokens.shape[-1])).sum(-3)


def window_fold(columns: Tensor, window: int = 1, fold: int = 1) -> Tensor:
    """Group columns into windows and fold adjacent windows: (..., W, D) -> (..., n, fold*D).

    ``window`` adjacent columns are summed (outer sum of Eq. 4, P_l = window); then ``fold``
    adjacent keys are concatenated along features. Missing columns at the right edge count as
    zeros, so the last window/fold group may be narrower.
    """
    width, dim = columns.shape[-2], columns.shape[-1]
    group = window * fold
    pad = (group - width % group) % group
    columns = F.pad(columns, (0, 0, 0, pad))  # unconditional: no shape-dependent branch for export
    n = (width + pad) // group
    lead = columns.shape[:-2]
    if window > 1:
        columns = columns.reshape(lead + (n * fold, window, dim)).sum(-2)
    return columns.reshape(lead + (n, fold * dim))


def fawa(tokens: Tensor, height: int, width: int, window: int = 1, fold: int = 1) -> Tensor:
    """FAWA key generation (Eq. 4) with Fold, un-normalised.

    (B, heads, H*W, D) -> (B, heads, n, fold*D) with n = ceil(ceil(W / window) / fold).
    Key i is the sum of a full-height vertical strip of ``window`` columns, so the key count
    follows the feature-map width.
    """
    if tokens.dim() < 2:
        raise ValueError(f"fawa expects tokens of shape (..., H*W, D), got {tuple(tokens.shape)}")
    if height * width != tokens.shape[-2]:
        raise ValueError(
            f"fawa: height*width = {height}*{width} = {height * width} does not match "
            f"the token count {tokens.shape[-2]}"
        )
    if window < 1 or fold < 1:
        raise ValueError(f"fawa: window and fold must be >= 1, got window={window}, fold={fold}")
    return window_fold(column_sums(tokens, height, width), window, fold)


def apply_activation(x: Tensor, activation: str) -> Tensor:
    """One of ``ACTIVATIONS`` by name (the DReLu numerator of Eq. 3), shape-preserving."""
    if activation == "relu":
        return F.relu(x)
    if activation == "leaky_relu":
        return F.leaky_relu(x, 0.01)
    if activation == "relu6":
        return F.relu6(x)
    if activation == "silu":
        return F.silu(x)
    raise ValueError("unknown DReLu activation '" + activation + "'; choose one of relu, leaky_relu, relu6, silu")


DRELU_DIVISORS: List[str] = ["keys", "queries"]


def drelu(scores: Tensor, dp: Tensor, eps: float = 1e-6, activation: str = "relu", divisor: str = "keys") -> Tensor:
    """DReLu attention weights (Eq. 3): act(s) / ((DP + eps) * L), computed in fp32.

    (..., N, n) -> (..., N, n) float32. ``divisor`` picks the sequence length L: ``"keys"`` the key
    count n (the last dim of ``scores``), ``"queries"`` the query length N (Eq. 3's N, "the sequence
    length"). ``dp`` is the learnable scalar DP (a tensor, so gradients reach it).
    """
    length = scores.shape[-1] if check_drelu_divisor(divisor) == "keys" else scores.shape[-2]
    weights = apply_activation(scores.float(), activation)
    return weights / ((dp.float() + eps) * length)


def check_drelu_divisor(divisor: str) -> str:
    if divisor not in DRELU_DIVISORS:
        raise ValueError(f"unknown drelu_divisor {divisor!r}; choose one of {DRELU_DIVISORS}")
    return divisor


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown DReLu activation {activation!r}; choose one of {ACTIVATIONS}")
    return activation
