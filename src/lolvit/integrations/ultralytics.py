"""LOLViT inside ultralytics YOLO (detect / segment) without forking ultralytics.

``register()`` puts :class:`LOLViTBackbone` into ``ultralytics.nn.tasks`` (where model YAMLs
resolve module names), lets ``YOLO("lolvit-s-det.yaml")`` find the shipped YAMLs by bare name,
puts lolvit's classes on ultralytics' safe-loading allow-list and wraps ``BaseModel.fuse`` so that
ultralytics' own ``model.fuse()`` also folds the LOLViT conv+BN pairs. Importing this module
registers; so does importing ultralytics in any process where lolvit is installed (the
``lolvit-ultralytics.pth`` start-up hook, see :mod:`_lolvit_ultralytics_hook`), which is what makes
the ``yolo`` CLI build the shipped YAMLs. The YAMLs (``cfg/lolvit-{s,x}-{det,seg}.yaml``) use the
backbone as layer 0, whose list of maps (strides 8/16/32) is split by ultralytics' ``Index`` rows.

Checkpoints (``.pt``) are loaded with ``torch.load(weights_only=True)`` by every function here:
a file referencing anything but torch/ultralytics/lolvit model classes is refused, never run.
"""
import contextlib
import dataclasses
import importlib
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch.nn as nn
from torch import Tensor

from ..models import MODEL_CONFIGS, create_lolvit
from ..nn.fuse import fuse as fuse_conv_bn_pairs

__all__ = [
    "LOLViTBackbone", "CFG_DIR", "MODEL_NAMES", "configure_offline", "register", "model_cfg",
    "load_yolo", "check_data_yaml", "train", "val", "predict", "export",
]

CFG_DIR = Path(__file__).resolve().parent / "cfg"
MODEL_NAMES = tuple(sorted(p.stem for p in CFG_DIR.glob("lolvit-*.yaml")))
_OUT_INDICES = (2, 3, 4)  # stages at strides 8, 16, 32


class LOLViTBackbone(nn.Module):
    """LOLViT feature extractor for ultralytics YAMLs.

    (B, in_chans, H, W) -> [P3 (B, c3, H/8, W/8), P4 (B, c4, H/16, W/16), P5 (B, c5, H/32, W/32)].
    YAML row: ``[-1, 1, LOLViTBackbone, [lolvit_s]]`` followed by ``[0, 1, Index, [c, i]]`` rows.
    """

    def __init__(self, variant: str = "lolvit_s", in_chans: int = 3, **overrides: Any):
        super().__init__()
        if variant not in MODEL_CONFIGS:
            raise ValueError(f"unknown LOLViT variant {variant!r}; choose one of {sorted(MODEL_CONFIGS)}")
        self.variant = variant
        self.body = create_lolvit(variant, num_classes=0, in_chans=in_chans, **overrides)
        self.body.prune_intermediate_layers(list(_OUT_INDICES), prune_head=True)
        self.channels = [self.body.feature_info[i]["num_chs"] for i in _OUT_INDICES]
        self.strides = [self.body.feature_info[i]["reduction"] for i in _OUT_INDICES]

    def forward(self, x: Tensor) -> List[Tensor]:
        return self.body.forward_intermediates(x, indices=list(_OUT_INDICES), intermediates_only=True)

    def fuse(self) -> "LOLViTBackbone":
        """Fold every conv+BN pair of the backbone in place (eval mode)."""
        fuse_conv_bn_pairs(self)
        return self

    def has_batchnorm(self) -> bool:
        return any(isinstance(m, nn.BatchNorm2d) for m in self.modules())


def configure_offline(config_dir: Optional[Union[str, Path]] = None) -> Path:
    """Make ultralytics work with no network: no online checks, telemetry, auto-installs or
    font downloads. Call before ultralytics is imported for the environment to take full effect.
    Returns ultralytics' config directory (with ``Arial.ttf`` in place)."""
    _offline_env(config_dir, force=True)
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if SETTINGS.get("sync", False):
        SETTINGS.update(sync=False)
    _place_font(Path(USER_CONFIG_DIR))
    return Path(USER_CONFIG_DIR)


