"""Segmenter: the one inference path behind `predict`, `evaluate`, `pseudo-label`, `serve` and the Python
API. How the network is applied (batches, TTA views, resizing back) lives here; the network is the
backend's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import postprocess
from ..errors import UserError
from ..labels import Labels
from .backends import Backend, open_backend
from .coverage import WholeImage
from .options import InferenceOptions


class Segmenter:
    """Image (RGB uint8, any size) → foreground probability map at the image's original size (C×H×W, one
    map per structure, for a model of several: `labels`); a volume through `inference.coverage.
    SliceCoverage`. The network is the backend's; how it covers an input is a coverage strategy's
    (`inference/coverage.py`); thresholds and clean-up come after (`to_mask`, `post`).

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
        self.whole = WholeImage(backend, self.transform)
        if self.labels.multi and self.post.crf:
            raise UserError("--crf refines one structure's probabilities; this model has "
                            f"{len(self.labels.structures)} ({', '.join(self.labels.names)})")

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
    def labels(self) -> Labels:
        return self.backend.labels

    @property
    def weights_path(self) -> Path:
        return self.backend.path

    def describe_tta(self) -> str:
        return f"scales {list(self.tta_scales)} x flips" if self.tta else "off"

    def predict_batch(self, images: Sequence[np.ndarray], tta: bool | None = None,
                      batch_size: int | None = None) -> list[np.ndarray]:
        """Probability maps (float32, H×W of each input; C×H×W for several structures), each image covered
        whole (`coverage.WholeImage`). `tta` None: this Segmenter's setting; `batch_size` None: this
        Segmenter's (slices of a volume pass more)."""
        return self.whole.probabilities(images, self.tta if tta is None else tta, self.tta_scales,
                                        batch_size or self.batch_size)

    def predict(self, image: np.ndarray, clicks: Sequence[tuple[int, Any]] = ()) -> np.ndarray:
        """`clicks`: (structure index, clicks.Click at the image's (row, col)) a user placed, for a model
        trained with model.prompt clicks (no TTA with clicks: a click is where it is)."""
        if not clicks:
            return self.predict_batch([image])[0]
        return self.whole.clicked(image, clicks, self.click_channels())

    def click_channels(self) -> int:
        """The click channels the network reads; refuses a model that takes none."""
        channels = self.backend.file.click_channels
        if not channels:
            raise UserError(f"{self.weights_path.name} takes no clicks: train it with model.prompt=clicks")
        return channels

    def to_mask(self, prob: np.ndarray, image: np.ndarray | None = None,
                post: postprocess.PostprocessConfig | None = None) -> np.ndarray:
        """Bool (H, W), or (C, H, W) per structure."""
        if self.labels.multi:
            return postprocess.apply_structures(prob, post or self.post, self.labels.mode)
        return postprocess.apply(prob, post or self.post, image)

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        return self.to_mask(self.predict(image), image)

    def predict_masks(self, images: Iterable[np.ndarray]) -> list[np.ndarray]:
        images = list(images)
        return [self.to_mask(p, im) for p, im in zip(self.predict_batch(images), images)]
