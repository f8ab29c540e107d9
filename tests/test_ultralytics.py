"""LOLViT in ultralytics YOLO: YAMLs, offline train/val/predict/export, fuse, bad input (issue 5)."""
import shutil
from pathlib import Path

import pytest
import torch

from dense_common import add_bad_samples, json_tail, make_tiny_scenes, no_network  # noqa: F401

pytest.importorskip("ultralytics")

from lolvit.integrations import ultralytics as lu  # noqa: E402

torch.set_num_threads(2)
IMGSZ = 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_tiny_scenes(tmp_path_factory.mktemp("scenes"), imgsz=IMGSZ)


def test_yamls_build_and_strides():
    assert set(lu.MODEL_NAMES) == {"lolvit-s-det", "lolvit-x-det", "lolvit-s-seg", "lolvit-x-seg"}
    for name in lu.MODEL_NAMES:
        yolo = lu.load_yolo(name)
        assert yolo.task == ("detect" if name.endswith("det") else "segment")
        assert yolo.model.stride.tolist() == [8.0, 16.0, 32.0]
        backbone = yolo.model.model[0]
        assert isinstance(backbone, lu.LOLViTBackbone)
        feats = backbone(torch.zeros(1, 3, 64, 96))
        assert [f.shape[1] for f in feats] == backbone.channels
        assert [f.shape[-2:] for f in feats] == [(8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("name", ["lolvit-s-det", "lolvit-x-seg"])
def test_ultralytics_fuse_folds_lolvit(name):
    torch.manual_seed(0)
    model = lu.load_yolo(name).model.eval()
    for m in model.modules():  # non-trivial BN statistics so that folding is actually exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.model[0].modules())
    assert not model.is_fused()
    model.fuse(verbose=False)
    assert model.is_fused()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.model[0].modules())
    with torch.no_grad():
        out = model(x)[0]
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_detect_train_val_predict_export_offline(scenes, tmp_path, no_network, capsys):
    """One short epoch on tiny scenes with broken samples mixed in, then val, predict, ONNX."""
    data = tmp_path / "data"
    shutil.copytree(scenes / "det", data)
    yaml_text = (scenes / "scenes-det.yaml").read_text().replace(str((scenes / "det").resolve()), str(data))
    (tmp_path / "data.yaml").write_text(yaml_text)
    dropped = add_bad_samples(data / "images" / "train", data / "labels" / "train")
    n_train = len(list((data / "images" / "train").glob("*.jpg")))

    yolo, _ = lu.train("lolvit-s-det", tmp_path / "data.yaml", epochs=1, imgsz=IMGSZ, batch=4,
                       project=str(tmp_path / "runs"), name="det", plots=False, val=True, seed=0)
    assert len(yolo.trainer.train_loader.dataset.labels) == n_train - dropped
    best = Path(yolo.trainer.best)
    assert best.is_file()

    from lolvit.cli import main

    capsys.readouterr()
    assert main(["detect", "val", str(best), str(tmp_path / "data.yaml"), "--imgsz", str(IMGSZ), "--batch", "4"]) == 0
    metrics = json_tail(capsys.readouterr().out)
    assert 0.0 <= metrics["metrics/mAP50-95(B)"] <= metrics["metrics/mAP50(B)"] <= 1.0

    import ultralytics

    bus = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    out = tmp_path / "pred"

    assert main(["detect", "predict", str(best), str(bus), "--imgsz", "64", "--conf", "0.0",
                 "--save-dir", str(out)]) == 0
    drawn = out / "bus.jpg"
    assert drawn.is_file()
    from PIL import Image
    import numpy as np

    a, b = np.asarray(Image.open(bus).convert("RGB")), np.asarray(Image.open(drawn).convert("RGB"))
    assert a.shape == b.shape and (np.abs(a.astype(int) - b.astype(int)) > 60).mean() > 0.001  # boxes drawn

    capsys.readouterr()
    assert main(["detect", "export", str(best), "--format", "onnx", "--imgsz", str(IMGSZ)]) == 0
    onnx_path = capsys.readouterr().out.strip().splitlines()[-1]
    assert onnx_path.endswith(".onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[:1]
    model = lu.load_yolo(best).model.float().eval()
    with torch.no_grad():
        ref = model(x)[0]
    assert y.shape == tuple(ref.shape) == (1, 4 + 10, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-3, atol=1e-3)


def test_segment_train_val_offline(scenes, tmp_path, no_network):
    data = tmp_path / "data"
    shutil.copytree(scenes / "seg", data)
    yaml_text = (scenes / "scenes-seg.yaml").read_text().replace(str((scenes / "seg").resolve()), str(data))
    (tmp_path / "data.yaml").write_text(yaml_text)
    dropped = add_bad_samples(data / "images" / "train", data / "labels" / "train", polygons=True)
    n_train = len(list((data / "images" / "train").glob("*.jpg")))
    yolo, _ = lu.train("lolvit-s-seg", tmp_path / "data.yaml", epochs=1, imgsz=IMGSZ, batch=4,
                       project=str(tmp_path / "runs"), name="seg", plots=False, seed=0)
    assert len(yolo.trainer.train_loader.dataset.labels) == n_train - dropped
    metrics = lu.val(yolo.trainer.best, tmp_path / "data.yaml", imgsz=IMGSZ, batch=4,
                     project=str(tmp_path / "runs"), name="segval")
    assert 0.0 <= metrics.seg.map <= 1.0 and 0.0 <= metrics.box.map <= 1.0


def test_bad_data_yaml_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lu.check_data_yaml(tmp_path / "missing.yaml")
    (tmp_path / "d.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: a\n")
    with pytest.raises(FileNotFoundError, match="train path"):
        lu.train("lolvit-s-det", tmp_path / "d.yaml", epochs=1, imgsz=64)
    (tmp_path / "e.yaml").write_text("train: x\n")
    with pytest.raises(ValueError, match="no 'val'"):
        lu.check_data_yaml(tmp_path / "e.yaml")
    with pytest.raises(ValueError, match="unknown LOLViT YOLO model"):
        lu.model_cfg("lolvit-q-det")
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        lu.model_cfg("yolov8n.pt")
    with pytest.raises(ValueError, match="unknown LOLViT variant"):
        lu.LOLViTBackbone("lolvit_q")
