"""Segmenter: the one inference path behind `predict`, `evaluate` and the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.transforms import eval_transform, resize_to, to_tensors
from ..errors import UserError
from ..models import LoadedModel, load_model
from .. import postprocess


class Segmenter:
    """Image (RGB uint8, any size) → lesion probability map at the image's original size.

    The network sees the image resized to its training size; logits are resized back (bilinear) before
    the sigmoid, which keeps boundaries sharper than resizing probabilities.
    """

    def __init__(self, loaded: LoadedModel, threshold: float = 0.5, batch_size: int = 8):
        if not 0.0 < threshold < 1.0:
            raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
        self.loaded, self.threshold, self.batch_size = loaded, threshold, batch_size
        self.model = loaded.model.eval().to(memory_format=torch.channels_last)
        self.transform = eval_transform(loaded.image_size, loaded.mean, loaded.std)

    @classmethod
    def load(cls, weights: str | Path | None = None, backend: str = "torch", threshold: float = 0.5,
             batch_size: int = 8) -> "Segmenter":
        if backend != "torch":
            raise UserError(f"backend {backend!r} is not available yet (only 'torch')")
        return cls(load_model(weights), threshold=threshold, batch_size=batch_size)

    @torch.inference_mode()
    def _logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        x = torch.stack([to_tensors(self.transform(image=im)["image"]) for im in images])
        x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)[:, 0].float().numpy()

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Probability maps (float32, HxW of each input)."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            for im, logit in zip(chunk, self._logits(chunk)):
                full = resize_to(logit, im.shape[0], im.shape[1])
                out.append((1.0 / (1.0 + np.exp(-full))).astype(np.float32))
        return out

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]

    def to_mask(self, prob: np.ndarray) -> np.ndarray:
        return postprocess.threshold(prob, self.threshold)

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        return self.to_mask(self.predict(image))

    def predict_masks(self, images: Iterable[np.ndarray]) -> list[np.ndarray]:
        return [self.to_mask(p) for p in self.predict_batch(list(images))]
