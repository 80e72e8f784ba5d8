"""A 3-D network over volumes: patches in a sliding window at the model's spacing, through the same
predict, evaluate and ONNX paths as every model (the model file says `patches`)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lesionseg.cli import app
from lesionseg.config import ModelConfig
from lesionseg.inference.coverage import Patching, resample
from lesionseg.inference.sliding_window import sliding_window
from lesionseg.intensity import Intensity
from lesionseg.model_file import ModelFile, Preprocessing
from lesionseg.models import build_model
from test_volumes import LABELS, affine_for, make_volume_dataset, save_nifti, synthetic_volume

runner = CliRunner()
PATCHING = Patching(patch=(8, 8, 8), spacing_mm=(1.6, 1.6, 2.5))  # the volumes are 0.8 × 0.8 × 2.5 mm


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet3d", in_channels=1, out_channels=3, base_width=4, depth=2,
                      strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]], kernels=[[3, 3, 1], [3, 3, 3], [3, 3, 3]])
    pre = Preprocessing(image_size=0, intensity=Intensity("zscore"), patching=PATCHING)
    path = tmp_path_factory.mktemp("m3d") / "model.pt"
    ModelFile.from_model(build_model(cfg).eval(), cfg, pre, {"note": "untrained"}, LABELS).write(path)
    return path


def test_the_model_file_says_it_is_3d_and_covers_by_patches(model_3d):
    file = ModelFile.read(model_3d)
    pre = file.preprocessing
    assert file.format_version == 6 and pre.patching == PATCHING and pre.covers_volumes
    described = pre.describe()
    assert (described["dimensions"], described["coverage"], described["input_size"]) == (3, "patches",
                                                                                          (8, 8, 8))
    assert described["channels"] == {"count": 1, "from": "the volume", "normalisation": {"scheme": "zscore"}}


def expected_labels(model_path: Path, image: np.ndarray) -> np.ndarray:
    """The path written out by hand: z-score, resample to the model's grid, sliding window, back, argmax."""
    from lesionseg.models import load_model

    net = load_model(model_path).model
    normalised = Intensity("zscore").apply(image)
    grid = PATCHING.grid(image.shape, (0.8, 0.8, 2.5))
    assert grid == (10, 12, 10)

    def predict(batch):
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    logits = sliding_window(predict, resample(normalised, grid)[None], PATCHING.patch, 0.5)
    return np.asarray([0, 1, 2], np.uint8)[resample(logits, image.shape).argmax(0)]


def test_predict_writes_the_sliding_window_labels(model_3d, tmp_path, rng):
    image, _ = synthetic_volume(rng)
    scan = save_nifti(tmp_path / "scan.nii.gz", image, affine_for())
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(scan), "--weights", str(model_3d), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = nib.load(tmp_path / "out" / "scan_labels.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected_labels(model_3d, image))
    np.testing.assert_allclose(written.affine, affine_for())


def test_onnx_runs_the_same_sliding_window(model_3d, tmp_path, rng):
    """ONNX Runtime without torch gives the torch path's probabilities within 1e-4 and the same labels
    wherever the two most probable classes are more than 1e-3 apart."""
    from lesionseg.inference import Segmenter
    from lesionseg.inference.volume_coverage import volume_coverage
    from lesionseg.io.volumes import NiftiReader

    image, _ = synthetic_volume(rng)
    volume = NiftiReader().read(save_nifti(tmp_path / "scan.nii.gz", image, affine_for()))
    onnx = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", "--weights", str(model_3d), "--out", str(onnx)]).exit_code == 0
    probs = {name: volume_coverage(Segmenter.load(w, backend=name), volume).probabilities(tta=False)
             for name, w in (("torch", model_3d), ("onnx", onnx))}
    np.testing.assert_allclose(probs["onnx"], probs["torch"], atol=1e-4)
    top2 = np.sort(np.concatenate([1 - probs["torch"].sum(0, keepdims=True), probs["torch"]]), axis=0)[-2:]
    sure = (top2[1] - top2[0]) > 1e-3
    labels = {k: np.concatenate([1 - p.sum(0, keepdims=True), p]).argmax(0) for k, p in probs.items()}
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(labels["onnx"][sure], labels["torch"][sure])


def test_mirroring_under_tta_and_evaluate_scores_what_predict_writes(model_3d, tmp_path):
    data = make_volume_dataset(tmp_path / "data", n=2)
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--weights", str(model_3d), "--data", str(data),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    pred = tmp_path / "pred"
    assert runner.invoke(app, ["predict", str(data / "imagesTr"), "--weights", str(model_3d),
                               "--out", str(pred)]).exit_code == 0
    from lesionseg.evaluation import score_volume

    rows = {r.split(",")[0]: r for r in (out / "per_case.csv").read_text().splitlines()[1:]}
    for case in rows:
        predicted = np.asarray(nib.load(pred / f"{case}_labels.nii.gz").dataobj)
        truth = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj)
        scores = score_volume(predicted, truth, LABELS, (0.8, 0.8, 2.5), 0.8 * 0.8 * 2.5, 2.0)
        dice = [s["dice"] for s in scores if s is not None]
        assert f"{np.mean(dice):.6f}" in rows[case]
    tta = tmp_path / "pred_tta"
    assert runner.invoke(app, ["predict", str(data / "imagesTr"), "--weights", str(model_3d), "--tta",
                               "--out", str(tta)]).exit_code == 0
    plain = np.asarray(nib.load(pred / "vol_000_labels.nii.gz").dataobj)
    mirrored = np.asarray(nib.load(tta / "vol_000_labels.nii.gz").dataobj)
    assert plain.shape == mirrored.shape and (plain != mirrored).any()
