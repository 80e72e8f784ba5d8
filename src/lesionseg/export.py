"""ONNX export: one self-contained file (no external .data), dynamic batch/height/width, with the model
file's pre-processing and card stored as metadata (`ModelFile.onnx_metadata`); statically quantized int8;
and the cache of exports that `--backend onnx` runs from."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_path
from .model_file import ModelFile

ONNX_OPSET = 18
VOLUME_EXAMPLE_SIDE = 64  # the traced example's side for a model fed slices at their own size
# The quantization lesionseg applies (recorded in the int8 model's metadata as `quantization`).
INT8_SETTINGS = {"format": "QDQ", "activations": "QUInt8", "weights": "QInt8", "per_channel": True,
                 "calibration": "MinMax", "calibration_images": 64}


def export_onnx(weights: str | Path | None, out: str | Path, opset: int = ONNX_OPSET) -> Path:
    import onnx
    import torch

    from .models import load_model

    if opset < 17:
        raise UserError(f"--opset {opset}: lesionseg exports need opset ≥ 17")
    loaded = load_model(weights)
    model = loaded.model.eval().float().to(memory_format=torch.contiguous_format)
    spatial = ("depth", "height", "width")[-loaded.config.dimensions:]
    # the network's input size (a patch, for 3-D), or a size of the example's own for slices of volumes
    size = loaded.file.preprocessing.input_size
    if size is None or len(size) != len(spatial):
        size = (VOLUME_EXAMPLE_SIDE,) * len(spatial)
    # a promptable model's graph reads its click channels after the image's (zeros: no click)
    example = torch.randn(2, loaded.config.in_channels + loaded.config.prompt_channels, *size)
    dims = {0: torch.export.Dim("batch", min=1, max=1024),
            **{i + 2: torch.export.Dim(name, min=1, max=16384) for i, name in enumerate(spatial)}}
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                    output_names=["logits"], dynamic_shapes=(dims,), opset_version=opset,
                                    external_data=False, verbose=False)
        proto = program.model_proto
        _add_metadata(proto, loaded.file.onnx_metadata())
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp))
    return out


def _add_metadata(proto, meta: dict[str, str]) -> None:
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_int8(weights: str | Path | None, out: str | Path, calibration: str | Path, n_images: int = 64,
                opset: int = ONNX_OPSET, exclude: list[str] | None = None) -> dict:
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

    from .io import list_images, read_image
    from .models.bundled import resolve_weights

    if ModelFile.read(resolve_weights(weights)).preprocessing.covers_volumes:
        raise UserError(f"{weights}: INT8 calibration reads photos; export a volume model with `export` "
                        "(fp32)")

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
        onnx_file = ModelFile.from_onnx_metadata(meta)
        transform = onnx_file.preprocessing.transform()

        class Images(CalibrationDataReader):
            def __init__(self):
                self.files = iter(files)
                self.rng = np.random.default_rng(0)

            def get_next(self):
                f = next(self.files, None)
                if f is None:
                    return None
                batch = transform.batch([read_image(f)])
                if onnx_file.click_channels:  # calibrated with clicks, or their range would quantize to 0
                    clicks = calibration_clicks(batch.shape[2:], onnx_file.click_channels, self.rng)
                    batch = np.concatenate([batch, clicks], axis=1)
                return {"image": batch}

        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        settings = {**INT8_SETTINGS, "calibration_images": len(files), "calibration_folder": str(folder),
                    "excluded_nodes": list(exclude or [])}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantized), Images(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or None)
        proto = onnx.load(str(quantized))
        del proto.metadata_props[:]
        _add_metadata(proto, {**meta, "quantization": json.dumps(settings)})
        with atomic_path(out) as target:
            onnx.save_model(proto, str(target), save_as_external_data=False)
    return settings


def calibration_clicks(shape: tuple[int, ...], channels: int, rng: np.random.Generator) -> np.ndarray:
    """(1, channels, *shape) click channels for calibrating a promptable model: one positive and one negative
    click at random places on a random structure's pair."""
    from .clicks import Click, click_maps, click_radius

    out = np.zeros((1, channels, *shape), np.float32)
    k = int(rng.integers(channels // 2))
    at = [tuple(int(rng.integers(n)) for n in shape) for _ in range(2)]
    placed = [Click(at[0], True), Click(at[1], False)]
    out[0, 2 * k:2 * k + 2] = click_maps(shape, placed, click_radius(shape))
    return out


def cached_onnx(weights: str | Path | None) -> Path:
    """The ONNX export of a model file, made on first use under $XDG_CACHE_HOME/lesionseg (~/.cache), named
    by a hash of the model file's bytes, so a changed model is exported again."""
    import hashlib
    import os
    import sys

    from .models.bundled import resolve_weights

    source = resolve_weights(weights)
    if not source.is_file():
        raise UserError(f"{source}: model file not found")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lesionseg"
    target = cache / f"{source.stem}-{digest}.onnx"
    if not target.is_file():
        print(f"lesionseg: exporting {source.name} to ONNX once ({target}); this takes a while",
              file=sys.stderr, flush=True)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{cache}: cannot create the ONNX cache ({exc.strerror})") from None
        export_onnx(source, target)
    return target
