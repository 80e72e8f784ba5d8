"""Interactive correction sessions: a case opened once (a photo, or a volume shown slice by slice:
`session_cases.py`), then a person's clicks, brush and eraser strokes and undos, each answered with the
corrected mask, and a save that writes the case and its masks into a dataset folder in the layout
`lesionseg train` reads.

A session's mask is always recomputed from its actions in order: the model with every click so far (a model
trained with model.prompt clicks), then the strokes painted over it, so undo is dropping the last action.
Sessions are bounded in number and in pixels held, and closed after sitting idle; each has an unguessable
id and its own lock, so two sessions never see or wait for each other's state.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..clicks import Click
from ..io import encode_png
from ..io.atomic import write_together
from .http import HTTPError, model_errors


@dataclass(frozen=True)
class Stroke:
    """A brush (paint) or eraser stroke on one structure on one slice: a polyline of (row, col) points,
    `radius` wide."""

    structure: int
    points: tuple[tuple[int, int], ...]
    radius: int
    paint: bool
    slice: int = 0


@dataclass
class Session:
    id: str
    name: str  # the saved files' stem: the upload's name, made safe, and the id's start
    case: object  # session_cases.PhotoCase or VolumeCase
    source: str | None = None  # the unlabelled image it was opened from
    actions: list = field(default_factory=list)  # (structure, Click at (slice, row, col)) or Stroke, in order
    masks: np.ndarray | None = None  # bool (structures, slices, rows, cols)
    model_masks: tuple | None = None  # (the clicks, the model's masks for them): strokes and undo reuse them
    used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def clicks(self) -> list[tuple[int, Click]]:
        return [a for a in self.actions if not isinstance(a, Stroke)]


def safe_stem(label: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(label).stem).strip("_")[:40]
    return stem or "case"


class Sessions:
    """The open sessions of one service: at most `max_sessions`, holding at most `max_pixels` in all;
    a session idle for `idle_s` seconds is closed when room is needed or when it is next asked for."""

    def __init__(self, segmenter, max_sessions: int, max_pixels: int, idle_s: float,
                 unlabelled: str | None = None):
        self.segmenter = segmenter
        self.max_sessions, self.max_pixels, self.idle_s = max_sessions, max_pixels, idle_s
        self._open: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.unlabelled = unlabelled
        self._ranking: list[dict] | None = None  # pseudo_label.rank_for_annotation, made on first ask
        self._ranking_lock = threading.Lock()
        self.saved_sources: set[str] = set()

    def ranking(self) -> list[dict]:
        """The unlabelled images, the least confident first, each marked once a session on it was saved."""
        from ..pseudo_label import rank_for_annotation

        if self.unlabelled is None:
            raise HTTPError(409, "no unlabelled images: start the service with --unlabelled DIR")
        with self._ranking_lock:  # its own lock: ranking a folder takes a while, sessions go on meanwhile
            if self._ranking is None:
                self._ranking = rank_for_annotation(self.segmenter, self.unlabelled,
                                                    on_failure=lambda line: None)
        return [{"id": r["id"], "rank": r["rank"], "uncertainty": r["uncertainty"],
                 "saved": r["source"] in self.saved_sources} for r in self._ranking]

    def source_of(self, case: str) -> Path:
        """The unlabelled image of a ranked id (only ranked ids open: the client never names a path)."""
        self.ranking()
        for row in self._ranking:
            if row["id"] == case:
                return Path(row["source"])
        raise HTTPError(404, f"no unlabelled image {case[:60]!r}")

    def _drop_idle(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._open.items() if now - s.used > self.idle_s]:
            del self._open[key]

    def check_room(self, pixels: int = 0) -> None:
        """503 unless one more session of `pixels` fits (told before a case is read, and again at open)."""
        with self._lock:
            self._check_room(pixels)

    def _check_room(self, pixels: int) -> None:
        self._drop_idle()
        held = sum(int(np.prod(s.case.shape)) for s in self._open.values())
        if len(self._open) >= self.max_sessions or held + pixels > self.max_pixels:
            raise HTTPError(503, f"full: {len(self._open)} sessions open; close one (DELETE "
                            "/v1/sessions/ID) or retry when one has been idle "
                            f"{self.idle_s:g} s", {"Retry-After": "5"})

    def open(self, case, label: str, source: str | None = None) -> Session:
        with self._lock:
            self._check_room(int(np.prod(case.shape)))
            key = secrets.token_urlsafe(16)
            session = Session(key, f"{safe_stem(label)}_{key[:8]}", case, source)
            self._open[key] = session
        return session

    def get(self, key: str) -> Session:
        with self._lock:
            self._drop_idle()
            session = self._open.get(key)
            if session is None:
                raise HTTPError(404, f"no open session {key[:16]!r} (closed, idle too long, or never opened)")
            session.used = time.monotonic()
        return session

    def close(self, key: str) -> None:
        with self._lock:
            if self._open.pop(key, None) is None:
                raise HTTPError(404, f"no open session {key[:16]!r}")

    def structure_index(self, name: str | None) -> int:
        labels = self.segmenter.labels
        if name is None:
            if labels.multi:
                raise HTTPError(400, f"'structure': one of {', '.join(labels.names)}")
            return 0
        if name not in labels.names:
            raise HTTPError(400, f"'structure': {name!r} is not one of {', '.join(labels.names)}")
        return labels.names.index(name)

    def recompute(self, session: Session, whole) -> None:
        """The session's masks from its actions: the model with its clicks, then its strokes in order (on
        exclusive structures a brush takes its pixels from the others). `whole`: the coverage.WholeImage
        that runs the network (the service's goes through its batcher)."""
        seg, clicks = self.segmenter, session.clicks
        if session.model_masks is None or session.model_masks[0] != clicks:  # only clicks need the network
            session.model_masks = (clicks, session.case.model_masks(seg, whole, clicks))
        masks = session.model_masks[1].copy()
        for action in session.actions:
            if isinstance(action, Stroke):
                layer = np.zeros(masks.shape[2:], np.uint8)
                points = np.asarray([(c, r) for r, c in action.points], np.int32).reshape(-1, 1, 2)  # (x, y)
                cv2.polylines(layer, [points], False, 1, thickness=2 * action.radius + 1)
                for (x, y), in points:
                    cv2.circle(layer, (int(x), int(y)), action.radius, 1, thickness=-1)
                painted = layer > 0
                if action.paint and seg.labels.mode == "exclusive":
                    masks[:, action.slice][:, painted] = False
                masks[action.structure, action.slice][painted] = action.paint
        session.masks = masks

    def state(self, session: Session, index: int = 0) -> dict:
        """What the page draws of slice `index`: each structure's mask as a PNG (base64), the clicks on it,
        and how much of the case each structure covers."""
        import base64

        labels = self.segmenter.labels
        slices, height, width = session.case.shape
        on_slice = session.masks[:, index]
        return {"session": session.id, "slices": int(slices), "slice": index, "height": int(height),
                "width": int(width), "structures": list(labels.names),
                "masks": {name: base64.b64encode(encode_png(on_slice[k].astype(np.uint8) * 255, 1)).decode()
                          for k, name in enumerate(labels.names)},
                "clicks": [{"slice": c.position[0], "row": c.position[1], "col": c.position[2],
                            "positive": c.positive, "structure": labels.names[k]}
                           for k, c in session.clicks if c.position[0] == index],
                "all_clicks": len(session.clicks),
                "strokes": len(session.actions) - len(session.clicks),
                "fractions": {name: round(float(session.masks[k].mean()), 5)
                              for k, name in enumerate(labels.names)}}

    def save(self, session: Session, folder: Path) -> dict[str, str]:
        """The case and its masks into `folder`, in the layout `train` reads (session_cases); all files or
        none."""
        files = session.case.files(folder, session.name, session.masks, self.segmenter.labels)
        write_together(files)
        if session.source is not None:
            self.saved_sources.add(session.source)
        return {"id": session.name, "files": [str(p.relative_to(folder)) for p in files]}


# ---- routes: /v1/sessions ----------------------------------------------------------------------------------

def _number(body: dict, key: str, low: float, high: float, kind=int):
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise HTTPError(400, f"'{key}': a number in [{low:g}, {high:g}]")
    return kind(value)


async def _json_body(request) -> dict:
    import json

    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return body


def _slice_index(value, session: Session, where: str) -> int:
    slices = session.case.shape[0]
    if value is None:
        return 0
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < slices:
        raise HTTPError(400, f"{where} 'slice': a whole number in [0, {slices - 1}]")
    return value


def _action(body: dict, kind: str, sessions: Sessions, session: Session):
    """The click or stroke a request body describes, checked against the session's case."""
    _, h, w = session.case.shape
    structure = sessions.structure_index(body.get("structure"))
    index = _slice_index(body.get("slice"), session, "body")
    if kind == "click":
        if not isinstance(body.get("positive", True), bool):
            raise HTTPError(400, "'positive': true (on what the mask missed) or false (on a false region)")
        return structure, Click((index, _number(body, "row", 0, h - 1), _number(body, "col", 0, w - 1)),
                                body.get("positive", True))
    points = body.get("points")
    if not isinstance(points, list) or not 1 <= len(points) <= 10_000 or \
            not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise HTTPError(400, "'points': a list of 1 to 10000 [row, col] pairs")
    checked = tuple((_number({"row": r}, "row", 0, h - 1), _number({"col": c}, "col", 0, w - 1))
                    for r, c in points)
    erase = body.get("erase", False)
    if not isinstance(erase, bool):
        raise HTTPError(400, "'erase': true (eraser) or false (brush)")
    return Stroke(structure, checked, _number(body, "radius", 1, 500) if "radius" in body else 8, not erase,
                  index)


def batched(service):
    """The service's segmenter with its network calls through the batcher, as sessions run it."""
    from .batcher import BatchedSegmenter

    return BatchedSegmenter(service.segmenter, service.batcher, max(1, min(service.cfg.max_batch,
                                                                           service.cfg.max_queue)),
                            False, service.segmenter.post, service.cfg.timeout_s)


async def _recomputed(service, session: Session, change, index: int = 0) -> dict:
    """Apply `change` to the session under its lock, recompute its masks through the service's batcher,
    and answer its state on slice `index`; the change is undone if the model cannot be run."""
    from starlette.concurrency import run_in_threadpool

    whole = batched(service).whole

    def run() -> dict:
        with session.lock:
            before = list(session.actions)
            change(session)
            try:
                with model_errors(service.cfg):
                    service.sessions.recompute(session, whole)
            except HTTPError:
                session.actions = before
                raise
            return service.sessions.state(session, index)

    return await run_in_threadpool(run)


def open_case(service, data: bytes, label: str):
    """The session case an upload is: a volume for a volume model (a NIfTI or a zip of a DICOM series),
    else a photo; a volume's model probabilities are computed here, once."""
    from ..inference.volume_coverage import volume_coverage
    from ..io.registry import read_volume_bytes
    from ..io.volumes import Caps
    from .render import decode_photo
    from .session_cases import PhotoCase, VolumeCase

    pre = service.segmenter.backend.preprocessing
    with model_errors(service.cfg):
        if not pre.covers_volumes:
            return PhotoCase(decode_photo(data, label, service.cfg.max_pixels)[0])
        caps = Caps(bytes=int(service.cfg.max_unpacked_mb * 2**20), voxels=service.cfg.max_pixels * 4)
        volume = read_volume_bytes(data, label, caps)
        return VolumeCase(volume, volume_coverage(batched(service), volume), pre.intensity.scheme == "ct")


def session_routes():
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from .http import endpoint, read_upload

    @endpoint("/v1/sessions", auth=True)
    async def open_session(request, service):
        service.sessions.check_room()
        source = None
        if "case" in request.query_params:  # one of the ranked unlabelled images
            source = await run_in_threadpool(service.sessions.source_of, request.query_params["case"])
            data, label = source.read_bytes(), source.name
        else:
            data, label = await read_upload(request, int(service.cfg.max_body_mb * 2**20))
        case = await run_in_threadpool(open_case, service, data, label)
        session = service.sessions.open(case, label, None if source is None else str(source))
        try:
            state = await _recomputed(service, session, lambda s: None)
        except HTTPError:
            service.sessions.close(session.id)
            raise
        return JSONResponse(state, status_code=201)

    @endpoint("/v1/sessions/ID", auth=True)
    async def one_session(request, service):
        sessions: Sessions = service.sessions
        key, action = request.path_params["session"], request.path_params.get("action")
        if request.method == "DELETE" and action is None:
            sessions.close(key)
            return JSONResponse({"closed": key})
        session = sessions.get(key)
        index = _slice_index(request.query_params.get("slice"), session, "query parameter")
        if request.method == "GET" and action is None:
            return JSONResponse(await run_in_threadpool(lambda: sessions.state(session, index)))
        if request.method == "GET" and action == "image":  # as the server decoded it (TIFF, DICOM too)
            return Response(await run_in_threadpool(session.case.slice_png, index), media_type="image/png")
        if request.method != "POST" or action not in ("click", "stroke", "undo", "save"):
            raise HTTPError(404, f"no route {request.method} {request.url.path} (see /docs)")
        if action == "save":
            folder = service.cfg.annotations
            if not folder:
                raise HTTPError(409, "saving needs a folder: start the service with --annotations DIR")

            def save():
                from ..errors import UserError

                with session.lock:
                    try:
                        return sessions.save(session, Path(folder))
                    except UserError as exc:
                        raise HTTPError(507, str(exc)) from None

            return JSONResponse(await run_in_threadpool(save))
        if action == "undo":
            def undo(s: Session):
                if not s.actions:
                    raise HTTPError(409, "nothing to undo")
                s.actions.pop()

            return JSONResponse(await _recomputed(service, session, undo, index))
        body = await _json_body(request)
        step = _action(body, action, sessions, session)
        on = step.slice if isinstance(step, Stroke) else step[1].position[0]
        return JSONResponse(await _recomputed(service, session, lambda s: s.actions.append(step), on))

    @endpoint("/v1/next", auth=True)
    async def next_cases(request, service):
        return JSONResponse({"cases": await run_in_threadpool(service.sessions.ranking)})

    return [Route("/v1/sessions", open_session, methods=["POST"]), Route("/v1/next", next_cases),
            Route("/v1/sessions/{session}", one_session, methods=["GET", "DELETE"]),
            Route("/v1/sessions/{session}/{action}", one_session, methods=["GET", "POST"])]
