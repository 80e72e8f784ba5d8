"""How a network covers an input, separate from the network (MONAI's inferers): probabilities on the
input's own grid, which thresholds, clean-up and measurement take from there.

- `WholeImage`: a 2-D image resized to the network's input size (or fed at its own size), with TTA views;
  logits resized back (bilinear) before the activation, which keeps boundaries sharper than resizing
  probabilities. TTA: every scale × {identity, horizontal flip, vertical flip}; each view's logits are
  un-flipped, resized, turned into probabilities, and the probabilities averaged (so one over-confident
  view cannot dominate).
- Volumes (`volume_coverage.py`): `Slicing` says how a 2-D network cuts a volume into slices (MONAI's
  SliceInferer, nnU-Net's `2d`), `Patching` how a 3-D network covers it with patches in a sliding window
  (nnU-Net's `3d_fullres`); both are recorded in the model file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import cv2
import numpy as np

from ..data.preprocess import resize_to, sigmoid, softmax
from ..errors import UserError
from ..io.volumes import Volume
from ..labels import IGNORED, Labels
from ..orientation import Canonical

# in-plane spacings within this fraction of the model's are used as they are
SPACING_TOLERANCE = 0.01


class WholeImage:
    """A 2-D image covered whole by the backend's network: (see the module's note)."""

    def __init__(self, backend, transform):
        self.backend, self.transform, self.labels = backend, transform, backend.labels
        self.image_size = backend.image_size

    def views(self, tta: bool, scales) -> list[tuple[int, int | None]]:
        """(input size, flip axis) pairs; flip axis is numpy's on HWC (1 = horizontal, 0 = vertical)."""
        if not tta:
            return [(self.image_size, None)]
        if self.image_size == 0:  # slices fed at their own size: flips only
            return [(0, f) for f in (None, 1, 0)]
        sizes = sorted({max(8, int(round(self.image_size * s))) for s in scales})
        return [(s, f) for s in sizes for f in (None, 1, 0)]

    def activation(self, logit: np.ndarray, height: int, width: int) -> np.ndarray:
        """One image's (K, h, w) logits → probabilities at (H, W): one structure's (H, W) map, or (C, H, W)
        for several (an exclusive model's structure channels of its softmax; background is the rest)."""
        if not self.labels.multi:
            return sigmoid(resize_to(np.ascontiguousarray(logit[0]), height, width))
        resized = np.stack([resize_to(np.ascontiguousarray(c), height, width) for c in logit])
        return softmax(resized)[1:] if self.labels.mode == "exclusive" else sigmoid(resized)

    def probabilities(self, images, tta: bool, scales, batch_size: int) -> list[np.ndarray]:
        """Each image's probabilities (float32) at its own size, `batch_size` images per network call."""
        out: list[np.ndarray] = []
        views = self.views(tta, scales)
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            acc: list[Any] = [None] * len(chunk)
            for size, flip in views:
                src = [im if flip is None else np.flip(self.transform.resize(im, size), flip) for im in chunk]
                logits = self.backend(self.transform.batch(src, size))
                for i, (im, logit) in enumerate(zip(chunk, logits)):
                    if flip is not None:
                        logit = np.flip(logit, flip + 1)  # (K, H, W): HWC's axis + 1
                    prob = self.activation(logit, im.shape[0], im.shape[1])
                    acc[i] = prob if views.index((size, flip)) == 0 else acc[i] + prob
            out.extend((a if len(views) == 1 else a / len(views)).astype(np.float32, copy=False) for a in acc)
        return out

    def clicked(self, image: np.ndarray, clicks, prompt_channels: int) -> np.ndarray:
        """One image's probabilities given a user's clicks: `clicks` (structure index, clicks.Click at the
        image's (row, col)), drawn as disks on the network's input grid, as training draws them."""
        from ..clicks import Click, click_maps, click_radius

        batch = self.transform.batch([image], self.image_size)
        (h, w), grid = image.shape[:2], batch.shape[2:]
        maps = np.zeros((1, prompt_channels, *grid), np.float32)
        radius = click_radius(grid)
        for k, click in clicks:
            at = tuple(min(max(int(round((p + 0.5) * g / n - 0.5)), 0), g - 1)
                       for p, g, n in zip(click.position, grid, (h, w)))
            disk = click_maps(grid, [Click(at, click.positive)], radius)
            maps[0, 2 * k:2 * k + 2] = np.maximum(maps[0, 2 * k:2 * k + 2], disk)
        logits = self.backend(np.concatenate([batch, maps], axis=1))
        return self.activation(logits[0], h, w).astype(np.float32, copy=False)


