"""Token-mixing attention mechanisms behind one interface.

Every mechanism maps normalised tokens of a feature map to tokens of the same shape::

    out, cache = attn(x, H, W, cache)      # x: (B, N = H*W, dim) -> out: (B, N, dim)

``cache`` is the FAWA key sequence of Eq. 5 for :class:`FastWindowAttention`; the other
mechanisms ignore it and return ``None``. Build one by name with :func:`build_attention`.
"""
import math
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .functional import apply_activation, check_activation, check_drelu_divisor, column_sums, window_fold


SCORE_CHUNK = 1 << 21  # FWA inference: max elements of one chunk of attention weights (8 MiB fp32)


def _check_heads(dim: int, heads: int) -> int:
    if not isinstance(dim, int) or not isinstance(heads, int):
        raise TypeError(f"dim and heads must be int, got dim={dim!r}, heads={heads!r}")
    if dim < 1:
        raise ValueError(f"the attention dim must be >= 1, got dim={dim}")
    if heads < 1 or dim % heads:
        raise ValueError(f"heads={heads} must be >= 1 and divide the attention dim {dim}")
    return dim // heads


def _to_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, heads*D) -> (B, heads, N, D)."""
    B, N, C = x.shape
    return x.reshape(B, N, heads, C // heads).transpose(1, 2)


def _from_heads(x: Tensor) -> Tensor:
    """(B, heads, N, D) -> (B, N, heads*D)."""
    B, h, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, h * D)


def _block_diagonal(k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-head keys and values as block-diagonal matrices: (B, h, n, D) x2 -> (B, h*D, h*n), (B, h*n, h*D)."""
    B, h, n, D = k.shape
    mask = torch.eye(h, dtype=k.dtype, device=k.device).reshape(1, h, 1, h, 1)
    kbd = (k.transpose(-2, -1).unsqueeze(3) * mask).reshape(B, h * D, h * n)
    vbd = (v.unsqueeze(3) * mask).reshape(B, h * n, h * D)
    return kbd, vbd


def _capturing() -> bool:
    """True while a graph is being captured: torch.jit.trace, torch.compile/export, torch.fx."""
    if torch.jit.is_scripting():
        return False
    return (
        torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    )


