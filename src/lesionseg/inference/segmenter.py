"""Segmenter: the one inference path behind `predict`, `evaluate`, `pseudo-label`, `serve` and the Python
API. How the network is applied (batches, TTA views, resizing back) lives here; the network is the
backend's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import postprocess
from ..data.preprocess import resize_to, sigmoid
from .backends import Backend, open_backend
from .options import InferenceOptions


class Segmenter:
    """Image (RGB uint8, any size) → foreground probability map at the image's original size.

    The network sees the image resized to its training size; logits are resized back (bilinear) before
    the sigmoid, which keeps boundaries sharper than resizing probabilities.

    Test-time augmentation (`tta=True`): every scale in `tta_scales` × {identity, horizontal flip, vertical
    flip}; each view's logits are un-flipped, resized to the original size, turned into probabilities, and
    the probabilities are averaged (averaging probabilities keeps one over-confident view from dominating).

    Built one way: `Segmenter(backend, options, **fields)`, where `fields` override `options`' fields;
    `Segmenter.load(weights, ...)` opens the backend first. Options left unset (None) take the model's
    stored defaults. TTA can also be chosen per call (`predict_batch(images, tta=True)`).
    """

    def __init__(self, backend: Backend, options: InferenceOptions | None = None, **fields: Any):
        options = dataclasses.replace(options or InferenceOptions(), **fields) if fields else options
        self.backend = backend
        self.options = (options or InferenceOptions()).resolved(backend.file.inference_defaults)
        self.post = self.options.postprocess()
        self.transform = backend.preprocessing.transform()

    @classmethod
    def load(cls, weights: str | Path | None = None, backend: str = "auto", threads: int | None = None,
             options: InferenceOptions | None = None, **fields: Any) -> "Segmenter":
        """`weights`: a model file, an .onnx, or a bundled model's name (None: the bundled `default`)."""
        # refused values fail here, before the model loads
        base = dataclasses.replace(options or InferenceOptions(), **fields)
        return cls(open_backend(weights, backend, threads), base)

    @property
    def threshold(self) -> float:
        return self.options.threshold

    @property
    def tta(self) -> bool:
        return bool(self.options.tta)

    @property
    def tta_scales(self) -> tuple[float, ...]:
        return self.options.tta_scales

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @property
    def image_size(self) -> int:
        return self.backend.image_size

    @property
    def card(self) -> dict:
        return self.backend.card

    @property
    def label(self) -> str:
        """What the model segments, from its card ("lesion", "polyp"); "foreground" when it says nothing."""
        return str(self.card.get("label") or "foreground")

    @property
    def weights_path(self) -> Path:
        return self.backend.path

    def describe_tta(self) -> str:
        return f"scales {list(self.tta_scales)} x flips" if self.tta else "off"

    def _views(self, tta: bool) -> list[tuple[int, int | None]]:
        """(input size, flip axis) pairs; flip axis is numpy's on HWC (1 = horizontal, 0 = vertical)."""
        if not tta:
            return [(self.image_size, None)]
        sizes = sorted({max(8, int(round(self.image_size * s))) for s in self.tta_scales})
        return [(s, f) for s in sizes for f in (None, 1, 0)]

    def predict_batch(self, images: Sequence[np.ndarray], tta: bool | None = None) -> list[np.ndarray]:
        """Probability maps (float32, HxW of each input). `tta` None: this Segmenter's setting."""
        out: list[np.ndarray] = []
        views = self._views(self.tta if tta is None else tta)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            acc = [np.zeros(im.shape[:2], np.float32) for im in chunk]
            for size, flip in views:
                src = [im if flip is None else np.flip(self.transform.resize(im, size), flip) for im in chunk]
                logits = self.backend(self.transform.batch(src, size))
                for i, (im, logit) in enumerate(zip(chunk, logits)):
                    if flip is not None:
                        logit = np.flip(logit, flip)  # axes of (H, W) match those of HWC
                    acc[i] += sigmoid(resize_to(np.ascontiguousarray(logit), im.shape[0], im.shape[1]))
            out.extend(a / len(views) for a in acc)
        return out

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]

    def to_mask(self, prob: np.ndarray, image: np.ndarray | None = None,
                post: postprocess.PostprocessConfig | None = None) -> np.ndarray:
        return postprocess.apply(prob, post or self.post, image)

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        return self.to_mask(self.predict(image), image)

    def predict_masks(self, images: Iterable[np.ndarray]) -> list[np.ndarray]:
        images = list(images)
        return [self.to_mask(p, im) for p, im in zip(self.predict_batch(images), images)]
