"""Writers of results: PNG encoding shared by `predict` and the service (so their masks are the same bytes),
masks as 0/255 PNGs, and the DICOM SEG beside a DICOM input (`io.dicom`). Every file goes through
`atomic.atomic_path`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import write_bytes

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


def write_png(path: str | Path, array: np.ndarray, compress_level: int = 6) -> None:
    """Write uint8 gray or RGB as PNG, atomically."""
    write_bytes(path, encode_png(array, compress_level))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    write_png(path, mask_to_uint8(mask))



def label_map(masks: np.ndarray, labels) -> np.ndarray:
    """Exclusive structures' bool (C, ...) masks (2-D or 3-D) → uint8 index map of their declared values."""
    index = np.zeros(masks.shape[1:], np.uint8)
    for mask, structure in zip(masks, labels.structures):
        index[mask] = structure.value
    return index


def encode_label_map(masks: np.ndarray, labels) -> bytes:
    """An index label map PNG with a palette, so that viewers show each structure in its colour while tools
    read the indices."""
    image = Image.fromarray(label_map(masks, labels), mode="P")
    palette = [0, 0, 0] * 256
    for s in labels.structures:
        palette[3 * s.value: 3 * s.value + 3] = s.color
    image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def structure_mask_names(image_id: str, labels) -> list[str]:
    """Overlapping structures' masks: one 0/255 PNG each, `<id>_mask_<structure>.png`."""
    return [f"{image_id}_mask_{name}.png" for name in labels.names]
