"""Reading images and masks of any common format into one representation, and writing atomically.

Images become RGB uint8 HxWx3 at their original size; masks become bool HxW. Every reader failure is a
UserError naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# A 40-megapixel photo is ~120 MB as RGB; beyond this limit refuse rather than risk memory exhaustion.
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
_UMASK = os.umask(0)
os.umask(_UMASK)


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now, so truncated files fail here and not later
    except UnidentifiedImageError:
        raise UserError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: image too large (over {MAX_PIXELS:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot decode image ({exc})") from None
    return img


def _to_float_gray_or_rgb(img: Image.Image) -> np.ndarray:
    """Pixel data as a numpy array without losing depth (16-bit, 32-bit int, float)."""
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.uint16)
    return np.asarray(img)


def _rescale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Stretch high-depth data to 0..255. Min-max per image: 12-bit data stored in 16-bit is common."""
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Any jpg/png/bmp/tif as RGB uint8 (H, W, 3), EXIF orientation applied, original size kept."""
    path = Path(path)
    img = _open(path)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not make a valid picture unreadable
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _rescale_to_uint8(_to_float_gray_or_rgb(img))
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: a transparent background reads as skin-free background, not black.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    else:
        rgb = np.asarray(img.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UserError(f"{path}: unsupported image layout {rgb.shape}")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def read_mask(path: str | Path, threshold: int | None = None) -> np.ndarray:
    """A binary mask as bool (H, W).

    Accepted as-is: two levels {0, v} (0/255, 0/1, 0/65535) or a single level. More levels (a JPEG mask,
    a soft mask) are refused unless `threshold` is given, then foreground is `value > threshold`.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "PA"):
        arr = np.asarray(img.convert("RGB"))
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            if threshold is None:
                raise UserError(f"{path}: mask has colour (channels differ); expected a grayscale 0/255 mask")
            arr = np.asarray(img.convert("L"))
        else:
            arr = arr[..., 0]
    else:
        arr = _to_float_gray_or_rgb(img)
        if arr.ndim == 3:
            arr = arr[..., 0]
    if threshold is not None:
        return arr > threshold
    levels = np.unique(arr)
    if len(levels) > 2 or (len(levels) == 2 and levels[0] != 0):
        shown = ", ".join(str(v) for v in levels[:6]) + (", ..." if len(levels) > 6 else "")
        raise UserError(
            f"{path}: mask has {len(levels)} levels ({shown}); expected 0/255 or 0/1 "
            "(pass --mask-threshold T to binarise)"
        )
    return arr > 0


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any written file
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 gray or RGB as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Masks are written 0/255 (the ISIC scorer binarises at > 128)."""
    write_png(path, np.where(mask, 255, 0).astype(np.uint8))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
