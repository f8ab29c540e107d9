"""SSDLite detection over LOLViT features (paper Table 6; MobileViT's SSDLite set-up), built
from torchvision's SSD machinery (default boxes, matching, hard-negative mining, SSDLite head),
evaluated with COCO-style mAP (pycocotools).

Feature maps: LOLViT strides 16 and 32, then three extra blocks (1x1 reduce, 3x3 depthwise
stride 2, 1x1 expand) to strides 64/128/256 and a global-pool map: six maps, at 320 px of
20, 10, 5, 3, 2, 1 cells. Anchors: aspect ratios {2, 3} per map, scales 0.2..0.95.
"""
import math
import random
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ...models import MODEL_CONFIGS, create_lolvit
from ...nn.blocks import ConvBNAct
from .checkpoint import read_spec_checkpoint, save_spec_checkpoint
from .coco import coco_bbox_stats
from .datasets import DetectionDataset, detection_collate

__all__ = ["LOLViTSSDBackbone", "NoSingletonBatches", "build_ssd", "train_ssd", "evaluate_ssd", "save_ssd", "load_ssd"]

PathLike = Union[str, Path]
EXTRA_CHANNELS = (256, 128, 128, 64)


class _Extra(nn.Sequential):
    """(B, c1, H, W) -> (B, c2, ceil(H/2), ceil(W/2)): 1x1 to c2/2, 3x3 depthwise s2, 1x1 to c2."""

    def __init__(self, c1: int, c2: int):
        mid = c2 // 2
        super().__init__(ConvBNAct(c1, mid, 1), ConvBNAct(mid, mid, 3, 2, groups=mid), ConvBNAct(mid, c2, 1))


class LOLViTSSDBackbone(nn.Module):
    """(B, 3, H, W) -> OrderedDict of six maps (strides 16, 32, 64, 128, 256, global)."""

    def __init__(self, variant: str = "lolvit_s", extra_channels: Sequence[int] = EXTRA_CHANNELS):
        super().__init__()
        if variant not in MODEL_CONFIGS:
            raise ValueError(f"unknown LOLViT variant {variant!r}; choose one of {sorted(MODEL_CONFIGS)}")
        self.body = create_lolvit(variant, num_classes=0)
        self.body.prune_intermediate_layers([3, 4], prune_head=True)
        c4, c5 = self.body.feature_info[3]["num_chs"], self.body.feature_info[4]["num_chs"]
        chans = [c5, *extra_channels]
        self.extras = nn.ModuleList(_Extra(chans[i], chans[i + 1]) for i in range(len(extra_channels) - 1))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct(chans[-2], chans[-1], 1))
        self.out_channels = [c4, c5, *extra_channels]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        p4, p5 = self.body.forward_intermediates(x, indices=[3, 4], intermediates_only=True)
        maps = [p4, p5]
        for block in self.extras:
            maps.append(block(maps[-1]))
        maps.append(self.pool(maps[-1]))
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def build_ssd(num_classes: int, variant: str = "lolvit_s", size: int = 320, score_thresh: float = 0.001,
              detections_per_img: int = 100):
    """torchvision ``SSD`` with a LOLViT backbone and SSDLite head. ``num_classes`` excludes the
    background. Input: list of (3, H, W) images in [0, 1]; resized to ``size`` x ``size``."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (background excluded), got {num_classes!r}")
    if size < 64:
        raise ValueError(f"SSD size must be >= 64, got {size}")
    backbone = LOLViTSSDBackbone(variant)
    anchors = DefaultBoxGenerator([[2, 3]] * len(backbone.out_channels), min_ratio=0.2, max_ratio=0.95)
    norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03)
    head = SSDLiteHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1, norm)
    model = SSD(backbone, anchors, (size, size), num_classes + 1, image_mean=[0.485, 0.456, 0.406],
                image_std=[0.229, 0.224, 0.225], head=head, score_thresh=score_thresh, nms_thresh=0.55,
                detections_per_img=detections_per_img, topk_candidates=300)
    model.lolvit_spec = {"variant": variant, "num_classes": num_classes, "size": size}
    return model


def save_ssd(model: nn.Module, path: PathLike, class_names: Optional[Sequence[str]] = None,
             extra: Optional[Dict[str, Any]] = None) -> Path:
    """``PATH.safetensors`` (weights) + ``PATH.json`` (spec, class names), written atomically."""
    return save_spec_checkpoint(model, path, "lolvit-ssd", model.lolvit_spec, class_names, extra)


def load_ssd(path: PathLike):
    """Rebuild an SSD saved by :func:`save_ssd` (eval mode)."""
    state, meta = read_spec_checkpoint(path, "lolvit-ssd")
    model = build_ssd(**meta["spec"])
    model.load_state_dict(state)
    model.class_names = meta.get("class_names")
    return model.eval()


def _flip(image: Tensor, target: Dict[str, Any]) -> None:
    w = image.shape[-1]
    image.copy_(image.flip(-1))
    b = target["boxes"]
    target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) if len(b) else b


class NoSingletonBatches(torch.utils.data.Sampler):
    """Shuffled batches of ``batch`` indices in which no batch holds a single image: a last batch of
    one joins the one before (SSD's BatchNorm layers at 1x1 resolution cannot train on one image)."""

    def __init__(self, n: int, batch: int, generator: torch.Generator):
        if batch < 2 or n < 2:
            raise ValueError(f"SSD training needs batches of >= 2 images (BatchNorm at 1x1 maps): "
                             f"got --batch {batch} and {n} training image(s)")
        self.n, self.batch, self.generator = n, batch, generator

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        batches = [order[i:i + self.batch] for i in range(0, self.n, self.batch)]
        if len(batches[-1]) == 1:
            batches[-2].extend(batches.pop())
        return iter(batches)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch)
        return full + (rest > 1)


