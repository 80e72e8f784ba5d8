"""The service's HTTP plumbing: its config, its per-request options, the Service the routes share (model,
batcher, metrics; loaded in the app's lifespan), errors as JSON, the token, uploads with a size cap, and the
model's queue with its time budget. Routes are in routes.py, response bodies in render.py."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .. import __version__, postprocess
from ..errors import UserError
from ..inference.options import InferenceOptions, OptionError
from .batcher import MicroBatcher, QueueFull
from .monitoring import ServiceMetrics

log = logging.getLogger("lesionseg.serve")
FORMATS = {"mask": "image/png", "overlay": "image/png", "prob": "image/png", "npy": "application/x-npy",
           "json": "application/json"}
ACCEPT = {"application/json": "json", "application/x-npy": "npy"}


@dataclass
class ServeConfig:
    weights: str | None = None  # a model file, an .onnx, or a bundled name; None = the bundled default
    backend: str = "auto"
    token: str | None = None  # required on /v1/* when set (Authorization: Bearer TOKEN)
    max_batch: int = 16
    max_wait_ms: float = 2.0
    max_queue: int = 64
    timeout_s: float = 30.0
    max_body_mb: float = 50.0
    max_pixels: int = 50_000_000
    max_unpacked_mb: float = 1024.0  # a volume upload once unzipped / gunzipped (413 above)
    cors_origins: list[str] = field(default_factory=list)
    threads: int | None = None  # the model's intra-op threads; None = every core (--workers N sets cores/N)
    # interactive sessions (/v1/sessions, serve/sessions.py): how many at once, the pixels they hold in all,
    # how long one may sit idle, the dataset folder saves go to (None: saving is refused), and the
    # unlabelled images offered next
    max_sessions: int = 8
    max_session_pixels: int = 100_000_000
    session_idle_s: float = 1800.0
    annotations: str | None = None
    unlabelled: str | None = None  # images the page offers to annotate next, the least confident first

    def check(self, workers: int = 1) -> None:
        if (self.annotations or self.unlabelled) and workers > 1:
            raise UserError("serve: --annotations and --unlabelled need --workers 1 (a session lives in the "
                            "process that opened it)")
        if self.unlabelled and not Path(self.unlabelled).is_dir():
            raise UserError(f"serve: --unlabelled {self.unlabelled}: folder not found")
        for name in ("max_batch", "max_queue", "max_pixels"):
            if getattr(self, name) < 1:
                raise UserError(f"serve: --{name.replace('_', '-')} must be ≥ 1")
        for name in ("timeout_s", "max_body_mb"):
            if getattr(self, name) <= 0:
                raise UserError(f"serve: --{name.replace('_s', '').replace('_', '-')} must be > 0")
        if self.max_wait_ms < 0:
            raise UserError("serve: --max-wait-ms must be ≥ 0")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Options:
    """One request's options: the inference options the service exposes (`InferenceOptions` fields marked
    as query parameters), and the response's own."""

    inference: InferenceOptions = field(default_factory=InferenceOptions)
    format: str = "mask"
    max_side: int | None = None  # downscale overlay / probability images (a page needs no 12 MP map)
    structure: str | None = None  # models of several structures: answer for this one only

    def post(self) -> postprocess.PostprocessConfig:
        return self.inference.postprocess()

    def shown(self) -> dict:
        """The inference options as the JSON response reports them."""
        return {name: getattr(self.inference, name) for name in InferenceOptions.names(query_only=True)}


RESPONSE_PARAMETERS = ("format", "max_side", "structure")


def parse_options(request: Request, model: InferenceOptions, formats=FORMATS) -> Options:
    """Every refused parameter is named in one 400 message; `formats`: what the route answers with.
    `model`: the loaded Segmenter's options, which fill what the request leaves unset."""
    query = request.query_params
    known = sorted({*RESPONSE_PARAMETERS, *InferenceOptions.names(query_only=True)})
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise HTTPError(400, f"unknown query parameter '{unknown[0]}' (known: {', '.join(known)})")
    accept = request.headers.get("accept", "")
    fmt = query.get("format") or next((f for mime, f in ACCEPT.items() if mime in accept and f in formats),
                                      formats[0] if isinstance(formats, tuple) else "mask")
    problems = []
    if fmt not in formats:
        problems.append(f"query parameter 'format': {fmt!r} is not one of {', '.join(formats)}")
    inference = InferenceOptions()
    try:
        given = {k: v for k, v in query.items() if k not in RESPONSE_PARAMETERS}
        inference = InferenceOptions.from_text(given).filled_from(model)
    except OptionError as exc:
        problems.append(exc.named(lambda name: f"query parameter '{name}':"))
    max_side = None
    if "max_side" in query:
        try:
            max_side = int(query["max_side"])
        except ValueError:
            problems.append(f"query parameter 'max_side': not a number ({query['max_side']!r})")
        else:
            if max_side < 1:
                problems.append(f"query parameter 'max_side': must be ≥ 1, got {max_side}")
    if problems:
        raise HTTPError(400, "; ".join(problems))
    return Options(inference, fmt, max_side, query.get("structure"))


