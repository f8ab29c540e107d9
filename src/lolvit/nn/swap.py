"""FWA as a drop-in for timm's MobileViT (v1) and MobileViTv2 attention (paper Table 7,
"MobileViT-XS(FWA)").

:func:`swap_attention` replaces the attention module of every transformer layer inside timm's
``MobileVitBlock`` / ``MobileVitV2Block`` by :class:`FastWindowAttention` of the same width, in
place; every other module and weight is kept. The blocks hand the patch-grid size (n_h, n_w)
to the new attention before each forward (FWA's keys follow the grid width).
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .attention import build_attention


class PatchTokenFWA(nn.Module):
    """FWA over the patch tokens of a MobileViT block.

    ``layout='bnc'`` (MobileViT v1): (B*P, N, C) -> (B*P, N, C);
    ``layout='bcpn'`` (MobileViTv2): (B, C, P, N) -> (B, C, P, N).
    N = n_h * n_w patches in row-major order, P = pixels per patch. ``grid`` (n_h, n_w) is set by
    the owning block before each forward.
    """

    def __init__(self, dim: int, heads: int, layout: str, **fwa_kwargs):
        super().__init__()
        if layout not in ("bnc", "bcpn"):
            raise ValueError(f"layout must be 'bnc' or 'bcpn', got {layout!r}")
        self.layout = layout
        self.attn = build_attention("fwa", dim, heads=heads, **fwa_kwargs)
        self.grid: Tuple[int, int] = (0, 0)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        h, w = self.grid
        if self.layout == "bcpn":
            B, C, P, N = x.shape
            t = x.permute(0, 2, 3, 1).reshape(B * P, N, C)
        else:
            t = x
        if h * w != t.shape[1]:
            raise ValueError(f"FWA patch grid {h}x{w} does not match {t.shape[1]} tokens; "
                             "run the model through its swapped MobileViT blocks")
        out, _ = self.attn(t, h, w)
        if self.layout == "bcpn":
            out = out.reshape(B, P, N, C).permute(0, 3, 1, 2)
        return out


def _grid_hw(block: nn.Module, x: Tensor) -> Tuple[int, int]:
    ph, pw = block.patch_size
    H, W = x.shape[-2:]
    stride = getattr(getattr(block.conv_kxk, "conv", None), "stride", (1, 1))
    H, W = -(-H // stride[0]), -(-W // stride[1])
    return math.ceil(H / ph), math.ceil(W / pw)


class _FWAGridMixin:
    """Sets the patch grid of the block's :class:`PatchTokenFWA` layers, then runs the block."""

    def forward(self, x: Tensor) -> Tensor:
        grid = _grid_hw(self, x)
        for layer in self.transformer:
            layer.attn.grid = grid
        return super().forward(x)


_SWAPPED_CLASSES = {}


def _swapped_class(cls: type) -> type:
    if cls not in _SWAPPED_CLASSES:
        _SWAPPED_CLASSES[cls] = type(f"FWA{cls.__name__}", (_FWAGridMixin, cls), {"__module__": __name__})
    return _SWAPPED_CLASSES[cls]


def _v2_heads(dim: int) -> int:
    return next(h for h in (4, 2, 1) if dim % h == 0)


def swap_attention(model: nn.Module, attention: str = "fwa", heads: Optional[int] = None, **fwa_kwargs) -> nn.Module:
    """Replace the attention of every timm MobileViT / MobileViTv2 transformer layer by FWA.

    ``heads``: FWA heads; default the replaced attention's heads (v1) or 4/2/1, the largest that
    divides the width (v2, whose separable attention has none). ``fwa_kwargs`` go to
    :class:`FastWindowAttention` (``fold``, ``window``, ``activation``...). Returns ``model``
    (changed in place); raises ``ValueError`` if it holds no MobileViT block.
    """
    if attention != "fwa":
        raise ValueError(f"swap_attention supports attention='fwa', got {attention!r}")
    from timm.models.mobilevit import LinearSelfAttention, MobileVitBlock, MobileVitV2Block

    swapped: List[nn.Module] = []
    for block in list(model.modules()):
        if not isinstance(block, (MobileVitBlock, MobileVitV2Block)) or isinstance(block, _FWAGridMixin):
            continue
        for layer in block.transformer:
            old = layer.attn
            if isinstance(old, LinearSelfAttention):
                dim, layout, h = old.embed_dim, "bcpn", heads or _v2_heads(old.embed_dim)
                ref = old.out_proj.weight
            else:
                dim, layout, h = old.qkv.in_features, "bnc", heads or old.num_heads
                ref = old.qkv.weight
            new = PatchTokenFWA(dim, h, layout, **fwa_kwargs).to(device=ref.device, dtype=ref.dtype)
            new.train(old.training)
            layer.attn = new
        block.__class__ = _swapped_class(type(block))
        swapped.append(block)
    if not swapped:
        raise ValueError(f"swap_attention found no timm MobileViT/MobileViTv2 block in {type(model).__name__}")
    return model


__all__ = ["PatchTokenFWA", "swap_attention"]
