"""Runtimes that turn an NCHW float32 batch into logits: torch (the model file) or ONNX Runtime.

The ONNX backend never imports torch: a deployment needs only numpy, OpenCV, Pillow and onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError


class TorchBackend:
    name = "torch"

    def __init__(self, weights=None, threads: int | None = None):
        """`weights`: a model file path, None for the bundled model, or an already loaded LoadedModel.
        `threads`: intra-op threads (process-wide in torch); None keeps torch's default (every core)."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        from ..models import LoadedModel, load_model

        self._torch = torch
        self.loaded = weights if isinstance(weights, LoadedModel) else load_model(weights)
        self.model = self.loaded.model.eval().to(memory_format=torch.channels_last)
        self.image_size, self.mean, self.std = self.loaded.image_size, self.loaded.mean, self.loaded.std
        self.color_constancy = self.loaded.color_constancy
        self.card, self.path = self.loaded.card, self.loaded.path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return self.model(x)[:, 0].float().numpy()


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: str | Path | None, threads: int | None = None):
        import onnxruntime as ort

        if path is None:
            raise UserError("--backend onnx needs --weights MODEL.onnx (make one with `lesionseg export`)")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX model file not found")
        try:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(
                f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})"
            ) from None
        meta: dict[str, Any] = self.session.get_modelmeta().custom_metadata_map
        self.image_size = int(meta.get("image_size", 256))
        self.mean = tuple(json.loads(meta["mean"])) if "mean" in meta else IMAGENET_MEAN
        self.std = tuple(json.loads(meta["std"])) if "std" in meta else IMAGENET_STD
        self.color_constancy = meta.get("color_constancy", "none")
        self.card = json.loads(meta.get("card", "{}"))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0][:, 0]


BACKENDS = {"torch": TorchBackend, "onnx": OnnxBackend}


def open_backend(weights: str | Path | None, backend: str = "auto", threads: int | None = None):
    """`auto` picks ONNX Runtime for .onnx files and torch otherwise. `onnx` with a lesionseg model file (or a
    bundled name) exports it once to the user's cache and runs that (ONNX Runtime is ~1.5-2x torch on
    CPUs)."""
    is_onnx = weights is not None and str(weights).lower().endswith(".onnx")
    if backend == "auto":
        backend = "onnx" if is_onnx else "torch"
    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is not one of {sorted(BACKENDS)}")
    if backend == "torch" and is_onnx:
        raise UserError(f"{weights}: an ONNX file needs --backend onnx")
    if backend == "onnx" and not is_onnx:
        weights = cached_onnx(weights)
    return BACKENDS[backend](weights, threads)


def cached_onnx(weights: str | Path | None) -> Path:
    """The ONNX export of a model file, made on first use under $XDG_CACHE_HOME/lesionseg (~/.cache), named
    by a hash of the model file's bytes, so a changed model is exported again."""
    import hashlib
    import os
    import sys

    from ..models.registry import resolve_weights

    source = resolve_weights(weights)
    if not source.is_file():
        raise UserError(f"{source}: model file not found")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lesionseg"
    target = cache / f"{source.stem}-{digest}.onnx"
    if not target.is_file():
        from ..export import export_onnx

        print(
            f"lesionseg: exporting {source.name} to ONNX once ({target}); this takes a while",
            file=sys.stderr,
            flush=True,
        )
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{cache}: cannot create the ONNX cache ({exc.strerror})") from None
        export_onnx(source, target)
    return target
