"""SSDLite over LOLViT (issue 5): build, one short epoch on tiny scenes, COCO mAP, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dense_common import json_tail, make_tiny_scenes, no_network  # noqa: F401

pytest.importorskip("pycocotools")

from lolvit.tasks.dense import ssd  # noqa: E402
from lolvit.tasks.dense.datasets import DetectionDataset  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_tiny_scenes(tmp_path_factory.mktemp("ssd-scenes"), n_train=8, n_val=4, imgsz=96)


def test_ssd_maps_and_anchors():
    model = ssd.build_ssd(10, "lolvit_s", size=320).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 320, 320))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert [f.shape[1] for f in feats.values()] == model.backbone.out_channels
    model = ssd.build_ssd(10, "lolvit_s", size=96, detections_per_img=20).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 200, 300)])
    assert out[0]["boxes"].shape[1] == 4 and (out[0]["boxes"][:, 2] <= 300).all()
    with pytest.raises(ValueError, match="num_classes"):
        ssd.build_ssd(0)


def test_ssd_train_val_coco_and_yolo_labels(scenes, tmp_path, no_network, capsys):
    """batch 7 of 8 images: the last batch would hold one image (BatchNorm crash on main, issue 12 #5)."""
    report = ssd.train_ssd(scenes / "det" / "images" / "train", scenes / "annotations" / "instances_train.json",
                           num_classes=10, size=96, epochs=1, batch=7, out=tmp_path / "ssd",
                           val_images=scenes / "det" / "images" / "val",
                           val_labels=scenes / "det" / "labels" / "val", threads=2)
    assert len(report["loss"]) == 1 and report["loss"][0] > 0
    assert 0.0 <= report["val"]["map50_95"] <= 1.0 and report["val"]["images"] == 4
    from lolvit.cli import main

    capsys.readouterr()
    assert main(["ssd", "val", "--checkpoint", report["checkpoint"], "--images", str(scenes / "det" / "images" / "val"),
                 "--labels", str(scenes / "annotations" / "instances_val.json"), "--batch", "4"]) == 0
    again = json_tail(capsys.readouterr().out)  # after pycocotools' summary lines
    assert again["map50_95"] == pytest.approx(report["val"]["map50_95"], abs=1e-6)  # COCO json == YOLO txt labels


def test_detection_dataset_skips_bad_input(scenes, tmp_path):
    import shutil

    from dense_common import add_bad_samples

    img, lab = tmp_path / "images", tmp_path / "labels"
    shutil.copytree(scenes / "det" / "images" / "train", img)
    shutil.copytree(scenes / "det" / "labels" / "train", lab)
    add_bad_samples(img, lab)
    with pytest.warns(UserWarning, match="skipped"):
        data = DetectionDataset(img, lab, num_classes=10)
    s = data.stats
    assert (s["undecodable_images"], s["malformed_label_lines"], s["boxes_outside_image"]) == (1, 1, 1)
    assert s["empty_label_files"] == 1 and s["missing_label_files"] == 1
    assert len(data) == 8 + 4  # bad_line / bad_outside / bad_empty / bad_nolabel kept as background
    for i in range(len(data)):
        image, target = data[i]
        assert image.shape[0] == 3 and target["boxes"].shape[1] == 4
    coco = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    coco["annotations"][0]["bbox"] = [90.0, 90.0, 50.0, 50.0]
    coco["annotations"][1]["bbox"] = "oops"
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.warns(UserWarning):
        data = DetectionDataset(scenes / "det" / "images" / "train", tmp_path / "c.json")
    assert data.stats["boxes_outside_image"] == 1 and data.stats["malformed_label_lines"] == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DetectionDataset(tmp_path / "nowhere", lab)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="COCO"):
        DetectionDataset(img, tmp_path / "bad.json")


