"""Post-processing of probability maps into masks, in a fixed order: optional dense-CRF refinement of the
probabilities, threshold, then optional clean-up (largest component → fill holes → remove small objects)."""

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
    crf: bool = False  # dense CRF (Krähenbühl & Koltun) on the probabilities, guided by the image colours
    crf_iterations: int = 5
    crf_sxy_gaussian: float = 3.0  # smoothness kernel: spatial std (px) and weight
    crf_compat_gaussian: float = 3.0
    crf_sxy_bilateral: float = 50.0  # appearance kernel: spatial std (px), colour std, weight
    crf_srgb: float = 13.0
    crf_compat_bilateral: float = 10.0

    def describe(self) -> str:
        steps = [f"dense CRF ({self.crf_iterations} it.)"] if self.crf else []
        steps += [f"threshold {self.threshold}"]
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


def dense_crf(prob: np.ndarray, image: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Refined foreground probability from a fully connected CRF over the image (pydensecrf2)."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        from .errors import UserError

        raise UserError("--crf needs the pydensecrf2 package (pip install pydensecrf2==1.1)") from None
    h, w = prob.shape
    p = np.clip(prob.astype(np.float32), 1e-5, 1 - 1e-5)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.stack([1 - p, p]).reshape(2, -1))))
    crf.addPairwiseGaussian(sxy=cfg.crf_sxy_gaussian, compat=cfg.crf_compat_gaussian)
    crf.addPairwiseBilateral(
        sxy=cfg.crf_sxy_bilateral,
        srgb=cfg.crf_srgb,
        rgbim=np.require(image, np.uint8, ["C", "W"]),  # pydensecrf needs a writable buffer
        compat=cfg.crf_compat_bilateral,
    )
    q = np.asarray(crf.inference(cfg.crf_iterations), np.float32).reshape(2, h, w)
    return q[1]


def apply(prob: np.ndarray, cfg: PostprocessConfig, image: np.ndarray | None = None) -> np.ndarray:
    if cfg.crf:
        if image is None:
            raise ValueError("dense CRF needs the image")
        prob = dense_crf(prob, image, cfg)
    return clean(threshold(prob, cfg.threshold), cfg)


def clean(mask: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """The clean-up steps on one structure's bool mask."""
    if cfg.largest_component:
        mask = largest_component(mask)
    if cfg.fill_holes:
        mask = fill_holes(mask)
    if cfg.min_area > 0:
        mask = remove_small(mask, cfg.min_area)
    return mask


def apply_structures(prob: np.ndarray, cfg: PostprocessConfig, mode: str) -> np.ndarray:
    """(C, H, W) probabilities of several structures → bool (C, H, W) masks. Overlapping: each channel
    thresholded and cleaned on its own. Exclusive: each pixel goes to its most probable class (background
    included; the threshold does not apply), then each class is cleaned, and a pixel two cleaned classes
    claim (a filled hole over a neighbour) stays with its most probable class."""
    if mode != "exclusive":
        return np.stack([apply(p, cfg) for p in prob])
    background = np.clip(1.0 - prob.sum(0), 0.0, 1.0)
    winner = np.concatenate([background[None], prob]).argmax(0)
    chosen = np.stack([winner == k + 1 for k in range(len(prob))])
    cleaned = np.stack([clean(c, cfg) for c in chosen])
    return cleaned & (chosen | (cleaned.sum(0) == 1))


def clean_volume(label_volume: np.ndarray, values, post: PostprocessConfig) -> np.ndarray:
    """The clean-up steps per structure in 3-D; a voxel two cleaned structures claim keeps its label."""
    if not (post.largest_component or post.fill_holes or post.min_area > 0):
        return label_volume
    out = np.zeros_like(label_volume)
    for v in values:
        cleaned = clean(label_volume == v, post)
        out[cleaned & ((label_volume == v) | (out == 0))] = v
    return out
