"""Intensity normalisation of scans by modality (nnU-Net's rules), recorded in the model file and applied
by every path that feeds a volume to the network (training, evaluate, predict, serve).

- MR (and any modality that is not CT): z-score per volume. When zeros fill more than a quarter of the
  volume (a crop or skull-stripping background), the mean and spread are taken over the non-zero voxels and
  the zeros stay 0.
- CT: Hounsfield units clipped to the 0.5–99.5 percentiles of the training set's foreground voxels, then
  z-scored with that foreground's mean and spread (one setting for the whole dataset, since HU mean the same
  in every scan).
Photos keep their own normalisation (data/preprocess.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

from .errors import UserError

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