def _offline_env(config_dir: Optional[Union[str, Path]] = None, force: bool = False) -> None:
    put = os.environ.__setitem__ if force else os.environ.setdefault
    put("YOLO_OFFLINE", "1")
    put("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if config_dir is not None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    else:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path.home() / ".cache" / "lolvit" / "ultralytics"))


def _place_font(folder: Path) -> None:
    """ultralytics' ``check_font('Arial.ttf')`` downloads unless the file is in its config dir."""
    import matplotlib

    folder.mkdir(parents=True, exist_ok=True)
    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (folder / name).exists() and src.exists():
            shutil.copyfile(src, folder / name)


def _fused_backbones(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, LOLViTBackbone):
            m.fuse()


_SAFE_MODULES = ("lolvit.nn.", "lolvit.models.", "lolvit.integrations.", "timm.layers.")


def safe_globals(names: List[str]) -> Dict[str, Any]:
    """The lolvit (and timm layer) classes among a checkpoint's pickled global ``names`` that may be
    rebuilt by a ``weights_only`` load: ``nn.Module`` subclasses and lolvit's config dataclasses, from
    the model packages only (importing them has no side effect). Functions and any other object are
    never allowed."""
    allowed = {}
    for name in names:
        module, _, attr = name.rpartition(".")
        if not name.startswith(_SAFE_MODULES) or "__main__" in module:
            continue
        try:
            obj = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            continue
        if not isinstance(obj, type) or obj.__module__ != module:
            continue
        if issubclass(obj, nn.Module) or (module.startswith("lolvit.") and dataclasses.is_dataclass(obj)):
            allowed[name] = obj
    return allowed


def _allow_lolvit(weight: Union[str, Path]) -> None:
    import torch

    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(weight))
    except (ValueError, RuntimeError, OSError):  # not a zip checkpoint: torch.load reports the format error
        return
    entries = [(obj, name) for name, obj in safe_globals(needed).items()]
    if entries:
        torch.serialization.add_safe_globals(entries)


def _unsafe_names(weight: Union[str, Path]) -> List[str]:
    """The globals of ``weight`` that neither ultralytics' nor lolvit's allow-list accepts (for messages)."""
    import torch

    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(weight))
    except (ValueError, RuntimeError, OSError):
        return []
    ok = safe_globals(needed)
    return [n for n in needed if n not in ok and not n.startswith(("torch.nn.modules.", "ultralytics.", "numpy."))
            and n not in _SAFE_BUILTINS]


_SAFE_BUILTINS = {"builtins.getattr", "pathlib.PosixPath", "pathlib.WindowsPath", "collections.OrderedDict"}
_SAFE_LOCK = threading.Lock()


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """Within the block, ultralytics loads every ``.pt`` with ``torch.load(weights_only=True)`` against
    its allow-list plus lolvit's classes (as ``ULTRALYTICS_SAFE_LOAD=1`` does for the whole process)."""
    import ultralytics.nn.tasks as tasks

    register()
    with _SAFE_LOCK:
        before = tasks.SAFE_LOAD
        tasks.SAFE_LOAD = True
        try:
            yield
        finally:
            tasks.SAFE_LOAD = before


def _resolve_cfg(cfg: Any) -> Any:
    """A bare shipped name (``lolvit-s-det.yaml``) that is not a file here -> the packaged YAML."""
    if isinstance(cfg, (str, Path)) and not Path(cfg).exists():
        name = str(cfg)
        stem = name[:-5] if name.endswith(".yaml") else name
        if stem in MODEL_NAMES and "/" not in name:
            return str(CFG_DIR / f"{stem}.yaml")
    return cfg


def _patch_image_open() -> None:
    """ultralytics patches ``PIL.Image.open`` to retry unidentified files with the HEIF plugin; without
    ``pi_heif`` installed every corrupt image is then reported as "No module named 'pi_heif'". Report
    PIL's own reason instead (the plugin is still used when installed)."""
    from PIL import Image

    try:
        from ultralytics.utils import patches
    except ImportError:
        return
    patched = Image.open
    if getattr(patched, "_lolvit", False) or patched is not getattr(patches, "image_open", None):
        return
    original = patches._image_open

    def image_open(fp, *args: Any, **kwargs: Any):
        try:
            return patched(fp, *args, **kwargs)
        except ImportError as e:
            if e.name != "pi_heif":
                raise
            if hasattr(fp, "seek"):
                fp.seek(0)
            return original(fp, *args, **kwargs)  # raises PIL's UnidentifiedImageError, naming the file

    image_open.__doc__, image_open._lolvit = patched.__doc__, True
    Image.open = image_open


