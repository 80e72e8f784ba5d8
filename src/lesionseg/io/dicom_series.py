"""A DICOM series: the instances of one series, from a folder or a zip, sorted along their normal into a
`volumes.Volume` (column, row, slice order; RAS+ affine converted from DICOM's LPS).

One rule for which files are instances, wherever they come from: a file is DICOM by its name (.dcm,
.dicom, .ima) or by its content (the `DICM` marker after the 128-byte preamble, as scanners and PACS export
`image_0`, `IM0001`, ... without an extension). A file named DICOM that does not read is refused, naming it;
a readable instance without pixel data is skipped when it is no slice (a DICOMDIR, a report) and refused
when it is one (it places itself in the patient): a slice left out would be a hole in the volume."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path, PurePath
from typing import Callable, Iterable

import numpy as np

from ..errors import UserError
from .reader import HEAD_BYTES, Reader, file_head, has_dicm_marker
from .volumes import CHUNK, GEOMETRY_TOLERANCE, RAS_FROM_LPS, Caps, Volume, VolumeTooLarge

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ZIP_MAGIC = b"PK\x03\x04"  # a series uploaded as a zip


def is_dicom_file(name: str, head: bytes) -> bool:
    """Whether a file is DICOM, by its name or by its first bytes."""
    return PurePath(name).suffix.lower() in DICOM_SUFFIXES or has_dicm_marker(head)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and is_dicom_file(p.name, file_head(p)))


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


def _series_uid(ds) -> str:
    return str(ds.get("SeriesInstanceUID", "(no SeriesInstanceUID)"))


def instance(source, where: str):
    """One file's dataset when it is an image instance; None when it is readable DICOM but no slice;
    UserError naming `where` when it does not read or is a slice without pixels."""
    import pydicom

    try:
        ds = pydicom.dcmread(source)
    except Exception as exc:  # pydicom raises many types for foreign or truncated files
        raise UserError(f"{where}: not a readable DICOM file ({type(exc).__name__})") from None
    if "PixelData" not in ds:
        if "ImagePositionPatient" in ds:
            raise UserError(f"{where}: a slice without pixel data (a hole in the series); export it again")
        return None  # e.g. a DICOMDIR or a structured report beside the images
    ds.filename = where
    return ds


def one_series(members: Iterable[tuple[str, Callable]], source: Path, series_id: str, held_in: str,
               one: str, caps: Caps = Caps()) -> Volume:
    """The volume of `members` ((where, open)): their image instances, which must be one series (`held_in`:
    "folder" or "zip"; `one`: what to give instead), refused over the voxel cap before it is decoded."""
    datasets = [ds for where, opened in members if (ds := instance(opened(), where)) is not None]
    if not datasets:
        raise UserError(f"{source}: the {held_in} holds no DICOM image instances")
    uids = sorted({_series_uid(ds) for ds in datasets})
    if len(uids) > 1:
        raise UserError(f"{source}: {len(uids)} DICOM series in one {held_in} ({', '.join(uids)}); {one}")
    voxels = sum(int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) for ds in datasets)
    if caps.voxels is not None and voxels > caps.voxels:
        raise VolumeTooLarge(f"{source}: {len(datasets)} slices of {voxels:,} voxels, over the limit of "
                             f"{caps.voxels:,}")
    return series_volume(datasets, source, series_id)


class DicomSeriesReader(Reader):
    """A folder (or, uploaded, a zip) of one series' instances, sorted along the slice normal by
    ImagePositionPatient."""

    name = "dicom-series"
    volume = True

    def claims(self, path: Path, head: bytes = b"") -> bool:
        return is_dicom_series(path)

    def read(self, path: Path) -> Volume:
        files = _dicom_files(path)
        return one_series(((str(f), lambda f=f: f) for f in files), path, path.name, "folder",
                          "give one series per folder")

    def read_bytes(self, data: bytes, label: str, caps: Caps) -> Volume:
        """A zip of one series; over a cap raises VolumeTooLarge (bytes as they unpack, voxels before the
        pixels are decoded)."""
        limit = caps.bytes if caps.bytes is not None else 1 << 62
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [i for i in archive.infolist()
                       if not i.is_dir() and not PurePath(i.filename).name.startswith(".")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{label}: not a readable zip ({exc})") from None
        if sum(i.file_size for i in members) > limit:
            raise VolumeTooLarge(f"{label}: its files add up to over the limit of {limit:,} bytes")
        budget = [limit]

        def unpacked():
            for info in members:
                raw = _read_member_capped(archive, info, budget, label)
                if is_dicom_file(info.filename, raw[:HEAD_BYTES]):
                    yield f"{label}:{info.filename}", lambda raw=raw: io.BytesIO(raw)

        return one_series(unpacked(), Path(label), "upload", "zip", "send one series", caps)


def _read_member_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int],
                        label: str) -> bytes:
    """One member's bytes, counted against what is left of the cap as it inflates (whatever its header
    claims)."""
    out, size = [], 0
    try:
        with archive.open(info) as f:
            while piece := f.read(CHUNK):
                size += len(piece)
                if size > budget[0]:
                    raise VolumeTooLarge(f"{label}: unpacks to over the limit")
                out.append(piece)
    except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, NotImplementedError) as exc:
        raise UserError(f"{label}: cannot unpack {info.filename} ({exc})") from None
    budget[0] -= size
    return b"".join(out)


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


