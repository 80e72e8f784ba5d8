"""Volumes in and label volumes out, in the volume's own space: a reader class per format (NIfTI through
nibabel, a folder holding one DICOM series through pydicom), registered in registry.READERS; the NIfTI label
map is written with the input's affine and header.

A `Volume` keeps its voxels in the order its file stores them and the affine that maps voxel indices to
patient millimetres (RAS+, nibabel's convention; a DICOM series is converted from LPS). Nothing is resampled
or reoriented: an oblique volume is segmented in voxel space and its outputs carry the same affine.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .atomic import atomic_path
from .nifti_geometry import itk_affine
from .reader import Reader

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABELS_SUFFIX = "_labels.nii.gz"  # `<id>_labels.nii.gz`: the label map of a volume input
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Relative tolerance on slice gaps and direction cosines: scanners round positions to ~1e-3 mm.
GEOMETRY_TOLERANCE = 1e-3
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass
class Volume:
    id: str
    array: np.ndarray  # 3-D, voxel order as stored (NIfTI i, j, k; DICOM column, row, slice)
    affine: np.ndarray  # 4×4 voxel index → RAS+ mm
    source: Path
    header: Any = None  # the NIfTI header, copied into the outputs
    datasets: list | None = None  # a DICOM series' instances in slice order (for the SEG's references)
    modality: str | None = None  # "MR", "CT" when the file says

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_id(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix.lower() in DICOM_SUFFIXES or (not p.suffix and _has_dicm(p)))
    )


def _has_dicm(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom_series(path: Path) -> bool:
    """A folder whose DICOM instances all place themselves in the patient (ImagePositionPatient and
    ImageOrientationPatient): slices of a volume, whatever model reads them (one series, checked when
    read, where an unreadable file is named). A folder of DICOM images without that geometry (radiographs,
    photographs, secondary captures), or mixing them with slices, is a folder of images."""
    if not path.is_dir():
        return False
    placed = [_places_itself(f) for f in _dicom_files(path)]
    return any(placed) and False not in placed


def _places_itself(path: Path) -> bool | None:
    """Whether a DICOM file carries its position and orientation; None when it is no readable DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["ImagePositionPatient", "ImageOrientationPatient"])
    except Exception:  # pydicom raises many types for foreign files
        return None
    return "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds


class NiftiReader(Reader):
    name = "nifti"
    volume = True

    def claims(self, path: Path, head: bytes = b"") -> bool:
        return path.is_file() and is_nifti(path)

    def read(self, path: Path, dtype=np.float32) -> Volume:
        import nibabel as nib

        return self.checked_volume(lambda: nib.load(str(path)), path, nifti_id(path), dtype)

    @staticmethod
    def checked_volume(load, where: Path, volume_id: str, dtype=np.float32) -> Volume:
        """The checked Volume of the nibabel image `load()` gives; errors name `where`."""
        import nibabel as nib

        try:
            image = load()
            _check_header(image, where)
            # dataobj applies scl_slope / scl_inter, as every viewer does
            array = np.asarray(image.dataobj, dtype=dtype)
        except (EOFError, zlib.error, OSError, ValueError, nib.filebasedimages.ImageFileError,
                nib.wrapstruct.WrapStructError, nib.spatialimages.HeaderDataError) as exc:
            text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"{where}: not a readable NIfTI file (truncated or corrupt: {text})") from None
        except MemoryError:
            raise UserError(f"{where}: its header declares {'x'.join(map(str, image.shape))} voxels, more "
                            "than this machine's memory holds") from None
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise UserError(f"{where}: {bad} voxel(s) are NaN or infinite; a volume needs finite intensities "
                            "(one such voxel would empty the whole segmentation)")
        if array.ndim == 4 and array.shape[3] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise UserError(
                f"{where}: a {array.ndim}-D NIfTI (shape {'x'.join(map(str, array.shape))}) where a "
                "3-D volume is expected (one channel per file: split multi-channel images)"
            )
        affine = itk_affine(image.header, where)
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise UserError(f"{where}: the NIfTI affine is singular or not finite")
        return Volume(volume_id, array, affine, where, header=image.header.copy())


