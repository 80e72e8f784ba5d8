"""What a segmentation measures, per structure: areas of a photo's masks (pixels, and mm² when the pixel
spacing is known) and volumes of a label volume (voxels, mm³ and mL)."""

from __future__ import annotations

import numpy as np

from .labels import Labels


def structure_areas(masks: np.ndarray, labels: Labels, spacing_mm: float | None) -> dict[str, dict]:
    """Per structure: area in pixels (and mm² when the pixel spacing is known)."""
    out = {}
    for mask, name in zip(masks, labels.names):
        px = int(np.count_nonzero(mask))
        out[name] = {"px": px, **({"mm2": round(px * spacing_mm**2, 3)} if spacing_mm else {})}
    return out


def structure_volumes(label_volume: np.ndarray, labels: Labels, voxel_mm3: float) -> dict[str, dict]:
    """Per structure: voxels, mm³ and mL."""
    counts = np.bincount(label_volume.ravel(), minlength=256)
    out = {}
    for s in labels.structures:
        voxels = int(counts[s.value]) if s.value < counts.size else 0
        out[s.name] = {
            "voxels": voxels,
            "mm3": round(voxels * voxel_mm3, 3),
            "ml": round(voxels * voxel_mm3 / 1000.0, 4),
        }
    return out
