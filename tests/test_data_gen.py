"""Offline data generators (issue 5): Fashion-MNIST scenes and BDD100K-layout road scenes."""
import json

import numpy as np
import pytest
from PIL import Image

from dense_common import need_fashion, no_network  # noqa: F401
from lolvit.cli import main
from lolvit.tasks.dense.generate import load_fashion_mnist, make_roads, make_scenes, mask_polygon


def test_mask_polygon_is_hull_of_pixel_corners():
    m = np.zeros((6, 6), bool)
    m[1:3, 2:5] = True
    poly = mask_polygon(m)
    assert sorted(map(tuple, poly.tolist())) == [(2, 1), (2, 3), (5, 1), (5, 3)]
    with pytest.raises(ValueError, match="empty"):
        mask_polygon(np.zeros((3, 3), bool))


def test_make_scenes_labels_agree(tmp_path, no_network):
    need_fashion()
    counts = make_scenes(tmp_path, n_train=5, n_val=2, imgsz=96, max_objects=3, seed=3)
    assert counts["train"] == 5 and counts["val"] == 2 and counts["objects"] >= 7
    items, labels = load_fashion_mnist(split="test")
    assert items.shape == (10000, 28, 28) and labels.max() == 9
    coco = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert len(coco["categories"]) == 10 and len(coco["images"]) == 5
    n_boxes = 0
    for info in coco["images"]:
        stem = info["file_name"][:-4]
        img = Image.open(tmp_path / "det" / "images" / "train" / info["file_name"])
        assert img.size == (96, 96)
        boxes = [list(map(float, ln.split())) for ln in
                 (tmp_path / "det" / "labels" / "train" / f"{stem}.txt").read_text().splitlines()]
        polys = [list(map(float, ln.split())) for ln in
                 (tmp_path / "seg" / "labels" / "train" / f"{stem}.txt").read_text().splitlines()]
        anns = [a for a in coco["annotations"] if a["image_id"] == info["id"]]
        assert len(boxes) == len(polys) == len(anns) >= 1
        for b, p, a in zip(boxes, polys, anns):
            assert b[0] == p[0] == a["category_id"]
            xy = np.asarray(p[1:]).reshape(-1, 2)
            assert 0 <= xy.min() and xy.max() <= 1
            # the YOLO box is the polygon's bounding box and the COCO box in pixels
            assert np.allclose([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()],
                               [b[1] - b[3] / 2, b[2] - b[4] / 2, b[1] + b[3] / 2, b[2] + b[4] / 2], atol=2e-3)
            x, y, w, h = a["bbox"]
            assert np.allclose([x / 96, y / 96, w / 96, h / 96], [b[1] - b[3] / 2, b[2] - b[4] / 2, b[3], b[4]],
                               atol=2e-3)
        n_boxes += len(boxes)
    assert n_boxes == len(coco["annotations"])
    assert "names:" in (tmp_path / "scenes-det.yaml").read_text()


def test_make_scenes_deterministic_and_errors(tmp_path):
    need_fashion()
    make_scenes(tmp_path / "a", 2, 1, 64, seed=5)
    make_scenes(tmp_path / "b", 2, 1, 64, seed=5)
    for rel in ("det/labels/train/train_00001.txt", "annotations/instances_val.json"):
        assert (tmp_path / "a" / rel).read_text() == (tmp_path / "b" / rel).read_text()
    with pytest.raises(ValueError, match="imgsz"):
        make_scenes(tmp_path / "c", 1, 1, 16)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        make_scenes(tmp_path / "d", 1, 1, 64, fashion_root=tmp_path)


def test_make_roads_layout_and_masks(tmp_path, no_network):
    assert main(["data", "make-roads", str(tmp_path), "--train", "3", "--val", "2", "--width", "96",
                 "--height", "64"]) == 0
    vehicles = 0
    for split, n in (("train", 3), ("val", 2)):
        imgs = sorted((tmp_path / "images" / split).glob("*.jpg"))
        assert len(imgs) == n
        for p in imgs:
            da = np.asarray(Image.open(tmp_path / "da_seg_annotations" / split / f"{p.stem}.png"))
            ll = np.asarray(Image.open(tmp_path / "ll_seg_annotations" / split / f"{p.stem}.png"))
            assert da.shape == ll.shape == (64, 96) and set(np.unique(da)) <= {0, 255}
            assert 0 < (da > 0).mean() < 0.9 and 0 < (ll > 0).mean() < 0.3
            assert (ll > 0)[: int(64 * 0.3)].sum() == 0  # nothing above the horizon
            for line in (tmp_path / "det_annotations" / split / f"{p.stem}.txt").read_text().splitlines():
                c, cx, cy, w, h = map(float, line.split())
                x0, y0 = round((cx - w / 2) * 96), round((cy - h / 2) * 64)
                x1, y1 = round((cx + w / 2) * 96), round((cy + h / 2) * 64)
                assert c == 0 and 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64
                assert (da[y0:y1, x0:x1] == 0).all()  # a vehicle covers the road: not drivable
                vehicles += 1
    assert vehicles > 0
    with pytest.raises(ValueError, match="width and height"):
        make_roads(tmp_path / "x", 1, 1, 16, 16)
    assert main(["data", "make-roads", str(tmp_path / "y"), "--width", "8"]) == 2