def _check_header(image, where: Path) -> None:
    """What the header alone refuses, before any voxel is read: voxels that are not one number (RGB), and
    an uncompressed file shorter than the voxels its header declares."""
    dtype = image.get_data_dtype()
    if dtype.names is not None or dtype.kind not in "biuf":
        raise UserError(f"{where}: voxels of type {dtype} (an RGB or complex NIfTI); a volume of one "
                        "intensity per voxel is expected")
    declared = int(np.prod(image.shape, dtype=np.int64)) * dtype.itemsize
    path = Path(where)
    if path.is_file() and path.name.lower().endswith(".nii"):
        held = path.stat().st_size - int(image.header.get("vox_offset", 0))
        if held < declared:
            raise UserError(f"{where}: its header declares {'x'.join(map(str, image.shape))} voxels "
                            f"({declared:,} bytes) but the file holds {max(held, 0):,}: truncated, or a "
                            "wrong header")


def _series_uid(ds) -> str:
    return str(ds.get("SeriesInstanceUID", "(no SeriesInstanceUID)"))


class DicomSeriesReader(Reader):
    """A folder of one series' instances, sorted along the slice normal by ImagePositionPatient."""

    name = "dicom-series"
    volume = True

    def claims(self, path: Path, head: bytes = b"") -> bool:
        return is_dicom_series(path)

    def read(self, path: Path) -> Volume:
        datasets = _read_instances(path)
        uids = sorted({_series_uid(ds) for ds in datasets})
        if len(uids) > 1:
            raise UserError(
                f"{path}: {len(uids)} DICOM series in one folder ({', '.join(uids)}); "
                "give one series per folder"
            )
        return series_volume(datasets, path, path.name)


def _read_instances(folder: Path) -> list:
    import pydicom

    out = []
    for f in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # pydicom raises many types for foreign or truncated files
            raise UserError(f"{f}: not a readable DICOM file ({type(exc).__name__})") from None
        if "PixelData" not in ds:
            continue  # e.g. a DICOMDIR or a structured report beside the images
        ds.filename = str(f)
        out.append(ds)
    if not out:
        raise UserError(f"{folder}: no DICOM image instances")
    return out


def _geometry(ds, where) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    try:
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], float)
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], float)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise UserError(
            f"{where}: missing ImageOrientationPatient, ImagePositionPatient or PixelSpacing; "
            "a series needs them to be stacked"
        ) from None
    row, col = orientation[:3], orientation[3:]
    return row, col, position, spacing


def series_volume(datasets: list, source: Path, series_id: str) -> Volume:
    """Sort one series' instances along their normal, check the grid (one orientation, one in-plane size,
    evenly spaced slices stacked along the normal) and build the volume (column, row, slice order)."""
    if len(datasets) < 2:
        raise UserError(f"{source}: one DICOM instance is not a series (give the folder of all slices)")
    row, col, _, pixel = _geometry(datasets[0], datasets[0].filename)
    normal = np.cross(row, col)
    entries = []
    for ds in datasets:
        r, c, position, p = _geometry(ds, ds.filename)
        if not (
            np.allclose(r, row, atol=GEOMETRY_TOLERANCE) and np.allclose(c, col, atol=GEOMETRY_TOLERANCE)
        ):
            raise UserError(f"{ds.filename}: its orientation differs from the series' other slices")
        if (ds.Rows, ds.Columns) != (datasets[0].Rows, datasets[0].Columns) or not np.allclose(p, pixel):
            raise UserError(f"{ds.filename}: its size or pixel spacing differs from the series' other slices")
        entries.append((float(position @ normal), position, ds))
    entries.sort(key=lambda e: e[0])
    steps = np.diff([e[0] for e in entries])
    if np.any(steps < GEOMETRY_TOLERANCE):
        raise UserError(
            f"{source}: two slices at the same position ({entries[int(np.argmin(steps))][2].filename})"
        )
    gap = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - gap) > max(GEOMETRY_TOLERANCE, 0.01 * gap))
    if uneven.size:
        at = entries[int(uneven[0]) + 1][2].filename
        raise UserError(
            f"{source}: uneven slice spacing ({steps[uneven[0]]:.3f} mm against {gap:.3f} mm "
            f"before {at}): a slice is missing"
        )
    offsets = entries[-1][1] - entries[0][1]
    along = offsets / np.linalg.norm(offsets)
    if abs(float(along @ normal)) < 1 - GEOMETRY_TOLERANCE:
        raise UserError(
            f"{source}: oblique stack: the slices are not stacked along their normal (gantry "
            "tilt); resample the series first"
        )
    lps = np.eye(4)
    # PixelSpacing is (between rows, between columns): a column step moves along the row direction
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * pixel[1], col * pixel[0], normal * gap
    lps[:3, 3] = entries[0][1]
    ordered = [e[2] for e in entries]
    try:
        pixels = np.stack([_modality_values(ds) for ds in ordered])  # (slice, row, column)
    except Exception as exc:  # pixel data pydicom cannot decode
        raise UserError(
            f"{source}: cannot decode the series' pixel data ({str(exc).splitlines()[0][:120]})"
        ) from None
    modality = str(ordered[0].get("Modality", "")) or None
    return Volume(
        series_id,
        np.ascontiguousarray(pixels.transpose(2, 1, 0)),
        RAS_FROM_LPS @ lps,
        source,
        datasets=ordered,
        modality=modality,
    )


