"""Drivable-area + lane-line segmentation over LOLViT (A-YOLOM / YOLOP style, paper Table 8).

Model: LOLViT features at strides 8/16/32 -> FPN top-down neck to one stride-8 map -> two
segmentation necks+heads (drivable, lane), each upsampling x8 back to full input resolution and
producing one logit map. (B, 3, H, W) -> {"drivable": (B, H, W), "lane": (B, H, W)} logits.

Optional detection branch (``nc > 0``, A-YOLOM / YOLOP style): ultralytics' anchor-free ``Detect``
head on the neck's stride-8/16/32 maps, trained with ultralytics' ``v8DetectionLoss`` (task-aligned
assignment, CIoU + DFL + BCE; gains box 7.5, cls 0.5, dfl 1.5, per image) and evaluated with NMS and
COCO mAP (pycocotools). Output key ``"detect"``: in training the raw head dict, in eval the decoded
``(B, 4 + nc, anchors)`` xywh-pixel / class-probability tensor. ultralytics is needed only then.

Loss per task: focal (sigmoid, gamma=2, alpha=0.25) + Tversky (1 - TP / (TP + a FP + b FN));
lane uses a=0.3, b=0.7 (false negatives of the thin class cost more), drivable a=b=0.5 (Dice).

Metrics, computed three ways and labelled (confusion counts of the foreground class at p > 0.5):
``per_image`` (A-YOLOM: metric per image, mean over images), ``per_batch`` (YOLOP: metric per
batch, mean weighted by batch size), ``dataset`` (counts summed over the whole set). For each:
drivable mIoU = mean(IoU_background, IoU_drivable) and drivable accuracy (pixel accuracy);
lane IoU = IoU of the lane class, lane accuracy = TP / (TP + FN) of the lane class (YOLOP's
``lineAccuracy``), lane mIoU. Undefined per-image values (no lane in label nor prediction) are
skipped (nan-mean).
"""
import json
import math
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...models import MODEL_CONFIGS, create_lolvit
from ...nn.blocks import ConvBNAct
from .checkpoint import checkpoint_files, read_spec_checkpoint, save_spec_checkpoint
from .coco import coco_bbox_stats
from .datasets import RoadSegDataset, road_collate

__all__ = [
    "LOLViTMultiTask", "SegHead", "focal_loss", "tversky_loss", "multitask_loss", "confusion_counts",
    "seg_metrics", "detection_loss", "coco_bbox_stats", "train_multitask", "evaluate_multitask", "measure_fps",
    "save_multitask", "load_multitask",
]

PathLike = Union[str, Path]
TASKS = ("drivable", "lane")
DET_STRIDES = (8.0, 16.0, 32.0)
DET_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # ultralytics' default loss gains


