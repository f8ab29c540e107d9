"""Pascal VOC xml loader (issue 5): VOC layout -> DetectionDataset samples, bad input, ssd --format voc."""
import numpy as np
import pytest
import torch
from PIL import Image

from dense_common import json_tail, no_network  # noqa: F401
from lolvit.tasks.dense.datasets import VOC_CLASSES, DetectionDataset

torch.set_num_threads(2)


def _obj(name, box, difficult=0):
    x0, y0, x1, y1 = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


@pytest.fixture
def voc(tmp_path):
    """VOC2007-like root: 3 listed images with xml (one malformed), one image missing its xml."""
    root = tmp_path / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    xml = {
        "000001": _obj("dog", (11, 21, 60, 60)) + _obj("person", (1, 1, 30, 40), difficult=1)
        + _obj("unicorn", (5, 5, 20, 20)),
        "000002": _obj("car", (31, 11, 80, 50)) + _obj("car", (50, 50, 200, 60))  # second: outside image
        + "<object><name>car</name><bndbox><xmin>a</xmin></bndbox></object>",  # malformed coordinates
        "000003": "<annotation><object><name>cat",  # malformed xml
    }
    for stem, body in xml.items():
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        text = body if stem == "000003" else f"<annotation><size><width>96</width></size>{body}</annotation>"
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "JPEGImages" / "000004.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("000001\n000002\n000003\n000004\n000005\n")
    return root


def test_voc_loader_samples_and_bad_input(voc):
    with pytest.warns(UserWarning, match="1 malformed xml files"):
        data = DetectionDataset(voc, "train", fmt="voc", class_names=VOC_CLASSES)
    s = data.stats
    assert len(data) == 2 and data.class_names == list(VOC_CLASSES) and data.num_classes == 20
    assert (s["malformed_xml_files"], s["missing_label_files"], s["missing_images"]) == (1, 1, 1)
    assert (s["unknown_classes"], s["difficult_skipped"], s["boxes_outside_image"], s["malformed_label_lines"]) \
        == (1, 1, 1, 1)
    image, target = data[0]
    assert image.shape == (3, 64, 96)
    assert target["boxes"].tolist() == [[10.0, 20.0, 60.0, 60.0]]  # VOC 1-based pixel indices -> 0-based
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    assert data[1][1]["labels"].tolist() == [VOC_CLASSES.index("car") + 1]

    with pytest.warns(UserWarning):
        kept = DetectionDataset(voc, "train", fmt="voc", difficult="keep", class_names=VOC_CLASSES)
    assert kept[0][1]["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert [a["iscrowd"] for a in kept.coco_ground_truth()["annotations"]] == [0, 1, 0]  # difficult: ignored
    with pytest.warns(UserWarning):
        custom = DetectionDataset(voc, "train", fmt="voc", class_names=["car", "dog"])
    assert custom.num_classes == 2 and custom[0][1]["labels"].tolist() == [2]
    with pytest.raises(FileNotFoundError, match="split file"):
        DetectionDataset(voc, "nosplit", fmt="voc")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        DetectionDataset(voc / "JPEGImages", "train", fmt="voc")
    with pytest.raises(ValueError, match="fmt"):
        DetectionDataset(voc, "train", fmt="pascal")
    with pytest.raises(ValueError, match="num_classes"):
        DetectionDataset(voc, "train", fmt="voc", num_classes=3)
    with pytest.warns(UserWarning):  # 'unicorn' is not a VOC class: the names come from the data
        found = DetectionDataset(voc, "train", fmt="voc")
    assert found.class_names == ["car", "dog", "person", "unicorn"] and found.stats["unknown_classes"] == 0
    assert found[0][1]["labels"].tolist() == [2, 4]  # dog, unicorn (difficult person skipped)


def _custom_voc(root, names, boxes=None):
    """A VOC-format root whose objects use custom class names; ``boxes`` overrides a file's box."""
    rng = np.random.default_rng(1)
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    stems = [f"{i:06d}" for i in range(len(names))]
    for stem, name in zip(stems, names):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        box = (boxes or {}).get(stem, (11, 11, 60, 50))
        (root / "Annotations" / f"{stem}.xml").write_text(f"<annotation>{_obj(name, box)}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems) + "\n")
    return root


def test_voc_custom_class_names_from_data_or_flag(tmp_path, no_network, capsys):
    """issue 11 #4: custom names train on their objects (main: all skipped as unknown, loss 0, NaN mAP);
    a dataset with no object left is refused, naming the folder."""
    pytest.importorskip("pycocotools")
    from lolvit.cli import main

    root = _custom_voc(tmp_path / "widgets", ["widget", "gadget", "widget"])
    data = DetectionDataset(root, "train", fmt="voc")
    assert data.class_names == ["gadget", "widget"] and data.stats["boxes"] == 3
    assert main(["ssd", "train", "--format", "voc", "--images", str(root), "--labels", "train", "--val-images",
                 str(root), "--val-labels", "train", "--size", "64", "--epochs", "1", "--batch", "2",
                 "--out", str(tmp_path / "ssd")]) == 0
    report = json_tail(capsys.readouterr().out)
    assert report["loss"][0] > 0 and report["val"]["map50_95"] == report["val"]["map50_95"]  # not NaN
    assert main(["ssd", "val", "--format", "voc", "--checkpoint", report["checkpoint"], "--images", str(root),
                 "--labels", "train", "--batch", "2"]) == 0  # reads the split with the checkpoint's names
    capsys.readouterr()
    assert main(["ssd", "train", "--format", "voc", "--images", str(root), "--labels", "train", "--size", "64",
                 "--epochs", "1", "--batch", "2", "--class-names", "cat", "dog", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no objects to train on" in err and str(root) in err
    assert not (tmp_path / "x").exists()  # nothing written


def test_voc_non_finite_boxes_named(tmp_path):
    """issue 12 #12: NaN/inf coordinates are skipped and the warning names the file (main: kept as NaN)."""
    root = _custom_voc(tmp_path / "v", ["a", "a", "a"], boxes={"000001": ("nan", 1, 20, 20),
                                                              "000002": (1, 1, "inf", 20)})
    with pytest.warns(UserWarning, match=r"2 non finite values \(first: .*000001\.xml"):
        data = DetectionDataset(root, "train", fmt="voc")
    assert data.stats["non_finite_values"] == 2 and data.stats["boxes"] == 1
    assert all(np.isfinite(s["boxes"]).all() for s in data.samples)


def test_ssd_cli_voc(voc, tmp_path, no_network, capsys):
    pytest.importorskip("pycocotools")
    from lolvit.cli import main

    out = tmp_path / "ssd"
    assert main(["ssd", "train", "--format", "voc", "--images", str(voc), "--labels", "train", "--val-images",
                 str(voc), "--val-labels", "train", "--size", "96", "--epochs", "1", "--batch", "2",
                 "--out", str(out)]) == 0
    report = json_tail(capsys.readouterr().out)
    assert report["train_images"] == 2 and report["val"]["images"] == 2 and 0 <= report["val"]["map50_95"] <= 1
    assert main(["ssd", "val", "--format", "voc", "--checkpoint", report["checkpoint"], "--images", str(voc),
                 "--labels", "train", "--batch", "2"]) == 0
    assert json_tail(capsys.readouterr().out)["map50"] == pytest.approx(report["val"]["map50"], abs=1e-6)
