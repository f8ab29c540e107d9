"""lolvit: LOLViT backbones and Fast Window Attention for PyTorch and timm.

Importing the package registers ``lolvit_s`` and ``lolvit_x`` with ``timm.create_model``.
"""
from . import models, nn
from .deploy import compile_model as compile  # lolvit.compile; not in __all__ (would shadow the builtin)
from .io import load_checkpoint, save_checkpoint
from .models import LOLViT, LOLViTConfig
from .nn import build_attention, fuse

__version__ = "0.1.0"

__all__ = [
    "LOLViT", "LOLViTConfig", "build_attention", "fuse", "load_checkpoint", "save_checkpoint",
    "models", "nn", "__version__",
]

# ultralytics (when the user imports it) resolves LOLViT's YAML names and modules; imports nothing now.
import _lolvit_ultralytics_hook  # noqa: E402,F401
