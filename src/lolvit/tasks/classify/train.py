"""Classification training: one recipe for LOLViT and any timm model.

AdamW (lr 1e-3, beta1 0.937) or SGD (lr 0.01, momentum 0.9) as in the paper's appendix E, cosine
schedule with linear warm-up (per step), label smoothing, optional RandAugment / mixup / cutmix,
model EMA, AMP on CUDA, DDP under ``torchrun`` (gloo on CPU, nccl on CUDA). Every epoch, and on
SIGINT/SIGTERM, rank 0 writes ``last`` (weights) and ``state`` (optimizer, scheduler, EMA, RNG,
loader position) atomically; ``resume=True`` continues bit-for-bit on the same hardware.
"""
import csv
import dataclasses
import io
import json
import math
import os
import random
import re
import shutil
import signal
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, Subset

from ...io import atomic_write_bytes, checkpoint_paths, load_weights, read_config, save_checkpoint
from .data import SeededTransform, build_dataset, build_transforms, collate_skip, subset_indices
from .evaluate import evaluate

OPTIMIZERS = {"adamw": dict(lr=1e-3, weight_decay=0.05), "sgd": dict(lr=0.01, weight_decay=5e-5)}
STATE_FORMAT = "lolvit-train-state"
STATE_VERSION = 2
TRAIN_CROPS = ("rrc", "pad")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# what a run writes into its folder; --exist-ok clears exactly these
RUN_FILES = ("last.safetensors", "last.json", "best.safetensors", "best.json", "state.safetensors",
             "results.csv", "recipe.yaml", "curves.png", "tensorboard", "val")


