"""Convolutional and hybrid blocks of LOLViT (paper Sec. 4, Appendix A and D).

Channel conventions follow ultralytics: ``ConvBNAct(a, b, k)`` is Conv2d(bias=False) + BN + SiLU
with ``a*b*k*k/groups + 2b`` parameters.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor

from .attention import build_attention


class ConvBNAct(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation; 'same' padding. (B, c1, H, W) -> (B, c2, H/s, W/s)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class GhostConv(nn.Module):
    """Ghost convolution: a 1x1 primary conv to c2/2 channels plus a cheap 5x5 depthwise conv
    of those, concatenated. (B, c1, H, W) -> (B, c2, H, W)."""

    def __init__(self, c1: int, c2: int, act: bool = True):
        super().__init__()
        if c2 % 2:
            raise ValueError(f"GhostConv output channels must be even, got {c2}")
        c_ = c2 // 2
        self.primary = ConvBNAct(c1, c_, 1, act=act)
        self.cheap = ConvBNAct(c_, c_, 5, groups=c_, act=act)

    def forward(self, x: Tensor) -> Tensor:
        y = self.primary(x)
        return torch.cat((y, self.cheap(y)), 1)


class SqueezeExcite(nn.Module):
    """GhostNet squeeze-excite: GAP -> 1x1 (c -> c/4, bias) -> ReLU -> 1x1 (c/4 -> c, bias) -> hard-sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class GhostNetBlock(nn.Module):
    """GhostNet-v1 bottleneck with mid width 2*c1 (Tables 16/17 rows).

    GhostConv(c1, 2c1) -> [depthwise 3x3 stride s + BN] -> [SE] -> GhostConv(2c1, c2, no act),
    plus an identity shortcut (c1 == c2, s == 1) or depthwise 3x3 + 1x1 conv shortcut.
    ``drop_path``: stochastic-depth rate of the main branch (timm's DropPath, training only).
    (B, c1, H, W) -> (B, c2, ceil(H/s), ceil(W/s)).
    """

    def __init__(self, c1: int, c2: int, stride: int = 1, se: bool = False, kernel: int = 3, drop_path: float = 0.0):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GhostNetBlock stride must be 1 or 2, got {stride}")
        mid = 2 * c1
        self.ghost1 = GhostConv(c1, mid)
        self.dw = ConvBNAct(mid, mid, kernel, stride, groups=mid, act=False) if stride == 2 else nn.Identity()
        self.se = SqueezeExcite(mid) if se else nn.Identity()
        self.ghost2 = GhostConv(mid, c2, act=False)
        if c1 == c2 and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBNAct(c1, c1, kernel, stride, groups=c1, act=False),
                ConvBNAct(c1, c2, 1, act=False),
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop_path(self.ghost2(self.se(self.dw(self.ghost1(x))))) + self.shortcut(x)


