"""The service's volumes: a volume's slices run through the service's one model thread (the upload itself is
read by the reader registry, `io.registry.read_volume_bytes`, as files are)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def give_memory_back() -> None:
    """Return the freed heap to the system after a volume request: a volume's buffers are freed in many
    pieces of a few MB, which glibc keeps for reuse, so an idle server would otherwise keep its peak."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class BatchedSegmenter:
    """A Segmenter as `inference.coverage.SliceCoverage` uses one, whose network calls go through the
    service's MicroBatcher (the one thread that owns the model), a batch at a time."""

    def __init__(self, segmenter, batcher, batch: int, tta: bool, post, timeout_s: float):
        self.segmenter, self.batcher, self.batch_size, self.tta, self.post = (
            segmenter,
            batcher,
            batch,
            tta,
            post,
        )
        self.timeout_s = timeout_s

    @property
    def labels(self):
        return self.segmenter.labels

    @property
    def backend(self):
        return self.segmenter.backend

    @property
    def weights_path(self):
        return self.segmenter.weights_path

    def predict_batch(self, images: list[np.ndarray], tta: bool | None = None,
                      batch_size: int | None = None) -> list[np.ndarray]:
        """In chunks of this adapter's batch size (the batcher's queue holds no more)."""
        out = []
        tta = self.tta if tta is None else tta
        for start in range(0, len(images), self.batch_size):
            futures = [self.batcher.submit(image, tta) for image in images[start : start + self.batch_size]]
            out += [f.result(timeout=self.timeout_s).prob for f in futures]
        return out
