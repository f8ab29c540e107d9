"""Offline data generators.

``make_scenes``: detection / instance-segmentation scenes composed from real Fashion-MNIST items
pasted at random scales, positions and colours on cluttered backgrounds. Writes, per split,
``det/images`` + ``det/labels`` (YOLO boxes), ``seg/images`` + ``seg/labels`` (YOLO polygons),
``annotations/instances_{split}.json`` (COCO: boxes, polygons, areas) and ``scenes-det.yaml`` /
``scenes-seg.yaml`` for ultralytics.

``make_roads``: synthetic road scenes with drivable-area and lane-line masks in the BDD100K layout
used by YOLOP / A-YOLOM: ``images/{split}/*.jpg``, ``da_seg_annotations/{split}/*.png``,
``ll_seg_annotations/{split}/*.png`` (0 = background, 255 = drivable / lane), and the drawn vehicles
as YOLO boxes (class 0 ``vehicle``) in ``det_annotations/{split}/*.txt`` (empty file: no vehicle).
"""
import gzip
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "load_fashion_mnist", "make_scenes", "make_roads",
    "mask_polygon",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)
PathLike = Union[str, Path]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Optional[PathLike] = None, split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from IDX files (``.gz`` or extracted): ``(N, 28, 28) uint8, (N,) uint8``."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    found = {}
    for kind in ("images-idx3", "labels-idx1"):
        for suffix in (".gz", ""):
            p = root / f"{prefix}-{kind}-ubyte{suffix}"
            if p.is_file():
                found[kind] = p
                break
        else:
            raise FileNotFoundError(
                f"Fashion-MNIST file {prefix}-{kind}-ubyte(.gz) not found in {str(root)!r} "
                f"(install the Debian package dataset-fashion-mnist or pass --fashion-root)"
            )
    images, labels = _read_idx(found["images-idx3"]), _read_idx(found["labels-idx1"])
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"malformed Fashion-MNIST files in {str(root)!r}")
    return images, labels


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull of (N, 2) points, counter-clockwise, no repeated end point."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) <= 2:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: List[tuple] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: List[tuple] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """Polygon (K, 2) in pixel (x, y) coordinates enclosing a binary mask: the convex hull of
    its pixels' corners (a single outline per object, as YOLO polygon labels need)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask has no polygon")
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    return _convex_hull(corners)


