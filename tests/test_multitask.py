"""Drivable-area + lane multi-task head (issue 5): shapes, losses, three metric variants, training."""
import json
import math
import shutil

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


def test_road_loader_skips_bad_input(roads, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(roads, root)
    (root / "da_seg_annotations" / "train" / "train_00000.png").unlink()  # missing mask
    (root / "images" / "train" / "train_00001.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="1 missing masks, 1 undecodable images"):
        data = RoadSegDataset(root, "train", SIZE)
    assert len(data) == 4
    img, da, ll = data[0]
    assert img.shape == (3, *SIZE) and da.shape == ll.shape == SIZE and set(da.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RoadSegDataset(tmp_path / "nowhere", "train")
