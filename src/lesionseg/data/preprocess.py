"""Evaluation/prediction pre-processing in plain numpy + OpenCV (no torch, no albumentations), so the
ONNX Runtime path stays light: resizing to the network's input and back, the activations. Training
validation uses the very same class. How intensities are normalised is intensity.py's."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..intensity import Normalization, color_constancy_fn


def _as_float32(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32, copy=False)


class EvalTransform:
    """Resize to size×size (bilinear image, nearest mask), apply the model's colour constancy (on the resized
    image, so a 4000×3000 photo costs no more than a small one) and normalise; albumentations-style call.
    Size 0 keeps each image's size, and `normalize=False` passes values through: slices of a volume arrive
    normalised, at the model's spacing (inference/coverage.py)."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 color_constancy: str = "none", normalize: bool = True):
        self.size = int(size)
        self.color_constancy = color_constancy_fn(color_constancy)
        self.normalize = Normalization(mean, std) if normalize else _as_float32

    def resize(self, image: np.ndarray, size: int | None = None) -> np.ndarray:
        s = size or self.size
        if s == 0 or image.shape[:2] == (s, s):
            return image
        return cv2.resize(image, (s, s), interpolation=cv2.INTER_LINEAR)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, size: int | None = None) -> dict:
        image = self.resize(image, size)
        if self.color_constancy is not None:
            image = self.color_constancy(image)
        out = {"image": self.normalize(image)}
        if mask is not None:
            s = size or self.size
            same = s == 0 or mask.shape[:2] == (s, s)
            out["mask"] = (
                mask if same else cv2.resize(mask, (s, s), interpolation=cv2.INTER_NEAREST)
            )
        return out

    def batch(self, images: Sequence[np.ndarray], size: int | None = None) -> np.ndarray:
        """NCHW float32 batch for the network."""
        return np.stack([self(image=im, size=size)["image"].transpose(2, 0, 1) for im in images])


def resize_to(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a logit/probability map back to the input's original size (bilinear)."""
    if prob.shape == (height, width):
        return prob
    return cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free form


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
