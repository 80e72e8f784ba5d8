"""ONNX export: one self-contained file (no external .data), dynamic batch/height/width, with the
pre-processing settings and model card stored as metadata, checked against torch through ONNX Runtime."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_path

DEFAULT_OPSET = 18


def export_onnx(weights: str | Path | None, out: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    import onnx
    import torch

    from .models import load_model

    if opset < 17:
        raise UserError(f"--opset {opset}: lesionseg exports need opset ≥ 17")
    loaded = load_model(weights)
    model = loaded.model.eval().float().to(memory_format=torch.contiguous_format)
    size = loaded.image_size
    example = torch.randn(2, loaded.config.in_channels, size, size)
    batch, height, width = (torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("height", min=1, max=16384),
                            torch.export.Dim("width", min=1, max=16384))
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"], output_names=["logits"],
                                    dynamic_shapes=({0: batch, 2: height, 3: width},), opset_version=opset,
                                    external_data=False, verbose=False)
        proto = program.model_proto
        meta = {"image_size": str(size), "mean": json.dumps(list(loaded.mean)), "std": json.dumps(list(loaded.std)),
                "card": json.dumps(loaded.card, default=str), "producer": "lesionseg"}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp))
    return out


def check_onnx(onnx_path: str | Path, weights: str | Path | None, images: list[np.ndarray] | None = None,
               seed: int = 0) -> dict:
    """Max |p_onnx - p_torch| over random inputs of several batch sizes and shapes, plus real images."""
    import torch

    from .inference.backends import OnnxBackend, TorchBackend

    ort_backend, torch_backend = OnnxBackend(onnx_path), TorchBackend(weights)
    rng = np.random.default_rng(seed)
    s = torch_backend.image_size
    batches = [rng.standard_normal((1, 3, s, s), dtype=np.float32), rng.standard_normal((3, 3, s, s), dtype=np.float32),
               rng.standard_normal((2, 3, 97, 131), dtype=np.float32)]
    if images:
        from .data.preprocess import EvalTransform

        batches.append(EvalTransform(s, torch_backend.mean, torch_backend.std).batch(images))
    worst = 0.0
    for x in batches:
        with torch.inference_mode():
            p_torch = torch.sigmoid(torch.from_numpy(torch_backend(x))).numpy()
        p_onnx = 1 / (1 + np.exp(-ort_backend(x)))
        worst = max(worst, float(np.abs(p_torch - p_onnx).max()))
    return {"max_prob_diff": worst, "inputs": [list(b.shape) for b in batches]}
