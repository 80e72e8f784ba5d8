"""The service's Prometheus metrics, in the text exposition format (no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


class Histogram:
    def __init__(self, buckets):
        self.buckets, self.counts, self.sum, self.count = tuple(buckets), [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{edge}"}} {n}' for edge, n in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        tail = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{tail} {self.sum:.6f}", f"{name}_count{tail} {self.count}"]


class ServiceMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.images = 0

    def request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch_done(self, n_images: int) -> None:
        with self._lock:
            self.images += n_images
            self.batch.observe(n_images)

    def render(self, queue_depth: int) -> str:
        with self._lock:
            lines = ["# HELP lesionseg_requests_total HTTP requests by path and status.",
                     "# TYPE lesionseg_requests_total counter"]
            lines += [f'lesionseg_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            lines += ["# HELP lesionseg_request_duration_seconds Time from request to response.",
                      "# TYPE lesionseg_request_duration_seconds histogram"]
            for path, hist in sorted(self.latency.items()):
                lines += hist.lines("lesionseg_request_duration_seconds", f'path="{path}"')
            lines += ["# HELP lesionseg_queue_depth Images waiting for the model.",
                      "# TYPE lesionseg_queue_depth gauge", f"lesionseg_queue_depth {queue_depth}",
                      "# HELP lesionseg_images_segmented_total Images the model has segmented.",
                      "# TYPE lesionseg_images_segmented_total counter",
                      f"lesionseg_images_segmented_total {self.images}",
                      "# HELP lesionseg_batch_size Images per forward pass (micro-batching).",
                      "# TYPE lesionseg_batch_size histogram", *self.batch.lines("lesionseg_batch_size")]
        return "\n".join(lines) + "\n"