class Service:
    """What the routes share: the model (one Segmenter; TTA is chosen per request), the batcher and the
    metrics. The model loads in the app's lifespan; /readyz says when."""

    def __init__(self, cfg: ServeConfig, segmenter=None):
        cfg.check()
        self.cfg, self.metrics = cfg, ServiceMetrics()
        self._given = segmenter
        self.segmenter = None
        self.batcher: MicroBatcher | None = None
        self.sessions = None  # serve/sessions.Sessions, made by the app once the model is loaded

    def load(self) -> None:
        from ..inference import Segmenter

        seg = self._given or Segmenter.load(self.cfg.weights, self.cfg.backend, self.cfg.threads)
        self.segmenter, self.default_tta = seg, seg.tta
        self.batcher = MicroBatcher(seg, self.cfg.max_batch, self.cfg.max_wait_ms, self.cfg.max_queue,
                                    on_batch=self.metrics.batch_done)

    def tta(self, opts: Options) -> bool:
        return self.default_tta if opts.inference.tta is None else opts.inference.tta

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def model_name(self) -> str:
        card = self.segmenter.card
        return card.get("name") or str(self.segmenter.weights_path.name)

    def card(self) -> dict:
        seg = self.segmenter
        labels = seg.labels
        return {"name": self.model_name(), "file": str(seg.weights_path), "backend": seg.backend.name,
                "input_size": seg.image_size, "default_tta": self.default_tta,
                "lesionseg_version": __version__, "label_mode": labels.mode,
                "structures": [{"name": s.name, "value": s.value, "color": list(s.color)}
                               for s in labels.structures] if labels.multi else [{"name": seg.label}],
                "card": seg.card}


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def give_memory_back() -> None:
    """Return the freed heap to the system after a large request (a volume): its buffers are freed in many
    pieces of a few MB, which glibc keeps for reuse, so an idle server would otherwise keep its peak."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def header_value(text: str) -> str:
    """HTTP header values are ASCII: other characters (a model named "…, 160² — …") are percent-encoded
    UTF-8, as in RFC 8187, so any model name can be sent."""
    from urllib.parse import quote

    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


CLIENT_LEFT = 499  # "client closed request", as nginx counts it: neither the client's error nor ours


def endpoint(path: str, auth: bool = False):
    """Wrap a route: token check, errors as JSON, latency and status in the metrics."""

    def wrap(fn):
        async def handler(request: Request) -> Response:
            service: Service = request.app.state.service
            start = time.perf_counter()
            try:
                if auth:
                    _check_token(request, service.cfg.token)
                response = await fn(request, service)
            except HTTPError as exc:
                response = error_response(exc.status, exc.message, exc.headers)
            except ClientDisconnect:  # the client left mid-upload: no answer reaches it, and no fault of ours
                response = error_response(CLIENT_LEFT, "client closed the connection before the upload ended")
            except Exception:  # a bug, not the client's fault: one line out, details in the server log
                log.exception("internal error on %s", path)
                response = error_response(500, "internal error (see the server log)")
            service.metrics.request(path, response.status_code, time.perf_counter() - start)
            return response

        return handler

    return wrap


def _check_token(request: Request, token: str | None) -> None:
    if not token:
        return
    given = request.headers.get("authorization", "")
    given = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-lesionseg-token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPError(401, "missing or wrong token (send 'Authorization: Bearer TOKEN')",
                        {"WWW-Authenticate": "Bearer"})


async def read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and a label for messages: multipart field `file` (or the only file), or
    the raw body. Over `limit` bytes → 413, before the rest is read."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"request body is {int(length):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):  # any other type: the bytes decide (curl sends form type)
        return body, "upload"

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as exc:
        raise HTTPError(400, f"malformed multipart body ({exc.message})") from None
    files = [v for _, v in form.multi_items() if hasattr(v, "read")]
    chosen = (
        form.get("file") if hasattr(form.get("file"), "read") else (files[0] if len(files) == 1 else None)
    )
    if chosen is None:
        raise HTTPError(400, "multipart body has no file field 'file'")
    data = await chosen.read()
    label = f"upload '{os.path.basename(chosen.filename or 'file')[:80]}'"
    await form.close()
    return data, label


async def run_model(service: Service, image: np.ndarray, tta: bool, started: float):
    """Through the batcher, within the request's time budget."""
    try:
        future = service.batcher.submit(image, tta)
    except QueueFull:
        raise busy(service.cfg) from None
    remaining = service.cfg.timeout_s - (time.perf_counter() - started)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(remaining, 0.001))
    except asyncio.TimeoutError:
        future.cancel()
        raise HTTPError(504, f"timed out after {service.cfg.timeout_s:g} s waiting for the model") from None




def busy(cfg: ServeConfig) -> HTTPError:
    """The answer when the model's queue is full: come back shortly."""
    return HTTPError(503, f"busy: {cfg.max_queue} images already wait for the model; retry shortly",
                     {"Retry-After": "1"})


@contextlib.contextmanager
def model_errors(cfg: ServeConfig):
    """What running the model from a worker thread can raise, as the answers a client gets: the input's fault
    (400; 413 for a volume over the caps), a full queue (503 with Retry-After), a timeout (504)."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from ..io.volumes import VolumeTooLarge

    try:
        yield
    except VolumeTooLarge as exc:
        raise HTTPError(413, str(exc)) from None
    except UserError as exc:
        raise HTTPError(400, str(exc)) from None
    except QueueFull:
        raise busy(cfg) from None
    except FutureTimeout:
        raise HTTPError(504, f"timed out after {cfg.timeout_s:g} s waiting for the model") from None
