"""Behaviour pinned to recorded outputs: the mask bytes `predict` writes with every bundled model (photos,
TIFFs, DICOM), the metrics `evaluate` gives, the service's bytes, and model files written by earlier
versions of the code, which must keep loading and predicting the same.

Masks are compared byte for byte. Probabilities are compared within PROB_TOLERANCE (in 1/255 steps, the
resolution they are recorded at): float rounding differs between CPUs (AVX2, AVX-512, AMX) in the last bits,
so a probability quantised to 8 bits may land one step away on another machine.

The recorded values live in tests/golden/ (probabilities as 8-bit PNGs in tests/golden/prob/). Regenerate
them only for an intended change of behaviour:
`LESIONSEG_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_dataset
from lesionseg.cli import app

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("LESIONSEG_WRITE_GOLDEN") == "1"
SAMPLES = Path(str(resources.files("lesionseg") / "assets" / "samples"))
runner = CliRunner()
# Option sets that touch every post-processing step and TTA; each bundled model runs each one.
OPTION_SETS = {
    "plain": [],
    "tta_post": ["--tta", "--largest-component", "--fill-holes", "--min-area", "40", "--threshold", "0.4"],
}


# Largest difference allowed between a recorded and an observed 8-bit probability, and the share of pixels
# allowed to differ at all.
PROB_TOLERANCE = 2
PROB_DIFFERING_SHARE = 0.01


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_or_write(name: str, observed: dict) -> None:
    path = GOLDEN / name
    if WRITE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(observed, indent=1, sort_keys=True) + "\n")
        return
    recorded = json.loads(path.read_text())
    assert observed.keys() == recorded.keys()
    for key, value in recorded.items():
        if isinstance(value, float):
            assert observed[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert observed[key] == value, key


def check_or_write_probabilities(name: str, observed: dict[str, np.ndarray]) -> None:
    """8-bit probability pictures against tests/golden/prob/NAME/, within PROB_TOLERANCE."""
    folder = GOLDEN / "prob" / name
    if WRITE:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for key, picture in observed.items():
            Image.fromarray(picture).save(folder / f"{key}.png")
        return
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(observed)
    for key, picture in observed.items():
        recorded = np.asarray(Image.open(folder / f"{key}.png"))
        assert picture.shape == recorded.shape, key
        difference = np.abs(picture.astype(np.int16) - recorded)
        assert difference.max() <= PROB_TOLERANCE, (key, int(difference.max()))
        assert (difference > 0).mean() <= PROB_DIFFERING_SHARE, (key, float((difference > 0).mean()))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The bundled photos, the same pixels as 16-bit and LZW TIFFs, and as an RGB DICOM."""
    import tifffile

    from test_dicom import build_dicom

    folder = tmp_path_factory.mktemp("golden_inputs")
    samples = sorted(SAMPLES.glob("*.jpg"))
    for path in samples:
        shutil.copy(path, folder / path.name)
    first = np.asarray(Image.open(samples[0]).convert("RGB"))
    tifffile.imwrite(folder / "tiff16.tif", first.astype(np.uint16) * 257, photometric="rgb")
    Image.fromarray(np.asarray(Image.open(samples[1]).convert("RGB"))).save(folder / "tiff_lzw.tif",
                                                                             compression="tiff_lzw")
    build_dicom(folder / "photo.dcm", np.asarray(Image.open(samples[2]).convert("RGB")), "RGB")
    return folder


@pytest.mark.parametrize("model", ["default", "cpu", "polyp"])
def test_predict_writes_the_recorded_masks(model, inputs, tmp_path):
    import pydicom

    observed = {}
    for label, options in OPTION_SETS.items():
        out = tmp_path / label
        result = runner.invoke(app, ["predict", str(inputs), "--out", str(out), "--weights", model, *options])
        assert result.exit_code == 0, result.output
        for path in sorted(out.glob("*.png")):
            observed[f"{label}/{path.name}"] = sha(path)
        seg = pydicom.dcmread(out / "photo_seg.dcm")
        observed[f"{label}/photo_seg.pixels"] = hashlib.sha256(seg.pixel_array.tobytes()).hexdigest()
    check_or_write(f"predict_{model}.json", observed)


