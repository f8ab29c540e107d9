"""Predict (boxes / masks drawn on the images) and ONNX export for the SSD and multi-task checkpoints.

ONNX graphs take ``images`` (B, 3, H, W) float in [0, 1] at the trained size (batch dynamic):

- SSD: outputs ``boxes`` (B, A, 4) xyxy pixels of the input and ``scores`` (B, A, K) class
  probabilities (softmax, background dropped), one row per default box; no NMS in the graph
  (threshold and NMS per class as torchvision's ``SSD.postprocess_detections`` does).
- multi-task: ``drivable`` and ``lane`` (B, H, W) logits (foreground where > 0), plus ``detect``
  (B, 4 + K, anchors; ultralytics' decoded layout, xywh pixels + class probabilities) with a
  detection branch.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw
from torch import Tensor

from .datasets import IMAGE_SUFFIXES

__all__ = ["list_images", "predict_ssd", "predict_multitask", "export_ssd", "export_multitask",
           "SSDExport", "MultiTaskExport"]

PathLike = Union[str, Path]
_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def list_images(source: PathLike) -> List[Path]:
    """An image file, or the images of a folder (sorted); FileNotFoundError/ValueError otherwise."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {str(source)!r}")
        return files
    if not source.is_file():
        raise FileNotFoundError(f"source {str(source)!r} does not exist")
    return [source]


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from None


def _to_tensor(im: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _draw_boxes(im: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[int], scores: Sequence[float],
                names: Sequence[str]) -> Image.Image:
    draw = ImageDraw.Draw(im)
    width = max(1, round(max(im.size) / 200))
    for (x0, y0, x1, y1), c, s in zip(boxes, labels, scores):
        color = _COLORS[c % len(_COLORS)]
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        name = names[c] if c < len(names) else str(c)
        draw.text((x0 + width + 1, y0 + width), f"{name} {s:.2f}", fill=color)
    return im


def _out_dir(out: PathLike) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    return out


@torch.no_grad()
def predict_ssd(checkpoint: PathLike, source: PathLike, out: Optional[PathLike] = None, conf: float = 0.3,
                threads: int = 2) -> List[Dict[str, Any]]:
    """Detections of an SSD checkpoint on an image or a folder; with ``out`` one annotated image per input.
    Returns per image ``{"image", "boxes": [{"box": xyxy, "class", "name", "score"}, ...]}``."""
    from .ssd import load_ssd

    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"--conf must be in [0, 1], got {conf}")
    torch.set_num_threads(threads)
    files = list_images(source)
    model = load_ssd(checkpoint)
    names = list(model.class_names or [])
    folder = _out_dir(out) if out is not None else None
    results = []
    for path in files:
        im = _open_rgb(path)
        det = model([_to_tensor(im)])[0]
        keep = det["scores"] >= conf
        boxes, scores = det["boxes"][keep].tolist(), det["scores"][keep].tolist()
        classes = [int(c) - 1 for c in det["labels"][keep].tolist()]  # 0 is the background
        results.append({"image": str(path), "boxes": [
            {"box": [round(v, 2) for v in b], "class": c, "name": names[c] if c < len(names) else str(c),
             "score": round(s, 4)} for b, c, s in zip(boxes, classes, scores)]})
        if folder is not None:
            _draw_boxes(im, boxes, classes, scores, names).save(folder / path.name)
    return results


