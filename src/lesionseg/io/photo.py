"""Photos (jpg, png, bmp, tif) as RGB uint8 HxWx3 at their original size: Pillow first, the second readers
(`second_readers`: tifffile, OpenCV) for what Pillow narrows or cannot open. Every failure is a UserError
naming the file and the problem."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from . import second_readers as readers

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# A 40-megapixel photo is ~120 MB as RGB; beyond this limit refuse rather than risk memory exhaustion.
MAX_PIXELS = 200_000_000


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


def open_image(path: Path) -> Image.Image:
    return _decode(_check_file(path), path)


def _read_rgb(source, label, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> np.ndarray:
    """Pillow first; TIFFs and 16-bit colour PNGs that Pillow narrows or cannot read go to second_readers."""
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
    reasons = []
    for reader in (r for r in readers.SECOND_READERS if r.claims(source)):
        try:
            return reader.read(source, max_pixels)
        except OverflowError as exc:
            raise ImageTooLarge(
                f"{label}: image too large ({exc}; the limit is {max_pixels:,} pixels)"
            ) from None
        except Exception as exc:  # a second reader's own failure: try the next, then report the first
            why = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            reasons.append(f"{reader.name}: {why}")
    if first is not None:
        raise UserError(f"{first} (also tried {'; '.join(reasons)})") from None
    raise UserError(f"{label}: cannot decode image ({'; '.join(reasons)})")


def _decode(source, label, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Open and fully decode `source` (a path or a file object); errors name `label`."""
    # Pillow's own decompression-bomb guard (a process-wide setting) is raised to lesionseg's largest cap,
    # set here on first use rather than at import; each call checks its own `max_pixels` below.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_PIXELS)
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


def pixel_array(img: Image.Image) -> np.ndarray:
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
        gray = readers.stretch(pixel_array(img))
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


