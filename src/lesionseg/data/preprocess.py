"""Evaluation/prediction pre-processing in plain numpy + OpenCV (no torch, no albumentations), so the
ONNX Runtime path stays light. Training validation uses the very same class."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..config import COLOR_CONSTANCY, IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError

SHADES_OF_GREY_POWER = 6  # Finlayson & Trezzi's p; the value used for dermoscopy (Barata et al. 2015)
# the illuminant is estimated on a copy this small: cheap, and the same for any input size
ILLUMINANT_SIDE = 128
MAX_GAIN = 4.0  # a nearly empty channel (a saturated red photo) must not be amplified into noise


def shades_of_grey(image: np.ndarray, power: int = SHADES_OF_GREY_POWER) -> np.ndarray:
    """Colour constancy for a uint8 RGB image: estimate the illuminant as each channel's p-norm mean and
    scale the channels so that it becomes grey (gains normalised to keep the overall brightness)."""
    h, w = image.shape[:2]
    small = image
    if max(h, w) > ILLUMINANT_SIDE:
        f = ILLUMINANT_SIDE / max(h, w)
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    x = small.reshape(-1, 3).astype(np.float32) / 255.0
    illuminant = np.power(np.mean(np.power(x, power), axis=0), 1.0 / power)
    gains = np.linalg.norm(illuminant) / (np.sqrt(3.0) * np.maximum(illuminant, 1e-6))
    gains = np.clip(gains, 1.0 / MAX_GAIN, MAX_GAIN).astype(np.float32)
    return np.clip(image.astype(np.float32) * gains + 0.5, 0, 255).astype(np.uint8)


def color_constancy_fn(name: str):
    """The step a model's inputs go through before normalisation, by the name its model file records."""
    if name == "none":
        return None
    if name == "shades_of_grey":
        return shades_of_grey
    raise UserError(f"unknown colour constancy {name!r} (choose from {', '.join(COLOR_CONSTANCY)}; "
                    "a model from a newer lesionseg?)")


class Normalization:
    """The one intensity normalisation of every path (evaluation, prediction and both training paths):
    x · scale − offset, with scale = 1 / (max_value · std) and offset = mean / std, i.e.
    (x / max_value − mean) / std per channel. Works on numpy HWC images and on torch NCHW batches."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 max_value: float = 255.0):
        self.scale = (1.0 / (max_value * np.asarray(std, np.float32))).astype(np.float32)
        self.offset = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32) * self.scale - self.offset

    def batch(self, x):
        """A torch NCHW float batch, on its own device."""
        import torch

        scale = torch.as_tensor(self.scale, device=x.device).view(1, -1, 1, 1)
        offset = torch.as_tensor(self.offset, device=x.device).view(1, -1, 1, 1)
        return x * scale - offset


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
