"""Patches in a sliding window over a whole volume, blended by Gaussian importance: the windows, their
weights and the padding are MONAI's `sliding_window_inference` (gaussian mode; `tests/test_sliding_window.py`
compares the two), written on numpy so that ONNX Runtime runs it without torch.

The weights are held once for all channels, and the blended outputs in float32 (or float16, `dtype`, where
memory is short: a 512×512×300 CT with two output channels then holds about 0.6 GB beside its own voxels,
whatever the patch)."""

from __future__ import annotations

from typing import Callable

import numpy as np

SIGMA_SCALE = 0.125  # of the patch side: nnU-Net's and MONAI's Gaussian


def importance_map(patch, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """float32 weights over a patch, 1 at its centre, falling as a Gaussian, never below 1e-3."""
    out = np.ones((), np.float32)
    for n in patch:
        x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x**2 / np.float32(-2 * (n * sigma_scale) ** 2)).astype(np.float32)
        out = out[..., None] * g
    return np.maximum(out, max(float(out.min()), 1e-3)).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Where windows of `patch` start along an axis of `size` (≥ patch): every `patch * (1 - overlap)`,
    the last one moved back to end at the edge."""
    if patch == size:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    count = next(i for i in range(size) if i * step + patch >= size) + 1
    return [min(i * step, size - patch) for i in range(count)]


def windows(shape, patch, overlap: float) -> list[tuple[slice, ...]]:
    starts = [window_starts(n, p, overlap) for n, p in zip(shape, patch)]
    grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape))
    return [tuple(slice(s, s + p) for s, p in zip(corner, patch)) for corner in grid]


def _mirrored(predict, batch: np.ndarray, mirror_axes) -> np.ndarray:
    """The mean of the outputs over every combination of flips along `mirror_axes` (spatial, 0-based)."""
    out = predict(batch).astype(np.float32)
    flips = [()]
    for axis in mirror_axes:
        flips += [f + (axis,) for f in flips]
    for f in flips[1:]:
        dims = tuple(a + 2 for a in f)
        out += np.flip(predict(np.ascontiguousarray(np.flip(batch, dims))), dims)
    return out / len(flips)


def sliding_window(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, patch,
                   overlap: float = 0.5, batch_size: int = 1, mirror_axes=(),
                   progress: Callable[[int, int], None] | None = None, dtype=np.float32) -> np.ndarray:
    """`predict` (N, C, *patch) float32 → (N, K, *patch) over `image` (C, *spatial): (K, *spatial) in `dtype`.

    An image smaller than the patch along an axis is padded with zeros on both sides (as MONAI pads), and
    the output cropped back."""
    spatial = image.shape[1:]
    patch = tuple(int(p) for p in patch)
    pads = [(max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(spatial, patch)]
    if any(sum(p) for p in pads):
        image = np.pad(image, [(0, 0), *pads])
    shape = image.shape[1:]
    weight = importance_map(patch)
    boxes = windows(shape, patch, overlap)
    blended: np.ndarray | None = None
    total = np.zeros(shape, np.float32)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        batch = np.stack([image[(slice(None), *box)] for box in chunk]).astype(np.float32, copy=False)
        out = _mirrored(predict, batch, mirror_axes) * weight
        if blended is None:
            blended = np.zeros((out.shape[1], *shape), dtype)
        for box, o in zip(chunk, out):
            blended[(slice(None), *box)] += o.astype(dtype)
            total[box] += weight
        if progress is not None:
            progress(min(start + batch_size, len(boxes)), len(boxes))
    for z in range(shape[0]):  # a slab at a time: no float32 copy of the whole output
        blended[:, z] = (blended[:, z].astype(np.float32) / total[z]).astype(dtype)
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, spatial))
    return blended[(slice(None), *crop)]
