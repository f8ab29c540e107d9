"""Classification datasets: ImageFolder trees, Fashion-MNIST (Debian IDX files) and scikit-learn digits.

Every dataset yields ``(PIL.Image RGB, int label)`` and has ``classes`` and ``targets``; corrupt
image files are skipped (``None`` samples, dropped by :func:`collate_skip`) and counted.
"""
import gzip
import os
import random
import struct
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..image import IMG_EXTENSIONS, ImageReadError, limit_aspect, read_image

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_DIRS = (DEBIAN_FASHION_MNIST,)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
BUILTIN = ("digits", "fashion-mnist")


class ArrayDataset(Dataset):
    """In-memory uint8 images ``(N, H, W)`` or ``(N, H, W, 3)`` with integer labels."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: List[str], transform=None):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i]).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` tree (ImageNet layout). Images are read with
    :func:`~lolvit.tasks.image.read_image` (16-bit and float images rescaled by value range, strips
    longer than 16x their width centre-cropped); unreadable files and decompression bombs are
    skipped and counted."""

    def __init__(self, root, transform=None, classes: Optional[List[str]] = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise ValueError(f"no class folders in {root} (expected {root}/<class>/<image>)")
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"{root} has classes not in the training set: {unknown[:5]}")
        self.classes = list(classes) if classes is not None else found
        self.samples: List[Tuple[str, int]] = []
        empty = []
        for c in found:
            files = sorted(
                str(p) for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
            )
            if not files:
                empty.append(c)
            self.samples += [(f, self.classes.index(c)) for f in files]
        if empty:
            raise ValueError(f"class folders without images in {root}: {empty[:5]} ({len(empty)} in all)")
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        try:
            img = limit_aspect(read_image(path))
        except (ImageReadError, FileNotFoundError):
            self.skipped += 1
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class SeededTransform:
    """Applies ``transform`` with python/torch RNGs seeded from (seed, epoch, index), so augmentation
    is identical whatever the worker count, rank or resume point."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        s = (self.seed * 1_000_003 + self.epoch * 100_003 + i) % (2**31)
        py_state, torch_state = random.getstate(), torch.get_rng_state()
        random.seed(s)
        torch.default_generator.manual_seed(s)  # CPU generator only: torch.manual_seed also seeds CUDA (~0.2 ms)
        try:
            return self.dataset[i]
        finally:
            random.setstate(py_state)
            torch.set_rng_state(torch_state)


def collate_skip(batch):
    """Default collate after dropping ``None`` (unreadable) samples; returns ``(x, y, n_skipped)``."""
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return None, None, skipped
    x = torch.stack([b[0] for b in kept])
    y = torch.tensor([b[1] for b in kept], dtype=torch.long)
    return x, y, skipped


def _digits(split: str, size: int) -> ArrayDataset:
    """scikit-learn's 1797 8x8 digits, bilinearly upscaled to ``size``; fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=d.target)
    sel = tr if split == "train" else te
    small = (d.images[sel] * (255.0 / 16.0)).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR)) for a in small])
    return ArrayDataset(big, d.target[sel], [str(i) for i in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file (truncated)")
    _, dtype, ndim = struct.unpack(">HBB", data[:4])
    if dtype != 0x08:
        raise ValueError(f"{path}: unsupported IDX dtype {dtype:#x}")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def find_fashion_mnist(root: Optional[str] = None) -> Optional[Path]:
    """Folder holding the four Fashion-MNIST IDX files (.gz or extracted), or None."""
    cands = [Path(root)] if root else []
    cands += [Path(p) for p in FASHION_MNIST_DIRS]
    if root:
        cands.append(Path(root) / "FashionMNIST" / "raw")
    for c in cands:
        if all(_idx_file(c, n) is not None for pair in FASHION_MNIST_FILES.values() for n in pair):
            return c
    return None


def _idx_file(folder: Path, name: str) -> Optional[Path]:
    for p in (folder / (name + ".gz"), folder / name):
        if p.is_file():
            return p
    return None


def _fashion_mnist(split: str, root: Optional[str], download: bool = False) -> ArrayDataset:
    folder = find_fashion_mnist(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(
                "Fashion-MNIST not found: install the Debian package (apt-get install dataset-fashion-mnist, "
                f"files in {DEBIAN_FASHION_MNIST}), put the four *-ubyte[.gz] files in --data-root, or pass "
                "--download to let torchvision fetch them")
        return _fashion_mnist_torchvision(split, root)
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    images = _read_idx(_idx_file(folder, img_name))
    labels = _read_idx(_idx_file(folder, lbl_name))
    return ArrayDataset(images, labels, FASHION_MNIST_CLASSES)


def _fashion_mnist_torchvision(split: str, root: Optional[str]) -> ArrayDataset:
    from torchvision.datasets import FashionMNIST

    root = root or os.path.join(os.path.expanduser("~"), ".cache", "lolvit")
    try:
        ds = FashionMNIST(root, train=split == "train", download=True)
    except Exception as e:  # any network/IO failure of the downloader
        raise FileNotFoundError(f"Fashion-MNIST download failed ({type(e).__name__}: {e})") from None
    return ArrayDataset(ds.data.numpy(), ds.targets.tolist(), FASHION_MNIST_CLASSES)


def build_dataset(
    data: str, split: str, transform: Optional[Callable] = None, img_size: int = 64,
    data_root: Optional[str] = None, classes: Optional[List[str]] = None, download: bool = False,
) -> Dataset:
    """``data`` is ``digits``, ``fashion-mnist`` or a folder with ``train/`` and ``val/`` class folders.

    Nothing is downloaded unless ``download`` (Fashion-MNIST through torchvision)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if data == "digits":
        ds = _digits(split, img_size)
    elif data == "fashion-mnist":
        ds = _fashion_mnist(split, data_root, download)
    else:
        root = Path(data)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset {data!r} is neither one of {BUILTIN} nor an existing folder")
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root} has no {split}/ folder (expected {root}/train/<class>/ and {root}/val/<class>/)")
        ds = ImageFolderDataset(root / split, classes=classes)
    if len(ds) == 0:
        raise ValueError(f"dataset {data!r} split {split!r} is empty")
    ds.transform = transform
    return ds


def build_transforms(cfg) -> Tuple[Callable, Callable]:
    """(train, val) transforms of a :class:`~.train.TrainConfig`: PIL image -> normalised tensor.

    ``train_crop="rrc"``: timm's ImageNet pipeline (random-resized crops of ``crop_scale``, flips,
    RandAugment, random erasing). ``train_crop="pad"``: resize the short side and centre-crop to
    ``img_size`` as in evaluation, then a random ``img_size`` crop of the image zero-padded by
    ``crop_padding`` pixels (shifts), flips, RandAugment, random erasing: for small, centred images
    such as Fashion-MNIST. Evaluation: timm's resize + centre crop with ``val_crop_pct``."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import str_to_pil_interp
    from torchvision import transforms as T

    size = cfg.img_size
    mean = tuple(cfg.mean or IMAGENET_DEFAULT_MEAN)
    std = tuple(cfg.std or IMAGENET_DEFAULT_STD)
    val_tf = create_transform(size, is_training=False, crop_pct=cfg.val_crop_pct, interpolation=cfg.interpolation,
                              mean=mean, std=std)
    if cfg.train_crop == "rrc":
        train_tf = create_transform(
            size, is_training=True, scale=tuple(cfg.crop_scale), hflip=cfg.hflip, vflip=0.0, color_jitter=None,
            auto_augment=cfg.randaug, interpolation=cfg.interpolation, re_prob=cfg.re_prob, mean=mean, std=std,
        )
        return train_tf, val_tf
    interp = str_to_pil_interp(cfg.interpolation)
    steps: List[Callable] = [T.Resize(size, interpolation=interp), T.CenterCrop(size),
                             T.RandomCrop(size, padding=cfg.crop_padding)]
    if cfg.hflip > 0:
        steps.append(T.RandomHorizontalFlip(cfg.hflip))
    if cfg.randaug:
        img_mean = tuple(min(255, round(255 * m)) for m in mean)
        steps.append(rand_augment_transform(cfg.randaug, dict(translate_const=int(size * 0.45), img_mean=img_mean,
                                                                interpolation=interp)))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if cfg.re_prob > 0:
        steps.append(RandomErasing(cfg.re_prob, mode="const", device="cpu"))
    return T.Compose(steps), val_tf


def subset_indices(targets: Sequence[int], n: Optional[int], seed: int = 0) -> List[int]:
    """A fixed class-stratified subset of ``n`` indices (all indices when n is None or too large)."""
    total = len(targets)
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise ValueError(f"subset size must be positive, got {n}")
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    order = []
    per_class = [rng.permutation(np.flatnonzero(targets == c)).tolist() for c in np.unique(targets)]
    while len(order) < n:
        for lst in per_class:
            if lst and len(order) < n:
                order.append(lst.pop())
    return sorted(order)