def test_no_singleton_batches():
    g = torch.Generator().manual_seed(0)
    for n, b, sizes in ((8, 7, [8]), (9, 4, [4, 5]), (8, 4, [4, 4]), (2, 16, [2]), (10, 3, [3, 3, 4])):
        batches = list(ssd.NoSingletonBatches(n, b, g))
        assert [len(x) for x in batches] == sizes and sorted(sum(batches, [])) == list(range(n))
        assert len(ssd.NoSingletonBatches(n, b, g)) == len(sizes)
    with pytest.raises(ValueError, match="--batch 1"):
        ssd.NoSingletonBatches(8, 1, g)
    with pytest.raises(ValueError, match="1 training image"):
        ssd.NoSingletonBatches(1, 4, g)


def test_non_finite_yolo_and_coco_labels_named(scenes, tmp_path):
    """issue 12 #12: NaN/inf coordinates or class ids are skipped with file:line named (main: NaN boxes
    kept, or a crash in int(nan) with no file named)."""
    import shutil

    img, lab = tmp_path / "images", tmp_path / "labels"
    shutil.copytree(scenes / "det" / "images" / "train", img)
    shutil.copytree(scenes / "det" / "labels" / "train", lab)
    first = sorted(lab.glob("*.txt"))[0]
    first.write_text("0 0.5 0.5 0.2 0.2\nnan 0.5 0.5 0.2 0.2\n1 inf 0.5 0.2 0.2\n2 0.5 0.5 nan 0.1\n")
    with pytest.warns(UserWarning, match=rf"3 non finite values \(first: .*{first.name}:2\)"):
        data = DetectionDataset(img, lab, num_classes=10)
    assert data.stats["non_finite_values"] == 3
    assert all(np.isfinite(s["boxes"]).all() for s in data.samples)
    coco = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    coco["annotations"][0]["bbox"][2] = float("nan")
    (tmp_path / "c.json").write_text(json.dumps(coco))  # json writes NaN, Python's json reads it back
    with pytest.warns(UserWarning, match=r"1 non finite values \(first: .*c\.json \(annotation id"):
        data = DetectionDataset(scenes / "det" / "images" / "train", tmp_path / "c.json")
    assert all(np.isfinite(s["boxes"]).all() for s in data.samples)


def test_corrupt_image_reason_named(scenes, tmp_path):
    """issue 12 #17: the warning names the image and the decoder's reason."""
    import shutil

    img = tmp_path / "images"
    shutil.copytree(scenes / "det" / "images" / "train", img)
    (img / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match=r"1 undecodable images \(first: .*broken\.jpg: cannot identify image"):
        DetectionDataset(img, scenes / "det" / "labels" / "train", num_classes=10)


def test_checkpoint_names_keep_their_dots(tmp_path):
    """issue 12 #2: 'm.v1' and 'm.v2' are two checkpoints (main: both written to m.safetensors)."""
    from lolvit.tasks.dense.checkpoint import checkpoint_files, read_spec_checkpoint, save_spec_checkpoint

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert save_spec_checkpoint(a, tmp_path / "m.v1", "t", {}) == tmp_path / "m.v1.safetensors"
    save_spec_checkpoint(b, tmp_path / "m.v2", "t", {"v": 2})
    got1, _ = read_spec_checkpoint(tmp_path / "m.v1", "t")
    got2, meta2 = read_spec_checkpoint(tmp_path / "m.v2.safetensors", "t")
    torch.testing.assert_close(got1["weight"], a.weight.detach())
    torch.testing.assert_close(got2["weight"], b.weight.detach())
    assert meta2["spec"] == {"v": 2} and not (tmp_path / "m.safetensors").exists()
    assert checkpoint_files(tmp_path / "last.json") == (tmp_path / "last.safetensors", tmp_path / "last.json")
    assert checkpoint_files("runs/ssd/last")[0] == Path("runs/ssd/last.safetensors")


