"""Checkpoints of dense-task models: ``PATH.safetensors`` (weights) + ``PATH.json`` (format tag,
constructor spec, class names, extra), both written atomically.

``PATH`` keeps every dot of its name (``d/m.v1`` -> ``d/m.v1.safetensors``); a trailing
``.safetensors`` or ``.json`` is the only suffix taken as the file type."""
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ...io import atomic_write_bytes, atomic_write_json, checkpoint_paths

PathLike = Union[str, Path]


def checkpoint_files(path: PathLike) -> Tuple[Path, Path]:
    """``(weights, metadata)`` paths of a checkpoint given as ``PATH``, ``PATH.safetensors`` or ``PATH.json``."""
    return checkpoint_paths(path)


def save_spec_checkpoint(model: nn.Module, path: PathLike, fmt: str, spec: Dict[str, Any],
                         class_names: Optional[Sequence[str]] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    from safetensors.torch import save

    weights, meta = checkpoint_files(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state))
    atomic_write_json(meta, {"format": fmt, "spec": spec, "class_names": list(class_names or []), "extra": extra or {}})
    return weights


def read_spec_checkpoint(path: PathLike, fmt: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors.torch import load_file

    weights, meta_path = checkpoint_files(path)
    if not weights.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint {str(weights)!r} (with its .json) not found")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != fmt:
        raise ValueError(f"{meta_path} is not a {fmt} checkpoint (format={meta.get('format')!r})")
    return load_file(str(weights)), meta
