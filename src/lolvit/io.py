"""Checkpoints: safetensors weights plus a JSON config. Loading never unpickles.

A checkpoint ``PATH.safetensors`` has its description in ``PATH.json``::

    {"format": "lolvit-checkpoint", "version": 1, "model": "lolvit_s",
     "model_kwargs": {...}, "class_names": [...], "extra": {...}}
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .models import LOLViT

FORMAT = "lolvit-checkpoint"
PathLike = Union[str, os.PathLike]


def checkpoint_paths(path: PathLike) -> Tuple[Path, Path]:
    """(weights, config) paths for a checkpoint given with or without its suffix."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def model_spec(model: nn.Module) -> Dict[str, Any]:
    """Name and constructor kwargs that rebuild ``model`` with ``timm.create_model``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise ValueError(f"cannot tell which model {type(model).__name__} is: build it with timm.create_model")
    kwargs: Dict[str, Any] = {"num_classes": int(getattr(model, "num_classes", 0))}
    if isinstance(model, LOLViT):
        kwargs.update(model.config.to_dict())
        kwargs.update(in_chans=model.in_chans, head_hidden_size=model.head_hidden_size, drop_rate=model.drop_rate)
    else:
        first = cfg.get("first_conv")
        conv = model.get_submodule(first) if isinstance(first, str) and first else None
        if isinstance(conv, nn.Conv2d):
            kwargs["in_chans"] = conv.in_channels
    return {"model": name, "model_kwargs": kwargs}


def save_checkpoint(
    model: nn.Module,
    path: PathLike,
    class_names: Optional[List[str]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Save weights (safetensors) and config (JSON) atomically; returns the weights path."""
    weights, config = checkpoint_paths(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{weights.name}.", suffix=".tmp", dir=_mkdir(weights.parent))
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": FORMAT})
        os.replace(tmp, weights)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    meta = {"format": FORMAT, "version": 1, **model_spec(model)}
    meta["class_names"] = list(class_names) if class_names is not None else None
    meta["extra"] = extra or {}
    atomic_write_json(config, meta)
    return weights


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from .pt/.pth with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    if p.suffix in (".pt", ".pth", ".bin"):
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ValueError(f"{p} does not hold a state dict")
        return obj
    raise ValueError(f"unsupported checkpoint type {p.suffix!r} (use .safetensors, or .pt/.pth state dicts)")


def read_config(path: PathLike) -> Dict[str, Any]:
    _, config = checkpoint_paths(path)
    if not config.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {config} (expected next to the weights)")
    meta = json.loads(config.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config} is not a lolvit checkpoint config (format={meta.get('format')!r})")
    return meta


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state`` strictly, raising one ValueError that lists every mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ValueError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model described by ``PATH.json`` and load ``PATH.safetensors`` into it.

    The returned model has ``class_names`` and ``checkpoint_extra`` attributes."""
    import timm

    weights, _ = checkpoint_paths(path)
    meta = read_config(path)
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights}")
    model = timm.create_model(meta["model"], pretrained=False, **meta.get("model_kwargs", {}))
    load_weights(model, load_file(str(weights)), source=str(weights))
    model.class_names = meta.get("class_names")
    model.checkpoint_extra = meta.get("extra", {})
    return model.to(map_location).eval()