def register() -> None:
    """Expose :class:`LOLViTBackbone` to ultralytics' YAML parser, the shipped YAMLs to ``YOLO(name)``,
    lolvit's classes to ultralytics' safe loading, and the LOLViT conv+BN pairs to ``fuse``. Idempotent."""
    import ultralytics.nn.tasks as tasks

    tasks.LOLViTBackbone = LOLViTBackbone
    _patch_image_open()
    if not getattr(tasks.yaml_model_load, "_lolvit", False):  # the trainer rebuilds the model from the name
        original_load = tasks.yaml_model_load

        def yaml_model_load(path):
            return original_load(_resolve_cfg(path))

        yaml_model_load.__doc__, yaml_model_load._lolvit = original_load.__doc__, True
        tasks.yaml_model_load = yaml_model_load
    engine = sys.modules.get("ultralytics.engine.model")
    if engine is None:
        engine = importlib.import_module("ultralytics.engine.model")
    Model = getattr(engine, "Model", None)  # None while it is still importing: the start-up hook calls again
    if Model is not None and not getattr(Model._new, "_lolvit", False):
        original_new = Model._new

        def _new(self, cfg, *args: Any, **kwargs: Any):
            return original_new(self, _resolve_cfg(cfg), *args, **kwargs)

        _new.__doc__, _new._lolvit = original_new.__doc__, True
        Model._new = _new
    safe = getattr(tasks, "_SafeLoad", None)
    if safe is not None and not getattr(safe.loading, "_lolvit", False):
        original_loading = safe.loading

        @contextlib.contextmanager
        def loading(weight):
            _allow_lolvit(weight)
            with original_loading(weight):
                yield

        loading._lolvit = True
        safe.loading = loading
    base = tasks.BaseModel
    if getattr(base.fuse, "_lolvit", False):
        return
    original_fuse, original_is_fused = base.fuse, base.is_fused

    def fuse(self, *args: Any, **kwargs: Any):
        _fused_backbones(self)
        return original_fuse(self, *args, **kwargs)

    def is_fused(self, *args: Any, **kwargs: Any) -> bool:
        lolvit_done = not any(m.has_batchnorm() for m in self.modules() if isinstance(m, LOLViTBackbone))
        return lolvit_done and original_is_fused(self, *args, **kwargs)

    fuse.__doc__, fuse._lolvit = original_fuse.__doc__, True
    is_fused.__doc__ = original_is_fused.__doc__
    base.fuse, base.is_fused = fuse, is_fused


def model_cfg(name: Union[str, Path]) -> str:
    """Resolve a model name: ``lolvit-s-det`` (or ``.yaml``) -> the shipped YAML; anything else
    (``yolov8n.yaml``, a ``.pt`` checkpoint path, a YAML path) is returned unchanged."""
    name = str(name)
    stem = name[:-5] if name.endswith(".yaml") else name
    if stem in MODEL_NAMES:
        return str(CFG_DIR / f"{stem}.yaml")
    if stem.startswith("lolvit-") and not Path(name).exists():
        raise ValueError(f"unknown LOLViT YOLO model {name!r}; choose one of {list(MODEL_NAMES)}")
    if name.endswith(".pt") and not Path(name).exists():
        raise FileNotFoundError(f"checkpoint {name!r} not found (official weights are not downloaded offline; "
                                f"build from a YAML such as yolov8n.yaml)")
    return name


def load_yolo(model: Union[str, Path], task: Optional[str] = None):
    """``ultralytics.YOLO`` for a LOLViT name, an ultralytics YAML or a checkpoint, offline.

    A checkpoint is loaded with ``torch.load(weights_only=True)`` (:func:`safe_loading`); one that
    references other code (a pickle payload, a foreign class) raises ValueError without running it."""
    configure_offline()
    register()
    from ultralytics import YOLO

    cfg = model_cfg(model)
    if not str(cfg).endswith(".pt"):
        return YOLO(cfg, task=task)
    try:
        with safe_loading():
            return YOLO(cfg, task=task)
    except (TypeError, ModuleNotFoundError, AttributeError) as e:
        foreign = _unsafe_names(cfg)
        if not foreign and "outside the supported" not in str(e) and not isinstance(e, ModuleNotFoundError):
            raise
        what = f"references {', '.join(foreign)}" if foreign else f"needs {e}"
        raise ValueError(f"refusing to load checkpoint {str(cfg)!r}: it {what}, which is not a torch, ultralytics "
                         f"or lolvit model class (checkpoints are loaded with torch.load(weights_only=True))") from None


