"""Runtimes that turn an NCHW (NCDHW for 3-D networks) float32 batch into logits: torch (the model
file) or ONNX Runtime.

Both read what the network needs to be fed from the model file (`ModelFile`: pre-processing and card). The
ONNX backend never imports torch: a deployment needs only numpy, OpenCV, Pillow and onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model_file import FileView, ModelFile


class Backend(FileView):
    """What every backend shares: the model file it runs (its pre-processing, card and path)."""

    name = "?"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, weights=None, threads: int | None = None):
        """`weights`: a model file path, None for the bundled model, or an already loaded LoadedModel.
        `threads`: intra-op threads (process-wide in torch); None keeps torch's default (every core)."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        from ..models import LoadedModel, load_model
        from ..models.parts import channels_last

        self._torch = torch
        self.loaded = weights if isinstance(weights, LoadedModel) else load_model(weights)
        self.memory_format = channels_last(self.loaded.config.dimensions)
        self.model = self.loaded.model.eval().to(memory_format=self.memory_format)
        self.file = self.loaded.file

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=self.memory_format)
            return self.model(x).float().numpy()


class OnnxBackend(Backend):
    name = "onnx"

    def __init__(self, path: str | Path | None, threads: int | None = None):
        import onnxruntime as ort

        if path is None:
            raise UserError("--backend onnx needs --weights MODEL.onnx (make one with `lesionseg export`)")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: ONNX model file not found")
        try:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        self.file = ModelFile.from_onnx_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.input_name = self.session.get_inputs()[0].name
        channels = self.session.get_inputs()[0].shape[1]
        self.input_channels = channels if isinstance(channels, int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        missing = (self.input_channels or 0) - batch.shape[1]
        if missing > 0:  # a promptable graph fed the image alone: no click = zero click channels
            zeros = np.zeros((batch.shape[0], missing, *batch.shape[2:]), np.float32)
            batch = np.concatenate([batch, zeros], axis=1)
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]


BACKENDS = {"torch": TorchBackend, "onnx": OnnxBackend}


def open_backend(weights: str | Path | None, backend: str = "auto", threads: int | None = None) -> Backend:
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
        from ..export import cached_onnx

        weights = cached_onnx(weights)
    return BACKENDS[backend](weights, threads)


def compare_backends(onnx_path: str | Path, weights: str | Path | None,
                     images: list[np.ndarray] | None = None, seed: int = 0) -> dict:
    """Max |p_onnx - p_torch| over random inputs of several batch sizes and shapes, plus real images."""
    ort_backend, torch_backend = OnnxBackend(onnx_path), TorchBackend(weights)
    rng = np.random.default_rng(seed)
    s = torch_backend.image_size
    shapes = ((1, 3, s, s), (3, 3, s, s), (2, 3, 97, 131))
    batches = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
    if images:
        batches.append(torch_backend.preprocessing.transform().batch(images))
    worst = 0.0
    for x in batches:
        p_torch = 1 / (1 + np.exp(-torch_backend(x)))
        p_onnx = 1 / (1 + np.exp(-ort_backend(x)))
        worst = max(worst, float(np.abs(p_torch - p_onnx).max()))
    return {"max_prob_diff": worst, "inputs": [list(b.shape) for b in batches]}
