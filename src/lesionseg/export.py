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
    batch, height, width = (
        torch.export.Dim("batch", min=1, max=1024),
        torch.export.Dim("height", min=1, max=16384),
        torch.export.Dim("width", min=1, max=16384),
    )
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch, 2: height, 3: width},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        proto = program.model_proto
        meta = {
            "image_size": str(size),
            "mean": json.dumps(list(loaded.mean)),
            "std": json.dumps(list(loaded.std)),
            "card": json.dumps(loaded.card, default=str),
            "producer": "lesionseg",
            "color_constancy": loaded.color_constancy,
        }
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
    batches = [
        rng.standard_normal((1, 3, s, s), dtype=np.float32),
        rng.standard_normal((3, 3, s, s), dtype=np.float32),
        rng.standard_normal((2, 3, 97, 131), dtype=np.float32),
    ]
    if images:
        from .data.preprocess import EvalTransform

        batches.append(
            EvalTransform(s, torch_backend.mean, torch_backend.std, torch_backend.color_constancy).batch(
                images
            )
        )
    worst = 0.0
    for x in batches:
        with torch.inference_mode():
            p_torch = torch.sigmoid(torch.from_numpy(torch_backend(x))).numpy()
        p_onnx = 1 / (1 + np.exp(-ort_backend(x)))
        worst = max(worst, float(np.abs(p_torch - p_onnx).max()))
    return {"max_prob_diff": worst, "inputs": [list(b.shape) for b in batches]}


INT8_DEFAULTS = {"format": "QDQ", "activations": "QUInt8", "weights": "QInt8", "per_channel": True,
                 "calibration": "MinMax", "calibration_images": 64}


def export_int8(weights: str | Path | None, out: str | Path, calibration: str | Path, n_images: int = 64,
                opset: int = DEFAULT_OPSET, exclude: list[str] | None = None) -> dict:
    """A statically quantized ONNX model (ONNX Runtime, QDQ, per-channel int8 weights, uint8 activations)
    calibrated on up to `n_images` images of `calibration` through the model's own pre-processing. The
    settings go into the model's metadata (`quantization`), next to the fp32 export's. Returns them."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .data.preprocess import EvalTransform
    from .io import read_image
    from .pairs import list_images

    if n_images < 1:
        raise UserError(f"--calibration-images must be ≥ 1, got {n_images}")
    folder = Path(calibration)
    if not folder.is_dir():
        raise UserError(f"{folder}: calibration folder not found")
    files = list_images([folder])[:n_images]
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(weights, Path(tmp) / "fp32.onnx", opset)
        meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
        transform = EvalTransform(int(meta["image_size"]), json.loads(meta["mean"]), json.loads(meta["std"]),
                                  meta.get("color_constancy", "none"))

        class Images(CalibrationDataReader):
            def __init__(self):
                self.files = iter(files)

            def get_next(self):
                f = next(self.files, None)
                return None if f is None else {"image": transform.batch([read_image(f)])}

        prepared = Path(tmp) / "prepared.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            settings = {**INT8_DEFAULTS, "calibration_images": len(files), "calibration_folder": str(folder),
                        "excluded_nodes": list(exclude or [])}
            quantized = Path(tmp) / "int8.onnx"
            quantize_static(
                str(prepared),
                str(quantized),
                Images(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=exclude or None,
            )
        proto = onnx.load(str(quantized))
        del proto.metadata_props[:]
        for key, value in {**meta, "quantization": json.dumps(settings)}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        with atomic_path(out) as target:
            onnx.save_model(proto, str(target), save_as_external_data=False)
    return settings
