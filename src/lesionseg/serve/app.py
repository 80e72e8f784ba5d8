"""`lesionseg serve`: an ASGI app (Starlette) around the same `Segmenter` as `predict`.

    POST /v1/segment          an image (multipart field `file`, or the raw body) → mask PNG (default),
                              overlay PNG, probability PNG / .npy, or JSON (area, bounding box, contours)
    POST /v1/segment/dicom    a DICOM image → a DICOM SEG
    POST /v1/segment/volume   a NIfTI volume → a NIfTI label map; a zip of one DICOM series → a DICOM SEG;
                              format=json: each structure's volume in mm³ and mL
    POST /v1/sessions         open an interactive session on a photo; then POST /v1/sessions/ID/click,
                              /stroke, /undo, /save (into --annotations), GET or DELETE /v1/sessions/ID
    GET  /v1/model            the model card          GET /healthz, /readyz, /metrics (Prometheus)
    GET  /                    the browser page        GET /docs  the API reference
    GET  /annotate            the annotation page (sessions: clicks, brush, eraser, undo, save)

Every error is a JSON body {"error": ..., "status": ...} with a 4xx/5xx status, never a traceback. Uploads
stay in memory (or in anonymous temporary files of the multipart parser); nothing is written under a name
the client chose.
"""

from __future__ import annotations

import contextlib
import json
import os

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from .http import ServeConfig, Service
from .routes import (
    healthz,
    metrics,
    model_card,
    no_route,
    readyz,
    segment,
    segment_dicom,
    segment_volume_upload,
    static_page,
)
from .sessions import Sessions, session_routes


def create_app(cfg: ServeConfig | None = None, segmenter=None) -> Starlette:
    """The service; `segmenter` (optional) replaces loading `cfg.weights`, for tests and embedding."""
    cfg = cfg or ServeConfig()
    service = Service(cfg, segmenter)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.load)
        service.sessions = Sessions(service.segmenter, cfg.max_sessions, cfg.max_session_pixels,
                                    cfg.session_idle_s, cfg.unlabelled)
        try:
            yield
        finally:
            service.close()

    routes = [Route("/", static_page("index.html", "text/html; charset=utf-8")),
              Route("/app.js", static_page("app.js", "text/javascript; charset=utf-8")),
              Route("/common.js", static_page("common.js", "text/javascript; charset=utf-8")),
              Route("/style.css", static_page("style.css", "text/css; charset=utf-8")),
              Route("/docs", static_page("docs.html", "text/html; charset=utf-8")),
              Route("/annotate", static_page("annotate.html", "text/html; charset=utf-8")),
              Route("/annotate.js", static_page("annotate.js", "text/javascript; charset=utf-8")),
              Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
              Route("/v1/model", model_card), Route("/v1/segment", segment, methods=["POST"]),
              Route("/v1/segment/dicom", segment_dicom, methods=["POST"]),
              Route("/v1/segment/volume", segment_volume_upload, methods=["POST"]), *session_routes()]
    middleware = [Middleware(CORSMiddleware, allow_origins=cfg.cors_origins,
                             allow_methods=["GET", "POST", "DELETE"],
                             allow_headers=["Authorization", "Content-Type"])] if cfg.cors_origins else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={404: no_route, 405: no_route})
    app.state.service = service
    return app


CONFIG_ENV = "LESIONSEG_SERVE_CONFIG"


def app_from_env() -> Starlette:
    """The factory uvicorn's worker processes call (`--workers N`): the config travels as JSON."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))
