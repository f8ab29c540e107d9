"""LOLViT-S / LOLViT-X backbones (paper Table 1, Fig. 2, Tables 16/17), registered with timm.

Five stages: stem + GhostNet block (/2), two GhostNet blocks (/4), then three hybrid stages
(stride-2 GhostNet block with SE + LOLViT block) at /8, /16, /32. A classification head in the
style of ultralytics' ``Classify`` (1x1 conv to 1280 + BN + SiLU, pool, dropout, linear) sits on
top; the paper's parameter tables count the backbone only.
"""
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ..nn.attention import ATTENTIONS
from ..nn.blocks import PATCH_MODES, ConvBNAct, GhostNetBlock, LOLViTBlock
from ..nn.functional import check_activation, check_drelu_divisor

__all__ = ["LOLViT", "LOLViTConfig", "MODEL_CONFIGS", "MIN_INPUT_SIZE"]

MIN_INPUT_SIZE = 32  # the /32 stage needs at least one pixel


@dataclass
class LOLViTConfig:
    """Architecture of one LOLViT variant.

    ``channels``: stem, stage-1 ... stage-5 output channels. ``dims``: transformer width of the
    three LOLViT blocks. ``depths`` (L), ``heads``, ``folds``, ``patches``: per LOLViT block.
    ``dp_init``: initial DP (Eq. 3). ``drelu_divisor``: Eq. 3's sequence length, ``"keys"`` (n) or
    ``"queries"`` (N). ``patch_mode``: ``patches`` read as the FAWA window width (``"window"``) or
    as MobileViT token patches (``"tokens"``). ``agents``: Agent Attention's agent count per block
    (``attention="agent"`` only; default Table 2's 48/12/3, FWA's key counts at 384 px).
    """

    channels: Tuple[int, ...]
    dims: Tuple[int, int, int]
    depths: Tuple[int, int, int] = (1, 1, 1)
    heads: Tuple[int, int, int] = (4, 4, 4)
    folds: Tuple[int, int, int] = (1, 2, 4)
    patches: Tuple[int, int, int] = (1, 1, 1)
    mlp_ratio: float = 3.0
    attention: str = "fwa"
    activation: str = "relu"
    fusion: str = "feature_fusion"
    cache: bool = True
    attn_kwargs: Dict[str, Any] = field(default_factory=dict)
    dp_init: float = 0.5
    drelu_divisor: str = "keys"
    patch_mode: str = "window"
    agents: Tuple[int, int, int] = (48, 12, 3)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# Real channel chains and fitted transformer widths (docs/architecture.md, design note Sec. 1/3).
MODEL_CONFIGS: Dict[str, LOLViTConfig] = {
    "lolvit_s": LOLViTConfig(channels=(16, 32, 48, 64, 96, 128), dims=(96, 120, 144)),
    "lolvit_x": LOLViTConfig(channels=(32, 32, 64, 96, 128, 192), dims=(112, 144, 176)),
}


# model keywords that older configs passed inside attn_kwargs, with their defaults
LIFTED_DEFAULTS: Dict[str, Any] = {"dp_init": 0.5, "drelu_divisor": "keys", "agents": (48, 12, 3)}


def _triple(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} needs one value per LOLViT block (3), got {value}")
    return value


def check_input(x: Tensor, in_chans: int, min_size: int = MIN_INPUT_SIZE,
                weight_dtype: Optional[torch.dtype] = None) -> Tensor:
    """ValueError unless ``x`` is (B, in_chans, H, W) with H, W >= ``min_size``; TypeError unless
    ``x`` is floating point of ``weight_dtype`` (the dtype check is skipped under autocast, which
    casts per op). Returns ``x``.

    Registered with ``torch.fx.wrap``: symbolic tracing (timm/torchvision feature extraction)
    records it as one call in the graph, so traced models keep the check (TorchScript-compatible).
    """
    if not x.is_floating_point():
        raise TypeError(
            "LOLViT expects a floating-point (normalised) input, got " + str(x.dtype)
            + ": convert images with x.float() / 255 and normalise with the model's mean/std "
            "(timm.data.resolve_model_data_config)"
        )
    if weight_dtype is not None and x.dtype != weight_dtype:
        autocast = False
        if not torch.jit.is_scripting():  # alone in its condition: TorchScript skips the block
            autocast = torch.is_autocast_enabled(x.device.type)
        if not autocast:
            raise TypeError(
                "LOLViT weights are " + str(weight_dtype) + " but the input is " + str(x.dtype) + ": pass x.to("
                + str(weight_dtype) + "), convert the model with model.to(dtype), or run under torch.autocast"
            )
    if x.dim() != 4:
        raise ValueError("LOLViT expects a 4D (B, C, H, W) tensor, got shape " + str(list(x.shape)))
    if x.shape[1] != in_chans:
        raise ValueError("LOLViT built for in_chans=" + str(in_chans) + " got " + str(x.shape[1]) + " channels")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            "input " + str(x.shape[2]) + "x" + str(x.shape[3]) + " is smaller than the minimum "
            + str(min_size) + "x" + str(min_size)
        )
    return x