@dataclasses.dataclass(frozen=True)
class Slicing:
    """How a model cuts volumes into network inputs (the model file's `preprocess.slicing`)."""

    axis: int | None = None  # None: each volume's coarsest axis (ties: the first), as nnU-Net's 2d picks
    context: int = 1  # k neighbouring slices as channels (odd; edges repeat the outer slice)
    spacing_mm: tuple[float, float] | None = None  # in-plane spacing the network was trained at
    channels: int = 3  # network input channels: k, or 3 for k = 1 (the slice repeated for an RGB encoder)

    def __post_init__(self):
        if self.context < 1 or self.context % 2 == 0:
            raise UserError(f"data.slice_context must be an odd number of slices, not {self.context}")
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise UserError(f"data.slice_axis must be 0, 1 or 2, not {self.axis}")
        if self.channels not in (self.context, 3) or (self.channels == 3 and self.context not in (1, 3)):
            raise UserError(
                f"data.slice_context {self.context} needs model.in_channels {self.context} "
                f"(it is {self.channels})"
            )

    def axis_for(self, spacing) -> int:
        return self.axis if self.axis is not None else int(np.argmax(np.round(np.asarray(spacing), 3)))

    @staticmethod
    def plane_spacing(spacing, axis: int) -> tuple[float, float]:
        s = [float(v) for i, v in enumerate(spacing) if i != axis]
        return s[0], s[1]

    def plane_size(self, shape, spacing, axis: int) -> tuple[int, int]:
        """(rows, columns) of a slice once resampled to the model's in-plane spacing."""
        rows, cols = (n for i, n in enumerate(shape) if i != axis)
        if self.spacing_mm is None:
            return rows, cols
        sr, sc = self.plane_spacing(spacing, axis)
        tr, tc = self.spacing_mm
        if abs(sr / tr - 1) <= SPACING_TOLERANCE and abs(sc / tc - 1) <= SPACING_TOLERANCE:
            return rows, cols
        return max(1, round(rows * sr / tr)), max(1, round(cols * sc / tc))

    def images(
        self, normalised: np.ndarray, axis: int, size: tuple[int, int] | None = None, indices=None
    ) -> Iterator[np.ndarray]:
        """Each slice's network input (rows, columns, channels) float32, in slice order."""
        stack = np.moveaxis(normalised, axis, 0)
        n, half = stack.shape[0], self.context // 2
        for i in range(n) if indices is None else indices:
            picked = [min(max(j, 0), n - 1) for j in range(i - half, i + half + 1)]
            image = np.stack([stack[j] for j in picked], axis=-1).astype(np.float32, copy=False)
            if size is not None and image.shape[:2] != size:
                image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                image = image[..., None] if image.ndim == 2 else image
            if self.channels == 3 and self.context == 1:
                image = np.repeat(image, 3, axis=-1)
            yield np.ascontiguousarray(image)

    def cut(self, volume: Volume, truth: np.ndarray, intensity,
            labels: Labels) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
        """A labelled volume's training slices, cut as inference cuts it: (the axis, each slice's network
        input and its label channels)."""
        canonical = Canonical(volume.affine)  # the anatomical axes inference slices along
        spacing = canonical.spacing(volume.spacing)
        axis = self.axis_for(spacing)
        normalised = intensity.apply(canonical.forward(volume.array))
        size = self.plane_size(normalised.shape, spacing, axis)
        stack = np.moveaxis(canonical.forward(truth), axis, 0)
        out = []
        for i, image in enumerate(self.images(normalised, axis, size)):
            lab = stack[i]
            if lab.shape != size:
                lab = cv2.resize(lab, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            out.append((image, label_channels(lab, labels)))
        return axis, out

    @classmethod
    def fit(cls, volumes: list[Volume], axis: int | None, context: int, channels: int,
            spacing_mm: float | None = None) -> "Slicing":
        """The slicing of a training set: its axis rule, context, and the median in-plane spacing of its
        volumes (or `spacing_mm`)."""
        probe = cls(axis, context, None, channels)
        if spacing_mm is not None:
            return dataclasses.replace(probe, spacing_mm=(spacing_mm, spacing_mm))
        spacings = [Canonical(v.affine).spacing(v.spacing) for v in volumes]
        planes = [cls.plane_spacing(s, probe.axis_for(s)) for s in spacings]
        median = np.median(np.asarray(planes, float), axis=0)
        return dataclasses.replace(probe, spacing_mm=(round(float(median[0]), 4), round(float(median[1]), 4)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "context": self.context,
            "channels": self.channels,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Slicing":
        spacing = values.get("spacing_mm")
        axis = values.get("axis")
        return cls(
            None if axis is None else int(axis),
            int(values.get("context", 1)),
            tuple(float(v) for v in spacing) if spacing else None,
            int(values.get("channels", 3)),
        )


def label_channels(label_slice: np.ndarray, labels: Labels) -> np.ndarray:
    """(rows, cols, C) uint8: 1 where the voxel holds structure k, IGNORED everywhere the ignore value is."""
    out = np.stack([label_slice == s.value for s in labels.structures], axis=-1).astype(np.uint8)
    if labels.ignore_value is not None:
        out[label_slice == labels.ignore_value] = IGNORED
    return out


def label_values(labels: Labels) -> np.ndarray:
    """Channel k's label value in the label volume (k = 0 is background)."""
    return np.asarray([0, *(s.value for s in labels.structures)], np.int64)


def view_axis(preprocessing, spacing) -> int:
    """The axis a volume's pictures are drawn across: the model's slice axis, or (patches) the coarsest."""
    return (preprocessing.slicing or Slicing()).axis_for(spacing)


@dataclasses.dataclass(frozen=True)
class Patching:
    """How a 3-D model covers volumes (the model file's `preprocess.patching`): turned to the closest RAS+
    order, resampled to `spacing_mm`, covered by `patch`-sized windows overlapping by `overlap`."""

    patch: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    overlap: float = 0.5
    channels: int = 1

    def grid(self, shape, spacing) -> tuple[int, int, int]:
        """The volume's shape once resampled to the model's spacing."""
        return grid_shape(shape, spacing, self.spacing_mm)

    def to_dict(self) -> dict[str, Any]:
        return {"patch": list(self.patch), "spacing_mm": list(self.spacing_mm), "overlap": self.overlap,
                "channels": self.channels}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Patching":
        return cls(tuple(int(v) for v in values["patch"]), tuple(float(v) for v in values["spacing_mm"]),
                   float(values.get("overlap", 0.5)), int(values.get("channels", 1)))


def grid_shape(shape, spacing, target) -> tuple[int, ...]:
    """A volume's shape once resampled from `spacing` to `target` (axes within 1 % are kept)."""
    return tuple(n if abs(s / t - 1) <= SPACING_TOLERANCE else max(1, round(n * s / t))
                 for n, s, t in zip(shape, spacing, target))


def resample(array: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """`array`'s last three axes resampled to `shape` (voxel centres aligned as torch's align_corners=False
    aligns them; order 0 for labels, 1 for intensities and logits); a matching shape is returned as is."""
    from scipy import ndimage

    shape = tuple(int(n) for n in shape)
    if array.shape[-3:] == shape:
        return array
    zoom = (1,) * (array.ndim - 3) + tuple(n / m for n, m in zip(shape, array.shape[-3:]))
    return ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True, prefilter=False)


def resampled_rows(array: np.ndarray, shape, start: int, stop: int) -> np.ndarray:
    """Rows `start:stop` (of the first spatial axis) of `array` (K, *grid) linearly resampled to `shape`, as
    `resample` would give them (to float32 rounding), without resampling the whole: the rows interpolated
    between their two neighbours on the grid, then each plane by OpenCV (half-voxel centres, edges
    repeated)."""
    k, rows = array.shape[0], array.shape[1]
    if tuple(array.shape[1:]) == tuple(shape):
        return array[:, start:stop]
    where = np.clip((np.arange(start, stop) + 0.5) * rows / shape[0] - 0.5, 0, rows - 1)
    below = np.floor(where).astype(int)
    above = np.minimum(below + 1, rows - 1)
    w = (where - below).astype(np.float32)[None, :, None, None]
    planes = array[:, below] * (1 - w) + array[:, above] * w
    if planes.shape[2:] == tuple(shape[1:]):
        return planes
    out = np.empty((k, stop - start, shape[1], shape[2]), np.float32)
    for c in range(k):
        for i in range(stop - start):
            out[c, i] = cv2.resize(planes[c, i], (shape[2], shape[1]), interpolation=cv2.INTER_LINEAR)
    return out
