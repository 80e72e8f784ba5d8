"""DICOM in / DICOM SEG out: pydicom's bundled CT and MR, and DICOMs the tests build (RGB VL photographic,
YBR_FULL, MONOCHROME1, multi-frame)."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from conftest import synthetic_case
from lesionseg.cli import app
from lesionseg.errors import UserError
from lesionseg.io import read_mask
from lesionseg.io.dicom import frames_from_dataset, read_frames

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
runner = CliRunner()


def build_dicom(path, pixels: np.ndarray, photometric: str, sop_class=VL_PHOTOGRAPHIC, extra=None):
    """A minimal valid DICOM image object around `pixels` ((F,)H,W(,3))."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.StudyID, ds.AccessionNumber = "TEST1", "Test^Patient", "1", "A1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "XC", 1, 1
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "120000", ""
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.Manufacturer = "test"
    multi = pixels.ndim == 4 or (pixels.ndim == 3 and photometric.startswith("MONO"))
    if multi:
        ds.NumberOfFrames = pixels.shape[0]
    rows, cols = pixels.shape[1:3] if multi else pixels.shape[:2]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1 if photometric.startswith("MONO") else 3
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_samples_read_as_rgb(name):
    ds, frames = read_frames(get_testdata_file(name))
    assert len(frames) == 1 and frames[0].shape == (ds.Rows, ds.Columns, 3) and frames[0].dtype == np.uint8
    assert frames[0].min() == 0 and frames[0].max() == 255


def test_rgb_and_ybr_full_give_the_same_picture(tmp_path, rng):
    rgb, _ = synthetic_case(rng, 40, 50)
    a = read_frames(build_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))[1][0]
    np.testing.assert_array_equal(a, rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    b = read_frames(build_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))[1][0]
    assert np.abs(b.astype(int) - rgb).max() <= 3  # colour-space round trip in 8 bits


def test_monochrome1_is_inverted_and_rescale_applied(tmp_path):
    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 100
    m2 = read_frames(build_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2",
                                 extra={"RescaleSlope": 2, "RescaleIntercept": -5}))[1][0]
    m1 = read_frames(build_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))[1][0]
    assert m2[0, 0, 0] == 0 and m2[-1, -1, 0] == 255
    np.testing.assert_array_equal(m1, 255 - m2)


def test_multi_frame_gives_one_image_per_frame(tmp_path):
    frames = np.stack([np.full((6, 7), v, np.uint8) for v in (0, 100, 200)])
    frames[:, 0, 0] = 255
    ds, out = read_frames(build_dicom(tmp_path / "mf.dcm", frames, "MONOCHROME2"))
    assert len(out) == 3 and all(f.shape == (6, 7, 3) for f in out)


def test_no_pixel_data_and_garbage_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(UserError, match="nopix.dcm: DICOM file has no pixel data"):
        read_frames(tmp_path / "nopix.dcm")
    (tmp_path / "junk.dcm").write_text("not dicom")
    with pytest.raises(UserError, match="junk.dcm: not a readable DICOM file"):
        read_frames(tmp_path / "junk.dcm")


def test_predict_writes_png_and_seg_that_match(tmp_path, rng, tiny_model_file):
    rgb, _ = synthetic_case(rng, 48, 64)
    src = tmp_path / "in"
    src.mkdir()
    build_dicom(src / "derm.dcm", rgb, "RGB")
    build_dicom(src / "derm_ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.save_as(src / "ct.dcm")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(src), "--out", str(out), "--weights", str(tiny_model_file),
                                 "--threshold", "0.3"])
    assert result.exit_code == 0, result.output
    for stem, source in (("derm", src / "derm.dcm"), ("derm_ybr", src / "derm_ybr.dcm"),
                         ("ct", src / "ct.dcm")):
        source_ds = pydicom.dcmread(source)
        seg = pydicom.dcmread(out / f"{stem}_seg.dcm")
        assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
        assert (seg.Rows, seg.Columns) == (source_ds.Rows, source_ds.Columns)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_ds.SeriesInstanceUID
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
            source_ds.SOPInstanceUID
        np.testing.assert_array_equal(seg.pixel_array.astype(bool), read_mask(out / f"{stem}_mask.png"))


def test_multi_frame_predict_writes_each_frame(tmp_path, rng, tiny_model_file):
    rgb, _ = synthetic_case(rng, 48, 64)
    build_dicom(tmp_path / "mf.dcm", np.stack([rgb, rgb[::-1]]), "RGB")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(tmp_path / "mf.dcm"), "--out", str(out), "--weights",
                                 str(tiny_model_file)])
    assert (out / "mf_frame000_mask.png").is_file() and (out / "mf_frame001_overlay.png").is_file()
    # Without a frame of reference highdicom cannot place several frames: the SEG is left out, said in one
    # line; the masks and overlays are the result, and the run succeeds.
    assert result.exit_code == 0, result.output
    assert "without a frame of reference" in result.stderr and "no DICOM SEG written" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (out / "mf_seg.dcm").exists()
    assert "segmented 1 of 1 inputs" in result.stdout


def test_predict_on_dicom_without_pixels_is_one_line(tmp_path, tiny_model_file):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    result = runner.invoke(app, ["predict", str(tmp_path / "nopix.dcm"), "--out", str(tmp_path / "o"),
                                 "--weights", str(tiny_model_file)])
    assert result.exit_code == 2  # nothing segmented: the input is refused, in one line
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "nopix.dcm: DICOM file has no pixel data" in result.stderr


def test_frames_from_dataset_in_memory():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert frames_from_dataset(ds)[0].shape == (64, 64, 3)
