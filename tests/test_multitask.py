"""Drivable-area + lane multi-task head (issue 5): shapes, losses, three metric variants, training."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from dense_common import no_network  # noqa: F401
from lolvit.tasks.dense import multitask as mt
from lolvit.tasks.dense.datasets import RoadSegDataset
from lolvit.tasks.dense.generate import make_roads

torch.set_num_threads(2)
SIZE = (64, 96)


@pytest.fixture(scope="module")
def roads(tmp_path_factory):
    root = tmp_path_factory.mktemp("roads")
    make_roads(root, n_train=6, n_val=3, width=96, height=64, seed=1)
    return root


def test_full_resolution_outputs():
    model = mt.LOLViTMultiTask("lolvit_s").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert set(out) == {"drivable", "lane"} and all(v.shape == (2, 64, 96) for v in out.values())
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.rand(1, 3, 60, 96))


def test_losses_and_metric_variants_by_hand():
    t = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    good, bad = (t * 20 - 10), (10 - t * 20)
    assert mt.tversky_loss(good, t) < 0.01 < 0.6 < mt.tversky_loss(bad, t)  # smooth=1 keeps it below 1
    assert mt.focal_loss(good, t) < mt.focal_loss(bad, t)
    # image 1: TP=1 FP=1 FN=1 TN=1; image 2: TP=2 FP=0 FN=0 TN=2; image 3: TN=4 only (no lane)
    counts = torch.tensor([[1, 1, 1, 1], [2, 0, 0, 2], [0, 0, 0, 4]], dtype=torch.float64)
    m = mt.seg_metrics(counts, batch_sizes=[2, 1])
    assert m["dataset"]["iou"] == pytest.approx(3 / 5)
    assert m["dataset"]["recall"] == pytest.approx(3 / 4)
    assert m["dataset"]["miou"] == pytest.approx((3 / 5 + 7 / 9) / 2)
    assert m["per_image"]["iou"] == pytest.approx((1 / 3 + 1) / 2)  # third image undefined: skipped
    assert m["per_batch"]["iou"] == pytest.approx(3 / 5)  # batch 2 has no defined lane IoU
    assert m["per_batch"]["pixel_acc"] == pytest.approx((2 * 6 / 8 + 1 * 1.0) / 3)
    assert math.isclose(m["per_image"]["pixel_acc"], (0.5 + 1 + 1) / 3)


def test_train_val_offline(roads, tmp_path, no_network, capsys):
    report = mt.train_multitask(roads, "lolvit_s", size=SIZE, epochs=1, batch=3, out=tmp_path / "mt", threads=2)
    assert report["loss"][0]["total"] > 0 and report["train_images"] == 6
    metrics = report["val"]["metrics"]
    assert set(metrics) == {"per_image (A-YOLOM)", "per_batch (YOLOP)", "dataset"}
    for values in metrics.values():
        assert 0.0 <= values["drivable_mIoU"] <= 1.0 and 0.0 <= values["lane_acc"] <= 1.0
    from lolvit.cli import main

    capsys.readouterr()
    assert main(["multitask", "val", str(roads), "--checkpoint", report["checkpoint"], "--size", "64", "96",
                 "--batch", "3"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["metrics"]["dataset"] == pytest.approx(metrics["dataset"], nan_ok=True)
    assert main(["multitask", "val", str(roads), "--checkpoint", str(tmp_path / "nothing")]) == 2
    fps = mt.measure_fps(mt.load_multitask(report["checkpoint"]), SIZE, threads=1, warmup=1, runs=3)
    assert fps["fps"] > 0


def test_run_folder_resume_predict_export(roads, tmp_path, capsys):
    """issue 11 #11: results.csv / curves / TensorBoard, `--resume` extending a finished run from the run
    folder alone, predict drawing masks, ONNX export matching PyTorch."""
    import numpy as np
    from PIL import Image

    from lolvit.cli import main

    run = tmp_path / "mt"
    assert main(["multitask", "train", str(roads), "--size", *map(str, SIZE), "--epochs", "1", "--batch", "3",
                 "--out", str(run)]) == 0
    assert main(["multitask", "train", "--resume", "--out", str(run), "--epochs", "2"]) == 0
    report = json.loads(capsys.readouterr().out.split("epoch 2/2")[-1].split("\n", 1)[1])
    assert len(report["loss"]) == 2 and report["size"] == list(SIZE)
    rows = (run / "results.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_drivable_loss") and "val_lane_IoU" in rows[0] and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (run / "curves.png").is_file() and (run / "state.safetensors").is_file()

    assert main(["multitask", "predict", str(roads / "images" / "val"), "--checkpoint", str(run / "last"),
                 "--out", str(tmp_path / "pred")]) == 0
    pred = json.loads(capsys.readouterr().out)
    first = Path(pred["images"][0]["image"])
    assert 0.0 <= pred["images"][0]["drivable_fraction"] <= 1.0
    a = np.asarray(Image.open(first).convert("RGB"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "pred" / first.name).convert("RGB"), dtype=int)
    assert a.shape == b.shape

    ort = pytest.importorskip("onnxruntime")
    from lolvit.tasks.dense import infer

    assert main(["multitask", "export", "--checkpoint", str(run / "last"), "--out", str(tmp_path / "m.onnx")]) == 0
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, *SIZE)
    outs = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = infer.MultiTaskExport(mt.load_multitask(run / "last")).eval()(x)
    assert [o.shape for o in outs] == [(2, *SIZE)] * 2
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r.numpy(), atol=1e-4)


def test_road_loader_skips_bad_input(roads, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(roads, root)
    (root / "da_seg_annotations" / "train" / "train_00000.png").unlink()  # missing mask
    (root / "images" / "train" / "train_00001.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"1 missing masks \(first: .*train_00000\.jpg\), "
                                         r"1 undecodable images \(first: .*train_00001\.jpg: cannot identify"):
        data = RoadSegDataset(root, "train", SIZE)
    assert len(data) == 4
    img, da, ll = data[0]
    assert img.shape == (3, *SIZE) and da.shape == ll.shape == SIZE and set(da.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RoadSegDataset(tmp_path / "nowhere", "train")


def test_default_has_no_detection_branch():
    model = mt.LOLViTMultiTask("lolvit_s")
    assert model.nc == 0 and model.spec == {"variant": "lolvit_s", "neck": 64}
    assert not any(k.startswith("detect") for k in model.state_dict())
    with pytest.raises(ValueError, match="nc"):
        mt.LOLViTMultiTask("lolvit_s", nc=-1)


def test_road_boxes_and_coco_map_by_hand(roads):
    data = RoadSegDataset(roads, "train", SIZE, boxes=True, num_classes=1)
    lines = sum(len(p.read_text().splitlines()) for p in (roads / "det_annotations" / "train").glob("*.txt"))
    assert data.stats["boxes"] == lines > 0
    img, da, ll, boxes = data[next(i for i, b in enumerate(data.boxes) if len(b))]
    assert boxes.shape[1] == 5 and (boxes[:, 0] == 0).all() and (boxes[:, 1:] > 0).all() and (boxes[:, 1:] <= 1).all()
    gt = mt._road_ground_truth(data, 1)
    assert len(gt["annotations"]) == lines
    perfect = [{"image_id": a["image_id"], "category_id": 0, "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    assert mt.coco_bbox_stats(gt, perfect)["map50"] == pytest.approx(1.0)
    shifted = [{**d, "bbox": [d["bbox"][0] + 2 * d["bbox"][2], *d["bbox"][1:]]} for d in perfect]  # no overlap
    assert mt.coco_bbox_stats(gt, shifted)["map50"] == pytest.approx(0.0)
    assert mt.coco_bbox_stats(gt, [])["map50"] == 0.0
    assert math.isnan(mt.coco_bbox_stats({**gt, "annotations": []}, perfect)["map50"])  # undefined without boxes


def test_detection_branch_train_val(roads, tmp_path, no_network, capsys):
    pytest.importorskip("ultralytics")
    pytest.importorskip("pycocotools")
    bad = tmp_path / "r"
    shutil.copytree(roads, bad)
    (bad / "det_annotations" / "train" / "train_00002.txt").write_text("0 0.5 zz 0.1 0.1\n0 1.7 0.5 0.2 0.2\n")
    (bad / "det_annotations" / "train" / "train_00003.txt").unlink()
    with pytest.warns(UserWarning, match=r"1 malformed label lines \(first: .*train_00002\.txt:1\), "
                                         r"1 boxes outside image \(first: .*train_00002\.txt:2\)"):
        report = mt.train_multitask(bad, "lolvit_s", size=SIZE, epochs=1, batch=3, out=tmp_path / "mtd",
                                    threads=2, nc=1)
    assert report["skipped"]["missing_label_files"] == 1 and report["train_images"] == 6
    assert report["loss"][0]["detect"] > 0 and report["loss"][0]["total"] > report["loss"][0]["detect"]
    val = report["val"]
    assert set(val["metrics"]) == {"per_image (A-YOLOM)", "per_batch (YOLOP)", "dataset"}
    det = val["detection"]
    assert 0.0 <= det["map50_95"] <= det["map50"] <= 1.0 and det["boxes"] > 0 and det["detections"] > 0
    model = mt.load_multitask(report["checkpoint"])
    assert model.nc == 1
    with torch.no_grad():
        out = model(torch.rand(1, 3, *SIZE))
    anchors = sum((SIZE[0] // s) * (SIZE[1] // s) for s in (8, 16, 32))
    assert out["detect"].shape == (1, 4 + 1, anchors) and out["drivable"].shape == (1, *SIZE)
    from lolvit.nn.fuse import fuse

    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        ref = model(x)
        fused = fuse(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for k in ("drivable", "lane", "detect"):
        assert torch.allclose(fused[k], ref[k], atol=1e-3, rtol=1e-3)
    from lolvit.cli import main

    capsys.readouterr()
    assert main(["multitask", "val", str(bad), "--checkpoint", report["checkpoint"], "--size", "64", "96",
                 "--batch", "3"]) == 0
    text = capsys.readouterr().out
    again = json.loads(text[text.index("{\n"):])
    assert again["detection"]["map50"] == pytest.approx(det["map50"], abs=1e-6)
