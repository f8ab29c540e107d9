"""Top-k image classification with a checkpointed model."""
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import torch
import torch.nn as nn
from PIL import Image, UnidentifiedImageError


def data_config(model: nn.Module) -> Dict[str, Any]:
    """Input size, mean, std, interpolation and crop of ``model``: the checkpoint's training
    config (``checkpoint_extra['data_config']``) when present, else its timm default cfg."""
    from timm.data import resolve_data_config

    extra = getattr(model, "checkpoint_extra", None) or {}
    cfg = dict(resolve_data_config(model=model))
    cfg.update(extra.get("data_config") or {})
    in_chans = getattr(model, "in_chans", 3)
    size = tuple(cfg["input_size"])
    cfg["input_size"] = (in_chans,) + tuple(size[-2:])
    for key in ("mean", "std"):
        values = tuple(cfg[key])
        if len(values) != in_chans:
            cfg[key] = (sum(values) / len(values),) * in_chans
    return cfg


def load_image(path: Union[str, Path], in_chans: int = 3) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("L" if in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ImportError, ValueError, SyntaxError) as e:
        # ImportError: an optional Pillow plugin hook (ultralytics' HEIF patch) failed on a non-image
        raise ValueError(f"cannot read image {p}: {e}") from e


@torch.no_grad()
def predict_images(model: nn.Module, paths: Sequence[Union[str, Path]], topk: int = 5) -> List[Dict[str, Any]]:
    """Classify images: one dict per image with ``path`` and ``topk`` [(class, probability)]."""
    from timm.data import create_transform

    cfg = data_config(model)
    transform = create_transform(**{k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")})
    in_chans = cfg["input_size"][0]
    images = [load_image(p, in_chans) for p in paths]
    batch = torch.stack([transform(im) for im in images])
    probs = model.eval()(batch).softmax(-1)
    names = getattr(model, "class_names", None)
    k = min(topk, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    results = []
    for path, vals, idxs in zip(paths, values.tolist(), indices.tolist()):
        labels = [names[i] if names and i < len(names) else str(i) for i in idxs]
        results.append({"path": str(path), "topk": list(zip(labels, vals))})
    return results
