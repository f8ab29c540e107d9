import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from lolvit.tasks.classify.data import (
    ImageFolderDataset, SeededTransform, build_dataset, collate_skip, find_fashion_mnist, subset_indices, _read_idx,
)


def test_digits_split_is_fixed_and_upscaled():
    tr = build_dataset("digits", "train", img_size=40)
    va = build_dataset("digits", "val", img_size=40)
    assert (len(tr), len(va)) == (1437, 360)
    img, y = va[0]
    assert img.size == (40, 40) and img.mode == "RGB" and 0 <= y < 10
    assert va.targets == build_dataset("digits", "val", img_size=40).targets
    assert sorted(set(tr.targets)) == list(range(10))


def test_subset_is_class_balanced_and_deterministic():
    targets = [i % 10 for i in range(1000)]
    a, b = subset_indices(targets, 100, seed=3), subset_indices(targets, 100, seed=3)
    assert a == b and len(set(a)) == 100
    assert np.bincount([targets[i] for i in a]).tolist() == [10] * 10
    assert subset_indices(targets, None) == list(range(1000))
    with pytest.raises(ValueError, match="positive"):
        subset_indices(targets, 0)


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_local_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = build_dataset("fashion-mnist", "val", data_root=str(tmp_path))
    if find_fashion_mnist(str(tmp_path)) != tmp_path:
        pytest.skip("a system-wide Fashion-MNIST copy takes precedence")
    assert len(ds) == 5 and ds.classes[0] == "T-shirt/top" and ds[0][0].size == (28, 28)


def test_truncated_idx_file_is_rejected(tmp_path):
    p = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 10, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="truncated"):
        _read_idx(p)


def test_real_fashion_mnist_when_installed():
    if find_fashion_mnist() is None:
        pytest.skip("Debian package dataset-fashion-mnist not installed (make data)")
    tr, va = build_dataset("fashion-mnist", "train"), build_dataset("fashion-mnist", "val")
    assert (len(tr), len(va)) == (60000, 10000)
    assert np.bincount(va.targets).tolist() == [1000] * 10


def _png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def test_image_folder_skips_corrupt_files(tmp_path):
    _png(tmp_path / "train" / "a" / "0.png", (255, 0, 0))
    _png(tmp_path / "train" / "b" / "0.png", (0, 255, 0))
    (tmp_path / "train" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = build_dataset(str(tmp_path), "train")
    assert ds.classes == ["a", "b"] and len(ds) == 3
    batch = [ds[i] for i in range(3)]
    x, y, skipped = collate_skip([(torch.zeros(1), t) if b else None for b, t in zip(batch, [0, 1, 1])])
    assert skipped == 1 and x.shape[0] == 2 and y.tolist() == [0, 1]


@pytest.mark.parametrize("layout,error,match", [
    ("none", FileNotFoundError, "neither"),
    ("no_val", FileNotFoundError, "no val/ folder"),
    ("no_classes", ValueError, "no class folders"),
    ("empty_class", ValueError, "without images"),
])
def test_bad_folders_raise_clear_errors(tmp_path, layout, error, match):
    root = tmp_path / "ds"
    if layout != "none":
        (root / "train").mkdir(parents=True)
        (root / "val").mkdir(parents=True)
    if layout == "no_val":
        (root / "val").rmdir()
        _png(root / "train" / "a" / "0.png", 0)
    if layout == "empty_class":
        _png(root / "val" / "a" / "0.png", 0)
        (root / "val" / "b").mkdir()
    with pytest.raises(error, match=match):
        build_dataset(str(root), "val")


def test_val_folder_with_unknown_class_is_rejected(tmp_path):
    _png(tmp_path / "val" / "zebra" / "0.png", 0)
    with pytest.raises(ValueError, match="not in the training set"):
        ImageFolderDataset(tmp_path / "val", classes=["cat", "dog"])


def test_seeded_transform_is_reproducible_and_keeps_global_rng():
    from torchvision import transforms

    base = build_dataset("digits", "val", transforms.Compose([transforms.RandomResizedCrop(32), transforms.ToTensor()]), 48)
    ds = SeededTransform(base, seed=1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[5][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, ds[5][0])
    ds.epoch = 1
    assert not torch.equal(a, ds[5][0])


def test_missing_fashion_mnist_explains_how_to_get_it(tmp_path, monkeypatch):
    import torchvision.datasets

    import lolvit.tasks.classify.data as data

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", ())
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist", "val", data_root=str(tmp_path))
