"""`lesionseg serve`: an ASGI app (Starlette) around the same `Segmenter` as `predict`.

    POST /v1/segment          an image (multipart field `file`, or the raw body) → mask PNG (default),
                              overlay PNG, probability PNG / .npy, or JSON (area, bounding box, contours)
    POST /v1/segment/dicom    a DICOM image → a DICOM SEG
    POST /v1/segment/volume   a NIfTI volume → a NIfTI label map; a zip of one DICOM series → a DICOM SEG;
                              format=json: each structure's volume in mm³ and mL
    GET  /v1/model            the model card          GET /healthz, /readyz, /metrics (Prometheus)
    GET  /                    the browser page        GET /docs  the API reference

Every error is a JSON body {"error": ..., "status": ...} with a 4xx/5xx status, never a traceback. Uploads
stay in memory (or in anonymous temporary files of the multipart parser); nothing is written under a name
the client chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from importlib import resources

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__, postprocess
from ..errors import UserError
from ..inference.options import InferenceOptions, OptionError
from ..io import FAST_PNG, ImageTooLarge, NotAnImage, decode_image, encode_png, image_size, mask_to_uint8
from .batcher import MicroBatcher, QueueFull
from .metrics import ServiceMetrics

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

    def check(self) -> None:
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


def header_value(text: str) -> str:
    """HTTP header values are ASCII: other characters (a model named "…, 160² — …") are percent-encoded
    UTF-8, as in RFC 8187, so any model name can be sent."""
    from urllib.parse import quote

    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


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
                response = _error(exc.status, exc.message, exc.headers)
            except Exception:  # a bug, not the client's fault: one line out, details in the server log
                log.exception("internal error on %s", path)
                response = _error(500, "internal error (see the server log)")
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


def _decode(data: bytes, label: str, max_pixels: int, preview: int | None = None) -> tuple[np.ndarray, tuple]:
    """The image (at most `preview` pixels a side when given) and the full image's (width, height)."""
    if data[128:132] == b"DICM":  # some DICOM files are valid TIFFs too: say what they are first
        raise HTTPError(415, f"{label}: a DICOM file; send it to /v1/segment/dicom")
    try:
        image = decode_image(data, label, max_pixels, draft=preview)
        if preview is None:
            return image, (image.shape[1], image.shape[0])
        return _shrink(image, preview), image_size(data)
    except ImageTooLarge as exc:
        raise HTTPError(413, str(exc)) from None
    except NotAnImage as exc:
        raise HTTPError(415, f"{exc} (send jpg, png, bmp or tif; DICOM to /v1/segment/dicom)") from None
    except UserError as exc:
        raise HTTPError(400, str(exc)) from None


async def _segment(service: Service, image: np.ndarray, tta: bool, started: float):
    """Through the batcher, within the request's time budget."""
    try:
        future = service.batcher.submit(image, tta)
    except QueueFull:
        raise HTTPError(503,
                        f"busy: {service.cfg.max_queue} images already wait for the model; retry shortly",
                        {"Retry-After": "1"}) from None
    remaining = service.cfg.timeout_s - (time.perf_counter() - started)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(remaining, 0.001))
    except asyncio.TimeoutError:
        future.cancel()
        raise HTTPError(504, f"timed out after {service.cfg.timeout_s:g} s waiting for the model") from None


