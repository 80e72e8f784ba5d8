"""A volume's voxels in the closest RAS+ order and back, without resampling: so that a model slices every
volume along the same anatomical axes, whether a scanner stored it LPS (DICOM) or RAS (NIfTI)."""

from __future__ import annotations

import numpy as np


class Canonical:
    """A volume's voxels permuted and flipped (never resampled) into the closest RAS+ order, and back: a
    model slices every volume along the same anatomical axes, whether a scanner stored it LPS (DICOM) or
    RAS (NIfTI). Exact, so labels come back on the input's own grid."""

    def __init__(self, affine: np.ndarray):
        from nibabel import orientations

        self._o = orientations
        self.ornt = orientations.io_orientation(affine)
        self.back = orientations.ornt_transform(orientations.axcodes2ornt(("R", "A", "S")), self.ornt)

    def forward(self, array: np.ndarray) -> np.ndarray:
        """A view where it can be (normalisation makes the one copy)."""
        return self._o.apply_orientation(array, self.ornt)

    def forward_index(self, position, shape) -> tuple[int, ...]:
        """Where voxel `position` of an array of `shape` lands in `forward(array)`."""
        out = [0] * len(shape)
        for axis, (target, flip) in enumerate(self.ornt):
            out[int(target)] = shape[axis] - 1 - position[axis] if flip < 0 else position[axis]
        return tuple(int(v) for v in out)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._o.apply_orientation(array, self.back))

    def spacing(self, spacing) -> tuple[float, float, float]:
        out = [0.0, 0.0, 0.0]
        for axis, (target, _flip) in enumerate(self.ornt):
            out[int(target)] = float(spacing[axis])
        return tuple(out)
