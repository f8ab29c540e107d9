"""LOLViT in ultralytics YOLO: YAMLs, offline train/val/predict/export, fuse, bad input (issue 5)."""
import os
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


def test_detect_train_val_predict_export_offline(scenes, tmp_path, no_network, capsys, monkeypatch):
    """One short epoch on tiny scenes with broken samples mixed in, then val, predict, ONNX.
    Outputs land where the user is (issue 11 #7): relative projects are taken from the working folder."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(scenes / "det", data)
    yaml_text = (scenes / "scenes-det.yaml").read_text().replace(str((scenes / "det").resolve()), str(data))
    (tmp_path / "data.yaml").write_text(yaml_text)
    dropped = add_bad_samples(data / "images" / "train", data / "labels" / "train")
    n_train = len(list((data / "images" / "train").glob("*.jpg")))

    yolo, _ = lu.train("lolvit-s-det", tmp_path / "data.yaml", epochs=1, imgsz=IMGSZ, batch=4,
                       name="train", plots=False, val=True, seed=0)
    assert len(yolo.trainer.train_loader.dataset.labels) == n_train - dropped
    best = tmp_path / "runs" / "detect" / "train" / "weights" / "best.pt"  # the documented path
    assert Path(yolo.trainer.best).resolve() == best.resolve() and best.is_file()

    from lolvit.cli import main

    capsys.readouterr()
    assert main(["detect", "val", str(best), str(tmp_path / "data.yaml"), "--imgsz", str(IMGSZ), "--batch", "4",
                 "--project", "mine", "--name", "v"]) == 0
    assert (tmp_path / "mine" / "v").is_dir()
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


def test_detect_cli_project_is_relative_to_cwd(tmp_path, monkeypatch):
    """`lolvit detect train` passes ./runs/detect (not ultralytics' runs_dir) by default."""
    from lolvit.cli import main

    seen = {}

    def fake_train(model, data, **kwargs):
        seen.update(kwargs)
        seen["resolved"] = lu._project(kwargs["project"], "detect")
        raise ValueError("stop")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lu, "train", fake_train)
    assert main(["detect", "train", "lolvit-s-det", "d.yaml"]) == 2
    assert seen["resolved"] == str(tmp_path.resolve() / "runs" / "detect") and seen["name"] == "train"