def _shrink(array: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = array.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return array
    scale = max_side / max(h, w)
    return cv2.resize(array, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def describe_mask(mask: np.ndarray) -> dict:
    """Area, bounding box and outer contours (polygons of [x, y] points) of a bool mask."""
    area = int(mask.sum())
    h, w = mask.shape
    out = {"area_px": area, "area_fraction": area / (h * w), "bbox": None, "contours": []}
    if area:
        ys, xs = np.nonzero(mask)
        out["bbox"] = {"x": int(xs.min()), "y": int(ys.min()), "width": int(xs.max() - xs.min() + 1),
                       "height": int(ys.max() - ys.min() + 1)}
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out["contours"] = [c[:, 0, :].tolist() for c in sorted(contours, key=cv2.contourArea, reverse=True)]
    return out


def render(service: Service, image: np.ndarray, prob: np.ndarray, opts: Options, timings: dict,
           size: tuple[int, int]) -> Response:
    """The response body in the asked format; the mask is made exactly as `predict` makes it. `size` is the
    uploaded image's (width, height); `image` may be a preview of it (overlay / prob with max_side)."""
    from ..viz import overlay

    labels = service.segmenter.labels
    if labels.multi:
        return render_structures(service, image, prob, opts, timings, size)
    if opts.structure is not None and opts.structure != service.segmenter.label:
        raise HTTPError(400, f"query parameter 'structure': this model segments one structure "
                        f"({service.segmenter.label}), not {opts.structure!r}")
    start = time.perf_counter()
    mask = postprocess.apply(prob, opts.post(), image)
    headers = {"X-Lesionseg-Model": header_value(service.model_name()),
               "X-Image-Size": f"{size[0]}x{size[1]}", "X-Area-Fraction": f"{mask.mean():.6f}"}
    if opts.format == "mask":
        body = encode_png(mask_to_uint8(mask))
    elif opts.format == "overlay":
        body = encode_png(overlay(image, pred=mask), FAST_PNG)
    elif opts.format == "prob":
        body = encode_png(np.round(prob * 255).astype(np.uint8))
    elif opts.format == "npy":
        buf = io.BytesIO()
        np.save(buf, prob.astype(np.float32))
        body = buf.getvalue()
    timings["post_ms"] = (time.perf_counter() - start) * 1000
    headers["Server-Timing"] = ", ".join(f"{k[:-3]};dur={v:.1f}" for k, v in timings.items())
    if opts.format == "json":
        payload = {"model": service.model_name(), "image": {"width": size[0], "height": size[1]},
                   "options": opts.shown(),
                   **describe_mask(mask), "timings_ms": {k: round(v, 2) for k, v in timings.items()}}
        return JSONResponse(payload, headers=headers)
    return Response(body, media_type=FORMATS[opts.format], headers=headers)


def render_structures(service: Service, image: np.ndarray, prob: np.ndarray, opts: Options, timings: dict,
                      size: tuple[int, int]) -> Response:
    """`render` for a model of several structures: masks as `predict` writes them (an exclusive model's
    palette label map; with `structure`, that structure's 0/255 mask), its overlay with a legend, and JSON
    per structure (area, bounding box, contours)."""
    from ..io.writers import encode_label_map
    from ..viz import structures_overlay

    seg = service.segmenter
    labels = seg.labels
    try:
        chosen = None if opts.structure is None else labels.index(opts.structure)
    except UserError as exc:
        raise HTTPError(400, f"query parameter 'structure': {exc}") from None
    one_picture = opts.format == "prob" or (opts.format == "mask" and labels.mode == "overlapping")
    if chosen is None and one_picture:
        raise HTTPError(400, f"query parameter 'structure': this model's {len(labels.names)} structures "
                        f"({'overlap' if labels.mode == 'overlapping' else 'are several'}): ask for one of "
                        f"{', '.join(labels.names)} for format={opts.format}, or use format=json")
    start = time.perf_counter()
    masks = seg.to_mask(prob, image, opts.post())
    shown = masks if chosen is None else masks[chosen]
    headers = {"X-Lesionseg-Model": header_value(service.model_name()),
               "X-Image-Size": f"{size[0]}x{size[1]}",
               "X-Area-Fraction": f"{(masks.any(0) if chosen is None else shown).mean():.6f}"}
    if opts.format == "mask":
        body = encode_png(mask_to_uint8(shown)) if chosen is not None else encode_label_map(masks, labels)
    elif opts.format == "overlay":
        body = encode_png(structures_overlay(image, masks, labels), FAST_PNG)
    elif opts.format == "prob":
        body = encode_png(np.round(prob[chosen] * 255).astype(np.uint8))
    elif opts.format == "npy":
        buf = io.BytesIO()
        np.save(buf, (prob if chosen is None else prob[chosen]).astype(np.float32))
        body = buf.getvalue()
    timings["post_ms"] = (time.perf_counter() - start) * 1000
    headers["Server-Timing"] = ", ".join(f"{k[:-3]};dur={v:.1f}" for k, v in timings.items())
    if opts.format == "json":
        names = labels.names if chosen is None else [labels.names[chosen]]
        structures = {n: {**describe_mask(masks[labels.index(n)]),
                          "color": list(labels.structures[labels.index(n)].color)} for n in names}
        payload = {"model": service.model_name(), "image": {"width": size[0], "height": size[1]},
                   "options": opts.shown(), "label_mode": labels.mode, "structures": structures,
                   "timings_ms": {k: round(v, 2) for k, v in timings.items()}}
        return JSONResponse(payload, headers=headers)
    return Response(body, media_type=FORMATS[opts.format], headers=headers)


@endpoint("/v1/segment", auth=True)
async def segment(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    opts = parse_options(request, service.segmenter.options)
    if service.segmenter.backend.preprocessing.volumes:
        raise HTTPError(400, f"the model {service.model_name()} segments volumes: POST to /v1/segment/volume")
    data, label = await read_upload(request, int(service.cfg.max_body_mb * 2**20))
    t = time.perf_counter()
    # A picture to look at (overlay / prob with max_side) is computed at that size: the network sees its
    # fixed input size either way, and decoding and resizing 12-megapixel photos dominate otherwise.
    preview = opts.max_side if opts.format in ("overlay", "prob") else None
    image, size = await run_in_threadpool(_decode, data, label, service.cfg.max_pixels, preview)
    timings = {"decode_ms": (time.perf_counter() - t) * 1000}
    result = await _segment(service, image, service.tta(opts), started)
    timings.update(queue_ms=result.queue_ms, infer_ms=result.infer_ms)
    return await run_in_threadpool(render, service, image, result.prob, opts, timings, size)


@endpoint("/v1/segment/dicom", auth=True)
async def segment_dicom(request: Request, service: Service) -> Response:
    """The input's own format back: through the reader registry, answered with the reader's companion
    result (a DICOM SEG)."""
    from ..io import NotAnImage, reader_by_name

    started = time.perf_counter()
    opts = parse_options(request, service.segmenter.options)
    if opts.format != "mask" and "format" in request.query_params:
        raise HTTPError(400, "query parameter 'format': /v1/segment/dicom answers with a DICOM SEG only")
    data, label = await read_upload(request, int(service.cfg.max_body_mb * 2**20))

    def read():
        try:
            return reader_by_name("dicom").read_bytes(data, label)
        except NotAnImage as exc:
            raise HTTPError(415, str(exc)) from None
        except UserError as exc:
            raise HTTPError(400, str(exc)) from None

    item = await run_in_threadpool(read)
    frames = [image for _, image in item.frames]
    if sum(f.shape[0] * f.shape[1] for f in frames) > service.cfg.max_pixels:
        raise HTTPError(413, f"{label}: {len(frames)} frames over the limit of {service.cfg.max_pixels:,} "
                        "pixels")
    results = [await _segment(service, frame, service.tta(opts), started) for frame in frames]

    def build() -> bytes:
        seg = service.segmenter
        masks = [seg.to_mask(r.prob, f, opts.post()) for r, f in zip(results, frames)]
        try:
            return item.companion.encode(masks, label, seg.labels if seg.labels.multi else seg.label)
        except UserError as exc:
            raise HTTPError(400, str(exc)) from None

    body = await run_in_threadpool(build)
    return Response(body, media_type=item.companion.media_type,
                    headers={"X-Lesionseg-Model": header_value(service.model_name())})


VOLUME_FORMATS = ("nifti", "seg", "json")


@endpoint("/v1/segment/volume", auth=True)
async def segment_volume_upload(request: Request, service: Service) -> Response:
    """A volume in, its label volume out in the input's own space: NIfTI (same affine and header) for a
    NIfTI, a DICOM SEG referencing every instance for a zipped series (format=nifti for a NIfTI instead),
    or JSON volumes."""
    from ..inference.slices import segment_volume, structure_volumes
    from ..io.dicom import series_seg_bytes
    from ..io.volumes import nifti_bytes
    from .volumes import BatchedSegmenter, TooLarge, read_volume_upload

    opts = parse_options(request, service.segmenter.options, VOLUME_FORMATS)
    wanted = opts.format if "format" in request.query_params or opts.format == "json" else None
    seg = service.segmenter
    if not seg.backend.preprocessing.volumes:
        raise HTTPError(400, f"the model {service.model_name()} segments photos; volumes need a volume model")
    data, label = await read_upload(request, int(service.cfg.max_body_mb * 2**20))

    def run() -> Response:
        try:
            volume = read_volume_upload(data, label, int(service.cfg.max_unpacked_mb * 2**20))
            if volume.array.size > service.cfg.max_pixels * 4:
                raise TooLarge(f"{label}: {volume.array.size:,} voxels over the limit of "
                               f"{service.cfg.max_pixels * 4:,}")
            fmt = wanted or ("seg" if volume.datasets is not None else "nifti")
            if fmt == "seg" and volume.datasets is None:
                raise UserError(f"{label}: format=seg needs a DICOM series (a NIfTI has no instances to "
                                "reference)")
            batch = max(1, min(service.cfg.max_batch, service.cfg.max_queue))
            slices = BatchedSegmenter(seg, service.batcher, batch, service.tta(opts), opts.post(),
                                   service.cfg.timeout_s)
            labels = segment_volume(slices, volume)
            if fmt == "json":
                return JSONResponse({"shape": list(volume.array.shape),
                                     "spacing_mm": [round(v, 5) for v in volume.spacing],
                                     "structures": structure_volumes(labels, seg.labels, volume.voxel_mm3)})
            body = series_seg_bytes(volume.datasets, labels, seg.labels, label) if fmt == "seg" else \
                nifti_bytes(labels, volume)
        except TooLarge as exc:
            raise HTTPError(413, str(exc)) from None
        except UserError as exc:
            raise HTTPError(400, str(exc)) from None
        media = "application/dicom" if fmt == "seg" else "application/gzip"
        return Response(body, media_type=media,
                        headers={"X-Lesionseg-Model": header_value(service.model_name())})

    return await run_in_threadpool(run)


@endpoint("/v1/model", auth=True)
async def model_card(request: Request, service: Service) -> Response:
    return JSONResponse(json.loads(json.dumps(service.card(), default=str)))


@endpoint("/healthz")
async def healthz(request: Request, service: Service) -> Response:
    return JSONResponse({"status": "ok"})


@endpoint("/readyz")
async def readyz(request: Request, service: Service) -> Response:
    if not service.ready:
        raise HTTPError(503, "model not loaded yet", {"Retry-After": "1"})
    return JSONResponse({"status": "ready", "model": service.model_name()})


@endpoint("/metrics")
async def metrics(request: Request, service: Service) -> Response:
    depth = service.batcher.depth() if service.batcher else 0
    return PlainTextResponse(service.metrics.render(depth), media_type="text/plain; version=0.0.4")


def _static(name: str, media_type: str):
    @endpoint(f"/{name}")
    async def page(request: Request, service: Service) -> Response:
        text = resources.files("lesionseg.serve").joinpath("static", name).read_text(encoding="utf-8")
        return Response(text, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return page


async def no_route(request: Request, exc) -> Response:
    status = getattr(exc, "status_code", 404)
    what = "no route" if status == 404 else "method not allowed:"
    return _error(status, f"{what} {request.method} {request.url.path} (see /docs)")


def create_app(cfg: ServeConfig | None = None, segmenter=None) -> Starlette:
    """The service; `segmenter` (optional) replaces loading `cfg.weights`, for tests and embedding."""
    cfg = cfg or ServeConfig()
    service = Service(cfg, segmenter)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.load)
        try:
            yield
        finally:
            service.close()

    routes = [Route("/", _static("index.html", "text/html; charset=utf-8")),
              Route("/app.js", _static("app.js", "text/javascript; charset=utf-8")),
              Route("/style.css", _static("style.css", "text/css; charset=utf-8")),
              Route("/docs", _static("docs.html", "text/html; charset=utf-8")),
              Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
              Route("/v1/model", model_card), Route("/v1/segment", segment, methods=["POST"]),
              Route("/v1/segment/dicom", segment_dicom, methods=["POST"]),
              Route("/v1/segment/volume", segment_volume_upload, methods=["POST"])]
    middleware = [Middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if cfg.cors_origins else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={404: no_route, 405: no_route})
    app.state.service = service
    return app


CONFIG_ENV = "LESIONSEG_SERVE_CONFIG"


def app_from_env() -> Starlette:
    """The factory uvicorn's worker processes call (`--workers N`): the config travels as JSON."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))