class SegHead(nn.Module):
    """(B, c, H/8, W/8) -> (B, H, W) logits: three (3x3 conv, x2 upsample) steps and a 1x1 conv."""

    def __init__(self, c: int, widths: Tuple[int, int, int] = (32, 16, 8)):
        super().__init__()
        layers: List[nn.Module] = []
        for w in widths:
            layers += [ConvBNAct(c, w, 3), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            c = w
        layers.append(nn.Conv2d(c, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).squeeze(1)


class LOLViTMultiTask(nn.Module):
    """LOLViT backbone + FPN neck + drivable and lane heads, plus a ``Detect`` head for ``nc``
    classes when ``nc > 0`` (see module docstring)."""

    def __init__(self, variant: str = "lolvit_s", neck: int = 64, nc: int = 0):
        super().__init__()
        if variant not in MODEL_CONFIGS:
            raise ValueError(f"unknown LOLViT variant {variant!r}; choose one of {sorted(MODEL_CONFIGS)}")
        if not isinstance(nc, int) or nc < 0:
            raise ValueError(f"nc (detection classes, 0 = no detection branch) must be an int >= 0, got {nc!r}")
        self.spec: Dict[str, Any] = {"variant": variant, "neck": neck}
        self.body = create_lolvit(variant, num_classes=0)
        self.body.prune_intermediate_layers([2, 3, 4], prune_head=True)
        chans = [self.body.feature_info[i]["num_chs"] for i in (2, 3, 4)]
        self.lateral = nn.ModuleList(ConvBNAct(c, neck, 1) for c in chans)
        self.smooth = nn.ModuleList(ConvBNAct(neck, neck, 3) for _ in range(2))
        self.heads = nn.ModuleDict({t: nn.Sequential(ConvBNAct(neck, neck, 3), SegHead(neck)) for t in TASKS})
        self.nc = nc
        if nc:
            from ultralytics.nn.modules import Detect

            self.spec["nc"] = nc
            self.detect = Detect(nc=nc, ch=(neck, neck, neck))
            self.detect.stride = torch.tensor(DET_STRIDES)
            self.detect.bias_init()

    def forward(self, x: Tensor) -> Dict[str, Any]:
        H, W = x.shape[-2:]
        if H % 8 or W % 8:
            raise ValueError(f"multi-task input sides must be multiples of 8, got {H}x{W}")
        p3, p4, p5 = self.body.forward_intermediates(x, indices=[2, 3, 4], intermediates_only=True)
        y5 = self.lateral[2](p5)
        y4 = self.smooth[0](self.lateral[1](p4) + F.interpolate(y5, size=p4.shape[-2:], mode="nearest"))
        y = self.smooth[1](self.lateral[0](p3) + F.interpolate(y4, size=p3.shape[-2:], mode="nearest"))
        out: Dict[str, Any] = {t: head(y)[..., :H, :W] for t, head in self.heads.items()}
        if self.nc:
            det = self.detect([y, y4, y5])  # eval: (decoded, raw) tuple, or decoded alone in export mode
            out["detect"] = det[0] if isinstance(det, tuple) else det
        return out


def detection_loss(model: LOLViTMultiTask, preds: Dict[str, Tensor], targets: Dict[str, Tensor]) -> Tensor:
    """ultralytics' ``v8DetectionLoss`` on the raw ``Detect`` output and a ``road_collate`` target
    dict; returns gain-weighted box + cls + dfl per image (a scalar)."""
    crit = getattr(model, "_det_criterion", None)
    if crit is None:
        from ultralytics.utils.loss import v8DetectionLoss

        shim = SimpleNamespace(parameters=model.detect.parameters, args=SimpleNamespace(**DET_GAINS),
                               model=[model.detect])
        crit = v8DetectionLoss(shim)
        object.__setattr__(model, "_det_criterion", crit)
    loss, _ = crit(preds, targets)
    return loss.sum() / preds["boxes"].shape[0]


def _road_ground_truth(data: RoadSegDataset, nc: int) -> Dict[str, Any]:
    """The road loader's boxes as a COCO dict in input-size pixels (image ids = dataset indices)."""
    H, W = data.size
    images, anns = [], []
    for i, rows in enumerate(data.boxes):
        images.append({"id": i, "width": W, "height": H})
        for c, cx, cy, bw, bh in rows.tolist():
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                         "bbox": [(cx - bw / 2) * W, (cy - bh / 2) * H, bw * W, bh * H], "area": bw * W * bh * H})
    return {"images": images, "annotations": anns, "categories": [{"id": k, "name": str(k)} for k in range(nc)]}


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Sigmoid focal loss, mean over pixels. (B, H, W) x2 -> scalar."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    w = alpha * target + (1 - alpha) * (1 - target)
    return (w * (1 - pt) ** gamma * ce).mean()


def tversky_loss(logits: Tensor, target: Tensor, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0) -> Tensor:
    """1 - (TP + s) / (TP + alpha FP + beta FN + s) on soft predictions, over the batch."""
    p = torch.sigmoid(logits)
    tp = (p * target).sum()
    fp = (p * (1 - target)).sum()
    fn = ((1 - p) * target).sum()
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def multitask_loss(out: Dict[str, Tensor], drivable: Tensor, lane: Tensor) -> Dict[str, Tensor]:
    da = focal_loss(out["drivable"], drivable) + tversky_loss(out["drivable"], drivable, 0.5, 0.5)
    ll = focal_loss(out["lane"], lane) + tversky_loss(out["lane"], lane, 0.3, 0.7)
    return {"drivable": da, "lane": ll, "total": da + ll}