def train_ssd(images: Optional[PathLike] = None, labels: Optional[PathLike] = None,
              num_classes: Optional[int] = None, variant: str = "lolvit_s", size: int = 320,
              epochs: Optional[int] = None, batch: int = 16, lr: float = 2e-3, weight_decay: float = 0.01,
              out: Optional[PathLike] = None, val_images: Optional[PathLike] = None,
              val_labels: Optional[PathLike] = None, threads: int = 2, seed: int = 0, fmt: str = "auto",
              difficult: str = "skip", class_names: Optional[Sequence[str]] = None, resume: bool = False,
              tensorboard: bool = True, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Train with AdamW + cosine schedule + horizontal flips; multibox loss (smooth-L1 + CE with 3:1
    hard negatives, torchvision's). ``fmt``/``difficult``/``class_names`` as in :class:`DetectionDataset`
    (``"voc"``: ``images`` is the VOC root, ``labels`` the split name, class names from the data unless
    given); ``num_classes=None`` takes the loader's. The validation data is read with the training
    class names and evaluated after every epoch. Raises ValueError when the training data holds no object.

    ``out`` is a run folder (:mod:`.run`: ``last`` checkpoint, ``state.safetensors``, ``results.csv``,
    TensorBoard, ``curves.png``). ``resume=True`` continues the run in ``out`` with its stored
    configuration (``epochs`` may extend it). ``epochs`` defaults to 10. ``progress``: tqdm bars
    (None: when stderr is a terminal). Returns a report (losses, time, COCO metrics when val data given)."""
    from .run import DenseRun

    if resume:
        if out is None:
            raise ValueError("--resume needs --out, the run folder to continue")
        cfg = DenseRun.stored_config(out, "ssd")
        cfg["epochs"] = epochs if epochs is not None else cfg["epochs"]
    else:
        if images is None or labels is None:
            raise ValueError("--images and --labels are required (unless --resume continues a run)")
        cfg = dict(images=str(images), labels=str(labels), num_classes=num_classes, variant=variant, size=size,
                   epochs=10 if epochs is None else epochs, batch=batch, lr=lr, weight_decay=weight_decay,
                   val_images=None if val_images is None else str(val_images),
                   val_labels=None if val_labels is None else str(val_labels), seed=seed, fmt=fmt,
                   difficult=difficult, class_names=None if class_names is None else list(class_names))
    if cfg["epochs"] < 1 or cfg["batch"] < 1:
        raise ValueError(f"epochs and batch must be >= 1, got {cfg['epochs']}, {cfg['batch']}")
    torch.set_num_threads(threads)
    data = DetectionDataset(cfg["images"], cfg["labels"], num_classes=cfg["num_classes"],
                            class_names=cfg["class_names"], fmt=cfg["fmt"], difficult=cfg["difficult"])
    if data.stats["boxes"] == 0:
        skipped = {k: v for k, v in data.stats.items() if k not in ("images", "boxes", "background")}
        raise ValueError(f"no objects to train on in {cfg['images']!r} (labels {cfg['labels']!r}; classes "
                         f"{data.class_names}): {len(data)} images, skipped {skipped or 'nothing'}")
    sampler = NoSingletonBatches(len(data), cfg["batch"], torch.Generator())
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=detection_collate)
    val = None
    if cfg["val_images"] is not None and cfg["val_labels"] is not None:
        val = DetectionDataset(cfg["val_images"], cfg["val_labels"], num_classes=data.num_classes,
                               class_names=data.class_names if cfg["fmt"] == "voc" else None, fmt=cfg["fmt"],
                               difficult=cfg["difficult"])
    seed, epochs = cfg["seed"], cfg["epochs"]
    torch.manual_seed(seed)
    model = build_ssd(data.num_classes if cfg["num_classes"] is None else cfg["num_classes"], cfg["variant"],
                      cfg["size"])
    model.class_names = list(data.class_names)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    run = DenseRun(out, "ssd", cfg, resume=resume, tensorboard=tensorboard) if out is not None else None
    start = run.restore(model, opt, sched) if run else 0
    if start >= epochs:
        raise ValueError(f"--resume: the run in {out} already trained {start} of {epochs} epochs; "
                         f"pass a larger --epochs to extend it")
    save_last = lambda path: save_ssd(model, path, data.class_names, {"config": cfg})  # noqa: E731
    history = list(run.history) if run else []
    metrics: Dict[str, float] = {}
    t0 = time.time()
    try:
        for epoch in range(start, epochs):
            row = {"epoch": epoch + 1, **_ssd_epoch(model, loader, sampler, opt, sched, seed + epoch, epoch, epochs,
                                                    progress)}
            if val is not None:
                metrics = _evaluate_data(model, val, cfg["batch"])
                row.update(val_map50_95=metrics["map50_95"], val_map50=metrics["map50"])
            print(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                             if k not in ("epoch", "lr")), flush=True)
            history.append(row)
            if run:
                run.epoch_end(row, model, opt, sched, save_last)
    finally:
        curves = run.close(f"SSD {cfg['variant']} on {cfg['images']}") if run else None
    report: Dict[str, Any] = {"variant": cfg["variant"], "size": cfg["size"], "epochs": epochs,
                              "train_images": len(data), "classes": data.class_names,
                              "skipped": {k: v for k, v in data.stats.items() if k not in ("images", "boxes")},
                              "loss": [r["train_loss"] for r in history], "train_s": round(time.time() - t0, 1)}
    if val is not None:
        report["val"] = metrics
    if run:
        report.update(checkpoint=str(run.out / "last.safetensors"), out=str(run.out), curves=str(curves))
    return report


def _ssd_epoch(model: nn.Module, loader, sampler: NoSingletonBatches, opt: torch.optim.Optimizer, sched: Any,
               seed: int, epoch: int, epochs: int, progress: Optional[bool]) -> Dict[str, float]:
    """One epoch; its randomness (order, flips) depends only on ``seed`` so a resumed run repeats it."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    sampler.generator.manual_seed(seed)
    flips = random.Random(seed)
    model.train()
    sums = {"train_loss": 0.0, "train_box_loss": 0.0, "train_cls_loss": 0.0}
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=None if progress is None else not progress,
               leave=False)
    for imgs, targets in bar:
        for img, tgt in zip(imgs, targets):
            if flips.random() < 0.5:
                _flip(img, tgt)
        losses = model(imgs, targets)
        loss = losses["bbox_regression"] + losses["classification"]
        if not torch.isfinite(loss):
            raise ValueError(f"SSD loss became {loss.item()} (check labels / learning rate)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in (("train_loss", loss), ("train_box_loss", losses["bbox_regression"]),
                     ("train_cls_loss", losses["classification"])):
            sums[k] += v.item()
        n += 1
        bar.set_postfix(loss=f"{sums['train_loss'] / n:.4f}")
    return {**{k: v / max(n, 1) for k, v in sums.items()}, "lr": sched.get_last_lr()[0]}


@torch.no_grad()
def evaluate_ssd(model: nn.Module, images: PathLike, labels: PathLike, batch: int = 16, threads: int = 2,
                 fmt: str = "auto", difficult: str = "skip") -> Dict[str, float]:
    """COCO bbox metrics with pycocotools: mAP50-95, mAP50, mAP75 and images/s of the whole model.
    ``fmt``/``difficult`` as in :class:`DetectionDataset`; VOC data is read with the model's class names."""
    torch.set_num_threads(threads)
    names = getattr(model, "class_names", None) or None
    if fmt != "voc" or (names is not None and len(names) != model.lolvit_spec["num_classes"]):
        names = None
    data = DetectionDataset(images, labels, num_classes=model.lolvit_spec["num_classes"], class_names=names,
                            fmt=fmt, difficult=difficult)
    return _evaluate_data(model, data, batch)


@torch.no_grad()
def _evaluate_data(model: nn.Module, data: DetectionDataset, batch: int) -> Dict[str, float]:
    loader = torch.utils.data.DataLoader(data, batch_size=batch, collate_fn=detection_collate)
    model.eval()
    dets: List[Dict[str, Any]] = []
    t0 = time.time()
    for imgs, targets in loader:
        for out, tgt in zip(model(imgs), targets):
            for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                dets.append({"image_id": tgt["image_id"], "category_id": data.category_ids[label - 1],
                             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    seconds = time.time() - t0
    return {**coco_bbox_stats(data.coco_ground_truth(), dets), "images": len(data), "detections": len(dets),
            "images_per_s": round(len(data) / max(seconds, 1e-9), 2)}
