"""Segmenter: the one inference path behind `predict`, `evaluate` and the Python API."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import postprocess
from ..data.preprocess import EvalTransform, resize_to, sigmoid
from ..errors import UserError
from .backends import open_backend

DEFAULT_TTA_SCALES = (0.75, 1.0, 1.25)


def model_tta_defaults(card: dict) -> tuple[bool, tuple[float, ...]]:
    """(TTA on?, scales) that a model file asks for by default: its card's `inference` entry, written when
    TTA won on the model's carved split (scripts/bundle_model.py --tta-scales); else off,
    DEFAULT_TTA_SCALES."""
    scales = (card.get("inference") or {}).get("tta_scales")
    return (True, tuple(float(s) for s in scales)) if scales else (False, DEFAULT_TTA_SCALES)


class Segmenter:
    """Image (RGB uint8, any size) → foreground probability map at the image's original size.

    The network sees the image resized to its training size; logits are resized back (bilinear) before
    the sigmoid, which keeps boundaries sharper than resizing probabilities.

    Test-time augmentation (`tta=True`): every scale in `tta_scales` × {identity, horizontal flip, vertical
    flip}; each view's logits are un-flipped, resized to the original size, turned into probabilities, and
    the probabilities are averaged (averaging probabilities keeps one over-confident view from dominating).
    """

    def __init__(
        self,
        backend,
        threshold: float = 0.5,
        batch_size: int = 8,
        tta: bool = False,
        tta_scales: Sequence[float] = DEFAULT_TTA_SCALES,
        post: postprocess.PostprocessConfig | None = None,
    ):
        if not 0.0 < threshold < 1.0:
            raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
        if tta and (not tta_scales or any(not 0.1 <= s <= 4 for s in tta_scales)):
            raise UserError(f"TTA scales must be between 0.1 and 4, got {list(tta_scales)}")
        self.backend, self.batch_size, self.tta = backend, batch_size, tta
        self.tta_scales = tuple(tta_scales)
        # A copy: the caller's PostprocessConfig is not changed behind its back.
        self.post = dataclasses.replace(post or postprocess.PostprocessConfig(), threshold=threshold)
        self.transform = EvalTransform(backend.image_size, backend.mean, backend.std, backend.color_constancy)

    @property
    def threshold(self) -> float:
        return self.post.threshold

    @property
    def image_size(self) -> int:
        return self.backend.image_size

    @property
    def card(self) -> dict:
        return self.backend.card

    @property
    def label(self) -> str:
        """What the model segments, from its card ("lesion", "polyp"); "foreground" when the card says
        nothing."""
        return str(self.card.get("label") or "foreground")

    @property
    def weights_path(self) -> Path:
        return self.backend.path

    @classmethod
    def load(cls, weights: str | Path | None = None, backend: str = "auto", threshold: float = 0.5,
             batch_size: int = 8, tta: bool | None = None, tta_scales: Sequence[float] | None = None,
             post: postprocess.PostprocessConfig | None = None) -> "Segmenter":
        """`tta` / `tta_scales` None: the model's own defaults (`model_tta_defaults`)."""
        opened = open_backend(weights, backend)
        default_tta, default_scales = model_tta_defaults(opened.card)
        return cls(opened, threshold=threshold, batch_size=batch_size,
                   tta=default_tta if tta is None else tta,
                   tta_scales=default_scales if tta_scales is None else tta_scales, post=post)

    def _views(self) -> list[tuple[int, int | None]]:
        """(input size, flip axis) pairs; flip axis is numpy's on HWC (1 = horizontal, 0 = vertical)."""
        if not self.tta:
            return [(self.image_size, None)]
        sizes = sorted({max(8, int(round(self.image_size * s))) for s in self.tta_scales})
        return [(s, f) for s in sizes for f in (None, 1, 0)]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Probability maps (float32, HxW of each input)."""
        out: list[np.ndarray] = []
        views = self._views()
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            acc = [np.zeros(im.shape[:2], np.float32) for im in chunk]
            for size, flip in views:
                src = [
                    np.flip(self.transform.resize(im, size), flip) if flip is not None else im for im in chunk
                ]
                logits = self.backend(self.transform.batch(src, size))
                for i, (im, logit) in enumerate(zip(chunk, logits)):
                    if flip is not None:
                        logit = np.flip(logit, flip)  # axes of (H, W) match those of HWC
                    acc[i] += sigmoid(resize_to(np.ascontiguousarray(logit), im.shape[0], im.shape[1]))
            out.extend(a / len(views) for a in acc)
        return out

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]

    def to_mask(self, prob: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
        return postprocess.apply(prob, self.post, image)

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        return self.to_mask(self.predict(image), image)

    def predict_masks(self, images: Iterable[np.ndarray]) -> list[np.ndarray]:
        images = list(images)
        return [self.to_mask(p, im) for p, im in zip(self.predict_batch(images), images)]
