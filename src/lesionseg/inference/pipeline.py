"""read → segment → write over many inputs: the one loop behind `predict`, `evaluate` and `pseudo-label`.

A small pool of threads reads inputs at most `2 × workers` ahead (memory stays bounded on folders of huge
photos) while the model runs batches in the calling thread; the same pool runs the write step, and results
come back in input order. An input that cannot be read is reported in its place and the rest go on.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import UserError

# What a read step returns: the frames to segment as (result id, RGB image), and anything the write step
# needs besides (the truth mask, the DICOM companion, ...).
Read = tuple[list[tuple[str, np.ndarray]], Any]


@dataclass
class Segmented:
    """One frame through the model: its probability map and its post-processed mask."""

    id: str
    image: np.ndarray
    prob: np.ndarray
    mask: np.ndarray


@dataclass
class Outcome:
    """What became of one input: the write step's result, or the error that stopped its reading."""

    key: Any
    result: Any = None
    error: UserError | None = None


def run_pipeline(keys: Sequence, read: Callable[[Any], Read], segmenter,
                 write: Callable[[Any, Any, list[Segmented]], Any], workers: int = 2) -> Iterator[Outcome]:
    """`read(key)` for every key, the frames through `segmenter` in batches of `segmenter.batch_size`,
    `write(key, extra, frames)`; yields an Outcome per key, in order (read failures as soon as they are
    met)."""
    if workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {workers}")

    def safe_read(key):
        try:
            return read(key)
        except UserError as exc:
            return exc

    with ThreadPoolExecutor(workers, thread_name_prefix="lesionseg-io") as pool:
        batch = _Batch(segmenter, pool, write, bound=2 * workers)
        for key, got in zip(keys, _prefetch(pool, safe_read, keys, ahead=2 * workers)):
            if isinstance(got, UserError):
                yield Outcome(key, error=got)
                continue
            batch.add(key, *got)
            if batch.frames >= segmenter.batch_size:
                yield from batch.flush()
        yield from batch.flush(block=True)


class _Batch:
    """Inputs waiting for the model, and the writes in flight (at most `bound` ahead of the caller)."""

    def __init__(self, segmenter, pool: ThreadPoolExecutor, write, bound: int):
        self.segmenter, self.pool, self.write, self.bound = segmenter, pool, write, bound
        self.pending: list[tuple[Any, list[tuple[str, np.ndarray]], Any]] = []
        self.writes: deque[tuple[Any, Future]] = deque()

    @property
    def frames(self) -> int:
        return sum(len(frames) for _, frames, _ in self.pending)

    def add(self, key, frames, extra) -> None:
        self.pending.append((key, frames, extra))

    def flush(self, block: bool = False) -> Iterator[Outcome]:
        images = [image for _, frames, _ in self.pending for _, image in frames]
        probs = iter(self.segmenter.predict_batch(images) if images else ())
        for key, frames, extra in self.pending:
            done = []
            for frame_id, image in frames:
                prob = next(probs)
                done.append(Segmented(frame_id, image, prob, self.segmenter.to_mask(prob, image)))
            self.writes.append((key, self.pool.submit(self.write, key, extra, done)))
        self.pending.clear()
        block = block or len(self.writes) > self.bound
        while self.writes and (block or self.writes[0][1].done()):
            key, future = self.writes.popleft()
            yield Outcome(key, result=future.result())


def _prefetch(pool: ThreadPoolExecutor, fn, items: Iterable, ahead: int):
    """fn(item) for every item, computed by the pool at most `ahead` items in advance, yielded in order."""
    queue: deque[Future] = deque()
    it = iter(items)
    for item in it:
        queue.append(pool.submit(fn, item))
        if len(queue) >= ahead:
            break
    while queue:
        result = queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(fn, nxt))
        yield result


class Progress:
    """A rich progress bar (count, rate, ETA) on a terminal; elsewhere silence, then one summary line."""

    def __init__(self, total: int, enabled: bool | None = None):
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                           TimeRemainingColumn(), transient=False, console=Console(stderr=True))
            self.task = self.bar.add_task("predict", total=total, rate="")
            self.inner = None  # the case in progress, where one takes many network calls (a volume)
            self.bar.start()

    def within(self, done: int, total: int) -> None:
        """How far the case in progress has gone: `done` of its `total` network calls (slices or windows)."""
        if self.bar is None:
            return
        if self.inner is None:
            self.inner = self.bar.add_task("predict", total=total, rate="this volume")
        self.bar.update(self.inner, completed=done, total=total)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            if self.inner is not None:
                self.bar.remove_task(self.inner)
                self.inner = None
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, advance=1, rate=f"{rate:.1f} files/s")

    def close(self) -> float:
        if self.bar is not None:
            self.bar.stop()
        return time.perf_counter() - self.start
