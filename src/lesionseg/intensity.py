"""Intensity normalisation of every input, recorded in the model file and applied by every path that feeds
the network (training, evaluate, predict, serve).

Photos: an optional colour constancy (shades of grey), then (x / 255 − mean) / std per channel
(`Normalization`: ImageNet's mean and std for the pretrained encoders).

Scans, by modality (nnU-Net's rules):

- MR (and any modality that is not CT): z-score per volume. When zeros fill more than a quarter of the
  volume (a crop or skull-stripping background), the mean and spread are taken over the non-zero voxels and
  the zeros stay 0.
- CT: Hounsfield units clipped to the 0.5–99.5 percentiles of the training set's foreground voxels, then
  z-scored with that foreground's mean and spread (one setting for the whole dataset, since HU mean the same
  in every scan).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from .config import COLOR_CONSTANCY, IMAGENET_MEAN, IMAGENET_STD
from .errors import UserError

# photos

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


# scans

SCHEMES = ("zscore", "ct")
# zeros above this share of a volume are background, left out of its statistics
NONZERO_MASK_SHARE = 0.25
CT_PERCENTILES = (0.5, 99.5)
CT_SAMPLE_PER_VOLUME = 10_000  # foreground voxels drawn per training volume for the CT statistics


def modality_scheme(modality: str | None) -> str:
    """The scheme for a modality as datasets name it ("CT", "MRI", "T2", "FLAIR", ...)."""
    return (
        "ct"
        if modality is not None and modality.strip().upper() in {"CT", "COMPUTED TOMOGRAPHY"}
        else "zscore"
    )


@dataclasses.dataclass(frozen=True)
class Intensity:
    scheme: str = "zscore"
    clip: tuple[float, float] | None = None  # ct: the foreground percentiles
    mean: float = 0.0  # ct: the clipped foreground's mean and spread
    std: float = 1.0

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise UserError(
                f"unknown intensity normalisation {self.scheme!r} (choose from {', '.join(SCHEMES)}; "
                "a model from a newer lesionseg?)"
            )

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """float32, same shape."""
        x = np.asarray(volume, np.float32)
        if self.scheme == "ct":
            lo, hi = self.clip if self.clip is not None else (float(x.min()), float(x.max()))
            return ((np.clip(x, lo, hi) - self.mean) / max(self.std, 1e-8)).astype(np.float32)
        nonzero = x != 0
        if nonzero.any() and 1.0 - nonzero.mean() > NONZERO_MASK_SHARE:
            values = x[nonzero]
            out = np.zeros_like(x)
            out[nonzero] = (values - values.mean()) / max(float(values.std()), 1e-8)
            return out
        return ((x - x.mean()) / max(float(x.std()), 1e-8)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme}
        if self.scheme == "ct":
            out.update(clip=list(self.clip) if self.clip else None, mean=self.mean, std=self.std)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Intensity":
        clip = values.get("clip")
        return cls(
            str(values.get("scheme", "zscore")),
            tuple(float(v) for v in clip) if clip else None,
            float(values.get("mean", 0.0)),
            float(values.get("std", 1.0)),
        )

    @classmethod
    def fit(cls, scheme: str, volumes: Iterable[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> "Intensity":
        """The setting for a training set of (image, label) volumes: CT's statistics come from a sample of
        each volume's foreground voxels (labels > 0), as nnU-Net takes them."""
        if scheme != "ct":
            return cls(scheme)
        rng = np.random.default_rng(seed)
        samples = []
        for image, labels in volumes:
            values = np.asarray(image, np.float32)[np.asarray(labels) > 0]
            if values.size > CT_SAMPLE_PER_VOLUME:
                values = rng.choice(values, CT_SAMPLE_PER_VOLUME, replace=False)
            samples.append(values)
        values = np.concatenate(samples) if samples else np.zeros(0, np.float32)
        if values.size == 0:
            raise UserError("CT normalisation: the training labels hold no foreground voxels")
        lo, hi = (float(v) for v in np.percentile(values, CT_PERCENTILES))
        clipped = np.clip(values, lo, hi)
        return cls("ct", (lo, hi), float(clipped.mean()), float(clipped.std()))
