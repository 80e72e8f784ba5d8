"""A 3-D network over volumes: patches in a sliding window at the model's spacing, through the same
predict, evaluate and ONNX paths as every model (the model file says `patches`)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import train_ok
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


# training: patches drawn from whole volumes, on the one training loop

TINY_3D = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "seed_unet.yaml"),
           "model.arch=unet3d", "model.in_channels=1", "model.base_width=4", "data.batch_size=2",
           "trainer.max_epochs=2", "trainer.precision=fp32", "data.val_ids=val_ids.txt",
           "data.patches_per_epoch=8"]


def labelled_cases(root: Path):
    from lesionseg.pairs import discover, validate

    return validate(discover(make_volume_dataset(root, n=4)), keep=True)


def test_the_patch_and_spacing_are_planned_from_the_training_volumes(tmp_path):
    from lesionseg.config import DataConfig
    from lesionseg.data.patch_sampler import MAX_PATCH_VOXELS, fit_patching

    cases = labelled_cases(tmp_path / "d")
    planned = fit_patching(cases, DataConfig())
    assert planned.spacing_mm == (0.8, 0.8, 2.5) and planned.patch == (24, 24, 16)  # 20x24x10, up to 8s
    given = fit_patching(cases, DataConfig(patch_size=[16, 16, 8], target_spacing_mm=[1.6, 1.6, 2.5]))
    assert given == Patching((16, 16, 8), (1.6, 1.6, 2.5))
    big = [dataclasses_replace_image(c, np.zeros((400, 400, 300), np.float32)) for c in cases[:1]]
    patch = fit_patching(big, DataConfig()).patch
    assert np.prod(patch) <= MAX_PATCH_VOXELS and all(p % 8 == 0 for p in patch)


def dataclasses_replace_image(case, array):
    import dataclasses

    return dataclasses.replace(case, image=dataclasses.replace(case.image, array=array))


def test_patches_oversample_structures_and_are_drawn_alike_for_a_seed(tmp_path):
    from lesionseg.config import AugmentConfig
    from lesionseg.data.patch_sampler import PatchDataset, patch_cases

    cases = patch_cases(labelled_cases(tmp_path / "d"), Intensity("zscore"), PATCHING)
    assert cases[0].image.shape == (10, 12, 10) and cases[0].labels.dtype == np.uint8
    assert set(cases[0].locations) == {1, 2}
    plain = PatchDataset(cases, (8, 8, 8), LABELS, 200, foreground=1.0)
    image, target = plain[0]
    assert image.shape == (1, 8, 8, 8) and target.shape == (2, 8, 8, 8) and image.dtype == torch.float32
    assert all(plain[i][1].sum() > 0 for i in range(len(cases)))  # validation patches sit on a structure
    trained = PatchDataset(cases, (8, 8, 8), LABELS, 200, foreground=1.0, aug=AugmentConfig(elastic=0.0))
    trained.set_random_seed(3)
    first = [trained[i] for i in range(3)]
    trained.set_random_seed(3)
    again = [trained[i] for i in range(3)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    on_structure = np.mean([trained[i][1].sum().item() > 0 for i in range(40)])
    sparse = PatchDataset(cases, (8, 8, 8), LABELS, 200, foreground=0.0, aug=AugmentConfig(elastic=0.0))
    anywhere = np.mean([sparse[i][1].sum().item() > 0 for i in range(40)])
    assert on_structure == 1.0 and anywhere < on_structure


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train3d")
    data = make_volume_dataset(root / "data", n=6)
    return data, train_ok(data, root / "run", *TINY_3D)


def test_training_a_3d_network_plans_its_layout_and_records_its_patches(trained_3d):
    data, run = trained_3d
    file = ModelFile.read(run / "model.pt")
    assert file.architecture.arch == "unet3d" and file.preprocessing.coverage == "patches"
    assert file.preprocessing.patching == Patching((24, 24, 16), (0.8, 0.8, 2.5))
    # the coarse third axis (2.5 mm beside 0.8) is neither convolved across nor pooled at first
    assert file.architecture.kernels[0] == [3, 3, 1] and file.architecture.strides[1] == [2, 2, 1]
    card = file.card["training_data"]
    assert card["n_train_volumes"] == 4 and card["samples"].startswith("patches")
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_dice" in rows[0]


def test_a_3d_run_resumes_and_its_model_predicts(trained_3d, tmp_path):
    data, run = trained_3d
    more = [*TINY_3D, "trainer.max_epochs=3"]  # the later of two values for a key wins
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), *more])
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output and len((run / "metrics.csv").read_text().splitlines()) == 4
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(data / "imagesTr" / "vol_000.nii.gz"), "--weights",
                                 str(run / "model.pt"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    labels = np.asarray(nib.load(out / "vol_000_labels.nii.gz").dataobj)
    assert labels.shape == (20, 24, 10) and set(np.unique(labels)) <= {0, 1, 2}


def test_a_3d_network_refuses_photos(tmp_path):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "photos", n=4)
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY_3D[:-2]])
    assert result.exit_code == 2 and "a 3-D network (model.arch unet3d) trains on volumes" in result.output


class OneLabel(torch.nn.Module):
    """A network that calls every voxel one label value (0: background)."""

    def __init__(self, value: int):
        super().__init__()
        self.value = value

    def forward(self, x):
        out = torch.full((x.shape[0], 3, *x.shape[2:]), -10.0)
        out[:, self.value] = 10.0
        return out


@pytest.mark.parametrize("value, line", [
    (0, "segmented nothing in any of the 2 validation volumes"),
    (1, f"segmented no {LABELS.structures[1].name} in any validation volume that holds it")])
def test_validation_counts_what_it_left_blank_and_training_says_so(value, line, tmp_path, monkeypatch):
    from lesionseg.training import validation

    cases = labelled_cases(tmp_path / "d")
    pre = Preprocessing(image_size=0, intensity=Intensity("zscore"), patching=PATCHING)
    scored = validation.score_volumes(OneLabel(value), LABELS, pre, cases, "cpu", torch.contiguous_format)
    assert scored["with_structures"] == 4 and scored["blank"] == (4 if value == 0 else 0)
    assert scored["never_segmented"] == [s.name for s in LABELS.structures[value == 1:]]
    assert scored["dice"] < 0.5

    real = validation.score_volumes
    monkeypatch.setattr(validation, "score_volumes", lambda network, *args: real(OneLabel(value), *args))
    data = make_volume_dataset(tmp_path / "data", n=6)
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"),
                                 *TINY_3D, "trainer.max_epochs=1"])
    assert result.exit_code == 0, result.output
    assert sum("warning: at its last validation" in row for row in result.output.splitlines()) == 1
    assert line in result.output


@pytest.mark.parametrize("grid, shape", [((10, 12, 10), (20, 24, 10)), ((13, 17, 9), (31, 40, 20)),
                                         ((30, 40, 20), (13, 17, 9)), ((8, 8, 8), (8, 8, 8))])
def test_logits_come_back_a_slab_at_a_time_as_whole_resampling_gives_them(grid, shape):
    from lesionseg.inference.coverage import resampled_rows

    logits = np.random.default_rng(0).normal(size=(3, *grid)).astype(np.float32)
    slabs = np.concatenate([resampled_rows(logits, shape, s, min(s + 7, shape[0]))
                            for s in range(0, shape[0], 7)], axis=1)
    np.testing.assert_allclose(slabs, resample(logits, shape), atol=1e-6)


@pytest.mark.parametrize("weights", ["3-D", "hippocampus"])
def test_progress_is_told_after_each_network_call_of_a_volume(weights, model_3d, tmp_path, rng):
    """Windows of a 3-D model, slices of a 2-D one: counts that rise to the volume's total, labels the
    same."""
    from lesionseg.inference import Segmenter
    from lesionseg.inference.pipeline import Progress
    from lesionseg.inference.volume_coverage import segment_volume
    from lesionseg.io.volumes import NiftiReader

    image, _ = synthetic_volume(rng)
    volume = NiftiReader().read(save_nifti(tmp_path / "scan.nii.gz", image, affine_for()))
    seg = Segmenter.load(model_3d if weights == "3-D" else weights, backend="torch")
    told: list[tuple[int, int]] = []
    labels = segment_volume(seg, volume, lambda done, total: told.append((done, total)))
    done, totals = zip(*told)
    assert told and len(set(totals)) == 1 and done[-1] == totals[0]
    assert list(done) == sorted(set(done))
    np.testing.assert_array_equal(labels, segment_volume(seg, volume))

    bar = Progress(1, enabled=True)  # predict's bar: a row for the volume in progress, gone when it is done
    bar.within(done[0], totals[0])
    (inner,) = [t for t in bar.bar.tasks if t.id != bar.task]
    assert (inner.completed, inner.total) == (done[0], totals[0])
    bar.advance()
    assert [t.id for t in bar.bar.tasks] == [bar.task]
    bar.close()


def test_the_service_runs_a_3d_models_windows_in_its_batcher_thread(model_3d, tmp_path, rng, monkeypatch):
    """Patches go through the one thread that owns the model, in turn with other requests (two volumes at
    once here), and the answers are predict's labels."""
    import gzip
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from starlette.testclient import TestClient

    from lesionseg.inference import Segmenter
    from lesionseg.serve.app import ServeConfig, create_app

    image, _ = synthetic_volume(rng)
    scan = save_nifti(tmp_path / "scan.nii.gz", image, affine_for())
    seg = Segmenter.load(model_3d, backend="torch")
    threads: list[str] = []
    network = type(seg.backend).__call__

    def recorded(self, batch):
        threads.append(threading.current_thread().name)
        return network(self, batch)

    monkeypatch.setattr(type(seg.backend), "__call__", recorded)
    with TestClient(create_app(ServeConfig(weights=str(model_3d)), segmenter=seg)) as client:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/segment/volume", content=scan.read_bytes()),
                                    range(2)))
    expected = expected_labels(model_3d, image)
    for r in answers:
        assert r.status_code == 200, r.text
        served = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
        np.testing.assert_array_equal(np.asarray(served.dataobj), expected)
    assert threads and set(threads) == {"lesionseg-batcher"}


