"""Evaluation/prediction pre-processing in plain numpy + OpenCV (no torch, no albumentations), so the
ONNX Runtime path stays light. Training validation uses the very same class."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD


class EvalTransform:
    """Resize to size×size (bilinear image, nearest mask) and normalise; albumentations-style call."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size = int(size)
        self.scale = (1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)
        self.offset = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)

    def resize(self, image: np.ndarray, size: int | None = None) -> np.ndarray:
        s = size or self.size
        if image.shape[:2] == (s, s):
            return image
        return cv2.resize(image, (s, s), interpolation=cv2.INTER_LINEAR)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32) * self.scale - self.offset

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, size: int | None = None) -> dict:
        out = {"image": self.normalize(self.resize(image, size))}
        if mask is not None:
            s = size or self.size
            out["mask"] = mask if mask.shape == (s, s) else cv2.resize(mask, (s, s), interpolation=cv2.INTER_NEAREST)
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
