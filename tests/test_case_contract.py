"""One contract that every kind of case keeps: a photo (one structure), a radiograph-like image of
overlapping structures, and a volume (NIfTI, exclusive structures, slice by slice). For each kind:
- ONNX Runtime segments as torch does;
- the service answers what `predict` writes, byte for byte (label volumes voxel for voxel);
- `evaluate` scores exactly what `predict` writes;
- a broken input is refused in one line naming it, and nothing is written for it.

The models are small and untrained: their masks are arbitrary but deterministic, which is all a contract
of equalities needs."""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_dataset
from lesionseg.cli import app
from lesionseg.config import ModelConfig
from lesionseg.labels import Labels
from lesionseg.model_file import ModelFile, Preprocessing
from lesionseg.models import build_model

runner = CliRunner()
VOLUME_LABELS = Labels.of("exclusive", [("Anterior", 1), ("Posterior", 2)])
STRUCTURE_LABELS = Labels.of("overlapping", [("disc", 1), ("bar", 2)])


@dataclass
class Kind:
    model: Path
    data: Path  # labelled
    inputs: Path  # what predict and the service take, one file per case
    suffix: str  # of the input files
    outputs: Callable[[Path, str], dict[str, np.ndarray]]  # predict's results for one case, by structure
    truth: Callable[[str], dict[str, np.ndarray]]  # the labelled truth for one case, by structure
    queries: dict[str, str]  # the service's query for each structure's answer ("" when one answer has all)


def _model(path: Path, labels: Labels, pre: Preprocessing, in_channels: int = 3) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(base_width=4, depth=2, in_channels=in_channels, out_channels=labels.out_channels)
    ModelFile.from_model(build_model(cfg), cfg, pre, {"note": "contract test"}, labels).write(path)
    return path


def _mask(path: Path) -> np.ndarray:
    from lesionseg.io import read_mask

    return read_mask(path)


def photo_kind(root: Path) -> Kind:
    from lesionseg.pairs import discover, load_pair

    data = make_dataset(root / "photos", n=4, size=(40, 56))
    pairs = {p.id: p for p in discover(data)}
    return Kind(_model(root / "photo.pt", Labels.binary(), Preprocessing(32)), data, data / "images", ".png",
                lambda out, i: {"foreground": _mask(out / f"{i}_mask.png")},
                lambda i: {"foreground": load_pair(pairs[i])[1]}, {"foreground": ""})


def structures_kind(root: Path) -> Kind:
    from lesionseg.pairs import discover, load_pair
    from test_structures import make_folders

    data = make_folders(root / "structures", n=4)
    pairs = {p.id: p for p in discover(data)}
    names = STRUCTURE_LABELS.names

    def truth(i: str) -> dict[str, np.ndarray]:
        channels = load_pair(pairs[i])[1]
        order = [p.name for p in sorted((data / "masks").iterdir())]  # the layout's channels, by folder name
        return {n: channels[..., order.index(n)] == 1 for n in names}

    model = _model(root / "structures.pt", STRUCTURE_LABELS, Preprocessing(32))
    return Kind(model, data, data / "images", ".png",
                lambda out, i: {n: _mask(out / f"{i}_mask_{n}.png") for n in names}, truth,
                {n: f"structure={n}" for n in names})


def volume_kind(root: Path) -> Kind:
    from lesionseg.inference.coverage import Slicing
    from lesionseg.intensity import Intensity
    from test_volumes import make_volume_dataset

    data = make_volume_dataset(root / "volumes", n=3)
    pre = Preprocessing(0, intensity=Intensity("zscore"), slicing=Slicing(None, 3, (0.8, 0.8), 3))

    def by_structure(labels: np.ndarray) -> dict[str, np.ndarray]:
        return {s.name: labels == s.value for s in VOLUME_LABELS.structures}

    return Kind(_model(root / "volume.pt", VOLUME_LABELS, pre), data, data / "imagesTr", ".nii.gz",
                lambda out, i: by_structure(np.asarray(nib.load(out / f"{i}_labels.nii.gz").dataobj)),
                lambda i: by_structure(np.asarray(nib.load(data / "labelsTr" / f"{i}.nii.gz").dataobj)),
                {"": "format=nifti"})


