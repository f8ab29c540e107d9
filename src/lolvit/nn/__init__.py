"""Attention mechanisms and blocks (lowest layer: imports nothing else from lolvit)."""
from . import functional
from .attention import (
    ATTENTIONS,
    AgentAttention,
    FastWindowAttention,
    FastWindowAttentionSoftmax,
    MultiHeadSelfAttention,
    SeparableSelfAttention,
    build_attention,
)
from .blocks import (
    ConvBNAct,
    FeatureFusion,
    GhostConv,
    GhostNetBlock,
    LOLViTBlock,
    MobileViTFusion,
    SqueezeExcite,
    TransformerLayer,
)
from .functional import ACTIVATIONS, drelu, fawa
from .fuse import fuse
from .swap import swap_attention

__all__ = [
    "ACTIVATIONS", "ATTENTIONS", "AgentAttention", "ConvBNAct", "FastWindowAttention",
    "FastWindowAttentionSoftmax", "FeatureFusion", "GhostConv", "GhostNetBlock", "LOLViTBlock",
    "MobileViTFusion", "MultiHeadSelfAttention", "SeparableSelfAttention", "SqueezeExcite",
    "TransformerLayer", "build_attention", "drelu", "fawa", "functional", "fuse", "swap_attention",
]