class Mlp(nn.Module):
    """Linear (dim -> hidden) + SiLU + Linear (hidden -> dim). (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer around any mechanism of :func:`build_attention`.

    (B, N, dim), cache -> (B, N, dim), cache. The layer does not know which mechanism it holds.
    ``drop_path``: stochastic-depth rate of both residual branches (timm's DropPath).
    """

    def __init__(
        self, dim: int, attention: str = "fwa", heads: int = 4, mlp_ratio: float = 3.0,
        drop_path: float = 0.0, **attn_kwargs,
    ):
        super().__init__()
        hidden = check_mlp_ratio(mlp_ratio, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = build_attention(attention, dim, heads=heads, **attn_kwargs)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, H: int, W: int, cache: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        a, cache = self.attn(self.norm1(x), H, W, cache)
        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, cache


def check_mlp_ratio(mlp_ratio: float, dim: int) -> int:
    """The MLP hidden width round(dim * mlp_ratio); ValueError unless it is a positive number."""
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be a number > 0, got {mlp_ratio!r}")
    hidden = int(round(dim * mlp_ratio))
    if hidden < 1:
        raise ValueError(f"mlp_ratio={mlp_ratio} gives an MLP of width {hidden} for dim {dim}; it must be >= 1")
    return hidden


class FeatureFusion(nn.Module):
    """Global-local FeatureFusion (Appendix A, Fig. 7): a 1x1 bottleneck with parallel
    depthwise 5x5 and 7x7 branches. (local (B,C,H,W), global (B,C,H,W)) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.reduce = ConvBNAct(2 * c, c, 1)
        self.branch5 = ConvBNAct(c, c, 5, groups=c)
        self.branch7 = ConvBNAct(c, c, 7, groups=c)
        self.expand = ConvBNAct(3 * c, c, 1)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        z = self.reduce(torch.cat((x, g), 1))
        return self.expand(torch.cat((z, self.branch5(z), self.branch7(z)), 1))


class MobileViTFusion(nn.Module):
    """MobileViT-v1 fusion (Table 11 baseline): 3x3 conv over concat[local, global]. -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fuse = ConvBNAct(2 * channels, channels, 3)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        return self.fuse(torch.cat((x, g), 1))


FUSIONS = {"feature_fusion": FeatureFusion, "mobilevit": MobileViTFusion}
PATCH_MODES = ["window", "tokens"]


class LOLViTBlock(nn.Module):
    """LOLViT block: local 3x3 conv -> 1x1 up-projection to ``dim`` -> L transformer layers
    sharing the FAWA key cache (Eq. 5) -> LayerNorm -> 1x1 back-projection -> fusion with the
    block input. (B, C, H, W) -> (B, C, H, W); every pixel is a token.

    ``patch`` is the patch size P, read as ``patch_mode`` says: ``"window"`` (default) makes it
    the FAWA window width P_l, every pixel a token (patch size 1 = one key per column);
    ``"tokens"`` splits the map into P x P patches as MobileViT does: the P*P pixels at the same
    position in each patch form one sequence over the (H/P) x (W/P) patch grid (maps zero-padded
    to a multiple of P, then cropped), and FWA's keys are the columns of that grid. Both readings
    agree for P = 1. ``cache=False`` makes every layer aggregate its own keys (Table 13 "no cache").
    ``drop_path``: stochastic-depth rate, one for all layers or one per layer.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        depth: int = 1,
        heads: int = 4,
        fold: int = 1,
        patch: int = 1,
        attention: str = "fwa",
        activation: str = "relu",
        mlp_ratio: float = 3.0,
        fusion: str = "feature_fusion",
        cache: bool = True,
        drop_path: Union[float, Sequence[float]] = 0.0,
        patch_mode: str = "window",
        **attn_kwargs,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"LOLViTBlock depth (L) must be >= 1, got {depth}")
        if patch_mode not in PATCH_MODES:
            raise ValueError(f"unknown patch_mode {patch_mode!r}; choose one of {PATCH_MODES}")
        if patch < 1:
            raise ValueError(f"patch size must be >= 1, got {patch}")
        self.patch = patch if patch_mode == "tokens" else 1  # token patch side; 1 = every pixel a token
        window = patch if patch_mode == "window" else 1
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else [float(r) for r in drop_path]
        if len(rates) != depth:
            raise ValueError(f"drop_path needs one rate per layer ({depth}), got {len(rates)}")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}")
        self.use_cache = bool(cache)
        self.local = ConvBNAct(channels, channels, 3)
        self.up = ConvBNAct(channels, dim, 1)
        self.layers = nn.ModuleList(
            [
                TransformerLayer(
                    dim, attention, heads, mlp_ratio, drop_path=rate,
                    fold=fold, window=window, activation=activation, **attn_kwargs,
                )
                for rate in rates
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.down = ConvBNAct(dim, channels, 1)
        self.fusion = FUSIONS[fusion](channels)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        y = self.up(self.local(x))
        P = self.patch
        if P > 1:
            y = F.pad(y, (0, (P - W % P) % P, 0, (P - H % P) % P))
        C, h, w = y.shape[1], y.shape[2] // P, y.shape[3] // P
        # (B, C, h*P, w*P) -> (B*P*P, h*w, C): one sequence per pixel position within the patches
        t = y.reshape(B, C, h, P, w, P).permute(0, 3, 5, 2, 4, 1).reshape(B * P * P, h * w, C)
        cache: Optional[Tensor] = None
        for layer in self.layers:
            t, keys = layer(t, h, w, cache)
            if self.use_cache:
                cache = keys
        g = self.norm(t).reshape(B, P, P, h, w, C).permute(0, 5, 3, 1, 4, 2).reshape(B, C, h * P, w * P)
        if P > 1:
            g = g[:, :, :H, :W]
        if not torch.jit.is_scripting():  # alone in its condition: TorchScript then skips the block
            if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
                # Inductor cannot order the symbolic strides of this (B, C, H, W) view of the tokens when
                # it is saved for backward under dynamic shapes (pytorch#185510: "cannot determine truth
                # value of Relational"); a contiguous copy, which Inductor fuses into the LayerNorm, is not a view
                g = g.contiguous()
        return self.fusion(x, self.down(g))
