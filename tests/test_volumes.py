"""Volumes: NIfTI and DICOM series in, slice-wise training and inference, NIfTI label maps and DICOM SEG out
in the input's own space, volumes in mL, per-volume evaluation in mm, the service. Every volume here is
made by the tests (small synthetic MR-like crops with two touching structures)."""

from __future__ import annotations

import gzip
import io
import json
import re
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from conftest import SEED_RECIPE, train_ok
from lesionseg.cli import app
from lesionseg.errors import UserError
from lesionseg.inference.coverage import Slicing
from lesionseg.intensity import Intensity, modality_scheme
from lesionseg.io.registry import read_volume
from lesionseg.io.volumes import (
    RAS_FROM_LPS,
    NiftiReader,
    Volume,
    nifti_label_image,
    read_label_volume,
    write_nifti_labels,
)
from lesionseg.labels import Labels
from lesionseg.measurement import structure_volumes
from lesionseg.metrics import structure_scores
from lesionseg.model_file import ModelFile
from lesionseg.pairs import discover, labels_of, validate
from lesionseg.postprocess import clean_volume

runner = CliRunner()
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SHAPE = (20, 24, 10)
SPACING = (0.8, 0.8, 2.5)  # anisotropic: the slice axis is the last
LABELS = Labels.of("exclusive", [("Anterior", 1), ("Posterior", 2)])


def synthetic_volume(rng: np.random.Generator, shape=SHAPE, scale: float = 1.0):
    """(image float32, labels uint8): an ellipsoid split into a front (1) and back (2) part, brighter than
    the tissue around it; intensities × `scale` (datasets mix wildly different ranges)."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = [n / 2 + rng.uniform(-1.5, 1.5) for n in shape]
    r = [n * rng.uniform(0.22, 0.3) for n in shape]
    inside = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
    labels = np.where(inside, np.where(y < c[1], 1, 2), 0).astype(np.uint8)
    image = 100 + 60 * inside + 25 * (labels == 2) + rng.normal(0, 6, shape)
    return (image * scale).astype(np.float32), labels


def affine_for(spacing=SPACING, origin=(-10.0, 5.0, 3.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype=None) -> Path:
    image = nib.Nifti1Image(array.astype(dtype or array.dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    nib.save(image, str(path))
    return path


def make_volume_dataset(root: Path, n: int = 6, layout: str = "msd", seed: int = 0) -> Path:
    """MSD (imagesTr/case.nii.gz) or nnU-Net v2 (imagesTr/case_0000.nii.gz) layout with a dataset.json."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        image, labels = synthetic_volume(rng, scale=[1.0, 0.01, 3000.0][i % 3])
        case = f"vol_{i:03d}"
        name = f"{case}_0000.nii.gz" if layout == "nnunet" else f"{case}.nii.gz"
        save_nifti(root / "imagesTr" / name, image, affine_for())
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", labels, affine_for())
    if layout == "nnunet":
        doc = {
            "channel_names": {"0": "T1"},
            "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
            "numTraining": n,
            "file_ending": ".nii.gz",
        }
    else:
        doc = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}
    (root / "dataset.json").write_text(json.dumps(doc))
    (root / "val_ids.txt").write_text("vol_000\nvol_001\n")
    return root


