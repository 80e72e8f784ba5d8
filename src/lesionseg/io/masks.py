"""Reading binary masks of any common format as bool HxW (JPEG compression noise handled, soft masks
refused unless a threshold is given); every failure names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .photo import open_image, pixel_array

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
    img = open_image(path)
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "PA"):
        arr = np.asarray(img.convert("RGB"))
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            if threshold is None:
                raise UserError(f"{path}: mask has colour (channels differ); expected a grayscale 0/255 mask")
            arr = np.asarray(img.convert("L"))
        else:
            arr = arr[..., 0]
    else:
        arr = pixel_array(img)
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



def read_label_map(path: str | Path) -> np.ndarray:
    """An index label map as an integer (H, W) array: 8- or 16-bit grayscale, or a palette PNG read as its
    indices (never its colours). Colour images are refused: their colours are not labels."""
    path = Path(path)
    img = open_image(path)
    if img.mode == "P":
        return np.asarray(img)
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        arr = np.asarray(img.convert("RGB"))
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise UserError(f"{path}: label map has colour; expected an index map (8/16-bit grey or palette)")
        return arr[..., 0]
    arr = pixel_array(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"{path}: label map has non-integer values ({arr.dtype})")
    return arr