@dataclass
class TrainConfig:
    """Everything a run depends on. The recipe part (all but :attr:`RUNTIME`) is saved with the
    run and checked on resume; ``recipe.yaml`` in the run folder holds it."""

    model: str = "lolvit_s"
    data: str = "digits"
    out: str = "runs/train"
    epochs: int = 10
    batch_size: int = 64
    img_size: int = 64
    opt: str = "adamw"
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    randaug: Optional[str] = None
    train_crop: str = "rrc"
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_padding: int = 4
    hflip: float = 0.5
    re_prob: float = 0.0
    interpolation: str = "bilinear"
    val_crop_pct: float = 1.0
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    ema: float = 0.0
    drop_rate: float = 0.0
    amp: bool = True
    seed: int = 0
    train_subset: Optional[int] = None
    val_subset: Optional[int] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    init_from: Optional[str] = None
    recipe: Optional[str] = None
    data_root: Optional[str] = None
    workers: int = 0
    threads: Optional[int] = None
    device: str = "auto"
    channels_last: bool = False
    download: bool = False
    resume: bool = False
    exist_ok: bool = False
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True

    # fields that may differ between an interrupted run and its resumption (epochs may grow too)
    RUNTIME = ("out", "recipe", "data_root", "workers", "threads", "device", "channels_last", "download", "resume",
               "exist_ok", "progress", "tensorboard", "plot")

    @classmethod
    def from_recipe(cls, recipe: Optional[str] = None, **overrides: Any) -> "TrainConfig":
        """The dataclass defaults, then the recipe's values, then ``overrides``.

        Without ``recipe`` the data's default recipe is used (:func:`~.recipes.default_recipe`)."""
        from .recipes import default_recipe, read_recipe

        fields = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in fields.items() if k not in cls.RUNTIME}
        bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if bad:
            raise TypeError(f"unknown training option(s) {bad}")
        name = recipe or default_recipe(overrides.get("data") or cls.data)
        values, source = read_recipe(name, fields)
        return cls(**{**values, **overrides, "recipe": source})

    def recipe_dict(self) -> Dict[str, Any]:
        """The recipe part as plain YAML/JSON types."""
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k not in self.RUNTIME}

    def data_config(self) -> Dict[str, Any]:
        """Inference preprocessing of this recipe, in timm's data-config form (saved in checkpoints)."""
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return {"input_size": [3, self.img_size, self.img_size], "crop_pct": self.val_crop_pct,
                "interpolation": self.interpolation, "mean": list(self.mean or IMAGENET_DEFAULT_MEAN),
                "std": list(self.std or IMAGENET_DEFAULT_STD)}

    def check(self) -> None:
        """Raise ValueError/TypeError naming the first option that cannot work."""
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a model name, got {self.model!r}")
        if self.opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.opt!r}; choose one of {sorted(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "img_size", "seed", "crop_padding", "workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name in ("seed", "crop_padding", "workers") else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name in ('seed', 'crop_padding', 'workers') else 'positive'}"
                                 f" integer, got {v!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (BatchNorm needs two samples per training batch), "
                             f"got {self.batch_size}")
        if self.img_size < 32:
            raise ValueError(f"img_size must be at least 32 (the /32 stage), got {self.img_size}")
        for name in ("train_subset", "val_subset", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name, lo, hi in (("ema", 0.0, 1.0), ("label_smoothing", 0.0, 1.0)):
            v = getattr(self, name)
            if not _is_number(v) or not lo <= v < hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}), got {v!r}")
        for name in ("hflip", "re_prob", "min_lr_ratio", "drop_rate"):
            v = getattr(self, name)
            if not _is_number(v) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        for name in ("mixup", "cutmix", "warmup_epochs"):
            v = getattr(self, name)
            if not _is_number(v) or v < 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if v is not None and (not _is_number(v) or v < 0 or (name == "lr" and v == 0)):
                raise ValueError(f"{name} must be {'> 0' if name == 'lr' else '>= 0'}, got {v!r}")
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}, got {self.train_crop!r}")
        cs = tuple(self.crop_scale) if isinstance(self.crop_scale, (list, tuple)) else ()
        if len(cs) != 2 or not all(_is_number(v) for v in cs) or not 0 < cs[0] <= cs[1] <= 1:
            raise ValueError(f"crop_scale must be two numbers MIN MAX with 0 < MIN <= MAX <= 1, got {self.crop_scale!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not _is_number(self.val_crop_pct) or not 0 < self.val_crop_pct <= 1:
            raise ValueError(f"val_crop_pct must be in (0, 1], got {self.val_crop_pct!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) for x in v)):
                raise ValueError(f"{name} must be three numbers (one per RGB channel), got {v!r}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.randaug is not None:
            _check_randaug(self.randaug)
        if not isinstance(self.model_kwargs, dict):
            raise TypeError(f"model_kwargs must be a mapping, got {type(self.model_kwargs).__name__}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(self.device)):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_randaug(spec: str) -> None:
    from timm.data import rand_augment_transform

    if not isinstance(spec, str) or not spec.startswith("rand"):
        raise ValueError(f"randaug must be a timm RandAugment string such as 'rand-m9-mstd0.5', got {spec!r}")
    try:
        rand_augment_transform(spec, {})
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"randaug {spec!r} is not a valid timm RandAugment string ({e or 'bad section'})") from None


class EpochSampler(Sampler):
    """Seeded per-epoch permutation, sharded over ranks (padded to equal length), starting at ``start``."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)

    def order(self) -> List[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        idx = torch.randperm(self.n, generator=g).tolist()
        idx += idx[: self.per_rank * self.world - self.n]
        return idx[self.rank::self.world]

    def __iter__(self):
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ModelEMA:
    """Exponential moving average of weights (buffers copied): ``ema = d * ema + (1 - d) * w``."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for (_, e), (_, m) in zip(self.module.state_dict().items(), model.state_dict().items()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(m.detach(), alpha=1 - self.decay)
            else:
                e.copy_(m)


def cosine_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """Per-step LR factor: linear warm-up to 1, then cosine decay to ``min_ratio``."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    import timm

    from ... import models  # noqa: F401  (registers lolvit_* with timm)

    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r} (lolvit_s, lolvit_x or any timm model name)")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _dist_info() -> Tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _rng_state() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def _set_rng_state(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _optimizer_state(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    sd = opt.state_dict()
    tensors, per_param = {}, {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                entry[k] = v
        per_param[str(pid)] = entry
    return tensors, {"param_groups": sd["param_groups"], "scalars": per_param, "keys": sorted(tensors)}


def _load_optimizer_state(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    state: Dict[int, Dict[str, Any]] = {int(k): dict(v) for k, v in meta["scalars"].items()}
    for key in meta["keys"]:
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = tensors[key]
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Trainer:
    """Holds one run's model, data, optimizer and logs; :meth:`fit` trains to ``cfg.epochs``."""

    def __init__(self, cfg: TrainConfig, on_step: Optional[Callable[["Trainer"], None]] = None):
        cfg.check()
        self.cfg, self.on_step = cfg, on_step
        self.rank, self.world, self.local_rank = _dist_info()
        self.main = self.rank == 0
        self.out = Path(cfg.out)
        self.stop_signal: Optional[int] = None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = self._device()
        saved = self._check_out_dir()

        train_tf, val_tf = build_transforms(cfg)
        base_train = build_dataset(cfg.data, "train", train_tf, cfg.img_size, cfg.data_root, download=cfg.download)
        self.classes = list(base_train.classes)
        if len(self.classes) < 2:
            raise ValueError(f"dataset {cfg.data!r} has {len(self.classes)} class ({self.classes}): "
                             "a classifier needs at least two")
        base_val = build_dataset(cfg.data, "val", val_tf, cfg.img_size, cfg.data_root, classes=self.classes,
                                 download=cfg.download)
        tr_idx = subset_indices(base_train.targets, cfg.train_subset, cfg.seed)
        va_idx = subset_indices(base_val.targets, cfg.val_subset, cfg.seed)
        self.train_set = SeededTransform(Subset(base_train, tr_idx), cfg.seed)
        self.val_set = Subset(base_val, va_idx)
        self.val_targets = [base_val.targets[i] for i in va_idx]
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, self.rank, self.world)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        kw = dict(cfg.model_kwargs)
        if cfg.drop_rate:
            kw["drop_rate"] = cfg.drop_rate
        self.model = build_model(cfg.model, len(self.classes), **kw)
        if cfg.init_from and saved is None:
            self.init_note = init_from_checkpoint(self.model, cfg.init_from)
            if self.main:
                print(f"initialised from {cfg.init_from}: {self.init_note}", flush=True)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEMA(self.model, cfg.ema) if cfg.ema > 0 else None
        hp = dict(OPTIMIZERS[cfg.opt])
        lr = cfg.lr if cfg.lr is not None else hp["lr"]
        wd = cfg.weight_decay if cfg.weight_decay is not None else hp["weight_decay"]
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg.opt == "adamw":
            self.opt = torch.optim.AdamW(groups, lr=lr, betas=(0.937, 0.999))
        else:
            self.opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
        total = cfg.epochs * self.steps_per_epoch
        warm = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine_lambda(total, warm, cfg.min_lr_ratio))
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                               label_smoothing=cfg.label_smoothing, num_classes=len(self.classes))
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: List[Dict[str, Any]] = []
        self.best_top1 = -1.0
        self.skipped = 0
        self.partial: Dict[str, Any] = {}
        if saved is not None:
            self._resume(*saved)
            if self.main:
                self._repair_outputs()
            if self.epoch >= cfg.epochs:
                raise ValueError(f"the run in {self.out} already finished {self.epoch} of {saved[1]['epochs']} epochs; "
                                 f"pass --epochs N with N > {self.epoch} to train it further")
        self.net = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    # ----------------------------------------------------------------- set-up helpers
    def _device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' requested but CUDA is not available")
            if self.world > 1:
                want = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.local_rank)
        if want == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available")
        return torch.device(want)

    def _check_out_dir(self) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
        """Check the run folder before any work; returns the saved state when resuming.

        A new run needs a missing or empty folder, or one holding a lolvit run and ``exist_ok``
        (which removes exactly the files a run writes). Folders with other files are refused."""
        out, cfg = self.out, self.cfg
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        if cfg.resume:
            saved = read_train_state(out)
            self._check_resumable(saved[1])
            return saved
        if out.is_dir() and any(out.iterdir()):
            if not is_run_dir(out):
                raise ValueError(f"--out {out} is not empty and holds no lolvit run: choose a new or empty folder")
            if not cfg.exist_ok:
                raise ValueError(f"{out} already holds a run; use --resume to continue it, or --exist-ok to overwrite")
            if self.main:
                clear_run_dir(out)
        if self.main:
            _check_writable(out)
        return None

    def _check_resumable(self, state: Dict[str, Any]) -> None:
        old, new = dict(state["config"]), self.cfg.recipe_dict()
        old.pop("epochs", None)
        new.pop("epochs")
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError("--resume with a different recipe: " + ", ".join(
                f"{k}: saved {old.get(k)!r} vs now {new.get(k)!r}" for k in diff))

    def _resume(self, tensors: Dict[str, torch.Tensor], state: Dict[str, Any]) -> None:
        model_sd = {k[6:]: v.to(self.device) for k, v in tensors.items() if k.startswith("model.")}
        load_weights(self.model, model_sd, f"{self.out / STATE_FILE} (model)")
        if self.ema is not None:
            ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            load_weights(self.ema.module, ema_sd, f"{self.out / STATE_FILE} (EMA)")
        _load_optimizer_state(self.opt, {k: v.to(self.device) for k, v in tensors.items()}, state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.history = state["history"]
        self.best_top1 = state["best_top1"]
        self.skipped = state["skipped"]
        self.partial = state.get("partial", {})
        _set_rng_state(tensors, state["rng"])

    def _repair_outputs(self) -> None:
        """After a kill between the state file and the files written after it: bring ``last`` and
        ``results.csv`` up to the saved state (the state file is the single source of truth), and
        remove temporary files that interrupted writes left behind."""
        for name in RUN_FILES:
            for tmp in self.out.glob(f".{name}.*.tmp"):
                tmp.unlink()
        try:
            last = read_config(self.out / "last").get("extra", {})
        except (FileNotFoundError, ValueError):
            last = {}
        if (last.get("epoch"), last.get("step_in_epoch")) != (self.epoch, self.step_in_epoch):
            save_checkpoint(self.model, self.out / "last", self.classes, self.extra())
        if self.history:
            RunLogger(self.out, tensorboard=False).log(self.history)

    # ----------------------------------------------------------------- checkpointing
    def extra(self, **more: Any) -> Dict[str, Any]:
        """Checkpoint ``extra``: position, data and the preprocessing every consumer must use."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "img_size": self.cfg.img_size,
                "data": self.cfg.data, "recipe": self.cfg.recipe_dict(), "data_config": self.cfg.data_config(), **more}

    def save(self, partial: Optional[Dict[str, float]] = None) -> None:
        """Write the training state as ONE file renamed into place (a kill at any point leaves the
        previous or the new state, never a mix), then the ``last`` checkpoint (rank 0 only)."""
        if not self.main:
            return
        rng_t, rng_meta = _rng_state()
        opt_t, opt_meta = _optimizer_state(self.opt)
        tensors = {**rng_t, **opt_t}
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        state = {
            "config": self.cfg.recipe_dict(), "epochs": self.cfg.epochs,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "optimizer": opt_meta,
            "rng": rng_meta, "history": self.history, "best_top1": self.best_top1, "skipped": self.skipped,
            "partial": partial or {}, "classes": self.classes,
        }
        write_train_state(self.out, tensors, state)
        save_checkpoint(self.model, self.out / "last", self.classes, self.extra())

    # ----------------------------------------------------------------- training
    def _loader(self, epoch: int) -> DataLoader:
        self.sampler.epoch = epoch
        self.sampler.start = self.step_in_epoch * self.cfg.batch_size
        self.train_set.epoch = epoch
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.workers, collate_fn=collate_skip, drop_last=False)

    def _on_signal(self, signum, frame) -> None:
        """First SIGINT/SIGTERM: finish the step, save, stop. A second one aborts at once."""
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum

    def fit(self) -> Dict[str, Any]:
        """Train to ``cfg.epochs``; returns the last epoch's metrics (``interrupted`` when stopped)."""
        cfg = self.cfg
        handlers = {}
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                handlers[s] = signal.signal(s, self._on_signal)
        logger = None
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_recipe(self.out / "recipe.yaml", cfg)
            print(f"recipe: {cfg.recipe or 'none (TrainConfig defaults)'}; run folder {self.out} "
                  f"(recipe.yaml reproduces this run)", flush=True)
            logger = RunLogger(self.out, cfg.tensorboard, resume_epoch=self.epoch if cfg.resume else None)
        try:
            while self.epoch < cfg.epochs:
                row = self._train_epoch()
                if row is None:
                    return {"interrupted": True, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch}
                if logger:
                    logger.log(self.history)
            if self.main and cfg.plot and self.history:
                from .plots import plot_curves

                plot_curves(self.history, self.out / "curves.png", title=f"{cfg.model} on {cfg.data}")
            result = dict(self.history[-1]) if self.history else {}
            result.update(train_images=len(self.train_set), val_images=len(self.val_set), out=str(self.out))
            return result
        finally:
            if logger:
                logger.close()
            for s, h in handlers.items():
                signal.signal(s, h)

    def _train_epoch(self) -> Optional[Dict[str, Any]]:
        cfg, epoch = self.cfg, self.epoch
        self.net.train()
        partial = (self.partial or {}) if self.main else {}  # saved totals of all ranks
        loss_sum, correct, seen = partial.get("loss_sum", 0.0), partial.get("correct", 0.0), partial.get("seen", 0)
        single = partial.get("single", 0)
        self.partial = {}
        t0, t_seen = time.perf_counter(), 0
        loader = self._loader(epoch)
        bar = None
        if self.main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=True, dynamic_ncols=True)
        for x, y, skipped in loader:
            self.skipped += skipped
            if x is not None and len(x) == 1:
                single += 1  # BatchNorm cannot train on one sample: a 1-image remainder batch is left out, counted
            elif x is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                hard = y
                if self.mixup is not None and len(x) % 2 == 0:
                    x, y = self.mixup(x, y)
                ctx = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()
                with ctx:
                    logits = self.net(x)
                    if y.ndim == 2:
                        loss = torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
                    else:
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {epoch + 1}, step "
                                             f"{self.step_in_epoch + 1}: lower the learning rate (--lr)")
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
                loss_sum += loss.item() * len(x)
                correct += (logits.argmax(1) == hard).sum().item()
                seen += len(x)
                t_seen += len(x)
            self.sched.step()
            self.step_in_epoch += 1
            self.global_step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{100 * correct / max(seen, 1):.1f}%",
                                img_s=f"{t_seen * self.world / max(time.perf_counter() - t0, 1e-9):.0f}",
                                lr=f"{self.opt.param_groups[0]['lr']:.2e}")
            if self.on_step is not None:
                self.on_step(self)
            if self._should_stop():
                if bar is not None:
                    bar.close()
                totals = self._all_reduce([loss_sum, correct, seen, single])
                self.save({"loss_sum": totals[0], "correct": totals[1], "seen": int(totals[2]), "single": int(totals[3])})
                if self.main:
                    print(f"stopped by signal {self.stop_signal}: saved {self.out}/{STATE_FILE} "
                          f"(epoch {epoch + 1}, step {self.step_in_epoch}); continue with --resume", flush=True)
                return None
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0
        totals = self._all_reduce([loss_sum, correct, seen, single])
        if totals[2] == 0:
            raise ValueError(f"epoch {epoch + 1} trained on no images ({self.skipped} unreadable so far): "
                             f"check the training data of {cfg.data!r}")
        row = {"epoch": epoch + 1, "train_loss": totals[0] / totals[2], "train_top1": 100 * totals[1] / totals[2],
               "lr": self.opt.param_groups[0]["lr"], "train_img_s": totals[2] / max(train_time, 1e-9),
               "epoch_s": train_time}
        row.update({f"val_{k}": v for k, v in self._evaluate(self.model).items()})
        if self.ema is not None:
            row.update({f"ema_val_{k}": v for k, v in self._evaluate(self.ema.module).items()})
        row["skipped_images"] = self.skipped
        row["single_image_batches"] = int(totals[3])
        self.history.append(row)
        self.epoch, self.step_in_epoch = epoch + 1, 0
        if self.main:
            top1 = row.get("ema_val_top1", row["val_top1"])
            msg = (f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f}% | "
                   f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}% top5 {row['val_top5']:.2f}%")
            if self.ema is not None:
                msg += f" | EMA top1 {row['ema_val_top1']:.2f}%"
            if self.skipped or row["val_skipped"]:
                msg += f" | unreadable images skipped: {self.skipped} train, {row['val_skipped']} val"
            if totals[3]:
                msg += f" | {int(totals[3])} single-image batch(es) left out (BatchNorm)"
            print(msg, flush=True)
            if top1 > self.best_top1:
                self.best_top1 = top1
                best = self.ema.module if self.ema is not None else self.model
                save_checkpoint(best, self.out / "best", self.classes, self.extra(val_top1=top1))
            self.save()
        return row

    def _should_stop(self) -> bool:
        flag = torch.tensor([1.0 if self.stop_signal is not None else 0.0])
        if self.world > 1:
            flag = flag.to(self.device)
            dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def _all_reduce(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def _evaluate(self, model: nn.Module) -> Dict[str, float]:
        idx = list(range(self.rank, len(self.val_set), self.world))
        loader = DataLoader(Subset(self.val_set, idx), batch_size=self.cfg.batch_size * 2, shuffle=False,
                            num_workers=self.cfg.workers, collate_fn=collate_skip)
        res = evaluate(model, loader, len(self.classes), self.device, amp=self.use_amp)
        sums = self._all_reduce([res.loss_sum, res.correct1, res.correct5, res.count, res.skipped])
        if sums[3] == 0:
            raise ValueError(f"the val split of {self.cfg.data!r} has no readable images "
                             f"({int(sums[4])} unreadable): nothing to evaluate")
        return {"loss": sums[0] / sums[3], "top1": 100 * sums[1] / sums[3], "top5": 100 * sums[2] / sums[3],
                "skipped": int(sums[4])}


# --------------------------------------------------------------------------- run folder
STATE_FILE = "state.safetensors"


def is_run_dir(out: Path) -> bool:
    """Whether ``out`` holds a lolvit training run (its state or last checkpoint)."""
    out = Path(out)
    if (out / STATE_FILE).is_file():
        return True
    try:
        return read_config(out / "last") is not None
    except (FileNotFoundError, ValueError):
        return False


def clear_run_dir(out: Path) -> None:
    """Remove what a run wrote into ``out`` (and stale temporary files of interrupted writes)."""
    for name in RUN_FILES:
        p = Path(out) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for name in RUN_FILES:
        for tmp in Path(out).glob(f".{name}.*.tmp"):
            tmp.unlink()


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write the run folder --out {out}: {e.strerror or e}") from None


def write_train_state(out: Path, tensors: Dict[str, torch.Tensor], state: Dict[str, Any],
                      fmt: str = STATE_FORMAT) -> None:
    """``out/state.safetensors``: tensors plus the JSON state (tagged ``fmt``) in its metadata, atomically."""
    from safetensors.torch import save

    from ...io import tensor_checksum

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": fmt, "version": str(STATE_VERSION), "state": json.dumps(state),
            "sha256": tensor_checksum(tensors)}
    atomic_write_bytes(Path(out) / STATE_FILE, save(tensors, metadata=meta))