def _modality_values(ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UserError(f"{ds.filename}: colour DICOM frames are not a scan's slices")
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def read_label_volume(path: str | Path, like: Volume) -> np.ndarray:
    """A label volume (integer values) on `like`'s grid; another shape or affine is refused."""
    path = Path(path)
    labels = NiftiReader().read(path)
    if labels.array.shape != like.array.shape:
        raise UserError(
            f"{path}: label volume of shape {'x'.join(map(str, labels.array.shape))} on another "
            f"grid than its image ({'x'.join(map(str, like.array.shape))})"
        )
    if not np.allclose(labels.affine, like.affine, atol=1e-3):
        raise UserError(f"{path}: label volume has another affine than its image (not on the same grid)")
    values = labels.array
    rounded = np.rint(values)
    if not np.allclose(values, rounded, atol=1e-3):
        raise UserError(f"{path}: label volume holds non-integer values")
    if rounded.min() < 0 or rounded.max() > 65535:
        raise UserError(f"{path}: label values outside 0–65535")
    return rounded.astype(np.uint16 if rounded.max() > 255 else np.uint8)


def nifti_label_image(labels: np.ndarray, like: Volume):
    """A nibabel image of `labels` (uint8) with `like`'s affine and header (a DICOM series gets a fresh
    header with its affine as both qform and sform)."""
    import nibabel as nib

    data = np.ascontiguousarray(labels.astype(np.uint8))
    if like.header is not None and isinstance(like.header, nib.Nifti1Header):
        header = like.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
        image = nib.Nifti1Image(data, None, header=header)
        # the stored forms, exactly as in the input (nibabel would otherwise recompute them from the affine)
        image.set_qform(like.header.get_qform(), code=int(like.header["qform_code"]))
        image.set_sform(like.header.get_sform(), code=int(like.header["sform_code"]))
    else:
        image = nib.Nifti1Image(data, like.affine)
        image.set_qform(like.affine, code=1)
        image.set_sform(like.affine, code=1)
    image.header["descrip"] = b"lesionseg label map"
    image.header["cal_min"], image.header["cal_max"] = 0, float(data.max()) if data.size else 0
    return image


def write_nifti_labels(path: str | Path, labels: np.ndarray, like: Volume) -> None:
    """The label map as NIfTI (gzip when the name ends .gz), atomically."""
    image = nifti_label_image(labels, like)
    path = Path(path)
    with atomic_path(path) as tmp:
        data = image.to_bytes()
        tmp.write_bytes(gzip_bytes(data) if path.name.endswith(".gz") else data)


def gzip_bytes(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)


def read_nifti_bytes(data: bytes, label: str) -> Volume:
    """A NIfTI volume from an upload's uncompressed .nii bytes; errors name `label`."""
    import nibabel as nib

    volume_id = Path(label).name.split(".")[0] or "upload"
    return NiftiReader.checked_volume(lambda: nib.Nifti1Image.from_bytes(data), Path(label), volume_id)


def nifti_bytes(labels: np.ndarray, like: Volume) -> bytes:
    """The label map as .nii.gz bytes (the service's answer)."""
    return gzip_bytes(nifti_label_image(labels, like).to_bytes())
