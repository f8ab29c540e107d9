"""Checkpoints: safetensors weights plus a JSON config. Loading never unpickles.

A checkpoint ``PATH.safetensors`` has its description in ``PATH.json`` (``PATH`` may contain
dots: ``m.v1`` and ``m.v2`` are two checkpoints)::

    {"format": "lolvit-checkpoint", "version": 2, "model": "lolvit_s", "model_kwargs": {...},
     "fused": false, "class_names": [...], "data_config": {...}, "extra": {...}}

``data_config`` is the inference preprocessing in timm's form (``input_size``, ``crop_pct``,
``interpolation``, ``mean``, ``std``); a loaded model carries it in ``pretrained_cfg``, so
``timm.data.resolve_model_data_config(model)`` returns it. The safetensors metadata holds the
model spec (``model``, ``model_kwargs``, ``fused``) and a SHA-256 of the tensors; loading verifies
both, so a damaged file or a JSON that no longer describes the weights raises ValueError.
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .models import LOLViT

FORMAT = "lolvit-checkpoint"
VERSION = 2
CONFIG_FIELDS = ("format", "version", "model", "model_kwargs", "fused", "class_names", "data_config", "extra")
DATA_CONFIG_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
PathLike = Union[str, os.PathLike]


def checkpoint_paths(path: PathLike) -> Tuple[Path, Path]:
    """(weights, config) paths for a checkpoint given with or without its suffix.

    Only ``.safetensors``/``.json`` count as suffixes: ``d/m.v1`` -> ``d/m.v1.safetensors``."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``.NAME.*.tmp`` next to ``path`` and rename it into place.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
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
    # JSON form (tuples -> lists), as it is read back
    return {"model": name, "model_kwargs": json.loads(json.dumps(kwargs))}


def is_fused(model: nn.Module) -> bool:
    """Whether :func:`lolvit.fuse` folded ``model``'s conv + BatchNorm pairs."""
    pairs = [(getattr(m, "conv", None), getattr(m, "bn", None)) for m in model.modules()]
    bns = [bn for conv, bn in pairs if isinstance(conv, nn.Conv2d)]
    return any(isinstance(b, nn.Identity) for b in bns) and not any(isinstance(b, nn.BatchNorm2d) for b in bns)