def dicom_slice(
    path: Path,
    pixels: np.ndarray,
    position,
    orientation,
    spacing,
    series: str,
    study: str,
    frame_of_reference: str,
    number: int,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR_IMAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
    ds.PatientID, ds.PatientName, ds.StudyID, ds.AccessionNumber = "VOL1", "Volume^Test", "1", "A1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, number
    ds.StudyDate, ds.StudyTime, ds.Manufacturer = "20260101", "120000", "test"  # PatientBirthDate left out
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_series(
    folder: Path,
    image: np.ndarray,
    gap: float = 2.5,
    skip: int | None = None,
    tilt: float = 0.0,
    series: str | None = None,
    prefix: str = "im",
) -> Path:
    """One DICOM series of `image` (column, row, slice order), written in shuffled file order."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = series or generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(3).permutation(image.shape[2])
    for n, k in enumerate(order):
        if k == skip:
            continue
        position = (-12.0 + tilt * k, 7.0, 30.0 + gap * k)
        dicom_slice(
            folder / f"{prefix}{n:03d}.dcm",
            image[:, :, k].T,
            position,
            (1, 0, 0, 0, 1, 0),
            (0.8, 0.8),
            series,
            study,
            frame,
            int(k) + 1,
        )
    return folder


# reading and writing


def test_nifti_label_map_keeps_the_affine_and_header(tmp_path, rng):
    image, labels = synthetic_volume(rng)
    src = save_nifti(tmp_path / "case.nii.gz", image, affine_for())
    volume = read_volume(src)
    assert volume.array.shape == SHAPE and volume.spacing == pytest.approx(SPACING)
    out = tmp_path / "case_labels.nii.gz"
    write_nifti_labels(out, labels, volume)
    back = nib.load(str(out))
    original = nib.load(str(src))
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
    np.testing.assert_array_equal(back.affine, original.affine)
    for key in ("qform_code", "sform_code", "pixdim", "quatern_b", "qoffset_x", "srow_x", "dim"):
        np.testing.assert_array_equal(back.header[key], original.header[key])
    assert back.get_data_dtype() == np.uint8
    assert np.asarray(read_label_volume(out, volume) == labels).all()


def test_oblique_nifti_is_segmented_in_voxel_space_with_its_affine(tmp_path, rng):
    image, labels = synthetic_volume(rng)
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = affine_for()
    affine[:3, :3] = rot @ np.diag(SPACING)
    volume = read_volume(save_nifti(tmp_path / "oblique.nii", image, affine))
    assert volume.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(nifti_label_image(labels, volume).affine, affine, atol=1e-6)


@pytest.mark.parametrize("problem", ["truncated", "4d", "garbage"])
def test_bad_nifti_one_line_naming_the_file(tmp_path, rng, problem):
    image, _ = synthetic_volume(rng)
    path = save_nifti(
        tmp_path / "bad.nii.gz", np.stack([image, image], -1) if problem == "4d" else image, affine_for()
    )
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if problem == "garbage":
        path.write_bytes(b"not a nifti at all" * 40)
    with pytest.raises(UserError) as err:
        read_volume(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert {"truncated": "truncated", "4d": "4-D", "garbage": "not a readable NIfTI"}[problem] in message


def test_label_volume_on_another_grid_is_refused(tmp_path, rng):
    image, labels = synthetic_volume(rng)
    volume = read_volume(save_nifti(tmp_path / "a.nii.gz", image, affine_for()))
    wrong_shape = save_nifti(tmp_path / "l1.nii.gz", labels[:-1], affine_for())
    wrong_affine = save_nifti(tmp_path / "l2.nii.gz", labels, affine_for(origin=(0, 0, 0)))
    with pytest.raises(UserError, match="another grid"):
        read_label_volume(wrong_shape, volume)
    with pytest.raises(UserError, match="another affine"):
        read_label_volume(wrong_affine, volume)


def test_dicom_series_sorted_by_position_with_its_affine(tmp_path, rng):
    image, _ = synthetic_volume(rng)
    pixels = np.round(image).astype(np.int16)
    folder = make_series(tmp_path / "series", pixels)
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.array, pixels.astype(np.float32))  # shuffled files, sorted slices
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5)) and volume.modality == "MR"
    lps = np.eye(4)
    lps[:3, :3] = np.diag([0.8, 0.8, 2.5])
    lps[:3, 3] = (-12.0, 7.0, 30.0)
    np.testing.assert_allclose(volume.affine, RAS_FROM_LPS @ lps)
    assert len(volume.datasets) == SHAPE[2]


def test_bad_series_one_line_each(tmp_path, rng):
    image, _ = synthetic_volume(rng)
    pixels = np.round(image).astype(np.int16)
    two = make_series(tmp_path / "two", pixels[:, :, :4])
    make_series(tmp_path / "two", pixels[:, :, 4:8], series="1.2.3.4", prefix="other")
    cases = {
        "two": (two, "2 DICOM series in one folder"),
        "gap": (make_series(tmp_path / "gap", pixels, skip=4), "uneven slice spacing"),
        "tilt": (make_series(tmp_path / "tilt", pixels, tilt=0.9), "oblique stack"),
    }
    for folder, expected in cases.values():
        with pytest.raises(UserError) as err:
            read_volume(folder)
        assert expected in str(err.value) and str(folder) in str(err.value) and "\n" not in str(err.value)
    assert "1.2.3.4" in str(pytest.raises(UserError, read_volume, two).value)


# normalisation, slicing, clean-up, volumes


def test_mr_zscore_ignores_a_cropped_background_and_ct_clips_to_the_foreground(rng):
    x = np.zeros((10, 10, 10), np.float32)
    x[2:8, 2:8, 2:8] = rng.normal(500, 50, (6, 6, 6))  # 78% zeros: background of a crop
    out = Intensity("zscore").apply(x)
    assert (out[x == 0] == 0).all()
    assert out[x != 0].mean() == pytest.approx(0, abs=1e-5) and out[x != 0].std() == pytest.approx(
        1, abs=1e-4
    )
    full = rng.normal(3, 2, (8, 8, 8)).astype(np.float32)
    z = Intensity("zscore").apply(full)
    assert z.mean() == pytest.approx(0, abs=1e-5) and z.std() == pytest.approx(1, abs=1e-4)
    assert Intensity("zscore").apply(full * 1000 + 7) == pytest.approx(z, abs=1e-4)  # scale-free
    hu = rng.normal(40, 300, (12, 12, 12)).astype(np.float32)
    labels = np.zeros_like(hu, np.uint8)
    labels[3:9, 3:9, 3:9] = 1
    ct = Intensity.fit("ct", [(hu, labels)])
    lo, hi = np.percentile(hu[labels > 0], (0.5, 99.5))
    assert ct.clip == pytest.approx((lo, hi))
    assert Intensity.from_dict(ct.to_dict()) == ct
    assert ct.apply(hu).max() == pytest.approx((hi - ct.mean) / ct.std, rel=1e-4)
    assert (
        modality_scheme("CT") == "ct"
        and modality_scheme("MRI") == "zscore"
        and modality_scheme(None) == "zscore"
    )


def test_slice_axis_context_and_in_plane_resampling():
    s = Slicing(context=3, spacing_mm=(0.8, 0.8))
    assert s.axis_for((0.8, 0.8, 2.5)) == 2 and s.axis_for((1.0, 1.0, 1.0)) == 0
    assert s.axis_for((3.0, 0.5, 0.5)) == 0 and Slicing(axis=1).axis_for((1, 1, 5)) == 1
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    images = list(s.images(volume, 2))
    assert len(images) == 6 and images[0].shape == (4, 5, 3)
    np.testing.assert_array_equal(images[0][..., 0], volume[:, :, 0])  # the edge repeats the outer slice
    np.testing.assert_array_equal(images[3][..., 2], volume[:, :, 4])
    assert s.plane_size((4, 5, 6), (1.6, 0.8, 2.5), 2) == (8, 5)
    assert s.plane_size((4, 5, 6), (0.8, 0.8, 2.5), 2) == (4, 5)
    lone = list(Slicing(context=1).images(volume, 0))[1]
    assert lone.shape == (5, 6, 3) and (lone[..., 0] == lone[..., 2]).all()
    assert Slicing.from_dict(s.to_dict()) == s
    with pytest.raises(UserError, match="odd"):
        Slicing(context=2)


def test_clean_up_runs_in_3d_and_volumes_are_in_ml():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    labels[8, 8, 8] = 1  # a stray voxel: another 3-D component
    labels[5:9, 1:5, 1:5] = 2
    from lesionseg.postprocess import PostprocessConfig

    cleaned = clean_volume(labels, [1, 2], PostprocessConfig(largest_component=True))
    assert cleaned[8, 8, 8] == 0 and (cleaned[1:5, 1:5, 1:5] == 1).all() and (cleaned == 2).sum() == 64
    v = structure_volumes(cleaned, LABELS, voxel_mm3=0.8 * 0.8 * 2.5)
    assert v["Anterior"] == {"voxels": 64, "mm3": pytest.approx(102.4), "ml": pytest.approx(0.1024)}


def test_3d_scores_match_monai_with_anisotropic_spacing(rng):
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    _, truth = synthetic_volume(rng)
    pred = np.roll(truth, 1, axis=0)
    for value in (1, 2):
        p, t = pred == value, truth == value
        ours = structure_scores(p, t, None, SPACING, 2.0)
        onehot = [torch.from_numpy(np.stack([~m, m])[None].astype(np.float32)) for m in (p, t)]
        hd = compute_hausdorff_distance(*onehot, percentile=95, spacing=list(SPACING))
        nsd = compute_surface_dice(*onehot, class_thresholds=[2.0], spacing=list(SPACING))
        assert ours["hd95"] == pytest.approx(float(hd[0, 0]), abs=1e-5)
        assert ours["nsd"] == pytest.approx(float(nsd[0, 0]), abs=1e-5)


# datasets, training, predict, evaluate, export, serve


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_dataset_layouts_are_read_without_renaming(tmp_path, layout):
    root = make_volume_dataset(tmp_path / layout, n=3, layout=layout)
    pairs = discover(root)
    assert [p.id for p in pairs] == ["vol_000", "vol_001", "vol_002"]
    assert labels_of(pairs).names == LABELS.names
    assert [s.value for s in labels_of(pairs).structures] == [1, 2]
    items = validate(pairs, keep=True)
    assert items[0].truth.max() == 2 and items[0].image.array.shape == SHAPE


def test_undeclared_label_value_and_channel_two_are_refused(tmp_path):
    root = make_volume_dataset(tmp_path / "d", n=2)
    labels = nib.load(str(root / "labelsTr" / "vol_001.nii.gz"))
    data = np.asarray(labels.dataobj).copy()
    data[0, 0, 0] = 7
    save_nifti(root / "labelsTr" / "vol_001.nii.gz", data, labels.affine)
    result = runner.invoke(app, ["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY])
    assert result.exit_code == 2 and "vol_001.nii.gz: label value(s) [7] not declared" in result.output
    assert not (tmp_path / "run").exists()


TINY = [*SEED_RECIPE,
    "model.encoder=plain",
    "model.base_width=4",
    "model.depth=2",
    "data.image_size=32",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.precision=fp32",
    "data.val_ids=val_ids.txt",
    "optim.lr=3e-3",
    "data.slice_context=3",
    "model.in_channels=3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("volumes")
    data = make_volume_dataset(root / "data", n=6, layout="nnunet")
    return data, train_ok(data, root / "run", *TINY) / "model.pt"


def test_train_records_how_volumes_are_cut_and_normalised(trained):
    file = ModelFile.read(trained[1])
    pre = file.preprocessing
    assert file.format_version == 4 and file.labels.names == ("Anterior", "Posterior")
    assert pre.covers_volumes and pre.image_size == 0 and pre.intensity == Intensity("zscore")
    assert (pre.dimensions, pre.coverage, pre.input_size) == (2, "slices", None)
    assert pre.slicing == Slicing(axis=None, context=3, spacing_mm=(0.8, 0.8), channels=3)
    assert file.card["training_data"]["n_train_volumes"] == 4


def test_predict_nifti_and_series_write_label_maps_seg_and_volumes(trained, tmp_path, rng):
    import highdicom as hd

    _, model = trained
    image, _ = synthetic_volume(rng)
    (tmp_path / "in").mkdir()
    nifti = save_nifti(tmp_path / "in" / "scan.nii.gz", image, affine_for())
    series = make_series(tmp_path / "series_in" / "mr_series", np.round(image).astype(np.int16))
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "predict",
            str(nifti),
            str(series.parent),
            "--weights",
            str(model),
            "--out",
            str(out),
            "--report",
            "--manifest",
            str(out / "manifest.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "mL" in result.output
    labels = nib.load(str(out / "scan_labels.nii.gz"))
    np.testing.assert_array_equal(labels.affine, nib.load(str(nifti)).affine)
    label_map = np.asarray(labels.dataobj)
    assert label_map.shape == SHAPE
    doc = json.loads((out / "volumes.json").read_text())
    by_id = {v["id"]: v for v in doc["volumes"]}
    voxel = 0.8 * 0.8 * 2.5
    assert by_id["scan"]["structures"]["Anterior"]["ml"] == pytest.approx(
        (label_map == 1).sum() * voxel / 1000, abs=1e-4
    )
    seg = hd.seg.segread(out / "mr_series_seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Anterior", "Posterior"]
    referenced = {
        r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.iterdir()}
    assert referenced == sources
    series_labels = np.asarray(nib.load(str(out / "mr_series_labels.nii.gz")).dataobj)
    volume = read_volume(series)
    for number, value in ((1, 1), (2, 2)):
        frames = seg.get_volume(segment_numbers=[number], combine_segments=False)  # (slice, row, col, 1)
        np.testing.assert_array_equal(
            np.asarray(frames.array)[..., 0].transpose(2, 1, 0) > 0, series_labels == value
        )
    assert (out / "scan_views.png").is_file() and (out / "report.html").is_file()
    import csv

    rows = {r["id"]: r for r in csv.DictReader((out / "manifest.csv").open())}
    assert "Anterior" in rows["scan"]["areas"]
    assert rows["scan"]["shape"] == "x".join(map(str, image.shape)) and rows["scan"]["width"] == ""
    # a NIfTI header stores the affine in float32
    np.testing.assert_allclose(
        nib.load(str(out / "mr_series_labels.nii.gz")).affine, volume.affine, atol=1e-5
    )


def test_predict_refuses_a_bad_volume_and_writes_nothing_for_it(trained, tmp_path, rng):
    _, model = trained
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.parent.mkdir()
    image, _ = synthetic_volume(rng)
    save_nifti(bad, image, affine_for())
    bad.write_bytes(bad.read_bytes()[:400])
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(bad), "--weights", str(model), "--out", str(out)])
    assert result.exit_code == 2 and f"{bad}: not a readable NIfTI file" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list(out.glob("broken*"))


@pytest.mark.parametrize("flags", [["--pixel-spacing", "0.5"], ["--workers", "3"], ["--strict"]])
def test_predict_on_volumes_refuses_the_flags_it_cannot_honour(trained, tmp_path, rng, flags):
    """Photo flags are refused in one line naming them, not dropped without a word."""
    _, model = trained
    image, _ = synthetic_volume(rng)
    path = save_nifti(tmp_path / "scan.nii.gz", image, affine_for())
    out = tmp_path / "o"
    result = runner.invoke(app, ["predict", str(path), "--weights", str(model), "--out", str(out), *flags])
    assert result.exit_code == 2 and flags[0] in result.output and "for photos" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("flags", [["--pixel-spacing", "0.5"], ["--mask-threshold", "0"]])
def test_evaluate_on_volumes_refuses_the_flags_it_cannot_honour(trained, tmp_path, flags):
    data, model = trained
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--weights", str(model), *flags])
    assert result.exit_code == 2 and flags[0] in result.output and "own voxel spacing" in result.output


def test_photo_model_on_a_volume_says_so(tiny_model_file, tmp_path, rng):
    image, _ = synthetic_volume(rng)
    path = save_nifti(tmp_path / "scan.nii.gz", image, affine_for())
    result = runner.invoke(
        app, ["predict", str(path), "--weights", str(tiny_model_file), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "a model for photos" in result.output


def test_evaluate_scores_each_volume_in_mm(trained, tmp_path):
    data, model = trained
    out = tmp_path / "ev"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(data),
            "--ids",
            "val_ids.txt",
            "--weights",
            str(model),
            "--out",
            str(out),
            "--report",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_volumes"] == 2 and metrics["distance_unit"] == "mm"
    assert set(metrics["per_class"]) == {"Anterior", "Posterior"}
    for entry in metrics["per_class"].values():
        assert 0 <= entry["dice"] <= 1 and entry["hd95"] >= 0 and "mean_volume_diff_ml" in entry
    rows = (out / "per_case.csv").read_text().splitlines()
    assert len(rows) == 3 and "Anterior_hd95" in rows[0] and "Anterior_volume_diff_ml" in rows[0]
    assert (out / "report.html").is_file()


def test_service_answers_volumes_like_predict(trained, tmp_path, rng):
    from starlette.testclient import TestClient

    from lesionseg.serve.app import ServeConfig, create_app

    _, model = trained
    image, _ = synthetic_volume(rng)
    nifti = save_nifti(tmp_path / "scan.nii.gz", image, affine_for())
    series = make_series(tmp_path / "s" / "series", np.round(image).astype(np.int16))
    out = tmp_path / "pred"
    assert (
        runner.invoke(app, ["predict", str(nifti), "--weights", str(model), "--out", str(out)]).exit_code == 0
    )
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        for f in series.iterdir():
            z.write(f, f.name)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\0" * (8 << 20))
    with TestClient(create_app(ServeConfig(weights=str(model), max_unpacked_mb=4))) as client:
        r = client.post("/v1/segment/volume", content=nifti.read_bytes())
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
        served = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
        np.testing.assert_array_equal(
            np.asarray(served.dataobj), np.asarray(nib.load(str(out / "scan_labels.nii.gz")).dataobj)
        )
        np.testing.assert_array_equal(served.affine, nib.load(str(nifti)).affine)
        r = client.post("/v1/segment/volume?format=json", content=nifti.read_bytes())
        assert r.status_code == 200 and set(r.json()["structures"]) == {"Anterior", "Posterior"}
        r = client.post("/v1/segment/volume", files={"file": ("series.zip", zipped.getvalue())})
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
        assert pydicom.dcmread(io.BytesIO(r.content)).Modality == "SEG"
        r = client.post("/v1/segment/volume", content=bomb.getvalue())
        assert r.status_code == 413 and "limit" in r.json()["error"]
        r = client.post("/v1/segment/volume", content=gzip.compress(b"\0" * (8 << 20)))
        assert r.status_code == 400 and "not a NIfTI file" in r.json()["error"]  # told from its first chunk
        small = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), affine_for())
        big = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), affine_for())
        big.header.set_data_shape((256, 256, 256))
        for bomb, says in ((small.to_bytes() + b"\0" * (8 << 20), "unpacks to over the limit"),
                           (big.header.binaryblock + b"\0" * (8 << 20), "its header declares")):
            r = client.post("/v1/segment/volume", content=gzip.compress(bomb))
            assert r.status_code == 413 and says in r.json()["error"], r.text
        r = client.post("/v1/segment/volume", content=nifti.read_bytes()[:500])
        assert r.status_code == 400 and "truncated" in r.json()["error"]
        r = client.post("/v1/segment", content=nifti.read_bytes())  # one route: the volume told by content
        assert r.status_code == 200 and r.content == client.post("/v1/segment/volume",
                                                                 content=nifti.read_bytes()).content
        r = client.post("/v1/segment", content=photo_bytes())
        assert r.status_code == 400 and "/v1/segment/volume" in r.json()["error"]


def photo_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_on_a_bad_series_is_one_line_and_exit_2(trained, tmp_path, rng):
    _, model = trained
    image, _ = synthetic_volume(rng)
    gap = make_series(tmp_path / "gap", np.round(image).astype(np.int16), skip=3)
    result = runner.invoke(app, ["predict", str(gap), "--weights", str(model), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "uneven slice spacing" in result.output and str(gap) in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_foreground_slices_are_drawn_at_least_their_share():
    import torch

    from lesionseg.data.datamodule import foreground_weights

    foreground = np.zeros((100, 2), bool)  # slices × structures
    foreground[:6, 0] = True
    foreground[4:10, 1] = True
    weights = foreground_weights(foreground, 0.33)
    draws = torch.multinomial(weights, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert foreground.any(axis=1)[draws.numpy()].mean() == pytest.approx(0.33, abs=0.015)
    assert foreground_weights(np.r_[foreground[:10], foreground[:10]], 0.33) is None  # already half
    assert foreground_weights(np.zeros((5, 2), bool), 0.33) is None


SHARED_HIPPOCAMPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hippocampus"


def test_bundled_hippocampus_model_on_the_shared_dicom_series(tmp_path):
    import highdicom as hd

    series = SHARED_HIPPOCAMPUS / "dicom"
    if not series.is_dir():
        pytest.skip(f"hippocampus DICOM series not found at {series} (only on the project's machines)")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(series), "--weights", "hippocampus", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "volumes.json").read_text())
    assert len(doc["volumes"]) == 3
    for record in doc["volumes"]:
        for structure in ("Anterior", "Posterior"):
            assert 0.5 < record["structures"][structure]["ml"] < 6.0  # a hippocampus part is 1–3 mL
        seg = hd.seg.segread(out / f"{record['id']}_seg.dcm")
        assert len(seg.SegmentSequence) == 2 and seg.NumberOfFrames == 2 * record["shape"][2]


def test_a_volume_stored_lps_is_sliced_along_the_same_anatomy(trained, tmp_path, rng):
    """DICOM series come LPS, NIfTI files RAS: the same scan stored either way gets the same labels."""
    from lesionseg.inference import Segmenter
    from lesionseg.inference.volume_coverage import segment_volume
    from lesionseg.orientation import Canonical

    _, model = trained
    seg = Segmenter.load(model, backend="torch")
    image, _ = synthetic_volume(rng)
    ras = Volume("ras", image, affine_for(), tmp_path / "ras.nii")
    n0, n1 = image.shape[:2]
    flip = np.array([[-1, 0, 0, n0 - 1], [0, -1, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    lps = Volume("lps", np.ascontiguousarray(image[::-1, ::-1]), affine_for() @ flip, tmp_path / "lps.nii")
    np.testing.assert_array_equal(segment_volume(seg, lps)[::-1, ::-1], segment_volume(seg, ras))
    c = Canonical(lps.affine)
    np.testing.assert_array_equal(c.inverse(c.forward(lps.array)), lps.array)
    assert c.spacing(lps.spacing) == pytest.approx(SPACING)


def test_an_uploaded_nifti_is_read_from_memory_and_bad_bytes_are_one_line(rng):
    image, _ = synthetic_volume(rng)
    data = nib.Nifti1Image(image, affine_for()).to_bytes()
    volume = NiftiReader().read_bytes(data, "upload 'scan.nii'")
    np.testing.assert_array_equal(volume.array, image)
    assert volume.spacing == pytest.approx(SPACING) and volume.source.name == "upload 'scan.nii'"
    for cut in (200, 1000):
        with pytest.raises(UserError, match="upload 'scan.nii': .*truncated"):
            NiftiReader().read_bytes(data[:cut], "upload 'scan.nii'")


def test_evaluate_refuses_a_dataset_whose_label_values_differ_from_the_model(trained, tmp_path):
    data, model = trained
    swapped = tmp_path / "swapped"
    import shutil

    shutil.copytree(data, swapped)
    doc = json.loads((swapped / "dataset.json").read_text())
    doc["labels"] = {"background": 0, "Anterior": 2, "Posterior": 1}
    (swapped / "dataset.json").write_text(json.dumps(doc))
    result = runner.invoke(
        app, ["evaluate", "--data", str(swapped), "--weights", str(model), "--out", str(tmp_path / "e")]
    )
    assert (
        result.exit_code == 2
        and "Posterior=1, Anterior=2" in result.output
        and "(Anterior=1, Posterior=2)" in result.output
    )


def test_a_header_with_its_voxel_size_only_in_pixdim_segments_as_its_consistent_copy(trained, tmp_path, rng):
    """Some public datasets ship an sform of unit scale and keep the voxel size in pixdim: read as ITK
    reads it, the volume gets the same geometry, labels and mL as a copy whose header is consistent."""
    from lesionseg.io import nifti_geometry
    from test_nifti_geometry import write_header_case

    _, model = trained
    image, _ = synthetic_volume(rng)
    folder = tmp_path / "in"
    folder.mkdir()
    consistent = save_nifti(folder / "consistent.nii.gz", image, affine_for())
    unit = np.eye(4)
    unit[:3, 3] = affine_for()[:3, 3]
    write_header_case(folder / "unit_sform.nii.gz", unit, 1, None, 0, SPACING, data=image)
    assert nib.load(folder / "unit_sform.nii.gz").header.get_zooms() == pytest.approx(SPACING)
    nifti_geometry._shown.clear()
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder), "--weights", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "unit_sform.nii.gz: the sform's scales and pixdim disagree" in result.output
    np.testing.assert_allclose(NiftiReader().read(folder / "unit_sform.nii.gz").affine,
                               NiftiReader().read(consistent).affine, atol=1e-6)
    labels = [np.asarray(nib.load(out / f"{p}_labels.nii.gz").dataobj) for p in ("consistent", "unit_sform")]
    assert np.array_equal(*labels)
    recorded = {v["id"]: v["structures"] for v in json.loads((out / "volumes.json").read_text())["volumes"]}
    assert recorded["consistent"] == recorded["unit_sform"]


def test_what_a_dicom_folder_is_follows_from_its_content(tmp_path, rng, tiny_model_file):
    """Slices that place themselves in the patient are a series, whatever the model; a photo model is
    refused on it in one line, not run slice by slice as photos."""
    from lesionseg.io.dicom_series import is_dicom_series

    image, _ = synthetic_volume(rng)
    series = make_series(tmp_path / "series", np.round(image).astype(np.int16))
    assert is_dicom_series(series)
    (series / "notes.dcm").write_bytes(b"not a dicom file")  # unreadable: named when the series is read
    assert is_dicom_series(series)
    result = runner.invoke(app, ["predict", str(series), "--weights", str(tiny_model_file),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "a model for photos" in result.output
    assert not is_dicom_series(tmp_path) and not is_dicom_series(series / "notes.dcm")


def test_evaluate_scores_exactly_what_predict_writes_on_volumes(trained, tmp_path):
    """Each volume's Dice, Jaccard and mL in evaluate's per_case.csv are those of predict's label map
    against the truth; HD95 is MONAI's at the volume's own spacing wherever both are non-empty."""
    import csv

    data, model = trained
    ids = (data / "val_ids.txt").read_text().split()
    folder = tmp_path / "in"
    folder.mkdir()
    for case in ids:
        (folder / f"{case}.nii.gz").write_bytes((data / "imagesTr" / f"{case}_0000.nii.gz").read_bytes())
    pred_out, eval_out = tmp_path / "pred", tmp_path / "ev"
    assert runner.invoke(app, ["predict", str(folder), "--weights", str(model), "--out", str(pred_out)]) \
        .exit_code == 0
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--ids", "val_ids.txt", "--weights",
                                 str(model), "--out", str(eval_out)])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in csv.DictReader((eval_out / "per_case.csv").open())}
    assert sorted(rows) == sorted(ids)
    written_volumes = json.loads((pred_out / "volumes.json").read_text())["volumes"]
    recorded = {v["id"]: v["structures"] for v in written_volumes}
    for case in ids:
        written = nib.load(pred_out / f"{case}_labels.nii.gz")
        pred = np.asarray(written.dataobj)
        truth = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj).round().astype(np.uint8)
        spacing = written.header.get_zooms()[:3]
        for name, value in (("Anterior", 1), ("Posterior", 2)):
            p, t = pred == value, truth == value
            row = rows[case]
            if not p.any() and not t.any():
                assert row[f"{name}_dice"] == ""
                continue
            dice = 2 * (p & t).sum() / (p.sum() + t.sum())
            assert float(row[f"{name}_dice"]) == pytest.approx(dice, abs=1e-6)
            assert float(row[f"{name}_jaccard"]) == pytest.approx((p & t).sum() / (p | t).sum(), abs=1e-6)
            assert float(row[f"{name}_pred_ml"]) == pytest.approx(recorded[case][name]["ml"], abs=1e-4)
            if p.any() and t.any():
                from test_boundary_metrics import monai_reference

                hd95, _, _ = monai_reference(p, t, spacing, 2.0)
                assert float(row[f"{name}_hd95"]) == pytest.approx(hd95, rel=1e-4, abs=1e-4)


def test_training_selects_on_the_figure_evaluate_reports(trained, tmp_path):
    """Validation segments whole volumes and scores them in 3-D, per case, as `evaluate` does: the score
    the model was selected on is evaluate's mean Jaccard of model.pt on the same validation volumes."""
    data, model = trained
    card = ModelFile.read(model).card
    out = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--ids", "val_ids.txt", "--weights",
                                 str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert card["selection_value"] == pytest.approx(metrics["mean_jaccard"], abs=1e-5)


def test_volumes_shard_across_machines_and_resume_as_photos_do(trained, tmp_path):
    """--shard K/N takes the same part of the volumes on every machine; --skip-existing resumes; results in
    --out are refused without --overwrite, as for photos."""
    import csv

    from lesionseg.input_selection import shard_of

    data, model = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted((data / "imagesTr").iterdir())[:4]:
        (folder / f.name.replace("_0000", "")).write_bytes(f.read_bytes())
    ids = sorted(p.name.removesuffix(".nii.gz") for p in folder.iterdir())
    out = tmp_path / "out"
    parts = {}
    for k in (1, 2):
        result = runner.invoke(app, ["predict", str(folder), "--weights", str(model), "--out", str(out),
                                     "--shard", f"{k}/2", "--skip-existing"])
        assert result.exit_code == 0, result.output
        parts[k] = {p.name.removesuffix("_labels.nii.gz") for p in out.glob("*_labels.nii.gz")} - \
            set().union(*(parts[j] for j in parts))
        assert parts[k] == {i for i in ids if shard_of(i, 2) == k}
    # volumes.json lists both shards' volumes, not only the latest run's
    listed = [v["id"] for v in json.loads((out / "volumes.json").read_text())["volumes"]]
    assert sorted(listed) == ids
    refused = runner.invoke(app, ["predict", str(folder), "--weights", str(model), "--out", str(out)])
    assert refused.exit_code == 2 and "--skip-existing" in refused.output
    resumed = runner.invoke(app, ["predict", str(folder), "--weights", str(model), "--out", str(out),
                                  "--skip-existing", "--manifest", str(tmp_path / "m.csv")])
    assert resumed.exit_code == 0 and "4 already done" in resumed.output
    assert {r["status"] for r in csv.DictReader((tmp_path / "m.csv").open())} == {"skipped"}


def test_scans_that_would_segment_wrong_or_crash_are_refused_in_one_line(tmp_path, rng):
    """A NaN voxel (it would empty the whole segmentation), RGB voxels, a header that declares more voxels
    than the file holds: each refused naming the file, before any network runs."""
    image, _ = synthetic_volume(rng)
    with_nan = image.copy()
    with_nan[3, 4, 5] = np.nan
    nan_path = save_nifti(tmp_path / "nan.nii.gz", with_nan, affine_for())
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb_path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, affine_for()), str(rgb_path))
    big = tmp_path / "big.nii"
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), affine_for())
    header.header.set_data_shape((500, 500, 500))
    big.write_bytes(header.header.binaryblock + b"\0" * 4 + np.zeros(8, np.float32).tobytes())
    cases = ((nan_path, "1 voxel(s) are NaN or infinite"), (rgb_path, "an RGB or complex NIfTI"),
             (big, "declares 500x500x500 voxels"))
    for path, message in cases:
        with pytest.raises(UserError, match=re.escape(message)) as caught:
            read_volume(path)
        assert str(path) in str(caught.value)
        result = runner.invoke(app, ["predict", str(path), "--weights", "hippocampus", "--out",
                                     str(tmp_path / "o")])
        assert result.exit_code == 2 and message in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_the_volume_route_narrows_to_a_structure_and_refuses_an_unknown_one(tmp_path):
    from starlette.testclient import TestClient

    from lesionseg.serve.app import ServeConfig, create_app
    from test_case_contract import volume_kind

    kind = volume_kind(tmp_path / "k")
    body = next(kind.inputs.iterdir()).read_bytes()
    with TestClient(create_app(ServeConfig(weights=str(kind.model)))) as client:
        everything = client.post("/v1/segment/volume?format=json", content=body).json()["structures"]
        one = client.post("/v1/segment/volume?format=json&structure=Posterior", content=body)
        assert one.status_code == 200 and one.json()["structures"] == {"Posterior": everything["Posterior"]}
        labels = nib.Nifti1Image.from_bytes(gzip.decompress(
            client.post("/v1/segment?structure=Anterior", content=body).content))
        assert set(np.unique(np.asarray(labels.dataobj)).tolist()) <= {0, 1}
        unknown = client.post("/v1/segment/volume?structure=Hippo", content=body)
        assert unknown.status_code == 400 and "Anterior, Posterior" in unknown.json()["error"]