class FastWindowAttention(nn.Module):
    """Fast Window Attention (FWA, Eqs. 2-5).

    Query and Token come from one projection; the Token sequence is aggregated by FAWA
    (Eq. 4, window ``window`` columns, ``fold`` keys concatenated) and normalised, a shared
    1x1 projection turns each per-head key into FWA_K and FWA_V (Eq. 5), and the weights are
    DReLu(Q FWA_K^T / sqrt(D)) (Eq. 3), computed in fp32. ``drelu_divisor``: the sequence length
    that divides the weights, ``"keys"`` (n, default) or ``"queries"`` (N, the paper's text).

    ``cache`` (B, heads, n, fold*D): the normalised FAWA keys of an earlier layer of the same
    block; when given, FAWA is skipped and only the Query half of the projection runs.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        fold: int = 1,
        window: int = 1,
        activation: str = "relu",
        dp_init: float = 0.5,
        eps: float = 1e-6,
        drelu_divisor: str = "keys",
        **kwargs,
    ):
        super().__init__()
        self.head_dim = _check_heads(dim, heads)
        self.drelu_divisor = check_drelu_divisor(drelu_divisor)
        if fold < 1 or window < 1:
            raise ValueError(f"fold and window must be >= 1, got fold={fold}, window={window}")
        if not float(dp_init) > 0 or not float(eps) >= 0:
            # the Eq. 3 divisor (DP + eps) * n must start positive: DP <= -eps gives inf/NaN weights
            raise ValueError(f"dp_init must be > 0 and eps >= 0, got dp_init={dp_init}, eps={eps}")
        self.dim = dim
        self.heads = heads
        self.fold = fold
        self.window = window
        self.activation = check_activation(activation)
        self.eps = eps
        self.scale = self.head_dim ** -0.5
        self.score_chunk = SCORE_CHUNK
        self.qt = nn.Linear(dim, 2 * dim)
        self.kv = nn.Linear(fold * self.head_dim, 2 * self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.dp = nn.Parameter(torch.tensor(float(dp_init)))
        self.per_head = False  # True: the per-head product of Eqs. 2-3 as written (FLOP counting)

    def keys(self, x: Tensor, H: int, W: int) -> Tensor:
        """Normalised FAWA keys of the Token sequence: (B, N, dim) -> (B, heads, n, fold*D).

        FAWA is linear, so the column sums of Token = x W_t^T + b_t are computed as
        (column sums of x) W_t^T + H b_t: the Token projection runs on W columns, not N tokens.
        """
        d = self.dim
        cols = column_sums(x, H, W)
        tokens = F.linear(cols, self.qt.weight[d:], self.qt.bias[d:] * H)
        keys = window_fold(_to_heads(tokens, self.heads), self.window, self.fold)
        return F.layer_norm(keys, (self.fold * self.head_dim,), eps=1e-5)

    def attend_tokens(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """DReLu(q k^T / sqrt(D)) v per head (Eqs. 2-3) on token layout, in fp32:
        (B, N, heads*D), (B, h, n, D) x2 -> (B, N, heads*D).

        Keys and values of all heads go into block-diagonal matrices, (B, h*D, h*n) and
        (B, h*n, h*D), so both products are single batched GEMMs on the contiguous query and
        the output lands in token layout: no head transposes or copies of the N-long tensors.
        The off-diagonal blocks are exact zeros (act(0) = 0 for every DReLu activation), so
        the result is that of the per-head product (``per_head=True`` computes that product
        directly, so that FLOP counters see the algorithm's h*N*n*D multiply-adds per product
        rather than the h-times larger block-diagonal GEMMs). Without autograd, the batch is processed in
        chunks whose (chunk, N, h*n) weights stay below ``score_chunk`` elements, written into
        one preallocated output: peak memory is about query + output.
        """
        q, k, v = q.float(), k.float(), v.float()
        B, h, n, D = k.shape
        N = q.shape[1]
        homogeneous = self.activation == "relu" or self.activation == "leaky_relu"
        # relu/leaky_relu are positively homogeneous: the Eq. 3 scale moves onto V
        length = n if self.drelu_divisor == "keys" else N  # Eq. 3's sequence length
        c = (self.scale if homogeneous else 1.0) / ((self.dp.float() + self.eps) * length)
        if self.per_head:
            qh = _to_heads(q, h)  # (B, h, N, D): h products of (N, D) x (D, n) and (N, n) x (n, D)
            return _from_heads(self._weights(qh @ k.transpose(-2, -1), homogeneous) @ (v * c))
        if torch.is_grad_enabled() or _capturing():
            # traced/exported graphs must not bake in a loop over (or guards on) the example batch
            kbd, vbd = _block_diagonal(k, v * c)
            return torch.bmm(self._weights(torch.bmm(q, kbd), homogeneous), vbd)
        step = max(1, self.score_chunk // max(1, N * h * n))
        if step >= B:
            kbd, vbd = _block_diagonal(k, v * c)
            return torch.bmm(self._weights(torch.bmm(q, kbd), homogeneous), vbd)
        out = torch.empty(B, N, h * D, dtype=q.dtype, device=q.device)
        for i in range(0, B, step):
            j = min(B, i + step)
            kbd, vbd = _block_diagonal(k[i:j], v[i:j] * c)
            torch.bmm(self._weights(torch.bmm(q[i:j], kbd), homogeneous), vbd, out=out[i:j])
        return out

    def _weights(self, scores: Tensor, homogeneous: bool) -> Tensor:
        """Eq. 3 numerators, in place on fresh scores (the 1/((DP+eps) n) factor sits on V)."""
        if homogeneous:
            return torch.relu_(scores) if self.activation == "relu" else F.leaky_relu_(scores, 0.01)
        return apply_activation(scores.mul_(self.scale), self.activation)

    @torch.jit.unused
    def _attend_autocast_off(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if isinstance(q, torch.fx.Proxy):  # symbolic tracing: the graph runs attend_tokens as written
            return self.attend_tokens(q, k, v)
        device = q.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            with torch.autocast(q.device.type, enabled=False):
                return self.attend_tokens(q, k, v)
        return self.attend_tokens(q, k, v)

    def mix(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention weights applied to values: (B, N, dim), (B, h, n, D) x2 -> (B, N, dim)."""
        if torch.jit.is_scripting():
            return self.attend_tokens(q, k, v)
        return self._attend_autocast_off(q, k, v)

    def forward(
        self, x: Tensor, H: int, W: int, cache: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        d = self.dim
        if cache is None:
            cache = self.keys(x, H, W)
        k, v = self.kv(cache).chunk(2, dim=-1)
        # the query (B, N, dim) is passed inline so that only mix holds it: freed before proj
        o = self.mix(F.linear(x, self.qt.weight[:d], self.qt.bias[:d]), k, v)
        return self.proj(o.to(x.dtype)), cache  # under autocast proj casts o itself

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, fold={self.fold}, window={self.window}, "
            f"activation={self.activation}, drelu_divisor={self.drelu_divisor}"
        )