@torch.no_grad()
def predict_multitask(checkpoint: PathLike, source: PathLike, out: Optional[PathLike] = None,
                      size: Optional[Tuple[int, int]] = None, conf: float = 0.25,
                      threads: int = 2) -> List[Dict[str, Any]]:
    """Drivable area (green) and lane lines (red) of a multi-task checkpoint drawn over each image, plus
    boxes with a detection branch. The network runs at ``size`` (H, W; default the trained size) and
    the masks are resized back. Returns per image the foreground fractions and boxes."""
    from .multitask import load_multitask, trained_size

    torch.set_num_threads(threads)
    files = list_images(source)
    model = load_multitask(checkpoint)
    size = tuple(size) if size is not None else trained_size(checkpoint)
    if len(size) != 2 or size[0] % 8 or size[1] % 8:
        raise ValueError(f"--size must be H W, multiples of 8, got {list(size)}")
    folder = _out_dir(out) if out is not None else None
    results = []
    for path in files:
        im = _open_rgb(path)
        w, h = im.size
        pred = model(_to_tensor(im.resize(size[::-1], Image.BILINEAR))[None])
        masks = {t: Image.fromarray((pred[t][0] > 0).numpy().astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
                 for t in ("drivable", "lane")}
        row: Dict[str, Any] = {"image": str(path), **{f"{t}_fraction": round(float(np.asarray(m).mean() / 255), 4)
                                                      for t, m in masks.items()}}
        boxes: List[List[float]] = []
        classes: List[int] = []
        scores: List[float] = []
        if model.nc:
            from ultralytics.utils.nms import non_max_suppression

            d = non_max_suppression(pred["detect"], conf_thres=conf, iou_thres=0.7, max_det=100)[0]
            sx, sy = w / size[1], h / size[0]
            for x0, y0, x1, y1, s, c in d.tolist():
                boxes.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
                classes.append(int(c))
                scores.append(s)
            row["boxes"] = [{"box": [round(v, 2) for v in b], "class": c, "score": round(s, 4)}
                            for b, c, s in zip(boxes, classes, scores)]
        results.append(row)
        if folder is not None:
            drawn = im.copy()
            for t, color in (("drivable", (0, 200, 0)), ("lane", (230, 0, 0))):
                drawn.paste(Image.new("RGB", (w, h), color), mask=masks[t].point(lambda v: 110 if v else 0))
            _draw_boxes(drawn, boxes, classes, scores, []).save(folder / path.name)
    return results


class SSDExport(nn.Module):
    """An SSD's network and box decoding as one graph: (B, 3, S, S) in [0, 1] -> ``(boxes, scores)``
    (see the module docstring); the default boxes of size S are a constant."""

    def __init__(self, ssd: nn.Module, size: int):
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone, self.head, self.box_coder = ssd.backbone, ssd.head, ssd.box_coder
        self.register_buffer("mean", torch.tensor(ssd.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(ssd.transform.image_std).view(1, 3, 1, 1))
        with torch.no_grad():
            x = torch.zeros(1, 3, size, size)
            feats = list(self.backbone(x).values())
            anchors = ssd.anchor_generator(ImageList(x, [(size, size)]), feats)[0]
        self.register_buffer("anchors", anchors)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        head = self.head(list(self.backbone((images - self.mean) / self.std).values()))
        b, a = head["bbox_regression"].shape[:2]
        boxes = self.box_coder.decode_single(head["bbox_regression"].reshape(b * a, 4),
                                             self.anchors.repeat(b, 1)).reshape(b, a, 4)
        return boxes, head["cls_logits"].softmax(-1)[..., 1:]


class MultiTaskExport(nn.Module):
    """A multi-task model as a graph with tuple outputs (drivable, lane[, detect])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        out = self.model(images)
        return (out["drivable"], out["lane"]) + ((out["detect"],) if "detect" in out else ())


def _onnx(module: nn.Module, example: Tensor, path: PathLike, outputs: Sequence[str]) -> Path:
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"--out must name an .onnx file, got {str(path)!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + ".probe").touch()
        path.with_name(path.name + ".probe").unlink()
    except OSError as e:
        raise ValueError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    module = module.eval()
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=list(outputs),
                          dynamic_axes={n: {0: "batch"} for n in ("images", *outputs)}, opset_version=17,
                          dynamo=False)
    return path


def export_ssd(checkpoint: PathLike, path: PathLike) -> Path:
    """ONNX of an SSD checkpoint at its trained size (see the module docstring)."""
    from .ssd import load_ssd

    model = load_ssd(checkpoint)
    size = int(model.lolvit_spec["size"])
    return _onnx(SSDExport(model, size), torch.rand(1, 3, size, size), path, ("boxes", "scores"))


def export_multitask(checkpoint: PathLike, path: PathLike, size: Optional[Tuple[int, int]] = None) -> Path:
    """ONNX of a multi-task checkpoint at ``size`` (H, W; default the trained size)."""
    from .multitask import load_multitask, trained_size

    model = load_multitask(checkpoint)
    h, w = tuple(size) if size is not None else trained_size(checkpoint)
    outputs = ("drivable", "lane") + (("detect",) if model.nc else ())
    return _onnx(MultiTaskExport(model), torch.rand(1, 3, h, w), path, outputs)
