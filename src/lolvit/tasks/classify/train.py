"""Classification training: one recipe for LOLViT and any timm model.

AdamW (lr 1e-3, beta1 0.937) or SGD (lr 0.01, momentum 0.9) as in the paper's appendix E, cosine
schedule with linear warm-up (per step), label smoothing, optional RandAugment / mixup / cutmix,
model EMA, AMP on CUDA, DDP under ``torchrun`` (gloo on CPU, nccl on CUDA). Every epoch, and on
SIGINT/SIGTERM, rank 0 writes ``last`` (weights) and ``state`` (optimizer, scheduler, EMA, RNG,
loader position) atomically; ``resume=True`` continues bit-for-bit on the same hardware.
"""
import csv
import io
import json
import math
import os
import random
import signal
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
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler, Subset

from ...io import atomic_write_bytes, atomic_write_json, checkpoint_paths, load_weights, read_config, save_checkpoint
from .data import SeededTransform, build_dataset, collate_skip, subset_indices
from .evaluate import evaluate

OPTIMIZERS = {"adamw": dict(lr=1e-3, weight_decay=0.05), "sgd": dict(lr=0.01, weight_decay=5e-5)}
STATE_FORMAT = "lolvit-train-state"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in ``state.json`` and checked on resume."""

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
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    ema: float = 0.0
    drop_rate: float = 0.0
    amp: bool = True
    seed: int = 0
    train_subset: Optional[int] = None
    val_subset: Optional[int] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data_root: Optional[str] = None
    workers: int = 0
    threads: Optional[int] = None
    device: str = "auto"
    resume: bool = False
    exist_ok: bool = False
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True

    # fields that may differ between an interrupted run and its resumption
    RUNTIME = ("out", "workers", "threads", "device", "resume", "exist_ok", "progress", "tensorboard", "plot", "data_root")

    def recipe(self) -> Dict[str, Any]:
        d = asdict(self)
        d["crop_scale"] = list(d["crop_scale"])
        return {k: v for k, v in d.items() if k not in self.RUNTIME}

    def check(self) -> None:
        if self.opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.opt!r}; choose one of {sorted(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "img_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.img_size < 32:
            raise ValueError(f"img_size must be at least 32 (the /32 stage), got {self.img_size}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


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


def build_transforms(cfg: TrainConfig):
    from timm.data import create_transform

    train_tf = create_transform(
        cfg.img_size, is_training=True, scale=tuple(cfg.crop_scale), hflip=cfg.hflip, vflip=0.0,
        color_jitter=None, auto_augment=cfg.randaug, interpolation="bilinear", re_prob=0.0,
    )
    val_tf = create_transform(cfg.img_size, is_training=False, crop_pct=1.0, interpolation="bilinear")
    return train_tf, val_tf


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
        self._check_out_dir()

        train_tf, val_tf = build_transforms(cfg)
        base_train = build_dataset(cfg.data, "train", train_tf, cfg.img_size, cfg.data_root)
        self.classes = list(base_train.classes)
        base_val = build_dataset(cfg.data, "val", val_tf, cfg.img_size, cfg.data_root, classes=self.classes)
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
        self.model = build_model(cfg.model, len(self.classes), **kw).to(self.device)
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
        if cfg.resume:
            self._resume()
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
        return torch.device(want)

    def _check_out_dir(self) -> None:
        w, _ = checkpoint_paths(self.out / "last")
        if self.cfg.resume:
            if not w.is_file() or not (self.out / "state.json").is_file():
                raise FileNotFoundError(f"--resume: no checkpoint to resume in {self.out} (expected last.safetensors and state.json)")
        elif w.exists() and not self.cfg.exist_ok:
            raise ValueError(f"{self.out} already holds a run; use --resume to continue it, or --exist-ok to overwrite")

    def _resume(self) -> None:
        state_json = json.loads((self.out / "state.json").read_text())
        if state_json.get("format") != STATE_FORMAT:
            raise ValueError(f"{self.out / 'state.json'} is not a lolvit training state")
        old = state_json["config"]
        new = self.cfg.recipe()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(
                "--resume with a different recipe: " + ", ".join(f"{k}: saved {old.get(k)!r} vs now {new.get(k)!r}" for k in diff))
        meta = read_config(self.out / "last")
        if meta["model"] != self.cfg.model:
            raise ValueError(f"checkpoint in {self.out} is a {meta['model']!r}, not {self.cfg.model!r}")
        tensors = load_file(str(self.out / "state.safetensors"))
        if tensors.get("tag") is None or int(tensors["tag"].item()) != int(state_json["tag"]):
            raise ValueError(f"{self.out}: state.safetensors and state.json are from different saves")
        weights, _ = checkpoint_paths(self.out / "last")
        load_weights(self.model, {k: v.to(self.device) for k, v in load_file(str(weights)).items()}, str(weights))
        if self.ema is not None:
            ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            load_weights(self.ema.module, ema_sd, "EMA state")
        _load_optimizer_state(self.opt, {k: v.to(self.device) for k, v in tensors.items()}, state_json["optimizer"])
        self.sched.load_state_dict(state_json["scheduler"])
        self.scaler.load_state_dict(state_json["scaler"])
        self.epoch, self.step_in_epoch = state_json["epoch"], state_json["step_in_epoch"]
        self.global_step = state_json["global_step"]
        self.history = state_json["history"]
        self.best_top1 = state_json["best_top1"]
        self.skipped = state_json["skipped"]
        self.partial = state_json.get("partial", {})
        _set_rng_state(tensors, state_json["rng"])

    # ----------------------------------------------------------------- checkpointing
    def save(self, partial: Optional[Dict[str, float]] = None) -> None:
        """Atomically write last.{safetensors,json} and state.{safetensors,json} (rank 0 only)."""
        if not self.main:
            return
        tag = int(time.time_ns() % (2**62))
        extra = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "img_size": self.cfg.img_size,
                 "data": self.cfg.data, "recipe": self.cfg.recipe()}
        rng_t, rng_meta = _rng_state()
        opt_t, opt_meta = _optimizer_state(self.opt)
        tensors = {**rng_t, **opt_t, "tag": torch.tensor([tag], dtype=torch.int64)}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in self.ema.module.state_dict().items()})
        state = {
            "format": STATE_FORMAT, "tag": tag, "config": self.cfg.recipe(), "epochs": self.cfg.epochs,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "optimizer": opt_meta,
            "rng": rng_meta, "history": self.history, "best_top1": self.best_top1, "skipped": self.skipped,
            "partial": partial or {},
        }
        buf = save_bytes(tensors)
        atomic_write_bytes(self.out / "state.safetensors", buf)
        save_checkpoint(self.model, self.out / "last", self.classes, extra)
        atomic_write_json(self.out / "state.json", state)

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
        logger = RunLogger(self.out, self.main and cfg.tensorboard) if self.main else None
        try:
            if self.main:
                self.out.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.out / "config.json", {**asdict(self.cfg), "crop_scale": list(cfg.crop_scale)})
            while self.epoch < cfg.epochs:
                row = self._train_epoch()
                if row is None:
                    return {"interrupted": True, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch}
                if logger:
                    logger.log(row)
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
        partial = (getattr(self, "partial", {}) or {}) if self.main else {}  # saved totals of all ranks
        loss_sum, correct, seen = partial.get("loss_sum", 0.0), partial.get("correct", 0.0), partial.get("seen", 0)
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
            if x is not None and len(x) > 1:  # a 1-image batch cannot train BatchNorm: dropped like drop_last
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
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
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
                stats = torch.tensor([loss.item() * len(x), (logits.argmax(1) == hard).sum().item(), len(x)],
                                     dtype=torch.float64)
                loss_sum, correct, seen = loss_sum + stats[0].item(), correct + stats[1].item(), seen + int(stats[2])
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
                totals = self._all_reduce([loss_sum, correct, seen])
                self.save({"loss_sum": totals[0], "correct": totals[1], "seen": int(totals[2])})
                if self.main:
                    print(f"stopped by signal {self.stop_signal}: saved {self.out}/last.safetensors "
                          f"(epoch {epoch + 1}, step {self.step_in_epoch}); continue with --resume")
                return None
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0
        totals = self._all_reduce([loss_sum, correct, seen])
        row = {"epoch": epoch + 1, "train_loss": totals[0] / max(totals[2], 1),
               "train_top1": 100 * totals[1] / max(totals[2], 1), "lr": self.opt.param_groups[0]["lr"],
               "train_img_s": totals[2] / max(train_time, 1e-9)}
        row.update({f"val_{k}": v for k, v in self._evaluate(self.model).items()})
        if self.ema is not None:
            row.update({f"ema_val_{k}": v for k, v in self._evaluate(self.ema.module).items()})
        row["skipped_images"] = self.skipped
        self.history.append(row)
        self.epoch, self.step_in_epoch = epoch + 1, 0
        if self.main:
            top1 = row.get("ema_val_top1", row["val_top1"])
            msg = (f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f}% | "
                   f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}% top5 {row['val_top5']:.2f}%")
            if self.ema is not None:
                msg += f" | EMA top1 {row['ema_val_top1']:.2f}%"
            if self.skipped:
                msg += f" | {self.skipped} unreadable images skipped"
            print(msg, flush=True)
            if top1 > self.best_top1:
                self.best_top1 = top1
                best = self.ema.module if self.ema is not None else self.model
                save_checkpoint(best, self.out / "best", self.classes, {"epoch": epoch + 1, "val_top1": top1,
                                                                        "img_size": cfg.img_size, "data": cfg.data})
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
        sums = self._all_reduce([res.loss_sum, res.correct1, res.correct5, res.count])
        return {"loss": sums[0] / max(sums[3], 1), "top1": 100 * sums[1] / max(sums[3], 1),
                "top5": 100 * sums[2] / max(sums[3], 1)}


def save_bytes(tensors: Dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


class RunLogger:
    """Per-epoch CSV (rewritten atomically) and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, out: Path, tensorboard: bool):
        self.out = out
        self.rows: List[Dict[str, Any]] = []
        csv_path = out / "results.csv"
        if csv_path.is_file():
            with open(csv_path) as f:
                self.rows = [dict(r) for r in csv.DictReader(f)]
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: tensorboard is not installed; writing CSV logs only")
            else:
                self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, row: Dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if int(r["epoch"]) < int(row["epoch"])] + [row]
        keys = list(row)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow(r)
        atomic_write_bytes(self.out / "results.csv", buf.getvalue().encode())
        if self.tb is not None:
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