def test_ssd_run_folder_resume_is_exact(scenes, tmp_path, capsys, monkeypatch):
    """issue 11 #11: a run folder like classification's (results.csv, TensorBoard, curves, state);
    a 2-epoch run stopped after epoch 1 and resumed with `--resume` equals 2 epochs bit for bit."""
    from safetensors.torch import load_file

    from lolvit.cli import main
    from lolvit.tasks.dense.run import DenseRun

    import shutil

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for image in sorted((scenes / "det" / "images" / "train").glob("*.jpg"))[:4]:  # one step per epoch
        shutil.copy(image, tmp_path / "img")
        shutil.copy(scenes / "det" / "labels" / "train" / f"{image.stem}.txt", tmp_path / "lab")
    common = dict(images=tmp_path / "img", labels=tmp_path / "lab", num_classes=10, size=64, batch=4, threads=2)
    full = ssd.train_ssd(**common, epochs=2, out=tmp_path / "full")
    epoch_end = DenseRun.epoch_end

    def killed_after_first(self, row, *args):
        epoch_end(self, row, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(DenseRun, "epoch_end", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        ssd.train_ssd(**common, epochs=2, out=tmp_path / "half")
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["ssd", "train", "--resume", "--out", str(tmp_path / "half")]) == 0
    resumed = json_tail(capsys.readouterr().out)
    assert resumed["loss"] == full["loss"] and len(full["loss"]) == 2
    a, b = load_file(full["checkpoint"]), load_file(resumed["checkpoint"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "half" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (tmp_path / "half" / "curves.png").stat().st_size > 0
    pytest.importorskip("tensorboard")
    assert list((tmp_path / "half" / "tensorboard").glob("events.*"))
    assert main(["ssd", "train", "--resume", "--out", str(tmp_path / "half"), "--epochs", "2"]) == 2
    assert "already trained 2 of 2 epochs" in capsys.readouterr().err
    assert main(["ssd", "train", "--images", str(common["images"]), "--labels", str(common["labels"]),
                 "--out", str(tmp_path / "half")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["ssd", "train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "no ssd run to resume" in capsys.readouterr().err
    assert main(["ssd", "train", "--images", str(common["images"]), "--labels", str(common["labels"]),
                 "--out", str(tmp_path / "old" / "last.safetensors")]) == 2
    assert "must be a run folder" in capsys.readouterr().err and not (tmp_path / "old").exists()


def test_ssd_predict_and_onnx_export(tmp_path, capsys):
    """issue 11 #11: `ssd predict` draws boxes on a folder of images; `ssd export` writes an ONNX graph
    whose decoded boxes/scores match the PyTorch model (best detection = torchvision's postprocess)."""
    from PIL import Image

    from lolvit.cli import main
    from lolvit.tasks.dense import infer

    torch.manual_seed(0)
    model = ssd.build_ssd(3, size=64)
    ck = ssd.save_ssd(model, tmp_path / "ck", ["cat", "dog", "cow"])
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (64, 64, 3)), ("b.png", (48, 80, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(src / name)
    capsys.readouterr()
    assert main(["ssd", "predict", str(src), "--checkpoint", str(ck), "--out", str(tmp_path / "pred"),
                 "--conf", "0"]) == 0
    report = json_tail(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in report["images"]] == ["a.jpg", "b.png"]
    assert report["images"][0]["boxes"] and report["images"][0]["boxes"][0]["name"] in ("cat", "dog", "cow")
    for name in ("a.jpg", "b.png"):
        a = np.asarray(Image.open(src / name).convert("RGB"), dtype=int)
        b = np.asarray(Image.open(tmp_path / "pred" / name).convert("RGB"), dtype=int)
        assert a.shape == b.shape and (np.abs(a - b) > 60).any()  # boxes drawn
    assert main(["ssd", "predict", str(tmp_path / "none"), "--checkpoint", str(ck)]) == 2

    onnx = pytest.importorskip("onnxruntime")
    assert main(["ssd", "export", "--checkpoint", str(ck)]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path == tmp_path / "ck.onnx" and path.is_file()
    sess = onnx.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 64)
    boxes, scores = sess.run(None, {"images": x.numpy()})
    loaded = ssd.load_ssd(ck)
    with torch.no_grad():
        ref_boxes, ref_scores = infer.SSDExport(loaded, 64).eval()(x)
        det = loaded(list(x))
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5)
    for i in range(2):
        a, c = divmod(int(scores[i].argmax()), scores.shape[-1])
        assert scores[i, a, c] == pytest.approx(det[i]["scores"][0].item(), abs=1e-5)
        assert int(det[i]["labels"][0]) == c + 1
        np.testing.assert_allclose(boxes[i, a].clip(0, 64), det[i]["boxes"][0].numpy(), atol=1e-3)
