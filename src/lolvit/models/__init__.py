"""Backbones; importing this registers them with timm."""
from .lolvit import MIN_INPUT_SIZE, MODEL_CONFIGS, LOLViT, LOLViTConfig, create_lolvit, lolvit_s, lolvit_x

__all__ = ["LOLViT", "LOLViTConfig", "MODEL_CONFIGS", "MIN_INPUT_SIZE", "create_lolvit", "lolvit_s", "lolvit_x"]