def read_train_state(out: Path, fmt: str = STATE_FORMAT, what: str = "training state"
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(tensors, state) of the run in ``out``, its checksum verified; FileNotFoundError/ValueError
    name what is wrong."""
    from ...io import read_safetensors

    path = Path(out) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {what} to resume in {out} (expected {path})")
    tensors, meta = read_safetensors(path)
    try:
        if meta.get("format") != fmt or meta.get("version") != str(STATE_VERSION):
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        state = json.loads(meta["state"])
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a readable lolvit training state ({type(e).__name__}: {e})") from None
    return tensors, state


def write_recipe(path: Path, cfg: TrainConfig) -> None:
    import yaml

    head = (f"# lolvit training recipe of this run (from: {cfg.recipe or 'TrainConfig defaults'}).\n"
            f"# Reproduce: lolvit train --recipe {path} --out NEW_FOLDER\n")
    atomic_write_bytes(path, (head + yaml.safe_dump(cfg.recipe_dict(), sort_keys=False)).encode())


def init_from_checkpoint(model: nn.Module, path: str) -> str:
    """Load matching weights of a checkpoint (``.safetensors``, or a ``.pt``/``.pth`` state dict)
    into ``model`` for fine-tuning; a classifier of another class count is left freshly
    initialised. Any other mismatch raises ValueError listing it. Returns a one-line summary."""
    from ...io import read_state_dict

    p = Path(path)
    weights = checkpoint_paths(p)[0] if p.suffix not in (".pt", ".pth", ".bin") else p
    state = read_state_dict(weights)
    own = model.state_dict()
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "classifier"
    heads = (head,) if isinstance(head, str) else tuple(head)
    is_head = lambda k: any(k == h or k.startswith(h + ".") for h in heads)  # noqa: E731
    reset = sorted(k for k in own if is_head(k) and k in state and state[k].shape != own[k].shape)
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(k for k in own if k in state and state[k].shape != own[k].shape and k not in reset)
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (e.g. {v[:3]})" for what, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if v]
        raise ValueError(f"--init-from {path} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k not in reset}, strict=False)
    if reset:
        return f"{len(own) - len(reset)} tensors loaded; classifier re-initialised for {model.num_classes} classes"
    return f"all {len(own)} tensors loaded"


class RunLogger:
    """``results.csv`` rewritten from the whole history each epoch (atomic), and TensorBoard
    scalars when tensorboard is installed (events after the resume point are purged)."""

    def __init__(self, out: Path, tensorboard: bool, resume_epoch: Optional[int] = None):
        self.out = out
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: tensorboard is not installed; writing CSV logs only")
            else:
                purge = resume_epoch + 1 if resume_epoch is not None else None
                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=purge)

    def log(self, history: List[Dict[str, Any]]) -> None:
        keys: List[str] = []
        for r in history:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in history:
            w.writerow(r)
        atomic_write_bytes(self.out / "results.csv", buf.getvalue().encode())
        if self.tb is not None:
            row = history[-1]
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k.replace("_", "/", 1), v, int(row["epoch"]))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(cfg: TrainConfig, on_step: Optional[Callable[[Trainer], None]] = None) -> Dict[str, Any]:
    """Run (or resume) training; under ``torchrun`` joins the process group first."""
    rank, world, local_rank = _dist_info()
    own_group = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        own_group = True
    try:
        return Trainer(cfg, on_step).fit()
    finally:
        if own_group:
            dist.barrier()
            dist.destroy_process_group()