torch.fx.wrap("check_input")


class LOLViT(nn.Module):
    """LOLViT hybrid backbone with a classification head.

    forward: (B, in_chans, H, W) -> (B, num_classes); any H, W >= 32, any B >= 0.
    forward_features: -> (B, num_features, ceil(H/32), ceil(W/32)).

    ``dp_init``: initial DP of Eq. 3 (> 0). ``drop_path_rate``: stochastic depth (timm's DropPath)
    rising linearly from 0 over the GhostNet blocks and transformer layers to this rate at the last
    one. ``output_stride``: only 32 (the stages are not dilated), as timm's GhostNet.
    Unknown keywords raise ``TypeError`` (timm's ``create_model`` contract).
    """

    def __init__(
        self,
        channels: Sequence[int],
        dims: Sequence[int],
        depths: Union[int, Sequence[int]] = 1,
        heads: Union[int, Sequence[int]] = 4,
        folds: Union[int, Sequence[int]] = (1, 2, 4),
        patches: Union[int, Sequence[int]] = 1,
        mlp_ratio: float = 3.0,
        attention: str = "fwa",
        activation: str = "relu",
        fusion: str = "feature_fusion",
        cache: bool = True,
        attn_kwargs: Optional[Dict[str, Any]] = None,
        dp_init: Optional[float] = None,
        drelu_divisor: Optional[str] = None,
        patch_mode: str = "window",
        agents: Optional[Union[int, Sequence[int]]] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        head_hidden_size: int = 1280,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        output_stride: int = 32,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if output_stride != 32:
            raise ValueError(f"output_stride={output_stride} is not supported: LOLViT's stages are not dilated (only 32)")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        attn_kwargs = dict(attn_kwargs or {})
        given = {"dp_init": dp_init, "drelu_divisor": drelu_divisor, "agents": agents}
        for key, default in LIFTED_DEFAULTS.items():
            if key in attn_kwargs:  # older configs put these among the attention options
                legacy = attn_kwargs.pop(key)
                if given[key] is not None and given[key] != legacy:
                    raise ValueError(f"{key} given twice: {key}={given[key]!r} and attn_kwargs[{key!r}]={legacy!r}")
                given[key] = legacy
            if given[key] is None:
                given[key] = default
        dp_init, drelu_divisor = float(given["dp_init"]), check_drelu_divisor(given["drelu_divisor"])
        agents = _triple(given["agents"], "agents")
        if min(agents) < 1:
            raise ValueError(f"agents must be >= 1 per LOLViT block, got {agents}")
        if not dp_init > 0:
            raise ValueError(f"dp_init (initial DP of Eq. 3) must be > 0, got {dp_init}")
        if patch_mode not in PATCH_MODES:
            raise ValueError(f"unknown patch_mode {patch_mode!r}; choose one of {PATCH_MODES}")
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; choose one of {sorted(ATTENTIONS)}")
        check_activation(activation)
        if len(channels) != 6:
            raise ValueError(f"channels needs 6 values (stem + 5 stages), got {tuple(channels)}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        dims = _triple(dims, "dims")
        depths, heads = _triple(depths, "depths"), _triple(heads, "heads")
        folds, patches = _triple(folds, "folds"), _triple(patches, "patches")
        for d, h in zip(dims, heads):
            if h < 1 or d % h:
                raise ValueError(f"heads={h} must divide the transformer dim {d} (dims={dims}, heads={heads})")
        self.config = LOLViTConfig(
            tuple(channels), dims, depths, heads, folds, patches, float(mlp_ratio),
            attention, activation, fusion, bool(cache), attn_kwargs, dp_init, drelu_divisor, patch_mode, agents,
        )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        with torch.device(device) if device is not None else nullcontext():
            c = list(channels)
            # stochastic depth: 6 GhostNet blocks, then each stage's GhostNet block and its L layers
            blocks = 6 + sum(depths)
            rates = iter([drop_path_rate * i / (blocks - 1) for i in range(blocks)])
            self.stem = ConvBNAct(in_chans, c[0], 3, 2)
            stages: List[nn.Module] = [
                nn.Sequential(GhostNetBlock(c[0], c[1], 1, drop_path=next(rates))),
                nn.Sequential(
                    GhostNetBlock(c[1], c[2], 2, drop_path=next(rates)),
                    GhostNetBlock(c[2], c[2], 1, drop_path=next(rates)),
                ),
            ]
            for i in range(3):
                stages.append(
                    nn.Sequential(
                        GhostNetBlock(c[i + 2], c[i + 3], 2, se=True, drop_path=next(rates)),
                        LOLViTBlock(
                            c[i + 3], dims[i], depths[i], heads[i], folds[i], patches[i],
                            attention=attention, activation=activation, mlp_ratio=mlp_ratio,
                            fusion=fusion, cache=cache, drop_path=[next(rates) for _ in range(depths[i])],
                            patch_mode=patch_mode, dp_init=dp_init, drelu_divisor=drelu_divisor,
                            agents=agents[i], **attn_kwargs,
                        ),
                    )
                )
            self.stages = nn.Sequential(*stages)
            self.feature_info = [
                dict(num_chs=c[i + 1], reduction=2 ** (i + 1), module=f"stages.{i}") for i in range(5)
            ]
            self.num_features = c[-1]
            self.head_hidden_size = head_hidden_size
            self.conv_head = ConvBNAct(c[-1], head_hidden_size, 1)
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
            self.head_drop = nn.Dropout(drop_rate)
            self.classifier = nn.Linear(head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        if dtype is not None:
            self.to(dtype=dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head for ``num_classes`` (0: none), on the model's device and dtype; pooling kept unless given."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        ref = next(self.parameters())
        if num_classes > 0:
            self.classifier = nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            self.classifier = nn.Identity()
        self.global_pool.train(self.training)
        self.classifier.train(self.training)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, num_features, ceil(H/32), ceil(W/32))."""
        if not torch.jit.is_scripting():
            x = check_input(x, self.in_chans, MIN_INPUT_SIZE, self.stem.conv.weight.dtype)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, num_features, h, w) -> (B, num_classes), or (B, head_hidden_size) with pre_logits."""
        x = self.global_pool(self.conv_head(x))
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs at strides 2, 4, 8, 16, 32 (``indices`` select), plus the final features."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        if not torch.jit.is_scripting():
            x = check_input(x, self.in_chans, MIN_INPUT_SIZE, self.stem.conv.weight.dtype)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates: List[Tensor] = []
        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop stages after the last requested intermediate (and the head)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.conv_head = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv",
        "classifier": "classifier",
        "license": "apache-2.0",
        "paper_name": "Lightweight Backbone Networks Only Require Adaptive Lightweight Self-Attention Mechanisms",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"lolvit_s": _cfg(), "lolvit_x": _cfg()})


def create_lolvit(variant: str, pretrained: bool = False, **kwargs: Any) -> LOLViT:
    """Build a LOLViT variant; keyword arguments override the variant's config fields."""
    base = MODEL_CONFIGS[variant].to_dict()
    for key in LIFTED_DEFAULTS:
        if key not in kwargs:
            del base[key]  # the model resolves it (or an older attn_kwargs entry)
    base.update({k: v for k, v in kwargs.items() if k in base})
    rest = {k: v for k, v in kwargs.items() if k not in base}
    out_indices = rest.pop("out_indices", (0, 1, 2, 3, 4))
    return build_model_with_cfg(
        LOLViT,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **base,
        **rest,
    )


@register_model
def lolvit_s(pretrained: bool = False, **kwargs: Any) -> LOLViT:
    """LOLViT-S (Table 16): 1.06M backbone parameters."""
    return create_lolvit("lolvit_s", pretrained, **kwargs)


@register_model
def lolvit_x(pretrained: bool = False, **kwargs: Any) -> LOLViT:
    """LOLViT-X (Table 17): 1.87M backbone parameters."""
    return create_lolvit("lolvit_x", pretrained, **kwargs)
