"""Loaders for dense tasks: detection (YOLO txt, COCO json or Pascal VOC xml) and road segmentation
(BDD100K layout, optional YOLO boxes). Broken samples are skipped at scan time with a count and one
warning, never mid-epoch."""
import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DetectionDataset", "RoadSegDataset", "ScanStats", "detection_collate", "road_collate",
           "voc_class_names", "IMAGE_SUFFIXES", "VOC_CLASSES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PathLike = Union[str, Path]
_TOL = 0.01  # relative tolerance for box coordinates slightly outside the image
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _decodes(path: Path, stats: Optional[Counter] = None,
             kind: str = "undecodable_images") -> Optional[Tuple[int, int]]:
    """(width, height) of an image that fully decodes, else None (counted in ``stats`` as ``kind``
    with the decoder's reason). Any decoder failure counts as undecodable (PIL raises
    OSError/SyntaxError/ValueError; patched openers, e.g. ultralytics' HEIF fallback, ImportError)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except Exception as e:
        if stats is not None:
            _skip(stats, kind, f"{path}: {e}")
        return None


class ScanStats(Counter):
    """Counts of kept and skipped items; ``first`` holds, per skip kind, where it first happened
    (``file:line``), so that the warning names a place to look."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first: Dict[str, str] = {}

    def skip(self, kind: str, where: Any) -> None:
        self[kind] += 1
        self.first.setdefault(kind, str(where))


def _parse_yolo_line(parts: List[str], num_classes: Optional[int], stats: Counter, where: str = "?"):
    """``cls cx cy w h`` or ``cls x1 y1 x2 y2 ...`` (normalised) -> (cls, normalised xyxy) or None
    (counted in ``stats`` as a malformed line, a NaN/inf value or a box outside the image)."""
    try:
        values = [float(v) for v in parts]
    except ValueError:
        _skip(stats, "malformed_label_lines", where)
        return None
    if not all(math.isfinite(v) for v in values):
        _skip(stats, "non_finite_values", where)
        return None
    if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0) or values[0] != int(values[0]) \
            or values[0] < 0 or (num_classes is not None and values[0] >= num_classes):
        _skip(stats, "malformed_label_lines", where)
        return None
    cls = int(values[0])
    if len(values) == 5:
        cx, cy, bw, bh = values[1:]
        box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
    else:
        xy = np.asarray(values[1:]).reshape(-1, 2)
        box = [xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()]
    if min(box) < -_TOL or max(box) > 1 + _TOL or box[2] <= box[0] or box[3] <= box[1]:
        _skip(stats, "boxes_outside_image", where)
        return None
    return cls, [min(max(v, 0.0), 1.0) for v in box]


def _skip(stats: Counter, kind: str, where: Any) -> None:
    if isinstance(stats, ScanStats):
        stats.skip(kind, where)
    else:
        stats[kind] += 1


def _read_yolo_file(label: Path, num_classes: Optional[int], stats: Counter) -> List[Tuple[int, List[float]]]:
    """All valid (cls, normalised xyxy) of one YOLO txt file; missing / empty files are counted."""
    if not label.is_file():
        _skip(stats, "missing_label_files", label)
        return []
    lines = [(i, ln.split()) for i, ln in enumerate(label.read_text().splitlines(), 1) if ln.strip()]
    if not lines:
        stats["empty_label_files"] += 1
    rows = (_parse_yolo_line(parts, num_classes, stats, f"{label}:{i}") for i, parts in lines)
    return [r for r in rows if r is not None]


def _warn(kind: str, root: Path, counts: Counter) -> None:
    bad = {k: v for k, v in counts.items() if v and k not in ("images", "boxes", "background")}
    first = getattr(counts, "first", {})
    if bad:
        warnings.warn(f"{kind} {root}: skipped " + ", ".join(
            f"{v} {k.replace('_', ' ')}" + (f" (first: {first[k]})" if k in first else "") for k, v in bad.items()),
            stacklevel=3)