def test_bad_data_yaml_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lu.check_data_yaml(tmp_path / "missing.yaml")
    (tmp_path / "d.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: a\n")
    with pytest.raises(FileNotFoundError, match="train path"):
        lu.train("lolvit-s-det", tmp_path / "d.yaml", epochs=1, imgsz=64)
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="does not parse"):
        lu.check_data_yaml(tmp_path / "bad.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "images").mkdir()
    (tmp_path / "sub" / "r.yaml").write_text("path: sub\ntrain: images\nval: images\nnames:\n  0: a\n")
    with pytest.raises(FileNotFoundError, match="relative path 'sub' .*working directory"):
        lu.check_data_yaml(tmp_path / "sub" / "r.yaml")  # cwd is not tmp_path: ultralytics would not find it
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert lu.check_data_yaml(tmp_path / "sub" / "r.yaml")["path"] == "sub"
    finally:
        os.chdir(cwd)
    (tmp_path / "e.yaml").write_text("train: x\n")
    with pytest.raises(ValueError, match="no 'val'"):
        lu.check_data_yaml(tmp_path / "e.yaml")
    with pytest.raises(ValueError, match="unknown LOLViT YOLO model"):
        lu.model_cfg("lolvit-q-det")
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        lu.model_cfg("yolov8n.pt")
    with pytest.raises(ValueError, match="unknown LOLViT variant"):
        lu.LOLViTBackbone("lolvit_q")


class _Payload:
    """A pickle that runs code when unpickled: writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("action", ["predict", "val", "export", "train"])
def test_detect_commands_never_unpickle_payloads(action, tmp_path, capsys):
    """issue 12 #1: a foreign pickle is refused with one line; its payload never runs."""
    from lolvit.cli import main

    marker = tmp_path / "payload-ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "e.pt")
    (tmp_path / "images").mkdir()
    (tmp_path / "img.jpg").write_bytes(b"")
    (tmp_path / "d.yaml").write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames:\n  0: a\n")
    args = {"predict": [str(tmp_path / "img.jpg")], "val": [str(tmp_path / "d.yaml")], "export": [],
            "train": [str(tmp_path / "d.yaml"), "--epochs", "1"]}[action]
    capsys.readouterr()
    assert main(["detect", action, str(tmp_path / "e.pt"), *args]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to load checkpoint" in err and "e.pt" in err, err


def test_own_checkpoint_loads_safely(tmp_path, monkeypatch):
    """lolvit's own checkpoints (LOLViTBackbone, LOLViTConfig, timm layers) pass the weights_only load,
    also under ultralytics' process-wide ULTRALYTICS_SAFE_LOAD mode."""
    import ultralytics.nn.tasks as tasks

    yolo = lu.load_yolo("lolvit-s-seg")
    yolo.save(tmp_path / "own.pt")
    again = lu.load_yolo(tmp_path / "own.pt")
    assert isinstance(again.model.model[0], lu.LOLViTBackbone) and again.task == "segment"
    monkeypatch.setattr(tasks, "SAFE_LOAD", True)
    ckpt, _ = tasks.torch_safe_load(str(tmp_path / "own.pt"))
    assert isinstance(ckpt["model"].model[0], lu.LOLViTBackbone)
    assert lu.safe_globals(["lolvit.nn.functional.drelu", "os.system", "lolvit.__main__.main", "lolvit.cli.main",
                            "lolvit.models.lolvit.LOLViTConfig"]) == {
        "lolvit.models.lolvit.LOLViTConfig": __import__("lolvit").models.lolvit.LOLViTConfig}


def test_yolo_by_bare_name_after_import_lolvit(tmp_path, monkeypatch):
    """issue 11 #7: YOLO('lolvit-s-det.yaml') from any folder once lolvit is imported."""
    import lolvit  # noqa: F401
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    yolo = YOLO("lolvit-s-det.yaml")
    assert isinstance(yolo.model.model[0], lu.LOLViTBackbone) and yolo.task == "detect"


def test_import_lolvit_alone_resolves_bare_names(tmp_path):
    """`import lolvit` (no .pth, e.g. a checkout on PYTHONPATH) imports no ultralytics, and a later
    `YOLO('lolvit-s-det.yaml')` builds the packaged model in a fresh interpreter."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import sys, lolvit; assert 'ultralytics' not in sys.modules; from ultralytics import YOLO; "
            "m = YOLO('lolvit-s-det.yaml'); print(type(m.model.model[0]).__name__, m.task)")
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "LOLViTBackbone detect" in r.stdout, r.stderr[-2000:]


def _yolo_cli(tmp_path, *args):
    """Run the ``yolo`` CLI in a fresh interpreter whose site-packages holds lolvit's .pth (as installed)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    site_dir = tmp_path / "site"
    site_dir.mkdir(exist_ok=True)
    shutil.copy(root / "src" / "lolvit-ultralytics.pth", site_dir)
    code = ("import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['yolo'] + sys.argv[2:]; "
            "assert 'lolvit' not in sys.modules; from ultralytics.cfg import entrypoint; entrypoint()")
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, str(site_dir), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_yolo_cli_trains_lolvit_yaml(scenes, tmp_path):
    """issue 11 #7: `yolo detect train model=lolvit-s-det.yaml ...` (KeyError 'LOLViTBackbone' on main)
    builds and trains the model in a process that never imports lolvit itself; the trainer's own
    rebuild from the bare name resolves too."""
    r = _yolo_cli(tmp_path, "detect", "train", "model=lolvit-s-det.yaml", f"data={scenes / 'scenes-det.yaml'}",
                  "epochs=1", "imgsz=64", "batch=4", "workers=0", "device=cpu", f"project={tmp_path / 'runs'}",
                  "name=t", "plots=False", "val=False")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()


def test_packaging_installs_the_pth(tmp_path):
    """The wheel and the editable wheel both put lolvit-ultralytics.pth at the top of site-packages."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "proj"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        shutil.copy(root / name, src)
    shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for hook in ("build_wheel", "build_editable", "build_sdist"):  # one process each, as pip does
        code = f"from setuptools import build_meta as b; import sys; print(b.{hook}(sys.argv[1]))"
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    import tarfile

    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")  # a wheel built from the sdist needs the .pth too
    assert any(n.endswith("/src/lolvit-ultralytics.pth") for n in tarfile.open(sdist).getnames())
    wheels = sorted((tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == 2
    for wheel in wheels:
        names = zipfile.ZipFile(wheel).namelist()
        assert "lolvit-ultralytics.pth" in names, (wheel.name, names[:5])
    plain = [w for w in wheels if "editable" not in w.name][0]
    assert "_lolvit_ultralytics_hook.py" in zipfile.ZipFile(plain).namelist()


def test_corrupt_image_reason_not_pi_heif(tmp_path):
    """issue 12 #17: ultralytics reports a corrupt image with PIL's reason, not "No module named 'pi_heif'"."""
    from PIL import Image, UnidentifiedImageError
    from ultralytics.data.utils import verify_image_label

    lu.register()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    (tmp_path / "bad.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(UnidentifiedImageError, match="cannot identify image file"):
        Image.open(bad)
    msg = verify_image_label((str(bad), str(tmp_path / "bad.txt"), "", False, 1, 0, 0, False))[-1]
    assert "cannot identify image file" in msg and "pi_heif" not in msg, msg


def test_ultralytics_drops_whole_image_for_one_bad_line(scenes, tmp_path):
    """What docs/detection.md says: one malformed line or outside box drops the image, valid boxes included."""
    from ultralytics.data.utils import verify_image_label

    image = sorted((scenes / "det" / "images" / "train").glob("*.jpg"))[0]
    for text in ("0 0.5 0.5 0.2 0.2\n1 0.5 abc 0.2 0.2\n", "0 0.5 0.5 0.2 0.2\n1 1.4 0.5 0.3 0.3\n"):
        (tmp_path / "l.txt").write_text(text)
        lb, *_, corrupt, msg = verify_image_label((str(image), str(tmp_path / "l.txt"), "", False, 10, 0, 0, False))
        assert lb is None and corrupt == 1, msg