class FastWindowAttentionSoftmax(FastWindowAttention):
    """FWA with SoftMax weights instead of DReLu (the paper's FWA(SoftMax) ablation)."""

    def __init__(self, dim: int, heads: int = 4, fold: int = 1, window: int = 1, **kwargs):
        kwargs.pop("activation", None)
        kwargs.pop("dp_init", None)
        kwargs.pop("drelu_divisor", None)
        super().__init__(dim, heads, fold, window, activation="relu", **kwargs)
        del self.dp
        self.activation = "softmax"

    def mix(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(D)) v per head via SDPA: (B, N, dim), (B, h, n, D) x2 -> (B, N, dim)."""
        q = _to_heads(q, self.heads)
        return _from_heads(F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype)))


class MultiHeadSelfAttention(nn.Module):
    """Global multi-head self-attention (Eq. 1) over all N tokens, via SDPA."""

    def __init__(self, dim: int, heads: int = 4, **kwargs):
        super().__init__()
        self.head_dim = _check_heads(dim, heads)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, H: int, W: int, cache: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(_from_heads(o)), None


class AgentAttention(nn.Module):
    """Agent Attention (Han et al., ECCV 2024), in the form of its authors' PVT/Swin code.

    ``agents`` agent tokens are average-pooled from the query map to a grid of rows x cols =
    ``agents`` as near square as possible (49: 7x7, 48: 6x8, 12: 3x4, 3: 1x3); agents first attend
    to the keys (softmax, agent biases), then the queries attend to the agents (softmax, query
    biases); a 3x3 depthwise convolution of V is added. Position biases are learned at a
    reference size and bilinearly resized to the actual H x W.
    """

    def __init__(self, dim: int, heads: int = 4, agents: int = 49, bias_size: int = 7, **kwargs):
        super().__init__()
        self.head_dim = _check_heads(dim, heads)
        if isinstance(agents, bool) or not isinstance(agents, int) or agents < 1:
            raise ValueError(f"agents must be a positive int, got {agents!r}")
        rows = max(r for r in range(1, math.isqrt(agents) + 1) if agents % r == 0)
        self.heads = heads
        self.pool = (rows, agents // rows)
        self.agents = agents
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        s = bias_size
        self.an_bias = nn.Parameter(torch.zeros(heads, agents, s, s))
        self.na_bias = nn.Parameter(torch.zeros(heads, agents, s, s))
        self.ah_bias = nn.Parameter(torch.zeros(heads, agents, s))
        self.aw_bias = nn.Parameter(torch.zeros(heads, agents, s))
        self.ha_bias = nn.Parameter(torch.zeros(heads, agents, s))
        self.wa_bias = nn.Parameter(torch.zeros(heads, agents, s))
        for p in (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias):
            nn.init.trunc_normal_(p, std=0.02)

    def _bias(self, full: Tensor, rows: Tensor, cols: Tensor, H: int, W: int) -> Tensor:
        """Resize (heads, agents, s, s) and two (heads, agents, s) biases -> (1, heads, agents, H*W)."""
        h, a = self.heads, self.agents
        b = F.interpolate(full, size=(H, W), mode="bilinear", align_corners=False)
        r = F.interpolate(rows, size=H, mode="linear", align_corners=False)
        c = F.interpolate(cols, size=W, mode="linear", align_corners=False)
        b = b + r.unsqueeze(-1) + c.unsqueeze(-2)
        return b.reshape(1, h, a, H * W)

    def forward(
        self, x: Tensor, H: int, W: int, cache: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        agent = F.adaptive_avg_pool2d(q.transpose(1, 2).reshape(B, C, H, W), self.pool)
        agent = _to_heads(agent.flatten(2).transpose(1, 2), self.heads)  # (B, h, a, D)
        qh, kh, vh = _to_heads(q, self.heads), _to_heads(k, self.heads), _to_heads(v, self.heads)
        agent_bias = self._bias(self.an_bias, self.ah_bias, self.aw_bias, H, W)
        agent_attn = torch.softmax((agent * self.scale) @ kh.transpose(-2, -1) + agent_bias, dim=-1)
        agent_v = agent_attn @ vh  # (B, h, a, D)
        query_bias = self._bias(self.na_bias, self.ha_bias, self.wa_bias, H, W).transpose(-2, -1)
        q_attn = torch.softmax((qh * self.scale) @ agent.transpose(-2, -1) + query_bias, dim=-1)
        o = _from_heads(q_attn @ agent_v)
        o = o + self.dwc(v.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        return self.proj(o), None


class SeparableSelfAttention(nn.Module):
    """MobileViTv2 separable self-attention (SSA): linear in N, one context vector."""

    def __init__(self, dim: int, heads: int = 1, **kwargs):
        super().__init__()
        _check_heads(dim, heads)
        self.dim = dim
        self.qkv = nn.Linear(dim, 1 + 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, H: int, W: int, cache: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        i, k, v = self.qkv(x).split([1, self.dim, self.dim], dim=-1)
        scores = torch.softmax(i, dim=1)  # (B, N, 1) over tokens
        context = (k * scores).sum(dim=1, keepdim=True)  # (B, 1, dim)
        return self.proj(F.relu(v) * context), None


@contextmanager
def per_head_products(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every FWA in ``model`` multiplies per head (``per_head=True``): the same
    outputs, and a FLOP counter sees the algorithm's FLOPs, not the zero blocks of the block-diagonal
    kernel. The previous settings are restored on exit."""
    modules = [m for m in model.modules() if isinstance(m, FastWindowAttention)]
    saved = [m.per_head for m in modules]
    for m in modules:
        m.per_head = True
    try:
        yield model
    finally:
        for m, flag in zip(modules, saved):
            m.per_head = flag


ATTENTIONS: Dict[str, Type[nn.Module]] = {
    "fwa": FastWindowAttention,
    "fwa_softmax": FastWindowAttentionSoftmax,
    "mhsa": MultiHeadSelfAttention,
    "agent": AgentAttention,
    "ssa": SeparableSelfAttention,
}


def build_attention(name: str, dim: int, heads: int = 4, **kwargs) -> nn.Module:
    """Build an attention mechanism by name: one of ``ATTENTIONS``.

    FWA options: ``fold``, ``window``, ``activation`` (relu, leaky_relu, relu6, silu),
    ``dp_init``, ``eps``, ``drelu_divisor`` (keys, queries); Agent Attention: ``agents``, ``bias_size``. Options a mechanism
    does not use are ignored, so one config can switch mechanisms.
    """
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; choose one of {sorted(ATTENTIONS)}")
    if "activation" in kwargs:
        check_activation(kwargs["activation"])
    return ATTENTIONS[name](dim, heads=heads, **kwargs)
