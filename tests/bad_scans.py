"""The table of bad scans: every class of defect a volume or a DICOM series can carry, each with the words
its one-line refusal holds. `test_bad_scans.py` sends every row through `lesionseg predict` (exit 2, one line,
nothing written) and through the service (a 4xx with a JSON body saying the same), so the two cannot
disagree; docs/robustness.md lists the same rows by name."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom

from test_volumes import affine_for, make_series, save_nifti, synthetic_volume


@dataclass(frozen=True)
class BadScan:
    name: str
    kind: str  # the class of fault: dtype, dimensions, header, compression, series
    build: Callable[[Path], Path]  # writes the scan under the folder given; returns the file or series folder
    says: str  # words the refusal holds, from the CLI and the service alike


def _image() -> np.ndarray:
    return synthetic_volume(np.random.default_rng(5))[0]


def _nifti(folder: Path, array: np.ndarray, name: str = "scan.nii.gz", affine=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return save_nifti(folder / name, array, affine_for() if affine is None else affine)


def _with_nan(folder: Path) -> Path:
    image = _image()
    image[3, 4, 5], image[0, 0, 0] = np.nan, np.inf
    return _nifti(folder, image)


def _rgb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((20, 24, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, affine_for()), str(folder / "scan.nii.gz"))
    return folder / "scan.nii.gz"


def _complex(folder: Path) -> Path:
    return _nifti(folder, _image().astype(np.complex64))


def _two_channels(folder: Path) -> Path:
    return _nifti(folder, np.stack([_image(), _image()], axis=-1))


def _flat(folder: Path) -> Path:
    return _nifti(folder, _image()[:, :, 0])


def _header_lies(folder: Path) -> Path:
    """A 4 KB file whose header declares 500³ voxels."""
    path = _nifti(folder, np.zeros((4, 4, 4), np.int16), "scan.nii")
    header = nib.load(str(path)).header.copy()
    header.set_data_shape((500, 500, 500))
    path.write_bytes(header.binaryblock + b"\0" * 4 + np.zeros(2000, np.int16).tobytes())
    return path


def _gzip_cut(folder: Path) -> Path:
    path = _nifti(folder, _image())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _gzip_without_end(folder: Path) -> Path:
    path = _nifti(folder, _image())
    path.write_bytes(path.read_bytes()[:-8])  # the gzip trailer (CRC and size) is gone
    return path


def _not_nifti(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scan.nii.gz").write_bytes(gzip.compress(b"not a NIfTI header at all" * 40))
    return folder / "scan.nii.gz"


def _singular(folder: Path) -> Path:
    affine = affine_for()
    affine[:3, 2] = 0
    path = _nifti(folder, _image())
    image = nib.load(str(path))
    header = image.header.copy()
    header.set_qform(None, code=0)
    header.set_sform(affine, code=2)
    header["pixdim"][1:4] = 0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header), str(path))
    return path


def _series(folder: Path, **kwargs) -> Path:
    return make_series(folder / "series", np.round(_image()).astype(np.int16), **kwargs)


def _junk_dcm(folder: Path) -> Path:
    series = _series(folder)
    (series / "zz_junk.dcm").write_bytes(b"not DICOM at all" * 20)
    return series


def _slice_without_pixels(folder: Path) -> Path:
    series = _series(folder)
    last = max(series.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    ds = pydicom.dcmread(last)
    del ds.PixelData
    ds.save_as(last)
    return series


def _two_series(folder: Path) -> Path:
    image = np.round(_image()).astype(np.int16)
    series = make_series(folder / "series", image[:, :, :5])
    make_series(folder / "series", image[:, :, 5:], series="1.2.3.4", prefix="other")
    return series


def _same_position(folder: Path) -> Path:
    series = _series(folder)
    first, second = sorted(series.iterdir())[:2]
    ds = pydicom.dcmread(second)
    ds.ImagePositionPatient = pydicom.dcmread(first).ImagePositionPatient
    ds.save_as(second)
    return series


def _colour_slices(folder: Path) -> Path:
    series = _series(folder)
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.zeros((ds.Rows, ds.Columns, 3), np.uint8).tobytes()
        ds.save_as(f)
    return series


def _other_size(folder: Path) -> Path:
    series = _series(folder)
    f = sorted(series.iterdir())[3]
    ds = pydicom.dcmread(f)
    ds.Rows = ds.Rows - 4
    ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.int16).tobytes()
    ds.save_as(f)
    return series


def _one_slice(folder: Path) -> Path:
    series = _series(folder)
    for f in sorted(series.iterdir())[1:]:
        f.unlink()
    return series


BAD_SCANS = [
    BadScan("NaN or Inf voxels", "dtype", _with_nan, "2 voxel(s) are NaN or infinite"),
    BadScan("RGB voxels", "dtype", _rgb, "RGB or complex"),
    BadScan("complex voxels", "dtype", _complex, "RGB or complex"),
    BadScan("two channels in one file", "dimensions", _two_channels, "4-D NIfTI"),
    BadScan("one slice as a 2-D NIfTI", "dimensions", _flat, "2-D NIfTI"),
    BadScan("header declares 500³ in a 4 KB file", "header", _header_lies, "its header declares 500x500x500"),
    BadScan("sheared affine", "header", _singular, "no rigid orientation"),
    BadScan("gzip cut in the middle", "compression", _gzip_cut, "truncated"),
    BadScan("gzip without its end", "compression", _gzip_without_end, "truncated"),
    BadScan("gzip of no NIfTI", "compression", _not_nifti, "NIfTI"),
    BadScan("junk .dcm among the slices", "series", _junk_dcm, "zz_junk.dcm: not a readable DICOM file"),
    BadScan("a slice without pixel data", "series", _slice_without_pixels, "a slice without pixel data"),
    BadScan("two series in one folder", "series", _two_series, "2 DICOM series"),
    BadScan("two slices at one position", "series", _same_position, "two slices at the same position"),
    BadScan("a missing slice", "series", lambda f: _series(f, skip=4), "a slice is missing"),
    BadScan("gantry tilt", "series", lambda f: _series(f, tilt=0.9), "oblique stack"),
    BadScan("colour slices", "series", _colour_slices, "colour DICOM frames"),
    BadScan("a slice of another size", "series", _other_size, "size or pixel spacing differs"),
    BadScan("one slice", "series", _one_slice, "one DICOM instance is not a series"),
]
