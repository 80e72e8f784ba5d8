"""The service's routes. `POST /v1/segment` takes every kind of case and tells them apart by content, as
the reader registry does: a DICOM image (answered with a DICOM SEG), a NIfTI volume or a zip of a DICOM
series (a label map, a SEG, or JSON volumes), or a photo (mask, overlay, probabilities or JSON).
`/v1/segment/dicom` and `/v1/segment/volume` are the same, with the kind fixed."""

from __future__ import annotations

import json
import time
from importlib import resources

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..errors import UserError
from ..io.dicom_series import ZIP_MAGIC
from ..io.reader import has_dicm_marker
from ..io.volumes import GZIP_MAGIC
from .batcher import BatchedSegmenter
from .http import (
    HTTPError,
    Service,
    endpoint,
    error_response,
    give_memory_back,
    header_value,
    model_errors,
    parse_options,
    read_upload,
    run_model,
)
from .render import decode_photo, render

VOLUME_FORMATS = ("nifti", "seg", "json")


def case_kind(data: bytes) -> str:
    """"dicom", "volume" (NIfTI-1/2, gzip, zip) or "photo", by the upload's first bytes."""
    if has_dicm_marker(data):
        return "dicom"
    if data[:2] == GZIP_MAGIC or data[:4] == ZIP_MAGIC or \
            {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")} & {348, 540}:
        return "volume"
    return "photo"


@endpoint("/v1/segment", auth=True)
async def segment(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    data, label = await read_upload(request, int(service.cfg.max_body_mb * 2**20))
    kind = case_kind(data)
    if kind == "photo" and service.segmenter.backend.preprocessing.covers_volumes:
        raise HTTPError(400, f"the model {service.model_name()} segments volumes: send a NIfTI volume or a "
                        "zip of a DICOM series (to /v1/segment or /v1/segment/volume)")
    handler = {"dicom": _dicom, "volume": _volume, "photo": _photo}[kind]
    return await handler(request, service, data, label, started)


@endpoint("/v1/segment/dicom", auth=True)
async def segment_dicom(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    parse_options(request, service.segmenter.options)  # refused parameters before the body is read
    data, label = await read_upload(request, int(service.cfg.max_body_mb * 2**20))
    return await _dicom(request, service, data, label, started)


@endpoint("/v1/segment/volume", auth=True)
async def segment_volume_upload(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    parse_options(request, service.segmenter.options, VOLUME_FORMATS)  # refused before the body is read
    _check_volume_model(service)
    data, label = await read_upload(request, int(service.cfg.max_body_mb * 2**20))
    return await _volume(request, service, data, label, started)


async def _photo(request: Request, service: Service, data: bytes, label: str, started: float) -> Response:
    opts = parse_options(request, service.segmenter.options)
    t = time.perf_counter()
    # A picture to look at (overlay / prob with max_side) is computed at that size: the network sees its
    # fixed input size either way, and decoding and resizing 12-megapixel photos dominate otherwise.
    preview = opts.max_side if opts.format in ("overlay", "prob") else None
    image, size = await run_in_threadpool(decode_photo, data, label, service.cfg.max_pixels, preview)
    timings = {"decode_ms": (time.perf_counter() - t) * 1000}
    result = await run_model(service, image, service.tta(opts), started)
    timings.update(queue_ms=result.queue_ms, infer_ms=result.infer_ms)
    return await run_in_threadpool(render, service, image, result.prob, opts, timings, size)


async def _dicom(request: Request, service: Service, data: bytes, label: str, started: float) -> Response:
    """The input's own format back: through the reader registry, answered with the reader's companion
    result (a DICOM SEG)."""
    from ..io import NotAnImage, reader_by_name

    opts = parse_options(request, service.segmenter.options)
    if opts.format != "mask" and "format" in request.query_params:
        raise HTTPError(400, "query parameter 'format': a DICOM image is answered with a DICOM SEG only")
    if service.segmenter.backend.preprocessing.covers_volumes:
        raise HTTPError(400, f"{label}: one DICOM image, and the model {service.model_name()} segments "
                        "volumes: send the series as a zip")

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
    results = [await run_model(service, frame, service.tta(opts), started) for frame in frames]

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




def _check_volume_model(service: Service) -> None:
    if not service.segmenter.backend.preprocessing.covers_volumes:
        raise HTTPError(400, f"the model {service.model_name()} segments photos; volumes need a volume model")


async def _volume(request: Request, service: Service, data: bytes, label: str, started: float) -> Response:
    """A volume in, its label volume out in the input's own space: NIfTI (same affine and header) for a
    NIfTI, a DICOM SEG referencing every instance for a zipped series (format=nifti for a NIfTI instead),
    or JSON volumes."""
    from ..inference.volume_coverage import segment_volume
    from ..io.dicom import series_seg_bytes
    from ..io.registry import read_volume_bytes
    from ..io.volumes import Caps, nifti_bytes
    from ..measurement import structure_volumes

    opts = parse_options(request, service.segmenter.options, VOLUME_FORMATS)
    wanted = opts.format if "format" in request.query_params or opts.format == "json" else None
    seg = service.segmenter
    _check_volume_model(service)
    try:  # structure=NAME narrows the answer to that structure, as for images
        chosen = None if opts.structure is None else seg.labels.structures[seg.labels.index(opts.structure)]
    except UserError as exc:
        raise HTTPError(400, f"query parameter 'structure': {exc}") from None

    def run() -> Response:
        with model_errors(service.cfg):
            caps = Caps(bytes=int(service.cfg.max_unpacked_mb * 2**20), voxels=service.cfg.max_pixels * 4)
            volume = read_volume_bytes(data, label, caps)
            fmt = wanted or ("seg" if volume.datasets is not None else "nifti")
            if fmt == "seg" and volume.datasets is None:
                raise UserError(f"{label}: format=seg needs a DICOM series (a NIfTI has no instances to "
                                "reference)")
            batch = max(1, min(service.cfg.max_batch, service.cfg.max_queue))
            batched = BatchedSegmenter(seg, service.batcher, batch, service.tta(opts), opts.post(),
                                       service.cfg.timeout_s)
            labels = segment_volume(batched, volume)
            if chosen is not None:
                labels = np.where(labels == chosen.value, labels, 0).astype(labels.dtype)
            if fmt == "json":
                measured = structure_volumes(labels, seg.labels, volume.voxel_mm3)
                return JSONResponse({"shape": list(volume.array.shape),
                                     "spacing_mm": [round(v, 5) for v in volume.spacing],
                                     "structures": measured if chosen is None else
                                     {chosen.name: measured[chosen.name]}})
            headers = {"X-Lesionseg-Model": header_value(service.model_name())}
            try:
                body = series_seg_bytes(volume.datasets, labels, seg.labels, label) if fmt == "seg" else \
                    nifti_bytes(labels, volume)
            except UserError as exc:
                if wanted == "seg":  # asked for by name: the answer cannot be made
                    raise
                # the SEG is only the default answer: the label map instead, and why, as predict says it
                fmt, body = "nifti", nifti_bytes(labels, volume)
                headers["X-Lesionseg-Note"] = header_value(f"{exc}; the NIfTI label map instead")
        media = "application/dicom" if fmt == "seg" else "application/gzip"
        return Response(body, media_type=media, headers=headers)

    try:
        return await run_in_threadpool(run)
    finally:
        await run_in_threadpool(give_memory_back)


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


def static_page(name: str, media_type: str):
    @endpoint(f"/{name}")
    async def page(request: Request, service: Service) -> Response:
        text = resources.files("lesionseg.serve").joinpath("static", name).read_text(encoding="utf-8")
        return Response(text, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return page


async def no_route(request: Request, exc) -> Response:
    status = getattr(exc, "status_code", 404)
    what = "no route" if status == 404 else "method not allowed:"
    return error_response(status, f"{what} {request.method} {request.url.path} (see /docs)")