KINDS = {"photo": photo_kind, "structures": structures_kind, "volume": volume_kind}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request, tmp_path_factory) -> Kind:
    return KINDS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def predicted(kind, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predicted")
    result = runner.invoke(app, ["predict", str(kind.inputs), "--weights", str(kind.model), "--out", str(out),
                                 "--overwrite"])
    assert result.exit_code == 0, result.output
    return out


def case_ids(kind: Kind) -> list[str]:
    return sorted(p.name[: -len(kind.suffix)] for p in kind.inputs.iterdir() if p.name.endswith(kind.suffix))


def test_onnx_runtime_segments_as_torch_does(kind, predicted, tmp_path):
    from lesionseg.export import export_onnx

    onnx = export_onnx(kind.model, tmp_path / "m.onnx")
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["predict", str(kind.inputs), "--weights", str(onnx), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for case in case_ids(kind):
        for name, mask in kind.outputs(predicted, case).items():
            # the last bits of two runtimes may move a pixel that sits exactly at the threshold
            assert (mask != kind.outputs(out, case)[name]).mean() < 0.002, (case, name)


def test_the_service_answers_what_predict_writes(kind, predicted):
    from starlette.testclient import TestClient

    from lesionseg.serve.app import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(weights=str(kind.model)))) as client:
        for case in case_ids(kind):
            body = (kind.inputs / f"{case}{kind.suffix}").read_bytes()
            written = kind.outputs(predicted, case)
            for name, query in kind.queries.items():
                response = client.post(f"/v1/segment?{query}", content=body)
                assert response.status_code == 200, response.text
                if name:  # a mask PNG: the very bytes predict wrote
                    mask = f"{case}_mask.png" if len(kind.queries) == 1 else f"{case}_mask_{name}.png"
                    assert response.content == (predicted / mask).read_bytes(), (case, name)
                else:  # a label volume: the same voxels on the same grid
                    served = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
                    labels = np.asarray(served.dataobj)
                    for structure in VOLUME_LABELS.structures:
                        np.testing.assert_array_equal(labels == structure.value, written[structure.name])


def test_evaluate_scores_exactly_what_predict_writes(kind, predicted, tmp_path):
    out = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", "--data", str(kind.data), "--weights", str(kind.model),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in csv.DictReader((out / "per_case.csv").open())}
    assert sorted(rows) == case_ids(kind) or sorted(rows) == sorted(i.removesuffix("_0000")
                                                                    for i in case_ids(kind))
    for case, row in rows.items():
        written = kind.outputs(predicted, case if (kind.inputs / f"{case}{kind.suffix}").exists()
                               else f"{case}_0000")
        for name, truth in kind.truth(case).items():
            pred = written[name]
            both = (pred & truth).sum()
            if "jaccard" in row:  # one structure: every pixel counts; empty against empty is 1
                union = (pred | truth).sum()
                assert float(row["jaccard"]) == pytest.approx(both / union if union else 1.0, abs=1e-6)
            elif pred.any() or truth.any():
                assert float(row[f"{name}_dice"]) == pytest.approx(2 * both / (pred.sum() + truth.sum()),
                                                                  abs=1e-6)
            else:
                assert row[f"{name}_dice"] == ""


def test_a_broken_input_is_refused_in_one_line_and_nothing_is_written(kind, tmp_path):
    from starlette.testclient import TestClient

    from lesionseg.serve.app import ServeConfig, create_app

    case = case_ids(kind)[0]
    broken = tmp_path / "in" / f"broken{kind.suffix}"
    broken.parent.mkdir()
    broken.write_bytes((kind.inputs / f"{case}{kind.suffix}").read_bytes()[:300])
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(broken), "--weights", str(kind.model), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "Traceback" not in result.output
    assert not list(out.glob("broken*"))
    with TestClient(create_app(ServeConfig(weights=str(kind.model)))) as client:
        response = client.post("/v1/segment", content=broken.read_bytes())
        assert 400 <= response.status_code < 500 and response.json()["error"]