def test_evaluate_gives_the_recorded_metrics(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(72, 96), seed=3)
    observed = {}
    for model in ("cpu", "polyp"):
        for label, options in OPTION_SETS.items():
            out = tmp_path / f"{model}_{label}"
            result = runner.invoke(
                app, ["evaluate", "--data", str(data), "--weights", model, "--out", str(out), *options]
            )
            assert result.exit_code == 0, result.output
            metrics = json.loads((out / "metrics.json").read_text())
            observed.update({f"{model}/{label}/{k}": v for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
            observed[f"{model}/{label}/per_case.csv"] = sha(out / "per_case.csv")
    check_or_write("evaluate.json", observed)


def test_service_returns_the_bytes_predict_writes(inputs, tmp_path):
    from starlette.testclient import TestClient

    from lesionseg.serve.app import ServeConfig, create_app

    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(inputs), "--out", str(out), "--weights", "cpu"])
    assert result.exit_code == 0, result.output
    with TestClient(create_app(ServeConfig(weights="cpu"))) as client:
        for path in sorted(inputs.glob("*.jpg")) + sorted(inputs.glob("*.tif")):
            for query, name in (("format=mask", "_mask.png"),):
                response = client.post(f"/v1/segment?{query}", content=path.read_bytes())
                assert response.status_code == 200, response.text
                assert response.content == (out / f"{path.stem}{name}").read_bytes(), path.name
            response = client.post("/v1/segment?format=mask&tta=true&largest_component=true&min_area=40",
                                   content=path.read_bytes())
            assert response.status_code == 200, response.text


def test_service_tta_and_post_bytes_are_recorded(inputs):
    from starlette.testclient import TestClient

    from lesionseg.serve.app import ServeConfig, create_app

    observed, probabilities = {}, {}
    with TestClient(create_app(ServeConfig(weights="cpu"))) as client:
        for path in sorted(inputs.glob("*.jpg")):
            for query in ("tta=true&largest_component=true&min_area=40", "fill_holes=true&threshold=0.3",
                          "format=prob", "format=json"):
                response = client.post(f"/v1/segment?{query}", content=path.read_bytes())
                assert response.status_code == 200, response.text
                body = response.content
                if query == "format=prob":
                    probabilities[path.stem] = np.asarray(Image.open(io.BytesIO(body)))
                    continue
                if query == "format=json":  # all but the timings, which vary run to run
                    payload = response.json()
                    payload.pop("timings_ms")
                    body = json.dumps(payload, sort_keys=True).encode()
                observed[f"{path.name}?{query}"] = hashlib.sha256(body).hexdigest()
    check_or_write("serve_cpu.json", observed)
    check_or_write_probabilities("serve_cpu", probabilities)


def tiny_model_files() -> list[Path]:
    return sorted((GOLDEN / "models").glob("*.pt"))


@pytest.mark.parametrize("path", tiny_model_files(), ids=lambda p: p.name)
def test_model_files_of_earlier_versions_load_and_predict_the_same(path, inputs):
    """Each file was written by `save_model` of an earlier version; what it predicts must not move. These
    models are untrained, so their masks say little: the probabilities, quantised as the service's
    `format=prob` does, are recorded instead, within PROB_TOLERANCE."""
    from lesionseg.api import segmenter
    from lesionseg.io import read_image

    seg = segmenter(path)
    check_or_write(f"model_{path.stem}.json", {"tta": bool(seg.tta), "image_size": seg.image_size})
    probabilities = {}
    for image_path in sorted(inputs.glob("*.jpg")) + sorted(inputs.glob("*.tif")):
        prob = seg.predict(read_image(image_path))
        probabilities[image_path.stem] = np.round(prob * 255).astype(np.uint8)
    check_or_write_probabilities(f"model_{path.stem}", probabilities)
