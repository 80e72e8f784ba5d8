"""Micro-batching: requests that arrive together go through the model as one batch.

One inference thread owns the model (torch or ONNX Runtime use every core inside one call); request handlers
decode, post-process and encode in their own threads and only hand decoded images — or, for a 3-D network's
sliding window, batches of patches ready for the network — to this queue. The queue
is bounded: when it is full, `submit` refuses at once (the service answers 503 with Retry-After) instead of
letting latency grow without limit.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    pass


@dataclass
class Job:
    image: np.ndarray  # one image for `predict_batch`, or (N, C, *patch) network inputs when `network`
    tta: bool
    network: bool = False
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Result:
    prob: np.ndarray  # the image's probabilities, or the network's logits for a `network` job
    queue_ms: float  # waiting for the model
    infer_ms: float  # the batch's forward pass(es), shared by its images
    batch_size: int


class MicroBatcher:
    """Runs jobs through `segmenter.predict_batch`, jobs with and without TTA as separate batches; network
    jobs (patches of 3-D volumes, from any request) of one shape go through the network as one call."""

    def __init__(self, segmenter, max_batch: int = 16, max_wait_ms: float = 2.0, max_queue: int = 64,
                 on_batch=None):
        self.segmenter, self.max_batch, self.max_wait = segmenter, max_batch, max_wait_ms / 1000
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.on_batch = on_batch  # callback(n_images) for the metrics
        # a network that takes inputs at their own size (slices of volumes, each volume on its own grid)
        # batches only inputs of one size; photos are resized to the network's input and share any batch
        self.batch_by_size = segmenter.backend.preprocessing.input_size is None
        self._thread = threading.Thread(target=self._run, name="lesionseg-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, tta: bool = False, network: bool = False) -> Future:
        job = Job(image, tta, network)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def depth(self) -> int:
        return self.queue.qsize()

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """`first` plus whatever arrives within max_wait, up to max_batch; and whether to stop afterwards."""
        batch, deadline = [first], time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                job = self.queue.get_nowait() if self.queue.qsize() else \
                    self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            # Requests that timed out while waiting were cancelled by their handler: skip them.
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            groups: dict[tuple, list[Job]] = {}
            for j in batch:
                # network inputs join whatever their count; images, by size where the network keeps sizes
                shape = j.image.shape[1:] if j.network else j.image.shape if self.batch_by_size else None
                key = (j.network, j.tta, shape)
                groups.setdefault(key, []).append(j)
            for (network, _, _), group in groups.items():
                (self._network if network else self._infer)(group)
            if stop:
                return

    def _infer(self, group: list[Job]) -> None:
        self._answer(group, lambda: self.segmenter.predict_batch([j.image for j in group], tta=group[0].tta),
                     len(group))

    def _network(self, group: list[Job]) -> None:
        """Network inputs of one shape, from any number of requests, as one call; each job gets its rows."""
        ends = np.cumsum([len(j.image) for j in group])
        self._answer(group, lambda: np.split(self.segmenter.backend(np.concatenate([j.image for j in group])),
                                             ends[:-1]), int(ends[-1]))

    def _answer(self, group: list[Job], run, n_inputs: int) -> None:
        start = time.perf_counter()
        try:
            outputs = run()
        except Exception as exc:  # the handler turns it into a 500 with one line; the thread lives on
            for j in group:
                j.future.set_exception(exc)
            return
        infer_ms = (time.perf_counter() - start) * 1000
        if self.on_batch is not None:
            self.on_batch(n_inputs)
        for j, out in zip(group, outputs):
            j.future.set_result(Result(out, (start - j.enqueued) * 1000, infer_ms, n_inputs))


class BatchedSegmenter:
    """A Segmenter as `inference.volume_coverage` uses one, whose network calls go through the
    service's MicroBatcher (the one thread that owns the model), a batch at a time: how a volume's slices
    share the model with every other request."""

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
        """The model's backend as a sliding window calls it: its network calls queued like any other."""
        return QueuedNetwork(self.segmenter.backend, self.batcher, self.timeout_s)

    @property
    def weights_path(self):
        return self.segmenter.weights_path

    @property
    def whole(self):
        """coverage.WholeImage over the queued backend: one image (with its clicks) at a time."""
        from ..inference.coverage import WholeImage

        return WholeImage(self.backend, self.segmenter.transform)

    def click_channels(self) -> int:
        return self.segmenter.click_channels()

    def predict_batch(self, images: list[np.ndarray], tta: bool | None = None,
                      batch_size: int | None = None) -> list[np.ndarray]:
        """In chunks of this adapter's batch size (the batcher's queue holds no more)."""
        out = []
        tta = self.tta if tta is None else tta
        for start in range(0, len(images), self.batch_size):
            futures = [self.batcher.submit(image, tta) for image in images[start : start + self.batch_size]]
            out += [f.result(timeout=self.timeout_s).prob for f in futures]
        return out


class QueuedNetwork:
    """A backend whose calls (a batch of patches in, logits out) run in the batcher's thread, in turn with
    every other request's, and batched with other volumes' patches of the same shape."""

    def __init__(self, backend, batcher: MicroBatcher, timeout_s: float):
        self.preprocessing, self.batcher, self.timeout_s = backend.preprocessing, batcher, timeout_s
        self.labels, self.image_size = backend.labels, backend.image_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.batcher.submit(batch, network=True).result(timeout=self.timeout_s).prob
