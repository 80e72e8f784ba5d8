"""The HTTP service: `create_app` (Starlette ASGI app), run by `lesionseg serve` on uvicorn."""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
