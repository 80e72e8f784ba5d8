"""How a network covers a volume, as probabilities and then labels on the volume's own grid. A volume is
normalised as its model says (intensity.py) and turned to the closest RAS+ order; then

- `SliceCoverage` (MONAI's SliceInferer, nnU-Net's `2d`): cut along its slice axis into 2-D images of k
  neighbouring slices as channels (2.5-D), resampled in-plane to the spacing the model was trained at, each
  covered whole, a batch at a time, and the probabilities put back on each slice's own grid;
- `PatchCoverage` (nnU-Net's `3d_fullres`): resampled to the model's spacing, covered by a sliding window of
  patches blended with Gaussian importance (`sliding_window.py`; mirrored along every axis under TTA), the
  blended logits resampled back and turned into probabilities.

Both yield probabilities a stack of slices at a time (`chunks`), so `segment_volume` streams them into a
uint8 label volume, thresholded or argmaxed per slice and cleaned in 3-D; a caller that only needs labels
never holds the whole volume's probabilities from slices.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import cv2
import numpy as np

from .. import postprocess
from ..data.preprocess import sigmoid, softmax
from ..errors import UserError
from ..io.volumes import Volume
from ..orientation import Canonical
from .coverage import label_values, resample, resampled_rows
from .sliding_window import sliding_window

# A batch of slices holds about this many pixels (one 512² CT slice): small slices go through the network
# many at a time (per-call overhead dominates a 50×40 slice), large ones one at a time (a batch of 717²
# slices, a 0.7 mm CT at a 0.5 mm model, held 2.3 GB of activations).
BATCH_PIXELS = 512 * 512
# and a batch of 3-D patches at most this many voxels: two 40×56×40 hippocampus patches a call, larger
# patches one at a time
BATCH_VOXELS = 2 * 40 * 56 * 40
# Blended logits over this many bytes in float32 are held in float16 instead (a 512×512×300 CT at 3 classes:
# 0.9 GB → 0.5 GB); below it they stay float32, as MONAI's sliding window keeps them.
HALF_ABOVE_BYTES = 256 * 2**20
# A click on a slice also conditions the slices within this distance of it (mm along the slice axis).
CLICK_REACH_MM = 0.0


def _resize_probabilities(prob: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if prob.shape[-2:] == (rows, cols):
        return prob
    if prob.ndim == 2:
        return cv2.resize(prob, (cols, rows), interpolation=cv2.INTER_LINEAR)
    return np.stack([cv2.resize(p, (cols, rows), interpolation=cv2.INTER_LINEAR) for p in prob])


class VolumeCoverage:
    """What every way of covering a volume shares: the checks, the volume normalised and in RAS+ order, and
    `probabilities` and `labels_of` over `chunks` — (slice indices along `axis`, each slice's probabilities
    on its own grid: (rows, cols) for one structure, (C, rows, cols) for several). `progress(done, total)` is
    told after each network call (slices or windows done of the volume's)."""

    def __init__(self, segmenter, volume: Volume, progress: Callable[[int, int], None] | None = None):
        self.progress = progress or (lambda done, total: None)
        labels, pre = segmenter.labels, segmenter.backend.preprocessing
        if not pre.covers_volumes:
            raise UserError(
                f"{volume.source}: {segmenter.weights_path.name} is a model for photos; a volume "
                "needs a model trained on volumes"
            )
        if labels.mode == "overlapping":
            raise UserError(
                f"{volume.source}: the model's structures overlap; a label volume holds one per voxel"
            )
        self.segmenter, self.labels = segmenter, labels
        self.canonical = Canonical(volume.affine)
        self.spacing = self.canonical.spacing(volume.spacing)
        self.normalised = pre.intensity.apply(self.canonical.forward(volume.array))
        self.source_shape = volume.array.shape
        self.axis = 0

    @property
    def stack_shape(self) -> tuple[int, int, int]:
        return np.moveaxis(self.normalised, self.axis, 0).shape

    def chunks(self, tta: bool | None = None) -> Iterator[tuple[range, list[np.ndarray]]]:
        raise NotImplementedError

    def probabilities(self, tta: bool | None = None) -> np.ndarray:
        """Every slice's probabilities, float32 (C, slices, rows, cols) in slice order (C = 1 for one
        structure): what `labels` turns into a label volume, under any post-processing."""
        channels = len(self.labels.structures) if self.labels.multi else 1
        out = np.zeros((channels, *self.stack_shape), np.float32)
        for indices, probs in self.chunks(tta):
            for i, prob in zip(indices, probs):
                out[:, i] = prob if self.labels.multi else prob[None]
        return out

    def labels_of(self, probabilities, post: postprocess.PostprocessConfig) -> np.ndarray:
        """The label volume on the volume's own grid from `chunks(...)` or `probabilities(...)`: each slice
        thresholded (one structure) or argmaxed (exclusive), then cleaned in 3-D."""
        return self.to_source(self.stack_labels(probabilities, post))

    def stack_labels(self, probabilities, post: postprocess.PostprocessConfig) -> np.ndarray:
        """`labels_of` in slice order (`stack_shape`), where a page shows slices and clicks land."""
        if isinstance(probabilities, np.ndarray):
            multi = self.labels.multi
            probabilities = [(range(probabilities.shape[1]),
                              [probabilities[:, i] if multi else probabilities[0, i]
                               for i in range(probabilities.shape[1])])]
        values = label_values(self.labels)
        threshold_only = dataclasses.replace(post, largest_component=False, fill_holes=False, min_area=0,
                                             crf=False)
        out = np.zeros(self.stack_shape, np.uint8)
        zeros = np.zeros((1, *self.stack_shape[1:]), bool)
        for indices, probs in probabilities:
            for i, prob in zip(indices, probs):
                if self.labels.multi:
                    masks = postprocess.apply_structures(prob, threshold_only, self.labels.mode)
                    out[i] = values[np.concatenate([zeros, masks]).argmax(0)]
                else:
                    out[i] = postprocess.threshold(prob, threshold_only.threshold) * values[1]
        return postprocess.clean_volume(out, values[1:], post)

    def to_source(self, stacked: np.ndarray) -> np.ndarray:
        """An array in slice order back on the volume's own grid."""
        return self.canonical.inverse(np.moveaxis(stacked, 0, self.axis))

    def to_stack(self, array: np.ndarray) -> np.ndarray:
        """An array on the volume's own grid (a truth label map) in slice order: `to_source` undone."""
        return np.moveaxis(self.canonical.forward(array), self.axis, 0)

    def stack_position(self, voxel) -> tuple[int, int, int]:
        """Where voxel `voxel` of the volume's own array lands in slice order: (slice, row, col)."""
        where = self.canonical.forward_index(voxel, self.source_shape)
        return tuple(where[a] for a in [self.axis] + [a for a in range(3) if a != self.axis])

    def display_slice(self, index: int) -> np.ndarray:
        """Slice `index` in slice order as uint8 grey for a page: the volume's 0.5-99.5 percentiles of the
        normalised intensities stretched to 0-255."""
        if not hasattr(self, "_window"):
            self._window = np.percentile(self.normalised, (0.5, 99.5))
        low, high = self._window
        plane = np.take(self.normalised, index, axis=self.axis)
        return np.clip((plane - low) * (255.0 / max(high - low, 1e-6)), 0, 255).astype(np.uint8)


class SliceCoverage(VolumeCoverage):
    """A 2-D network's: each slice along the model's axis (with its k-slice context) resampled in-plane to
    the model's spacing, a batch of slices per network call, probabilities resized back."""

    def __init__(self, segmenter, volume: Volume, progress: Callable[[int, int], None] | None = None):
        super().__init__(segmenter, volume, progress)
        self.slicing = segmenter.backend.preprocessing.slicing
        self.axis = self.slicing.axis_for(self.spacing)
        self.size = self.slicing.plane_size(self.normalised.shape, self.spacing, self.axis)
        self.batch = max(1, BATCH_PIXELS // max(1, self.size[0] * self.size[1]))

    def chunks(self, tta: bool | None = None) -> Iterator[tuple[range, list[np.ndarray]]]:
        n, (rows, cols) = self.stack_shape[0], self.stack_shape[1:]
        for start in range(0, n, self.batch):
            indices = range(start, min(start + self.batch, n))
            images = list(self.slicing.images(self.normalised, self.axis, self.size, indices))
            probs = self.segmenter.predict_batch(images, tta=tta, batch_size=self.batch)
            self.progress(indices.stop, n)
            yield indices, [_resize_probabilities(p, rows, cols) for p in probs]


    def clicked(self, probabilities: np.ndarray, clicks) -> np.ndarray:
        """`probabilities` (as `probabilities()` gives them) with each slice a click reaches predicted again
        with the clicks that reach it: `clicks` are (structure index, clicks.Click at (slice, row, col) in
        slice order, `stack_position`). The network's click channels belong to the middle slice of its
        context, so a click conditions its own slice, and the slices within CLICK_REACH_MM of it along the
        slice axis at the same in-plane point (a structure moves little between thin slices)."""
        from ..clicks import Click

        n, rows, cols = self.stack_shape
        reach = int(CLICK_REACH_MM / max(float(self.spacing[self.axis]), 1e-6))
        by_slice: dict[int, list] = {}
        for k, click in clicks:
            s, r, c = click.position
            on_plane = (min(int((r + 0.5) * self.size[0] / rows), self.size[0] - 1),
                        min(int((c + 0.5) * self.size[1] / cols), self.size[1] - 1))
            for t in range(max(0, s - reach), min(n, s + reach + 1)):
                by_slice.setdefault(t, []).append((k, Click(on_plane, click.positive)))
        out = probabilities.copy()
        for s, on_slice in by_slice.items():
            (image,) = self.slicing.images(self.normalised, self.axis, self.size, [s])
            prob = self.segmenter.whole.clicked(image, on_slice, self.segmenter.click_channels())
            prob = _resize_probabilities(prob, rows, cols)
            out[:, s] = prob if self.labels.multi else prob[None]
        return out


def segment_volume(segmenter, volume: Volume,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The label volume (uint8 values of the model's structures, 0 background) on `volume`'s grid, slices
    streamed through the network a batch at a time (only the uint8 labels are held whole). Overlapping
    structures cannot share one label map: such models are refused."""
    coverage = volume_coverage(segmenter, volume, progress)
    return coverage.labels_of(coverage.chunks(), segmenter.post)


class PatchCoverage(VolumeCoverage):
    """A 3-D network's: the volume resampled to the model's spacing, a sliding window of patches (mirrored
    along every axis under TTA), the blended logits resampled back and activated a slab of slices at a
    time."""

    SLAB = 16  # slices activated at a time

    def __init__(self, segmenter, volume: Volume, progress: Callable[[int, int], None] | None = None):
        super().__init__(segmenter, volume, progress)
        self.patching = segmenter.backend.preprocessing.patching
        self.grid = self.patching.grid(self.normalised.shape, self.spacing)

    def logits(self, tta: bool, clicks: np.ndarray | None = None) -> np.ndarray:
        """(K, *grid): the network's blended logits at the model's spacing, float32, or float16 for a grid
        whose float32 logits would pass HALF_ABOVE_BYTES. `clicks`: a promptable network's click channels
        on the grid, read beside the image."""
        image = resample(self.normalised.astype(np.float32, copy=False), self.grid, order=1)[None]
        if clicks is not None:
            image = np.concatenate([image, clicks])
        patch = self.patching.patch
        classes = len(self.labels.structures) + (self.labels.mode == "exclusive")
        half = classes * int(np.prod(self.grid)) * 4 > HALF_ABOVE_BYTES
        return sliding_window(self.segmenter.backend, image, patch, self.patching.overlap,
                              batch_size=max(1, BATCH_VOXELS // int(np.prod(patch))),
                              mirror_axes=(0, 1, 2) if tta else (), progress=self.progress,
                              dtype=np.float16 if half else np.float32)

    def chunks(self, tta: bool | None = None) -> Iterator[tuple[range, list[np.ndarray]]]:
        tta = self.segmenter.tta if tta is None else tta
        return self._activated(self.logits(bool(tta)))

    def _activated(self, logits: np.ndarray) -> Iterator[tuple[range, list[np.ndarray]]]:
        shape = self.normalised.shape
        for start in range(0, shape[0], self.SLAB):  # back on the volume's grid a slab at a time
            slab = resampled_rows(logits, shape, start, min(start + self.SLAB, shape[0]))
            slab = slab.astype(np.float32, copy=False)  # float16 logits are activated in float32
            if not self.labels.multi:
                probs = list(sigmoid(slab[0]))
            else:
                p = softmax(slab)[1:] if self.labels.mode == "exclusive" else sigmoid(slab)
                probs = [p[:, i] for i in range(p.shape[1])]
            yield range(start, start + slab.shape[1]), probs

    def clicked(self, probabilities: np.ndarray, clicks) -> np.ndarray:
        """The volume's probabilities predicted again with `clicks` ((structure index, clicks.Click at
        (slice, row, col) in slice order) as balls in the network's click channels: a 3-D network carries
        each click to every slice its receptive field spans. `probabilities` (without clicks) are not
        needed: the whole volume changes."""
        from ..clicks import Click, click_maps, click_radius

        maps = np.zeros((self.segmenter.click_channels(), *self.grid), np.float32)
        radius = click_radius(self.patching.patch)
        for k, click in clicks:
            on_grid = tuple(min(int((i + 0.5) * g / n), g - 1)
                            for i, g, n in zip(click.position, self.grid, self.normalised.shape))
            ball = click_maps(self.grid, [Click(on_grid, click.positive)], radius)
            maps[2 * k:2 * k + 2] = np.maximum(maps[2 * k:2 * k + 2], ball)
        out = np.empty_like(probabilities)
        for indices, probs in self._activated(self.logits(False, maps)):
            for i, prob in zip(indices, probs):
                out[:, i] = prob if self.labels.multi else prob[None]
        return out


def volume_coverage(segmenter, volume: Volume,
                    progress: Callable[[int, int], None] | None = None) -> VolumeCoverage:
    """The model's way of covering `volume`: slices for a 2-D network, patches for a 3-D one."""
    if segmenter.backend.preprocessing.coverage == "patches":
        return PatchCoverage(segmenter, volume, progress)
    return SliceCoverage(segmenter, volume, progress)
