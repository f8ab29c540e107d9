"""Evaluation: top-1/top-5, per-class accuracy, confusion matrix, and ``lolvit val`` on a checkpoint."""
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ...io import atomic_write_bytes


@dataclass
class EvalResult:
    loss_sum: float = 0.0
    correct1: int = 0
    correct5: int = 0
    count: int = 0
    skipped: int = 0
    predictions: List[int] = field(default_factory=list)
    confidences: List[float] = field(default_factory=list)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    @property
    def top1(self) -> float:
        return 100.0 * self.correct1 / max(self.count, 1)

    @property
    def top5(self) -> float:
        return 100.0 * self.correct5 / max(self.count, 1)

    def per_class(self) -> List[float]:
        """Recall per class in percent (rows of the confusion matrix are true classes)."""
        totals = self.confusion.sum(1)
        return [100.0 * self.confusion[i, i] / t if t else float("nan") for i, t in enumerate(totals)]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device = torch.device("cpu"),
             amp: bool = False) -> EvalResult:
    """Batches of ``(x (B,3,H,W), y (B,), n_skipped)`` -> accumulated :class:`EvalResult`."""
    was_training = model.training
    model.eval()
    res = EvalResult(confusion=np.zeros((num_classes, num_classes), dtype=np.int64))
    k = min(5, num_classes)
    for x, y, skipped in loader:
        res.skipped += skipped
        if x is None:
            continue
        x, y = x.to(device), y.to(device)
        with torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext():
            logits = model(x).float()
        res.loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        res.correct1 += (top[:, 0] == y).sum().item()
        res.correct5 += (top == y[:, None]).any(1).sum().item()
        res.count += len(y)
        np.add.at(res.confusion, (y.cpu().numpy(), top[:, 0].cpu().numpy()), 1)
        res.predictions += top[:, 0].tolist()
        res.confidences += logits.softmax(1).max(1).values.tolist()
    model.train(was_training)
    return res


def validate(checkpoint: str, data: str, out: Optional[str] = None, img_size: Optional[int] = None,
             batch_size: int = 64, data_root: Optional[str] = None, workers: int = 0, threads: Optional[int] = None,
             latency_images: int = 50) -> Dict[str, Any]:
    """Evaluate a checkpoint on ``data``'s val split; writes ``val.md`` and ``confusion.png`` into ``out``.

    Images are preprocessed with the checkpoint's data config (as ``lolvit predict`` does);
    ``img_size`` overrides its input size. The data's classes must be the checkpoint's (an
    ImageFolder is mapped by class name). The report's ``predictions`` and ``confidences`` are
    the top-1 class indices and probabilities in dataset order. Latency: batch-1 median over ``latency_images`` val images of the
    fused model."""
    from ...io import load_checkpoint
    from ...nn.fuse import fuse
    from ..predict import data_config, eval_transform
    from .data import BUILTIN, build_dataset, collate_skip
    from .latency import median_latency_ms
    from .plots import plot_confusion

    for name, value, low in (("--batch-size", batch_size, 1), ("--workers", workers, 0), ("--threads", threads, 1),
                             ("--img-size", img_size, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if out:
        _check_out(Path(out))
    if threads:
        torch.set_num_threads(threads)
    model = load_checkpoint(checkpoint)
    cfg = data_config(model, img_size)
    size = cfg["input_size"][-1] if cfg["input_size"][-1] == cfg["input_size"][-2] else tuple(cfg["input_size"][-2:])
    names = model.class_names
    if names is None and data not in BUILTIN:
        raise ValueError(f"{checkpoint} has no class_names: cannot map the class folders of {data!r} to its outputs")
    ds = build_dataset(data, "val", eval_transform(cfg), cfg["input_size"][-1], data_root, classes=names)
    classes = names or list(ds.classes)
    if list(ds.classes) != classes:
        raise ValueError(f"{data!r} has classes {list(ds.classes)[:5]}... but {checkpoint} was trained on "
                         f"{classes[:5]}...: a model evaluated on another label set gives meaningless accuracy")
    if model.num_classes != len(classes):
        raise ValueError(f"checkpoint has {model.num_classes} classes but {data!r} has {len(classes)}")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skip)
    res = evaluate(model, loader, len(classes))
    if res.count == 0:
        raise ValueError(f"no readable images in the val split of {data!r} ({res.skipped} unreadable skipped)")
    fused = fuse(model)
    imgs = []
    for i in range(len(ds)):
        item = ds[i]
        if item is not None:
            imgs.append(item[0][None])
        if len(imgs) >= latency_images:
            break
    lat = median_latency_ms(fused, imgs) if imgs else float("nan")
    report = {"checkpoint": str(checkpoint), "data": data, "img_size": size, "images": res.count,
              "skipped": res.skipped, "top1": res.top1, "top5": res.top5, "loss": res.loss_sum / max(res.count, 1),
              "per_class": dict(zip(classes, res.per_class())), "latency_ms": lat, "threads": torch.get_num_threads(),
              "data_config": cfg, "predictions": res.predictions,
              "confidences": res.confidences}
    if out:
        o = Path(out)
        plot_confusion(res.confusion, classes, o / "confusion.png")
        atomic_write_bytes(o / "val.md", format_report(report).encode())
    return report


def _check_out(out: Path) -> None:
    """Refuse an output folder that cannot be written before any work is done."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --out {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"cannot write --out {out}: permission denied")


def format_report(r: Dict[str, Any]) -> str:
    lines = [f"# Validation of {r['checkpoint']}", "",
             f"data {r['data']} (val), {r['images']} images at {r['img_size']} px, {r['skipped']} unreadable skipped", "",
             f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}",
             f"fused CPU latency, batch 1, {r['threads']} threads: median {r['latency_ms']:.2f} ms", "",
             "| class | accuracy (%) |", "|---|---:|"]
    lines += [f"| {c} | {a:.2f} |" for c, a in r["per_class"].items()]
    return "\n".join(lines) + "\n"