class DetectionDataset(Dataset):
    """Images + boxes from a YOLO txt folder (``cls cx cy w h`` normalised, or polygons), a COCO
    json file, or (``fmt="voc"``) a Pascal VOC root: then ``images`` is the root holding
    ``JPEGImages/``, ``Annotations/*.xml`` and ``ImageSets/Main/{split}.txt`` and ``labels`` is the
    split name; classes are ``class_names`` (default: the 20 VOC classes when every name in the
    split's XML files is one of them, else the sorted names found) and ``difficult`` objects
    are skipped (``"skip"``) or kept (``"keep"``: trained on, ignored by the COCO evaluation).
    Item: ``(image (3, H, W) float in [0, 1], {"boxes": (N, 4) xyxy pixels,
    "labels": (N,) int64 in 1..K (0 is background), "image_id": int})``.

    ``stats`` (:class:`ScanStats`) counts what was kept and skipped: undecodable images (with the
    decoder's reason), malformed label lines (or XML files), NaN/inf values, boxes outside the image,
    missing label files, empty label files (background); ``stats.first`` names the first file (and
    line) of each kind, and so does the one warning."""

    def __init__(self, images: PathLike, labels: PathLike, num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, fmt: str = "auto", difficult: str = "skip"):
        if fmt not in ("auto", "voc"):
            raise ValueError(f"fmt must be 'auto' (YOLO txt / COCO json) or 'voc', got {fmt!r}")
        if difficult not in ("skip", "keep"):
            raise ValueError(f"difficult must be 'skip' or 'keep', got {difficult!r}")
        self.stats: Counter = ScanStats()
        self.samples: List[Dict[str, Any]] = []
        if fmt == "voc":
            root = Path(images)
            self.images_dir = root / "JPEGImages"
            if not self.images_dir.is_dir() or not (root / "Annotations").is_dir():
                raise FileNotFoundError(f"VOC root {str(images)!r} needs JPEGImages/ and Annotations/ folders")
            self._scan_voc(root, str(labels), class_names, num_classes, difficult)
        else:
            self.images_dir, labels = Path(images), Path(labels)
            if not self.images_dir.is_dir():
                raise FileNotFoundError(f"image folder {str(images)!r} does not exist")
            if not labels.exists():
                raise FileNotFoundError(f"labels {str(labels)!r} do not exist (COCO json file or YOLO txt folder)")
            if labels.is_file():
                self._scan_coco(labels)
            else:
                self._scan_yolo(labels, num_classes)
            if class_names is not None:
                self.class_names = list(class_names)
        if not self.samples:
            raise ValueError(f"no usable images in {str(images)!r} with labels {str(labels)!r}: {dict(self.stats)}")
        self.num_classes = len(self.class_names)
        _warn("detection data", self.images_dir, self.stats)

    def _scan_yolo(self, folder: Path, num_classes: Optional[int]) -> None:
        files = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        top = -1
        for path in files:
            size = _decodes(path, self.stats)
            if size is None:
                continue
            w, h = size
            boxes, classes = [], []
            for cls, (x0, y0, x1, y1) in _read_yolo_file(folder / f"{path.stem}.txt", num_classes, self.stats):
                classes.append(cls)
                boxes.append([x0 * w, y0 * h, x1 * w, y1 * h])
                top = max(top, cls)
            self._add(path, w, h, boxes, classes)
        n = num_classes if num_classes is not None else top + 1
        self.class_names = [str(i) for i in range(max(n, 1))]
        self.category_ids = list(range(len(self.class_names)))

    def _scan_voc(self, root: Path, split: str, class_names: Optional[Sequence[str]], num_classes: Optional[int],
                  difficult: str) -> None:
        ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise FileNotFoundError(f"VOC split file {str(ids_file)!r} does not exist")
        parsed = []  # (stem, image, size, objects or None)
        for stem in (ln.split()[0] for ln in ids_file.read_text().splitlines() if ln.strip()):
            xml, img = root / "Annotations" / f"{stem}.xml", self.images_dir / f"{stem}.jpg"
            if not img.is_file():
                self.stats.skip("missing_images", img)
                continue
            size = _decodes(img, self.stats)
            if size is None:
                continue
            if not xml.is_file():
                self.stats.skip("missing_label_files", xml)
                continue
            try:
                objects = ET.parse(xml).getroot().findall("object")
            except ET.ParseError as e:
                self.stats.skip("malformed_xml_files", f"{xml} ({e})")
                continue
            parsed.append((xml, img, size, objects))
        names = list(class_names) if class_names is not None else voc_class_names(
            [o for *_, objects in parsed for o in objects])
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"num_classes={num_classes} but the VOC class names are {len(names)}: {names}")
        self.class_names = [str(c) for c in names]
        self.category_ids = list(range(len(self.class_names)))
        index = {c: i for i, c in enumerate(self.class_names)}
        for xml, img, (w, h), objects in parsed:
            boxes, classes, hard = [], [], []
            for k, obj in enumerate(objects, 1):
                where = f"{xml} (object {k})"
                name = (obj.findtext("name") or "").strip()
                try:
                    is_hard = int(obj.findtext("difficult") or 0) == 1
                    bb = obj.find("bndbox")
                    x0, y0, x1, y1 = (float(bb.findtext(c)) for c in ("xmin", "ymin", "xmax", "ymax"))
                except (AttributeError, TypeError, ValueError):
                    self.stats.skip("malformed_label_lines", where)
                    continue
                if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                    self.stats.skip("non_finite_values", where)
                    continue
                if name not in index:
                    self.stats.skip("unknown_classes", f"{where}: {name!r}")
                    continue
                if is_hard and difficult == "skip":
                    self.stats["difficult_skipped"] += 1
                    continue
                x0, y0 = x0 - 1, y0 - 1  # VOC pixel indices are 1-based and inclusive
                if x0 < -_TOL * w or y0 < -_TOL * h or x1 > (1 + _TOL) * w or y1 > (1 + _TOL) * h \
                        or x1 <= x0 or y1 <= y0:
                    self.stats.skip("boxes_outside_image", where)
                    continue
                boxes.append([max(x0, 0.0), max(y0, 0.0), min(x1, w), min(y1, h)])
                classes.append(index[name])
                hard.append(is_hard)
            self._add(img, w, h, boxes, classes, hard)

    def _scan_coco(self, path: Path) -> None:
        try:
            coco = json.loads(path.read_text())
            cats = sorted(coco["categories"], key=lambda c: c["id"])
            images, anns = coco["images"], coco.get("annotations", [])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a COCO instances json ({e})") from None
        self.category_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        by_image: Dict[Any, List[dict]] = {}
        for a in anns:
            by_image.setdefault(a.get("image_id"), []).append(a)
        for info in images:
            img_path = self.images_dir / str(info.get("file_name", ""))
            if not img_path.is_file():
                self.stats.skip("missing_images", img_path)
                continue
            size = _decodes(img_path, self.stats)
            if size is None:
                continue
            w, h = size
            boxes, classes = [], []
            for a in by_image.get(info.get("id"), []):
                where = f"{path} (annotation id {a.get('id')})"
                try:
                    x, y, bw, bh = (float(v) for v in a["bbox"])
                    cls = index[a["category_id"]]
                except (KeyError, ValueError, TypeError):
                    self.stats.skip("malformed_label_lines", where)
                    continue
                if not all(math.isfinite(v) for v in (x, y, bw, bh)):
                    self.stats.skip("non_finite_values", where)
                    continue
                if a.get("iscrowd", 0):
                    continue
                if x < -_TOL * w or y < -_TOL * h or x + bw > (1 + _TOL) * w or y + bh > (1 + _TOL) * h \
                        or bw <= 0 or bh <= 0:
                    self.stats.skip("boxes_outside_image", where)
                    continue
                boxes.append([max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)])
                classes.append(cls)
            self._add(img_path, w, h, boxes, classes)

    def _add(self, path: Path, w: int, h: int, boxes: List[List[float]], classes: List[int],
             difficult: Optional[List[bool]] = None) -> None:
        self.stats["images"] += 1
        self.stats["boxes"] += len(boxes)
        if not boxes:
            self.stats["background"] += 1
        self.samples.append(dict(path=path, width=w, height=h, boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                                 classes=np.asarray(classes, np.int64),
                                 difficult=np.asarray(difficult or [False] * len(classes), bool)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[Tensor, Dict[str, Any]]:
        s = self.samples[i]
        with Image.open(s["path"]) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        image = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        target = {"boxes": torch.from_numpy(s["boxes"]).clone(),
                  "labels": torch.from_numpy(s["classes"]) + 1, "image_id": i}
        return image, target

    def coco_ground_truth(self) -> Dict[str, Any]:
        """The kept annotations as a COCO dict (image ids = dataset indices, category ids as loaded).
        VOC ``difficult`` boxes kept with ``difficult="keep"`` become ``iscrowd`` (ignored by COCOeval)."""
        images, anns = [], []
        for i, s in enumerate(self.samples):
            images.append({"id": i, "file_name": s["path"].name, "width": s["width"], "height": s["height"]})
            for b, c, d in zip(s["boxes"].tolist(), s["classes"].tolist(), s["difficult"].tolist()):
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": self.category_ids[c],
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                             "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": int(d)})
        cats = [{"id": cid, "name": n} for cid, n in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": anns, "categories": cats}


def voc_class_names(objects: Sequence[ET.Element]) -> List[str]:
    """Class names for VOC ``<object>`` elements: the 20 VOC classes in the usual order when every
    name is one of them, else the sorted names found (custom VOC-format data)."""
    found = {(o.findtext("name") or "").strip() for o in objects} - {""}
    if found <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(found)


def detection_collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


class RoadSegDataset(Dataset):
    """BDD100K road segmentation in the YOLOP layout: ``root/images/{split}/*.jpg`` with
    ``root/da_seg_annotations/{split}/*.png`` (drivable) and ``root/ll_seg_annotations/{split}/*.png``
    (lane lines); masks are > 0 for foreground (BDD100K drivable-id maps: direct and alternative
    areas, ids 0/1 in the 3-class id maps, are mapped by ``drivable_ids`` when given).

    Item: ``(image (3, H, W) float [0, 1], drivable (H, W) float {0,1}, lane (H, W) float {0,1})``
    resized to ``size = (H, W)`` (bilinear image, nearest masks). With ``boxes=True`` the item also
    carries ``(N, 5)`` float boxes ``cls cx cy w h`` (normalised) read from YOLO txt files
    ``root/det_annotations/{split}/{stem}.txt``; malformed lines, boxes outside the image, missing and
    empty files are counted in ``stats`` (the image stays, as background)."""

    def __init__(self, root: PathLike, split: str = "train", size: Tuple[int, int] = (192, 320),
                 drivable_ids: Optional[Sequence[int]] = None, boxes: bool = False,
                 num_classes: Optional[int] = None):
        self.root = Path(root)
        img_dir = self.root / "images" / split
        if not img_dir.is_dir():
            raise FileNotFoundError(f"BDD100K-layout image folder {str(img_dir)!r} does not exist")
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"size must be (H, W) with both >= 32, got {size}")
        self.size = (int(size[0]), int(size[1]))
        self.drivable_ids = None if drivable_ids is None else list(drivable_ids)
        self.stats: Counter = ScanStats()
        self.samples: List[Tuple[Path, Path, Path]] = []
        self.boxes: List[np.ndarray] = []
        self.with_boxes = bool(boxes)
        box_dir = self.root / "det_annotations" / split
        if self.with_boxes and not box_dir.is_dir():
            raise FileNotFoundError(f"box label folder {str(box_dir)!r} does not exist (YOLO txt per image)")
        for path in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            da = self._mask_path("da_seg_annotations", split, path.stem)
            ll = self._mask_path("ll_seg_annotations", split, path.stem)
            if da is None or ll is None:
                self.stats.skip("missing_masks", path)
                continue
            if _decodes(path, self.stats) is None:
                continue
            if any(_decodes(m, self.stats, "undecodable_masks") is None for m in (da, ll)):
                continue
            self.stats["images"] += 1
            self.samples.append((path, da, ll))
            if self.with_boxes:
                rows = [[c, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0] for c, (x0, y0, x1, y1)
                        in _read_yolo_file(box_dir / f"{path.stem}.txt", num_classes, self.stats)]
                self.stats["boxes"] += len(rows)
                self.boxes.append(np.asarray(rows, np.float32).reshape(-1, 5))
        if not self.samples:
            raise ValueError(f"no usable images under {str(img_dir)!r}: {dict(self.stats)}")
        _warn("road data", img_dir, self.stats)

    def _mask_path(self, kind: str, split: str, stem: str) -> Optional[Path]:
        for suffix in (".png", "_drivable_id.png", "_lane.png"):
            p = self.root / kind / split / f"{stem}{suffix}"
            if p.is_file():
                return p
        return None

    def __len__(self) -> int:
        return len(self.samples)

    def _mask(self, path: Path, ids: Optional[Sequence[int]]) -> Tensor:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L").resize(self.size[::-1], Image.NEAREST))
        fg = np.isin(m, ids) if ids is not None else m > 0
        return torch.from_numpy(fg.astype(np.float32))

    def __getitem__(self, i: int):
        img, da, ll = self.samples[i]
        with Image.open(img) as im:
            arr = np.asarray(im.convert("RGB").resize(self.size[::-1], Image.BILINEAR), dtype=np.float32) / 255.0
        item = (torch.from_numpy(arr).permute(2, 0, 1).contiguous(), self._mask(da, self.drivable_ids),
                self._mask(ll, None))
        return item + (torch.from_numpy(self.boxes[i]).clone(),) if self.with_boxes else item


def road_collate(batch):
    """Road items with boxes -> ``(images, drivable, lane, {"batch_idx": (M,), "cls": (M,),
    "bboxes": (M, 4) normalised cxcywh})`` (ultralytics' batch format for the box targets)."""
    images, da, ll, boxes = zip(*batch)
    idx = torch.cat([torch.full((len(b),), float(i)) for i, b in enumerate(boxes)])
    allb = torch.cat(boxes) if boxes else torch.zeros(0, 5)
    return (torch.stack(images), torch.stack(da), torch.stack(ll),
            {"batch_idx": idx, "cls": allb[:, 0], "bboxes": allb[:, 1:5]})
