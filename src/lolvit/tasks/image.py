"""Reading images for inference and datasets: any Pillow mode to 8-bit RGB (or L) by value range.

Pillow's plain ``convert("RGB")`` clips 16-bit (``I;16``), 32-bit integer (``I``) and float
(``F``) images to 0..255, which saturates them; :func:`read_image` rescales them instead:

- ``I;16*``: the 16-bit range, ``v / 257``;
- ``I`` and ``F``: values within [0, 1] (float only) are scaled by 255, within [0, 255] kept, within
  [0, 65535] divided by 257, anything else min-max normalised;
- palette, LA, RGBA, CMYK, YCbCr, 1-bit: Pillow's conversion (alpha dropped).

Unreadable files, decompression bombs (more than ``Image.MAX_IMAGE_PIXELS`` pixels) and
directories raise :class:`ImageReadError` (a ValueError) naming the file.
"""
import warnings
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MAX_ASPECT = 16.0
PathLike = Union[str, Path]


class ImageReadError(ValueError):
    """An image file that cannot be decoded (or is too large to decode safely)."""


def to_uint8(im: Image.Image) -> Image.Image:
    """8-bit ``L``/``RGB``/Pillow-convertible image of ``im``; wide modes rescaled by value range."""
    if im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    else:
        return im
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def read_image(path: PathLike, mode: str = "RGB") -> Image.Image:
    """Decode ``path`` into a loaded ``mode`` (``RGB`` or ``L``) 8-bit image.

    Raises FileNotFoundError for a missing file, ImageReadError for a directory, an
    unreadable file or a decompression bomb."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    p = Path(path)
    if p.is_dir():
        raise ImageReadError(f"{p} is a directory, not an image file")
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()
                out = to_uint8(im).convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"cannot read image {p}: too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, ImportError, EOFError, MemoryError) as e:
        # ImportError: an optional Pillow plugin hook (ultralytics' HEIF patch) failed on a non-image
        raise ImageReadError(f"cannot read image {p}: {e}") from None
    return out


def limit_aspect(im: Image.Image, max_ratio: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side of ``im`` to ``max_ratio`` times its short side.

    Resize-then-centre-crop pipelines keep at most the short side's extent of the long side, so
    for images within ``max_ratio`` (all ordinary ones) nothing changes; an extreme strip
    (2 x 100000 px) no longer becomes a gigapixel intermediate when its short side is upscaled."""
    w, h = im.size
    short = max(1, min(w, h))
    limit = int(short * max_ratio)
    if max(w, h) <= limit:
        return im
    if w > h:
        left = (w - limit) // 2
        return im.crop((left, 0, left + limit, h))
    top = (h - limit) // 2
    return im.crop((0, top, w, top + limit))


def list_images(inputs: Sequence[PathLike]) -> List[Path]:
    """Files in ``inputs``: files as given, folders searched recursively for image files (sorted)."""
    out: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in folder {p}")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"image not found: {p}")
    return out