def tensor_checksum(tensors: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over name, dtype, shape and bytes of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def model_data_config(model: nn.Module) -> Dict[str, Any]:
    """``model``'s inference preprocessing (timm data-config form) from its ``pretrained_cfg``."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return _normalise_data_config(cfg, int(getattr(model, "in_chans", 3)), "model")


def save_checkpoint(
    model: nn.Module,
    path: PathLike,
    class_names: Optional[List[str]] = None,
    extra: Optional[Dict[str, Any]] = None,
    data_config: Optional[Dict[str, Any]] = None,
) -> Path:
    """Save weights (safetensors) and config (JSON) atomically; returns the weights path.

    ``data_config`` (input size, crop, interpolation, mean, std) defaults to
    ``extra["data_config"]``, else the model's ``pretrained_cfg``. A model fused with
    :func:`lolvit.fuse` is saved as such and rebuilt fused by :func:`load_checkpoint`."""
    from safetensors.torch import save

    weights, config = checkpoint_paths(path)
    spec = {**model_spec(model), "fused": is_fused(model)}
    num_classes = spec["model_kwargs"]["num_classes"]
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes} classes")
    in_chans = int(spec["model_kwargs"].get("in_chans", getattr(model, "in_chans", 3)))
    dc = data_config or (extra or {}).get("data_config")
    dc = _normalise_data_config(dc, in_chans, "data_config") if dc else model_data_config(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": str(VERSION), "spec": json.dumps(spec, sort_keys=True),
            "sha256": tensor_checksum(state)}
    try:  # serialised first: an unserialisable ``extra`` must not leave new weights with an old JSON
        text = json.dumps({"format": FORMAT, "version": VERSION, **spec, "class_names": class_names,
                           "data_config": dc, "extra": extra or {}}, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint extra must be JSON-serialisable: {e}") from None
    atomic_write_bytes(weights, save(state, metadata=meta))
    atomic_write_bytes(config, text.encode())
    return weights


def read_safetensors(path: PathLike, verify: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` file. A damaged or foreign file raises ValueError
    naming it; with ``verify``, a ``sha256`` entry in the metadata must match the tensors
    (``checksum mismatch`` otherwise)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {p}")
    try:
        with safe_open(str(p), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{p} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    if verify and "sha256" in meta and tensor_checksum(tensors) != meta["sha256"]:
        raise ValueError(f"{p}: checksum mismatch (the weights changed after they were saved: damaged or edited file)")
    return tensors, meta


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from .pt/.pth with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    if p.suffix == ".safetensors":
        return read_safetensors(p)[0]
    if p.suffix in (".pt", ".pth", ".bin"):
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ValueError(f"{p} does not hold a state dict")
        return obj
    raise ValueError(f"unsupported checkpoint type {p.suffix!r} (use .safetensors, or .pt/.pth state dicts)")


def read_config(path: PathLike) -> Dict[str, Any]:
    """The checkpoint's JSON, checked field by field (ValueError/TypeError name file and field)."""
    _, config = checkpoint_paths(path)
    if not config.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {config} (expected next to the weights)")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{config} must hold a JSON object, not {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config} is not a lolvit checkpoint config (format={meta.get('format')!r})")
    unknown = sorted(set(meta) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"{config}: unknown field(s) {unknown}")
    if "model" not in meta:
        raise ValueError(f"{config}: field 'model' is missing")
    types = {"version": int, "model": str, "model_kwargs": dict, "fused": bool, "class_names": list,
             "data_config": dict, "extra": dict}
    for key, kind in types.items():
        value = meta.get(key)
        if value is None and key != "model":
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{config}: field {key!r} must be a {kind.__name__}, not {type(value).__name__}")
    names = meta.get("class_names")
    if names is not None and not all(isinstance(n, str) for n in names):
        raise ValueError(f"{config}: field 'class_names' must be a list of strings")
    if not isinstance(meta.get("version", 1), int) or meta.get("version", 1) > VERSION:
        raise ValueError(f"{config}: version {meta.get('version')} is newer than this lolvit reads ({VERSION})")
    meta.setdefault("model_kwargs", {})
    meta["extra"] = meta.get("extra") or {}
    return meta


