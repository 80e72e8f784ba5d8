"""Reading images and masks of any common format into one representation, and writing atomically.

Images become RGB uint8 HxWx3 at their original size; masks become bool HxW. Every reader failure is a
UserError naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import io
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


class ImageTooLarge(UserError):
    """More pixels than a reader accepts (decompression-bomb guard); raised before any pixel is decoded."""


class NotAnImage(UserError):
    """Bytes that no image reader recognises (as opposed to an image that fails half-way)."""


def _check_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    return path


def _open(path: Path) -> Image.Image:
    return _decode(_check_file(path), path)


def _read_rgb(source, label, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> np.ndarray:
    """Pillow first; TIFFs and 16-bit colour PNGs that Pillow narrows or cannot read go to readers.py."""
    from . import readers

    try:
        img = _decode(source, label, max_pixels, draft)
    except ImageTooLarge:
        raise
    except UserError as exc:
        if not readers.is_tiff(source):
            raise
        return _second_reader(source, label, max_pixels, exc)
    if readers.needs_tifffile(img) or readers.is_high_depth_png(source):
        return _second_reader(source, label, max_pixels, None)
    return _to_rgb(img, label)


def _second_reader(source, label, max_pixels: int, first: UserError | None) -> np.ndarray:
    from . import readers

    tries = [readers.read_tiff, readers.read_opencv] if readers.is_tiff(source) else [readers.read_opencv]
    reasons = []
    for read in tries:
        try:
            return read(source, max_pixels)
        except OverflowError as exc:
            raise ImageTooLarge(
                f"{label}: image too large ({exc}; the limit is {max_pixels:,} pixels)"
            ) from None
        except Exception as exc:  # a second reader's own failure: try the next, then report the first
            reasons.append(
                f"{read.__name__.removeprefix('read_')}: "
                f"{str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"
            )
    if first is not None:
        raise UserError(f"{first} (also tried {'; '.join(reasons)})") from None
    raise UserError(f"{label}: cannot decode image ({'; '.join(reasons)})")


def _decode(source, label, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Open and fully decode `source` (a path or a file object); errors name `label`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            if img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{label}: image too large ({img.width}x{img.height} = "
                                    f"{img.width * img.height:,} pixels; the limit is {max_pixels:,})")
            if draft:
                img.draft("RGB", (draft, draft))
            img.load()  # decode now, so truncated files fail here and not later
    except UnidentifiedImageError:
        raise NotAnImage(f"{label}: not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{label}: image too large (the limit is {max_pixels:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{label}: cannot decode image ({exc})") from None
    return img


def _to_float_gray_or_rgb(img: Image.Image) -> np.ndarray:
    """Pixel data as a numpy array without losing depth (16-bit, 32-bit int, float)."""
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.uint16)
    return np.asarray(img)


def read_image(path: str | Path) -> np.ndarray:
    """Any jpg/png/bmp/tif as RGB uint8 (H, W, 3), EXIF orientation applied, original size kept."""
    path = _check_file(Path(path))
    return _read_rgb(path, path)


def decode_image(data: bytes, label: str = "upload", max_pixels: int = MAX_PIXELS,
                 draft: int | None = None) -> np.ndarray:
    """`read_image` for bytes in memory (an HTTP upload): the same conversions, errors naming `label`.
    The pixel count is checked from the header, before anything is decoded. `draft`: a JPEG may be decoded
    at 1/2, 1/4 or 1/8 scale, down to no less than this many pixels a side (a preview; much faster)."""
    if not data:
        raise NotAnImage(f"{label}: empty body (0 bytes)")
    return _read_rgb(io.BytesIO(data), label, max_pixels, draft)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image as `decode_image` returns it (EXIF rotation applied), header
    only."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    try:
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap the axes
    except Exception:
        turned = False
    return (height, width) if turned else (width, height)


def _to_rgb(img: Image.Image, label) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not make a valid picture unreadable
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        from .readers import stretch

        gray = stretch(_to_float_gray_or_rgb(img))
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: a transparent background reads as skin-free background, not black.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    else:
        rgb = np.asarray(img.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UserError(f"{label}: unsupported image layout {rgb.shape}")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# JPEG masks as datasets ship them (Kvasir-SEG...): compression leaves grey levels, but nearly every pixel
# stays within this distance of 0 or 255. Such masks are binarised at the middle without being asked.
JPEG_MASK_NOISE = 48
JPEG_MASK_THRESHOLD = 127


def read_mask(path: str | Path, threshold: int | None = None, on_auto=None) -> np.ndarray:
    """A binary mask as bool (H, W).

    Accepted as-is: two levels {0, v} (0/255, 0/1, 0/65535) or a single level. A JPEG whose grey levels are
    compression noise around 0 and 255 (≥ 99.5 % of pixels within JPEG_MASK_NOISE of either) is binarised
    at 127, and `on_auto(path)` is called so that the caller can say so. Other masks with more levels (soft
    masks) are refused unless `threshold` is given, then foreground is `value > threshold`.
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
    if len(levels) > 2 and img.format == "JPEG" and arr.dtype == np.uint8:
        near = (arr <= JPEG_MASK_NOISE) | (arr >= 255 - JPEG_MASK_NOISE)
        if near.mean() >= 0.995:
            if on_auto is not None:
                on_auto(path)
            return arr > JPEG_MASK_THRESHOLD
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


# zlib level for pictures meant to be looked at (overlays): level 1 encodes a 1.4 MP RGB overlay ~4x
# faster than Pillow's default 6 for ~20 % more bytes; at full-size photos the default made PNG encoding
# the slowest step of `predict`, slower than the network. Masks keep the default (small files, byte-stable).
FAST_PNG = 1


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 gray or RGB (or uint16 gray) as PNG bytes: what every PNG we write or serve holds."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """Masks are written 0/255 (the ISIC scorer binarises at > 128)."""
    return np.where(mask, 255, 0).astype(np.uint8)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_png(path: str | Path, array: np.ndarray, compress_level: int = 6) -> None:
    """Write uint8 gray or RGB as PNG, atomically."""
    write_bytes(path, encode_png(array, compress_level))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    write_png(path, mask_to_uint8(mask))


def write_csv(path: str | Path, fieldnames: list[str], rows: list[dict]) -> None:
    """A CSV with a header row, written atomically like every other result file."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
