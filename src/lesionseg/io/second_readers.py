"""Second readers (classes in SECOND_READERS) for what Pillow reads wrongly or not at all, as datasets
ship it.

- TIFF with more than 8 bits per sample, float samples, or that Pillow cannot open (float RGB, odd tag
  combinations, some compressions): read with `tifffile` (installed with scikit-image), first page only.
- PNG with 16-bit colour (Pillow keeps only the high byte, so 12-bit data turns almost black): OpenCV.
- Anything else Pillow fails on: OpenCV's decoder as a last try.

High-depth data is stretched min-max to 0..255 per image over all its channels, as 16-bit grayscale always
was: 12-bit data stored in 16 bits is common, and a fixed `>> 8` would darken it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def head(source, n: int = 32) -> bytes:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return f.read(n)
    pos = source.tell()
    source.seek(0)  # from the start, wherever a first reader left the stream
    data = source.read(n)
    source.seek(pos)
    return data


def all_bytes(source) -> bytes:
    return Path(source).read_bytes() if isinstance(source, (str, Path)) else head(source, 1 << 62)


def is_tiff(source) -> bool:
    return head(source, 4) in TIFF_MAGIC


def is_high_depth_png(source) -> bool:
    """16-bit RGB(A) PNG: IHDR's bit depth (byte 24) is 16 and its colour type (byte 25) is 2 or 6."""
    h = head(source, 26)
    return h[:8] == PNG_MAGIC and len(h) >= 26 and h[24] == 16 and h[25] in (2, 6)


def needs_tifffile(img) -> bool:
    """A TIFF that Pillow opened but would narrow: more than 8 bits per colour sample, or float samples."""
    if getattr(img, "format", None) != "TIFF" or img.mode.startswith(("I", "F")):
        return False  # single-channel high-depth modes are kept exactly by Pillow
    tags = img.tag_v2
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    fmt = tags.get(339, (1,))
    fmt = fmt if isinstance(fmt, tuple) else (fmt,)
    return max(bits) > 8 or 3 in fmt


def stretch(arr: np.ndarray) -> np.ndarray:
    """Any numeric array → uint8 by min-max over all finite values (NaN/inf become the minimum)."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, arr[finite].min() if finite.any() else 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_rgb(arr: np.ndarray, invert: bool = False) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) arrays of any depth → RGB uint8; alpha composited on white."""
    alpha = None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        alpha, arr = arr[..., -1], arr[..., :-1]
    gray = arr.ndim == 2 or arr.shape[2] == 1
    rgb = stretch(arr.reshape(arr.shape[:2]) if gray else arr[..., :3])
    if invert:
        rgb = 255 - rgb
    if gray:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if alpha is not None:
        a = stretch(alpha).astype(np.float32)[..., None] / 255.0
        rgb = np.round(rgb * a + 255.0 * (1 - a)).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def read_tiff(source, max_pixels: int) -> np.ndarray:
    """The first page of a TIFF as RGB uint8, through tifffile. Raises ValueError with the reason."""
    import tifffile

    data = source if isinstance(source, (str, Path)) else io.BytesIO(all_bytes(source))
    with tifffile.TiffFile(data) as tif:
        page = tif.pages.first
        shape = dict(zip(page.axes, page.shape))
        if shape.get("Y", 1) * shape.get("X", 1) > max_pixels:
            raise OverflowError(f"{shape.get('X')}x{shape.get('Y')}")
        if page.photometric not in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB; palette/YCbCr/CMYK: not here
            raise ValueError(f"photometric {page.photometric!r} is left to Pillow")
        arr = page.asarray()
        axes = page.axes
    if "S" in axes and axes.index("S") < axes.index("Y"):  # planar configuration: samples first
        arr = np.moveaxis(arr, axes.index("S"), -1)
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim not in (2, 3):
        raise ValueError(f"unexpected TIFF layout {page.axes} {arr.shape}")
    return to_rgb(arr, invert=page.photometric == 0)


def read_opencv(source, max_pixels: int) -> np.ndarray:
    """An image OpenCV decodes, at full depth, as RGB uint8. Raises ValueError when it cannot."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(all_bytes(source), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("OpenCV cannot decode it either")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise OverflowError(f"{arr.shape[1]}x{arr.shape[0]}")
    if arr.ndim == 3 and arr.shape[2] >= 3:  # OpenCV's channel order is BGR(A)
        arr = arr[..., [2, 1, 0, *range(3, arr.shape[2])]]
    return to_rgb(arr)


class SecondReader:
    """A decoder tried after Pillow, for the content it `claims` (io/photo.py walks SECOND_READERS)."""

    name = ""

    def claims(self, source) -> bool:
        return True

    def read(self, source, max_pixels: int) -> np.ndarray:
        raise NotImplementedError


class TiffReader(SecondReader):
    """High-depth, float or odd TIFFs, through tifffile."""

    name = "tiff"

    def claims(self, source) -> bool:
        return is_tiff(source)

    def read(self, source, max_pixels: int) -> np.ndarray:
        return read_tiff(source, max_pixels)


class OpenCVReader(SecondReader):
    """Anything OpenCV decodes (16-bit colour PNGs among them): the last try."""

    name = "opencv"

    def read(self, source, max_pixels: int) -> np.ndarray:
        return read_opencv(source, max_pixels)


# In the order they are tried; a new fallback decoder is one class here.
SECOND_READERS: list[SecondReader] = [TiffReader(), OpenCVReader()]

