"""Post-processing of probability maps into masks: threshold, then optional clean-up steps in a fixed
order (largest component → fill holes → remove small objects)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class PostprocessConfig:
    threshold: float = 0.5
    largest_component: bool = False  # keep only the biggest connected lesion
    fill_holes: bool = False
    min_area: int = 0  # remove connected objects smaller than this many pixels (original resolution)

    def describe(self) -> str:
        steps = [f"threshold {self.threshold}"]
        steps += ["largest component"] if self.largest_component else []
        steps += ["fill holes"] if self.fill_holes else []
        steps += [f"min area {self.min_area}px"] if self.min_area > 0 else []
        return ", ".join(steps)


def threshold(prob: np.ndarray, level: float = 0.5) -> np.ndarray:
    return np.asarray(prob) > level


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(mask)


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def apply(prob: np.ndarray, cfg: PostprocessConfig, image: np.ndarray | None = None) -> np.ndarray:
    mask = threshold(prob, cfg.threshold)
    if cfg.largest_component:
        mask = largest_component(mask)
    if cfg.fill_holes:
        mask = fill_holes(mask)
    if cfg.min_area > 0:
        mask = remove_small(mask, cfg.min_area)
    return mask
