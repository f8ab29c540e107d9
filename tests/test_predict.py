"""predict, val and the image reader: one preprocessing, every image mode, bad images."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from lolvit.cli import main
from lolvit.io import save_checkpoint
from lolvit.tasks.classify import TrainConfig, train, validate
from lolvit.tasks.classify.data import ImageFolderDataset
from lolvit.tasks.image import ImageReadError, limit_aspect, list_images, read_image
from lolvit.tasks.predict import predict_images


def _shapes(root, n, rng):
    """Two classes of 40x52 colour images: a bright disc or a bright bar on noise."""
    yy, xx = np.mgrid[:40, :52]
    for split in ("train", "val"):
        for c in ("bar", "disc"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 90, (40, 52, 3))
                cy, cx = rng.integers(12, 28), rng.integers(12, 40)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 64 if c == "disc" else abs(xx - cx) < 3
                img[mask] = rng.integers(150, 255, 3)
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 32 px model with its own mean/std and centre crop (as the Fashion-MNIST recipe sets them)."""
    root = tmp_path_factory.mktemp("shapes")
    _shapes(root / "data", 8, np.random.default_rng(0))
    out = root / "run"
    train(TrainConfig(model="lolvit_s", data=str(root / "data"), img_size=32, batch_size=8, epochs=1,
                      val_crop_pct=0.75, interpolation="bilinear", mean=(0.2, 0.2, 0.2), std=(0.3, 0.3, 0.3),
                      train_crop="pad", randaug=None, re_prob=0.0, mixup=0.0, cutmix=0.0,
                      model_kwargs={"depths": 1}, threads=1, progress=False, tensorboard=False, out=str(out)))
    return root


def test_predict_agrees_with_val(trained, capsys):
    """Both use the checkpoint's preprocessing: same top-1 and probability for every val image."""
    ck = trained / "run" / "best"
    report = validate(str(ck), str(trained / "data"), latency_images=1, threads=1)
    assert report["data_config"]["input_size"] == (3, 32, 32) and report["data_config"]["crop_pct"] == 0.75
    model = __import__("lolvit").load_checkpoint(ck)
    got = predict_images(model, [trained / "data" / "val"], topk=1)
    assert len(got) == report["images"] == 16
    assert [r["index"] for r in got] == report["predictions"]
    np.testing.assert_allclose([r["topk"][0][1] for r in got], report["confidences"], rtol=1e-4, atol=1e-6)
    # the CLI takes folders and --img-size
    assert main(["predict", "--checkpoint", str(ck), "--topk", "1", "--img-size", "48", str(trained / "data" / "val")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 32 and ("bar" in out or "disc" in out)


def test_val_refuses_other_classes(trained, tmp_path):
    """A dataset with other classes than the checkpoint's: an error, not a silent accuracy."""
    with pytest.raises(ValueError, match="classes"):
        validate(str(trained / "run" / "best"), "digits", latency_images=1)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "cat" / "0.png")
    with pytest.raises(ValueError, match="not in the training set"):
        validate(str(trained / "run" / "best"), str(tmp_path), latency_images=1)


def test_val_needs_class_names_for_folders(tmp_path):
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2, depths=1), tmp_path / "ck")
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a" / "0.png")
    with pytest.raises(ValueError, match="no class_names"):
        validate(str(tmp_path / "ck"), str(tmp_path), latency_images=1)
    with pytest.raises(ValueError, match="--threads must be an integer >= 1"):
        validate(str(tmp_path / "ck"), str(tmp_path), threads=-1)


# ---------------------------------------------------------------- read_image


def _digit(rng):
    a = np.zeros((24, 24), np.float64)
    a[4:20, 10:14] = 1.0
    return np.clip(a + rng.uniform(0, 0.2, a.shape), 0, 1)


def test_sixteen_bit_and_float_images_keep_their_values(tmp_path):
    """PIL's plain convert('RGB') saturates I;16 and F images; read_image rescales by value range."""
    a = _digit(np.random.default_rng(0))
    ref = np.rint(a * 255).astype(np.uint8)
    Image.fromarray(ref).save(tmp_path / "u8.png")
    Image.fromarray((a * 65535).round().astype(np.uint16)).save(tmp_path / "u16.png")
    Image.fromarray(a.astype(np.float32), "F").save(tmp_path / "f.tif")
    Image.fromarray((a * 255).astype(np.float32), "F").save(tmp_path / "f255.tif")
    Image.fromarray((a * 1000 - 500).astype(np.int32), "I").save(tmp_path / "i.tif")
    with Image.open(tmp_path / "u16.png") as im:
        assert im.mode.startswith("I")
        plain = np.asarray(im.convert("RGB"))[..., 0].astype(int)
    assert np.abs(plain - ref).mean() > 100  # what plain conversion gives: mostly saturated
    for name in ("u16.png", "f.tif", "f255.tif", "i.tif"):
        got = np.asarray(read_image(tmp_path / name)).astype(int)
        assert got.shape == (24, 24, 3)
        assert np.abs(got[..., 0] - ref).max() <= 2, name
    assert np.asarray(read_image(tmp_path / "u16.png", "L")).shape == (24, 24)


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "1", "L"])
def test_other_modes_become_rgb(tmp_path, mode):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert(mode)
    im.save(tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    out = read_image(tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    assert out.mode == "RGB" and out.size == (7, 9)


def test_bad_images_raise_image_read_error_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(FileNotFoundError, match="image not found"):
        read_image(tmp_path / "none.png")
    Image.new("L", (300, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 300x300 is now a bomb (warning zone: 1-2x)
    with pytest.raises(ImageReadError, match="bomb.png: too large"):
        read_image(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # and past the hard limit (> 2x)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "bomb.png")
    assert issubclass(ImageReadError, ValueError)


def test_image_folder_skips_and_counts_bombs(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (300, 300)).save(tmp_path / "a" / "big.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "a" / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    ds = ImageFolderDataset(tmp_path)
    items = [ds[i] for i in range(len(ds))]
    assert items[0] is None and ds.skipped == 1
    assert np.asarray(items[2][0])[0, 0, 0] == round(40000 / 257)  # 16-bit by value range, not 255


def test_extreme_aspect_ratio_is_bounded(tmp_path):
    strip = Image.new("RGB", (100_000, 2), (200, 10, 10))
    cropped = limit_aspect(strip)
    assert cropped.size == (32, 2)
    assert limit_aspect(Image.new("RGB", (640, 480))).size == (640, 480)
    strip.save(tmp_path / "strip.png")
    model = timm.create_model("lolvit_s", num_classes=2, depths=1).eval()
    (res,) = predict_images(model, [tmp_path / "strip.png"], topk=2)
    assert len(res["topk"]) == 2


def test_predict_argument_errors(tmp_path, capsys):
    model = timm.create_model("lolvit_s", num_classes=2, depths=1)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for k in (0, -1):
        with pytest.raises(ValueError, match="topk must be a positive integer"):
            predict_images(model, [tmp_path / "a.png"], topk=k)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images([tmp_path / "empty"])
    save_checkpoint(model, tmp_path / "ck", class_names=["x", "y"])
    for flags in (["--topk", "0"], ["--topk", "-1"]):
        with pytest.raises(SystemExit):
            main(["predict", "--checkpoint", str(tmp_path / "ck"), *flags, str(tmp_path / "a.png")])
        assert "must be a positive integer" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "ck"), str(tmp_path)]) == 0  # folders are searched
    assert "a.png" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", str(tmp_path / "ck"), str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