def test_large_grids_blend_in_float16_with_the_same_labels(model_3d, tmp_path, rng, monkeypatch):
    """Past HALF_ABOVE_BYTES the blended logits are float16: probabilities within 2e-3 of float32's, and the
    same labels wherever the two most probable classes are more than 1e-2 apart."""
    from lesionseg.inference import Segmenter
    from lesionseg.inference import volume_coverage as vc
    from lesionseg.io.volumes import NiftiReader

    image, _ = synthetic_volume(rng)
    volume = NiftiReader().read(save_nifti(tmp_path / "scan.nii.gz", image, affine_for()))
    seg = Segmenter.load(model_3d, backend="torch")
    full = vc.volume_coverage(seg, volume)
    assert full.logits(False).dtype == np.float32
    monkeypatch.setattr(vc, "HALF_ABOVE_BYTES", 0)
    half = vc.volume_coverage(seg, volume)
    assert half.logits(False).dtype == np.float16
    p32, p16 = full.probabilities(tta=False), half.probabilities(tta=False)
    np.testing.assert_allclose(p16, p32, atol=2e-3)
    top2 = np.sort(np.concatenate([1 - p32.sum(0, keepdims=True), p32]), axis=0)[-2:]
    sure = (top2[1] - top2[0]) > 1e-2
    labels = [np.concatenate([1 - p.sum(0, keepdims=True), p]).argmax(0) for p in (p32, p16)]
    np.testing.assert_array_equal(labels[1][sure], labels[0][sure])