def _normalise_data_config(dc: Dict[str, Any], in_chans: int, source: str) -> Dict[str, Any]:
    """Checked timm data config with ``in_chans`` channels (grey/RGB mean and std adapted)."""
    if not isinstance(dc, dict):
        raise TypeError(f"{source} must be a mapping, not {type(dc).__name__}")
    unknown = sorted(set(dc) - set(DATA_CONFIG_FIELDS) - {"crop_mode"})
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}")
    out: Dict[str, Any] = {}
    size = dc.get("input_size", (in_chans, 224, 224))
    if (not isinstance(size, (list, tuple)) or len(size) not in (2, 3)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"{source}.input_size must be [C, H, W] positive integers, got {size!r}")
    out["input_size"] = [in_chans, int(size[-2]), int(size[-1])]
    crop = dc.get("crop_pct", 0.875)
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 4:
        raise ValueError(f"{source}.crop_pct must be a number in (0, 4], got {crop!r}")
    out["crop_pct"] = float(crop)
    interp = dc.get("interpolation", "bicubic")
    if interp not in INTERPOLATIONS:
        raise ValueError(f"{source}.interpolation must be one of {INTERPOLATIONS}, got {interp!r}")
    out["interpolation"] = interp
    for key, default in (("mean", (0.485, 0.456, 0.406)), ("std", (0.229, 0.224, 0.225))):
        v = dc.get(key, default)
        if (not isinstance(v, (list, tuple)) or not v
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ValueError(f"{source}.{key} must be a list of numbers, got {v!r}")
        if key == "std" and any(x <= 0 for x in v):
            raise ValueError(f"{source}.std must be positive, got {v!r}")
        v = [float(x) for x in v]
        if len(v) != in_chans:
            v = [sum(v) / len(v)] * in_chans
        out[key] = v
    return out


def checkpoint_data_config(meta: Dict[str, Any], in_chans: int = 3, source: str = "checkpoint") -> Dict[str, Any]:
    """Preprocessing of a checkpoint config: its ``data_config``, else ``extra["data_config"]``,
    else (older checkpoints) ``extra["img_size"]`` with the evaluation transform lolvit used then
    (no crop, bilinear, ImageNet mean/std), else timm's defaults at 224 px."""
    extra = meta.get("extra") or {}
    dc = meta.get("data_config") or extra.get("data_config")
    if dc is None:
        size = extra.get("img_size")
        dc = {"input_size": [in_chans, int(size), int(size)], "crop_pct": 1.0, "interpolation": "bilinear"} if size else {}
    return _normalise_data_config(dc, in_chans, f"{source}: data_config")


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


def _check_spec(config: Path, meta: Dict[str, Any], saved: Dict[str, Any]) -> None:
    """The JSON must describe the model the weights were saved with (safetensors ``spec``)."""
    for key, default in (("model", None), ("fused", False)):
        if meta.get(key, default) != saved.get(key, default):
            raise ValueError(f"{config}: field {key!r} is {meta.get(key, default)!r} but the weights were saved "
                             f"with {saved.get(key, default)!r}")
    mk, sk = meta.get("model_kwargs") or {}, saved.get("model_kwargs") or {}
    unknown = sorted(set(mk) - set(sk))
    if unknown:
        raise ValueError(f"{config}: unknown model_kwargs {unknown} (not in the config the weights were saved with)")
    for k in sorted(sk):
        if mk.get(k, "<missing>") != sk[k]:
            raise ValueError(f"{config}: model_kwargs.{k} is {mk.get(k, '<missing>')!r} but the weights were saved "
                             f"with {sk[k]!r}")


def build_model(name: str, kwargs: Dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` with errors naming ``source``."""
    import timm

    if not timm.is_model(name):
        raise ValueError(f"{source}: unknown model {name!r} (see timm.list_models() and lolvit_s, lolvit_x)")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{source}: model_kwargs do not build {name}: {e}") from None


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model described by ``PATH.json`` and load ``PATH.safetensors`` into it.

    The returned model (eval mode) has ``class_names``, ``checkpoint_extra`` and a
    ``pretrained_cfg`` holding the checkpoint's preprocessing and class names."""
    from .nn.fuse import fuse

    weights, config = checkpoint_paths(path)
    meta = read_config(path)
    tensors, smeta = read_safetensors(weights)
    if "spec" in smeta:
        try:
            saved = json.loads(smeta["spec"])
        except json.JSONDecodeError:
            raise ValueError(f"{weights}: damaged metadata 'spec'") from None
        _check_spec(config, meta, saved)
    model = build_model(meta["model"], meta["model_kwargs"], str(config))
    if meta.get("fused"):
        fuse(model)
    load_weights(model, tensors, source=str(weights))
    names = meta.get("class_names")
    if names is not None and len(names) != getattr(model, "num_classes", len(names)):
        raise ValueError(f"{config}: class_names has {len(names)} names but the model has {model.num_classes} classes")
    dc = checkpoint_data_config(meta, int(getattr(model, "in_chans", 3)), str(config))
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in dc.items()})
    cfg.update(num_classes=getattr(model, "num_classes", cfg.get("num_classes")), label_names=names)
    cfg.pop("test_input_size", None)
    cfg.pop("test_crop_pct", None)
    model.pretrained_cfg = model.default_cfg = cfg
    model.class_names = names
    model.checkpoint_extra = meta["extra"]
    return model.to(map_location).eval()