def check_data_yaml(data: Union[str, Path]) -> Dict[str, Any]:
    """Read a YOLO data YAML and check that its ``train``/``val`` entries exist on disk.

    Raises FileNotFoundError naming the missing file or folder (ultralytics would otherwise try
    to download a dataset)."""
    import yaml

    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"data YAML {str(data)!r} does not exist")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"data YAML {str(path)!r} does not parse: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"data YAML {str(path)!r} is not a mapping")
    for key in ("train", "val", "names"):
        if key not in cfg:
            raise ValueError(f"data YAML {str(path)!r} has no {key!r} entry")
    root = Path(cfg["path"]) if cfg.get("path") else path.parent
    if not root.is_absolute():
        # ultralytics takes a relative ``path:`` from the working directory (then from its
        # datasets_dir), never from the YAML's folder: check the folder it will use
        if not root.is_dir():
            raise FileNotFoundError(
                f"data YAML {str(path)!r}: relative path {str(cfg['path'])!r} is not a folder under the working "
                f"directory {os.getcwd()!r}; ultralytics resolves it from there (then from its datasets_dir), "
                "not from the YAML's folder: write an absolute path or run from the folder it is relative to")
        root = root.resolve()
    for key in ("train", "val"):
        entries = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        for entry in entries:
            target = Path(entry) if Path(entry).is_absolute() else root / entry
            if not target.exists():
                raise FileNotFoundError(f"data YAML {str(path)!r}: {key} path {str(target)!r} does not exist")
    return cfg


def _common(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(device="cpu", verbose=False)
    out.update({k: v for k, v in kwargs.items() if v is not None})
    return out


def _project(project: Optional[Union[str, Path]], task: str) -> str:
    """Run folder root where the user is: a relative ``project`` (default ``runs/TASK``) is taken from the
    working directory (ultralytics alone would put it under its ``runs_dir`` setting)."""
    return str((Path.cwd() / (project if project is not None else Path("runs") / task)).resolve())


def train(model: Union[str, Path], data: Union[str, Path], epochs: int = 1, imgsz: int = 640, batch: int = 16,
          workers: int = 0, project: Optional[Union[str, Path]] = None, **kwargs: Any):
    """Train with ultralytics' trainer; returns ``(YOLO, metrics)``. ``kwargs`` go to ``YOLO.train``.
    Writes ``PROJECT/NAME/weights/{best,last}.pt`` (default ``./runs/TASK/train``)."""
    check_data_yaml(data)
    yolo = load_yolo(model)
    args = _common(dict(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
                        pretrained=False, amp=False, project=_project(project, yolo.task), **kwargs))
    metrics = yolo.train(**args)
    return yolo, metrics


def val(model: Union[str, Path], data: Union[str, Path], imgsz: int = 640, batch: int = 16,
        project: Optional[Union[str, Path]] = None, **kwargs: Any):
    """ultralytics' validator; returns its metrics object (``.box.map`` = mAP50-95).
    Writes under ``PROJECT/NAME`` (default ``./runs/TASK/val``)."""
    check_data_yaml(data)
    yolo = load_yolo(model)
    return yolo.val(**_common(dict(data=str(data), imgsz=imgsz, batch=batch, plots=False,
                                   project=_project(project, yolo.task), **kwargs)))


def predict(model: Union[str, Path], source: Union[str, Path], imgsz: int = 640, conf: float = 0.25,
            save_dir: Optional[Union[str, Path]] = None, **kwargs: Any):
    """Run ultralytics' predictor; with ``save_dir`` writes one annotated image per input.
    Returns the list of ultralytics ``Results``."""
    if not Path(source).exists():
        raise FileNotFoundError(f"source {str(source)!r} does not exist")
    yolo = load_yolo(model)
    results = yolo.predict(**_common(dict(source=str(source), imgsz=imgsz, conf=conf, save=False, **kwargs)))
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        for r in results:
            r.save(filename=str(save_dir / Path(r.path).name))
    return results


def export(model: Union[str, Path], format: str = "onnx", imgsz: int = 640, **kwargs: Any) -> str:
    """ultralytics' exporter (ONNX, OpenVINO, TorchScript, ...); returns the exported file path."""
    yolo = load_yolo(model)
    return str(yolo.export(**_common(dict(format=format, imgsz=imgsz, **kwargs))))


_offline_env()
try:
    register()
except ImportError:  # ultralytics not installed: the classes stay usable, registration waits
    pass