def _background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> Image.Image:
    """Cluttered background: low-frequency colour noise + random shapes and lines + grain.
    ``clutter`` scales the number of shapes (6-15 at 1.0)."""
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(round(int(rng.integers(6, 16)) * clutter))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 16 + 1, size // 3 + 2, 2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        if shape == 0:
            draw.rectangle(box, fill=color)
        elif shape == 1:
            draw.ellipse(box, fill=color)
        else:
            draw.line(box, fill=color, width=int(rng.integers(1, 4)))
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
    arr += rng.normal(0, 8, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _occlude(rng: np.random.Generator, img: Image.Image, n: int) -> None:
    """Draw ``n`` opaque rectangles/ellipses (5-20% of the image side) over the scene; labels stay
    those of the whole objects (amodal)."""
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(max(2, size // 20), max(3, size // 5) + 1, 2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.integers(0, 2) else draw.ellipse)([x0, y0, x0 + w, y0 + h], fill=color)


def _overlap(box: Sequence[float], boxes: List[Sequence[float]], limit: float) -> bool:
    for b in boxes:
        ix = max(0.0, min(box[2], b[2]) - max(box[0], b[0]))
        iy = max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
        inter = ix * iy
        small = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
        if small > 0 and inter / small > limit:
            return True
    return False


def _yaml(path: Path, root: Path, names: Sequence[str]) -> None:
    lines = [f"path: {root}", "train: images/train", "val: images/val", "names:"]
    lines += [f"  {i}: {n}" for i, n in enumerate(names)]
    path.write_text("\n".join(lines) + "\n")


def make_scenes(
    out: PathLike,
    n_train: int = 200,
    n_val: int = 50,
    imgsz: int = 320,
    max_objects: int = 4,
    min_scale: float = 0.12,
    max_scale: float = 0.45,
    seed: int = 0,
    fashion_root: Optional[PathLike] = None,
    *,
    min_objects: int = 1,
    clutter: float = 1.0,
    max_overlap: float = 0.3,
    occluders: int = 0,
) -> Dict[str, int]:
    """Generate the scene dataset under ``out`` (see module docstring). Objects are Fashion-MNIST
    items (train split for ``train``, test split for ``val``) scaled to ``min_scale..max_scale`` of
    the image side, ``min_objects..max_objects`` tries per image (a try whose item finds no place
    is dropped). Harder scenes: ``clutter`` scales the number of background shapes; an object may
    cover up to ``max_overlap`` of a smaller object's box; ``occluders`` shapes are drawn over each
    finished scene. Occluded objects keep their whole box and polygon (amodal labels).
    The defaults reproduce the original dataset. Returns counts
    ``{"train": images, "val": images, "objects": total}``."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be >= 32, got {imgsz}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if clutter < 0:
        raise ValueError(f"clutter must be >= 0, got {clutter}")
    if not 0 <= max_overlap <= 1:
        raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap}")
    if occluders < 0:
        raise ValueError(f"occluders must be >= 0, got {occluders}")
    if not 0 < min_scale <= max_scale <= 1:
        raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0, "objects": 0}
    for split, n, source in (("train", n_train, "train"), ("val", n_val, "test")):
        items, labels = load_fashion_mnist(fashion_root, source)
        for sub in ("det/images", "det/labels", "seg/images", "seg/labels"):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        coco = {
            "images": [], "annotations": [],
            "categories": [{"id": i, "name": c} for i, c in enumerate(FASHION_MNIST_CLASSES)],
        }
        for idx in range(n):
            img = _background(rng, imgsz, clutter)
            boxes: List[List[float]] = []
            det_lines, seg_lines = [], []
            stem = f"{split}_{idx:05d}"
            for _ in range(int(rng.integers(min_objects, max_objects + 1))):
                k = int(rng.integers(len(items)))
                side = int(rng.uniform(min_scale, max_scale) * imgsz)
                side = max(side, 8)
                item = Image.fromarray(items[k]).resize((side, side), Image.BILINEAR)
                alpha = np.asarray(item, dtype=np.float32) / 255.0
                mask = alpha > 0.2
                if not mask.any():
                    continue
                for _try in range(10):
                    x0, y0 = (int(v) for v in rng.integers(0, imgsz - side + 1, 2))
                    ys, xs = np.nonzero(mask)
                    box = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
                    if not _overlap(box, boxes, max_overlap):
                        break
                else:
                    continue
                color = rng.integers(0, 256, 3).astype(np.float32)
                patch = np.asarray(img.crop((x0, y0, x0 + side, y0 + side)), dtype=np.float32)
                shade = np.asarray(item, dtype=np.float32)[..., None] / 255.0
                tinted = color * (0.35 + 0.65 * shade)
                a = np.clip(alpha * 1.6, 0, 1)[..., None]
                img.paste(Image.fromarray((patch * (1 - a) + tinted * a).clip(0, 255).astype(np.uint8)), (x0, y0))
                boxes.append(box)
                cls = int(labels[k])
                poly = mask_polygon(mask) + np.array([x0, y0])
                poly = poly.clip(0, imgsz)
                bx0, by0, bx1, by1 = box
                det_lines.append(f"{cls} {(bx0 + bx1) / 2 / imgsz:.6f} {(by0 + by1) / 2 / imgsz:.6f} "
                                 f"{(bx1 - bx0) / imgsz:.6f} {(by1 - by0) / imgsz:.6f}")
                seg_lines.append(f"{cls} " + " ".join(f"{v / imgsz:.6f}" for v in poly.reshape(-1)))
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": idx + 1, "category_id": cls,
                    "bbox": [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                    "area": float(mask.sum()), "iscrowd": 0,
                    "segmentation": [[float(v) for v in poly.reshape(-1)]],
                })
            _occlude(rng, img, occluders)
            for kind in ("det", "seg"):
                img.save(out / kind / "images" / split / f"{stem}.jpg", quality=92)
            (out / "det" / "labels" / split / f"{stem}.txt").write_text("".join(s + "\n" for s in det_lines))
            (out / "seg" / "labels" / split / f"{stem}.txt").write_text("".join(s + "\n" for s in seg_lines))
            coco["images"].append({"id": idx + 1, "file_name": f"{stem}.jpg", "width": imgsz, "height": imgsz})
            counts[split] += 1
            counts["objects"] += len(det_lines)
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    _yaml(out / "scenes-det.yaml", (out / "det").resolve(), FASHION_MNIST_CLASSES)
    _yaml(out / "scenes-seg.yaml", (out / "seg").resolve(), FASHION_MNIST_CLASSES)
    return counts


def _road_scene(rng: np.random.Generator, width: int,
                height: int) -> Tuple[Image.Image, np.ndarray, np.ndarray, List[List[float]]]:
    """One road scene: image (RGB), drivable and lane masks (H, W) uint8 in {0, 255}, and the
    vehicles' pixel boxes (xyxy, clipped to the image)."""
    horizon = int(height * rng.uniform(0.35, 0.5))
    sky = np.linspace(rng.uniform(120, 220), rng.uniform(180, 255), horizon)[:, None, None]
    img = np.zeros((height, width, 3), np.float32)
    img[:horizon] = sky * np.array([0.75, 0.85, 1.0]) * np.ones((1, width, 1))
    ground = rng.uniform(60, 140, 3) * np.array([0.8, 1.0, 0.7])
    img[horizon:] = ground + rng.normal(0, 12, (height - horizon, width, 3))
    image = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # buildings / trees on the horizon
        x0 = int(rng.integers(0, width))
        w, h = int(rng.integers(width // 20 + 1, width // 5 + 2)), int(rng.integers(5, horizon + 1))
        draw.rectangle([x0, horizon - h, x0 + w, horizon], fill=tuple(int(c) for c in rng.integers(30, 200, 3)))
    vx = width * rng.uniform(0.3, 0.7)  # vanishing point
    curve = rng.uniform(-0.35, 0.35) * width
    n_lanes = int(rng.integers(2, 4))
    half = width * rng.uniform(0.45, 0.8)
    centre = width * rng.uniform(0.35, 0.65)
    rows = np.arange(horizon, height)
    t = (rows - horizon) / max(height - 1 - horizon, 1)  # 0 at horizon, 1 at bottom
    mid = vx + (centre - vx) * t + curve * (1 - t) * t
    left, right = mid - half * t, mid + half * t
    drivable = np.zeros((height, width), np.uint8)
    lanes = np.zeros((height, width), np.uint8)
    road_grey = float(rng.uniform(50, 110))
    cols = np.arange(width)[None, :]
    road = (cols >= left[:, None]) & (cols <= right[:, None])
    arr = np.asarray(image).astype(np.float32)
    arr[horizon:][road] = road_grey + rng.normal(0, 6, (int(road.sum()), 1))
    drivable[horizon:][road] = 255
    image = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    lane_img = Image.fromarray(lanes)
    lane_draw = ImageDraw.Draw(lane_img)
    dash = int(rng.integers(0, 2))
    colour = (240, 240, 240) if rng.random() < 0.7 else (230, 200, 40)
    for j in range(n_lanes + 1):
        frac = j / n_lanes
        xs = left + (right - left) * frac
        inner = 0 < j < n_lanes
        pts = list(zip(xs.tolist(), rows.tolist()))
        step = max(len(pts) // 12, 2)
        for s in range(0, len(pts) - step, step):
            if inner and dash and (s // step) % 2:
                continue
            seg = pts[s: s + step + 1]
            w = max(1, int(1 + 4 * t[min(s, len(t) - 1)]))
            draw.line(seg, fill=colour, width=w)
            lane_draw.line(seg, fill=255, width=w)
    lanes = np.asarray(lane_img).copy()
    vehicles: List[List[float]] = []
    for _ in range(int(rng.integers(0, 3))):  # vehicles occlude the road: not drivable, no lane
        row = int(rng.integers(horizon + 2, height))
        tt = (row - horizon) / max(height - 1 - horizon, 1)
        w = max(int(half * tt * rng.uniform(0.25, 0.5)), 2)
        h = max(int(w * 0.8), 2)
        x = int(rng.uniform(left[row - horizon], max(right[row - horizon] - w, left[row - horizon] + 1)))
        box = [x, max(row - h, horizon), x + w, row]
        draw.rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        drivable[box[1]: box[3] + 1, box[0]: box[2] + 1] = 0
        lanes[box[1]: box[3] + 1, box[0]: box[2] + 1] = 0
        x0, y0, x1, y1 = max(box[0], 0), box[1], min(box[2] + 1, width), box[3] + 1  # inclusive pixels
        if x1 > x0 + 1 and y1 > y0 + 1:
            vehicles.append([float(x0), float(y0), float(x1), float(y1)])
    arr = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    arr *= rng.uniform(0.6, 1.2)  # lighting
    arr += rng.normal(0, 5, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8)), drivable, lanes, vehicles


def make_roads(
    out: PathLike, n_train: int = 200, n_val: int = 50, width: int = 320, height: int = 192, seed: int = 0
) -> Dict[str, int]:
    """Generate road scenes in the BDD100K (YOLOP) layout under ``out``; returns image counts."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    if width < 32 or height < 32:
        raise ValueError(f"width and height must be >= 32, got {width}x{height}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        dirs = [out / d / split for d in ("images", "da_seg_annotations", "ll_seg_annotations", "det_annotations")]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, da, ll, boxes = _road_scene(rng, width, height)
            stem = f"{split}_{i:05d}"
            img.save(dirs[0] / f"{stem}.jpg", quality=92)
            Image.fromarray(da).save(dirs[1] / f"{stem}.png")
            Image.fromarray(ll).save(dirs[2] / f"{stem}.png")
            (dirs[3] / f"{stem}.txt").write_text("".join(
                f"0 {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} {(x1 - x0) / width:.6f} "
                f"{(y1 - y0) / height:.6f}\n" for x0, y0, x1, y1 in boxes))
        counts[split] = n
    return counts
