"""Top-k image classification with a checkpointed model, preprocessed as the checkpoint says."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .image import limit_aspect, list_images, read_image


def data_config(model: nn.Module, img_size: Optional[Union[int, Sequence[int]]] = None) -> Dict[str, Any]:
    """Input size, mean, std, interpolation and crop of ``model``: its ``pretrained_cfg``, which
    :func:`lolvit.load_checkpoint` sets to the checkpoint's preprocessing. ``img_size`` (an int or
    (H, W)) overrides the input size."""
    from ..io import model_data_config

    cfg = model_data_config(model)
    if img_size is not None:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
            raise ValueError(f"img_size must be a positive int or (H, W), got {img_size!r}")
        cfg["input_size"] = [cfg["input_size"][0], *hw]
    cfg["input_size"] = tuple(cfg["input_size"])
    return cfg


def eval_transform(cfg: Dict[str, Any]):
    """timm's evaluation transform (resize, centre crop, normalise) of a data config."""
    from timm.data import create_transform

    return create_transform(**{k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")})


def load_image(path: Union[str, Path], in_chans: int = 3):
    """Decoded 8-bit image (``L`` for one channel, else ``RGB``); see :func:`~.image.read_image`."""
    return read_image(path, "L" if in_chans == 1 else "RGB")


@torch.no_grad()
def predict_images(model: nn.Module, paths: Sequence[Union[str, Path]], topk: int = 5,
                   img_size: Optional[Union[int, Sequence[int]]] = None, batch_size: int = 32) -> List[Dict[str, Any]]:
    """Classify images (folders are searched recursively): one dict per image with ``path`` and
    ``topk`` [(class, probability)], in batches of ``batch_size``."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    files = list_images(paths)
    cfg = data_config(model, img_size)
    transform = eval_transform(cfg)
    in_chans = cfg["input_size"][0]
    names = getattr(model, "class_names", None)
    model.eval()
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = torch.stack([transform(limit_aspect(load_image(p, in_chans))) for p in chunk])
        probs = model(batch.to(device)).float().softmax(-1).cpu()
        values, indices = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        for path, vals, idxs in zip(chunk, values.tolist(), indices.tolist()):
            labels = [names[i] if names else str(i) for i in idxs]
            results.append({"path": str(path), "topk": list(zip(labels, vals)), "index": idxs[0]})
    return results