def confusion_counts(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image (TP, FP, FN, TN) of the foreground at p > 0.5: (B, H, W) x2 -> (B, 4) float64."""
    pred = logits > 0
    gt = target > 0.5
    dims = tuple(range(1, pred.dim()))
    tp = (pred & gt).sum(dims)
    fp = (pred & ~gt).sum(dims)
    fn = (~pred & gt).sum(dims)
    tn = (~pred & ~gt).sum(dims)
    return torch.stack([tp, fp, fn, tn], 1).double()


def _from_counts(c: Tensor) -> Dict[str, float]:
    tp, fp, fn, tn = (float(v) for v in c)
    nan = float("nan")
    iou_fg = tp / (tp + fp + fn) if tp + fp + fn else nan
    iou_bg = tn / (tn + fp + fn) if tn + fp + fn else nan
    ious = [v for v in (iou_bg, iou_fg) if not math.isnan(v)]
    return {"iou": iou_fg, "miou": sum(ious) / len(ious) if ious else nan,
            "recall": tp / (tp + fn) if tp + fn else nan, "pixel_acc": (tp + tn) / (tp + fp + fn + tn)}


def _nanmean(values: List[float], weights: Optional[List[float]] = None) -> float:
    pairs = [(v, w) for v, w in zip(values, weights or [1.0] * len(values)) if not math.isnan(v)]
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else float("nan")


def seg_metrics(per_image: Tensor, batch_sizes: List[int]) -> Dict[str, Dict[str, float]]:
    """The three labelled aggregations of per-image counts (N, 4), batches in order of ``batch_sizes``."""
    imgs = [_from_counts(c) for c in per_image]
    batches, start = [], 0
    for b in batch_sizes:
        batches.append(_from_counts(per_image[start: start + b].sum(0)))
        start += b
    whole = _from_counts(per_image.sum(0))
    keys = whole.keys()
    return {
        "per_image": {k: _nanmean([m[k] for m in imgs]) for k in keys},
        "per_batch": {k: _nanmean([m[k] for m in batches], [float(b) for b in batch_sizes]) for k in keys},
        "dataset": dict(whole),
    }


def _summary(da: Dict[str, Dict[str, float]], ll: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    out = {}
    for way, label in (("per_image", "per_image (A-YOLOM)"), ("per_batch", "per_batch (YOLOP)"),
                       ("dataset", "dataset")):
        out[label] = {"drivable_mIoU": da[way]["miou"], "drivable_acc": da[way]["pixel_acc"],
                      "lane_IoU": ll[way]["iou"], "lane_acc": ll[way]["recall"], "lane_mIoU": ll[way]["miou"]}
    return out


@torch.no_grad()
def evaluate_multitask(model: nn.Module, root: PathLike, split: str = "val", size: Tuple[int, int] = (192, 320),
                       batch: int = 8, threads: int = 2) -> Dict[str, Any]:
    """Metrics on ``root`` (BDD100K layout) in the three labelled ways (module docstring); with a
    detection branch also ``"detection"``: COCO mAP50-95 / mAP50 / mAP75 of the NMS-ed boxes
    (confidence > 0.001, IoU 0.7) against ``det_annotations``."""
    torch.set_num_threads(threads)
    nc = getattr(model, "nc", 0)
    data = RoadSegDataset(root, split, size, boxes=bool(nc), num_classes=nc or None)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, collate_fn=road_collate if nc else None)
    model.eval()
    counts = {t: [] for t in TASKS}
    sizes: List[int] = []
    dets: List[Dict[str, Any]] = []
    if nc:
        from ultralytics.utils.nms import non_max_suppression
    for img, da, ll, *_ in loader:
        out = model(img)
        counts["drivable"].append(confusion_counts(out["drivable"], da))
        counts["lane"].append(confusion_counts(out["lane"], ll))
        if nc:
            for j, d in enumerate(non_max_suppression(out["detect"], conf_thres=0.001, iou_thres=0.7, max_det=100)):
                for x0, y0, x1, y1, score, c in d.tolist():
                    dets.append({"image_id": sum(sizes) + j, "category_id": int(c), "score": score,
                                 "bbox": [x0, y0, x1 - x0, y1 - y0]})
        sizes.append(len(img))
    da_m = seg_metrics(torch.cat(counts["drivable"]), sizes)
    ll_m = seg_metrics(torch.cat(counts["lane"]), sizes)
    report: Dict[str, Any] = {"images": len(data), "batch": batch, "size": list(size),
                              "metrics": _summary(da_m, ll_m),
                              "skipped": {k: v for k, v in data.stats.items() if k not in ("images", "boxes")}}
    if nc:
        report["detection"] = {**coco_bbox_stats(_road_ground_truth(data, nc), dets),
                               "boxes": data.stats["boxes"], "detections": len(dets)}
    return report


@torch.no_grad()
def measure_fps(model: nn.Module, size: Tuple[int, int] = (192, 320), threads: int = 1, warmup: int = 3,
                runs: int = 20) -> Dict[str, float]:
    """Batch-1 CPU latency (median of ``runs``) and FPS of ``model`` at ``size``."""
    torch.set_num_threads(threads)
    model.eval()
    x = torch.rand(1, 3, *size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"latency_ms": round(med * 1e3, 2), "fps": round(1 / med, 1), "threads": threads, "size": list(size)}


def save_multitask(model: LOLViTMultiTask, path: PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
    return save_spec_checkpoint(model, path, "lolvit-multitask", model.spec, list(TASKS), extra)


def load_multitask(path: PathLike) -> LOLViTMultiTask:
    state, meta = read_spec_checkpoint(path, "lolvit-multitask")
    model = LOLViTMultiTask(**meta["spec"])
    model.load_state_dict(state)
    return model.eval()


def trained_size(path: PathLike) -> Tuple[int, int]:
    """(H, W) a multi-task checkpoint was trained at (from its .json; (192, 320) when not recorded)."""
    meta_path = checkpoint_files(path)[1]
    if not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint {str(meta_path)!r} not found")
    extra = json.loads(meta_path.read_text()).get("extra") or {}
    size = (extra.get("config") or {}).get("size") or (extra.get("train") or {}).get("size") or (192, 320)
    return int(size[0]), int(size[1])


def train_multitask(root: Optional[PathLike] = None, variant: str = "lolvit_s", size: Tuple[int, int] = (192, 320),
                    epochs: Optional[int] = None, batch: int = 8, lr: float = 2e-3, weight_decay: float = 0.01,
                    out: Optional[PathLike] = None, threads: int = 2, seed: int = 0, split: str = "train",
                    val_split: Optional[str] = "val", nc: int = 0, resume: bool = False, tensorboard: bool = True,
                    progress: Optional[bool] = None) -> Dict[str, Any]:
    """AdamW + cosine schedule + horizontal flips on ``root/.../{split}``; evaluates on
    ``val_split`` after every epoch when that split exists. ``nc > 0`` adds the detection branch (boxes
    from ``det_annotations``; its loss is added to the segmentation losses).

    ``out`` is a run folder (:mod:`.run`: ``last`` checkpoint, ``state.safetensors``, ``results.csv``,
    TensorBoard, ``curves.png``); ``resume=True`` continues the run in ``out`` with its stored
    configuration (``epochs`` may extend it). ``epochs`` defaults to 10. ``progress``: tqdm bars (None:
    when stderr is a terminal). Returns a report (losses, time, metrics)."""
    from .run import DenseRun

    if resume:
        if out is None:
            raise ValueError("--resume needs --out, the run folder to continue")
        cfg = DenseRun.stored_config(out, "multitask")
        cfg["epochs"] = epochs if epochs is not None else cfg["epochs"]
    else:
        if root is None:
            raise ValueError("the dataset root is required (unless --resume continues a run)")
        cfg = dict(root=str(root), variant=variant, size=[int(v) for v in size], batch=batch, lr=lr,
                   epochs=10 if epochs is None else epochs, weight_decay=weight_decay, seed=seed, split=split,
                   val_split=val_split, nc=nc)
    if cfg["epochs"] < 1 or cfg["batch"] < 1:
        raise ValueError(f"epochs and batch must be >= 1, got {cfg['epochs']}, {cfg['batch']}")
    torch.set_num_threads(threads)
    root, size, nc, epochs, seed = cfg["root"], tuple(cfg["size"]), cfg["nc"], cfg["epochs"], cfg["seed"]
    data = RoadSegDataset(root, cfg["split"], size, boxes=bool(nc), num_classes=nc or None)
    generator = torch.Generator()
    loader = torch.utils.data.DataLoader(data, batch_size=cfg["batch"], shuffle=True,
                                         drop_last=len(data) > cfg["batch"], generator=generator,
                                         collate_fn=road_collate if nc else None)
    torch.manual_seed(seed)
    model = LOLViTMultiTask(cfg["variant"], nc=nc)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    val_split = cfg["val_split"]
    has_val = bool(val_split) and (Path(root) / "images" / val_split).is_dir()
    run = DenseRun(out, "multitask", cfg, resume=resume, tensorboard=tensorboard) if out is not None else None
    start = run.restore(model, opt, sched) if run else 0
    if start >= epochs:
        raise ValueError(f"--resume: the run in {out} already trained {start} of {epochs} epochs; "
                         f"pass a larger --epochs to extend it")
    save_last = lambda path: save_multitask(model, path, {"config": cfg})  # noqa: E731
    history = list(run.history) if run else []
    val: Dict[str, Any] = {}
    t0 = time.time()
    try:
        for epoch in range(start, epochs):
            torch.manual_seed(seed + epoch)
            generator.manual_seed(seed + epoch)
            row = {"epoch": epoch + 1, **_multitask_epoch(model, loader, opt, sched, random.Random(seed + epoch),
                                                          f"epoch {epoch + 1}/{epochs}", progress)}
            if has_val:
                val = evaluate_multitask(model, root, val_split, size, cfg["batch"], threads)
                dataset = val["metrics"]["dataset"]
                row.update({f"val_{k}": v for k, v in dataset.items() if isinstance(v, (int, float))})
                if "detection" in val:
                    row.update(val_map50_95=val["detection"]["map50_95"], val_map50=val["detection"]["map50"])
            print(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                             if k not in ("epoch", "lr")), flush=True)
            history.append(row)
            if run:
                run.epoch_end(row, model, opt, sched, save_last)
    finally:
        curves = run.close(f"multi-task {cfg['variant']} on {root}") if run else None
    losses = [{("total" if k == "train_loss" else k[len("train_"):-len("_loss")]): v for k, v in r.items()
               if k.startswith("train_")} for r in history]
    report: Dict[str, Any] = {"variant": cfg["variant"], "size": list(size), "epochs": epochs,
                              "train_images": len(data),
                              "skipped": {k: v for k, v in data.stats.items() if k != "images"},
                              "loss": losses, "train_s": round(time.time() - t0, 1)}
    if has_val:
        report["val"] = val
    if run:
        report.update(checkpoint=str(run.out / "last.safetensors"), out=str(run.out), curves=str(curves))
    return report


def _multitask_epoch(model: LOLViTMultiTask, loader, opt: torch.optim.Optimizer, sched: Any, flips: random.Random,
                     desc: str, progress: Optional[bool]) -> Dict[str, float]:
    from tqdm import tqdm

    model.train()
    sums = {"total": 0.0, "drivable": 0.0, "lane": 0.0, **({"detect": 0.0} if model.nc else {})}
    n = 0
    bar = tqdm(loader, desc=desc, disable=None if progress is None else not progress, leave=False)
    for img, da, ll, *det in bar:
        if flips.random() < 0.5:
            img, da, ll = img.flip(-1), da.flip(-1), ll.flip(-1)
            if det:
                det[0]["bboxes"] = det[0]["bboxes"].clone()
                det[0]["bboxes"][:, 0] = 1 - det[0]["bboxes"][:, 0]
        pred = model(img)
        losses = multitask_loss(pred, da, ll)
        if det:
            losses["detect"] = detection_loss(model, pred["detect"], det[0])
            losses["total"] = losses["total"] + losses["detect"]
        if not torch.isfinite(losses["total"]):
            raise ValueError(f"multi-task loss became {losses['total'].item()} (check masks / learning rate)")
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        sched.step()
        for k in sums:
            sums[k] += losses[k].item()
        n += 1
        bar.set_postfix(loss=f"{sums['total'] / n:.4f}")
    means = {("train_loss" if k == "total" else f"train_{k}_loss"): v / max(n, 1) for k, v in sums.items()}
    return {**means, "lr": sched.get_last_lr()[0]}
