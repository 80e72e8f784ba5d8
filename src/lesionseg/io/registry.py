"""Every input format by class, in one registry, chosen by suffix and content (as nnU-Net's imageio/ does):
a new format is one `Reader` subclass (io/reader.py) added to READERS, plus its test. Whether an input is a
volume or images is the reader's answer (`is_volume`), from the data alone.

A reader of images returns an `Input`: the frames to segment, each with the id its results are named by, and
optionally a `companion`, the format's own result written beside the masks (the DICOM SEG of a DICOM). A
reader of volumes (a NIfTI, a folder of one DICOM series) returns a `volumes.Volume` (`read_volume`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import UserError
from . import dicom
from .dicom_series import ZIP_MAGIC, DicomSeriesReader
from .photo import IMAGE_EXTENSIONS, read_image
from .reader import Input, Reader, file_head, has_dicm_marker
from .volumes import Caps, NiftiReader, NotNifti, Volume


class PhotoReader(Reader):
    """jpg, png, bmp, tif: Pillow, with tifffile and OpenCV behind it (io.photo)."""

    name = "photo"
    suffixes = tuple(sorted(IMAGE_EXTENSIONS))

    def read(self, path: Path) -> Input:
        return Input(path, [(path.stem, read_image(path))])


class DicomReader(Reader):
    """DICOM image objects (pydicom): one frame or many; a DICOM SEG is written beside the masks."""

    name = "dicom"
    suffixes = (".dcm", ".dicom")
    companion_suffix = dicom.SEG_SUFFIX

    def claims(self, path: Path, head: bytes) -> bool:
        return super().claims(path, head) or has_dicm_marker(head)

    def read(self, path: Path) -> Input:
        ds, frames = dicom.read_frames(path)
        return self._input(path, ds, frames)

    def read_bytes(self, data: bytes, label: str) -> Input:
        import io

        ds = dicom.parse_dataset(io.BytesIO(data), label)
        return self._input(Path(label), ds, dicom.frames_from_dataset(ds, label))

    @staticmethod
    def _input(path: Path, ds, frames: list[np.ndarray]) -> Input:
        if len(frames) == 1:
            return Input(path, [(path.stem, frames[0])], dicom.DicomSeg(ds))
        frame_ids = [f"{path.stem}_frame{k:03d}" for k in range(len(frames))]
        return Input(path, list(zip(frame_ids, frames)), dicom.DicomSeg(ds))


# Every format, tried in order: a folder of one DICOM series and a NIfTI are volumes; a DICOM file and a
# photo are images; the photo reader takes whatever no other reader claims (and says when it is no image).
READERS: list[Reader] = [DicomSeriesReader(), NiftiReader(), DicomReader(), PhotoReader()]
FALLBACK = READERS[-1]


def reader_by_name(name: str) -> Reader:
    return next(r for r in READERS if r.name == name)


def companion_suffixes() -> tuple[str, ...]:
    """The endings of every format's own results (`<id>_seg.dcm`), for recognising a folder's results."""
    return tuple(r.companion_suffix for r in READERS if r.companion_suffix)


def _input_files(folder: Path) -> list[Path]:
    """A folder's inputs by suffix: photos first, then each other format, each sorted by name."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    out: list[Path] = []
    for reader in [FALLBACK] + [r for r in READERS if r is not FALLBACK and not r.volume]:
        out += sorted(p for p in files if p.suffix.lower() in reader.suffixes)
    return out


def reader_for(path: str | Path) -> Reader:
    path = Path(path)
    head = file_head(path)
    return next((r for r in READERS if r.claims(path, head)), FALLBACK)


def read_input(path: str | Path) -> Input:
    """Every frame of one input file of images, through the reader of its format."""
    path = Path(path)
    reader = reader_for(path)
    if reader.volume:
        raise UserError(f"{path}: a volume ({reader.name}), where images are read")
    return reader.read(path)


def read_volume(path: str | Path) -> Volume:
    """One volume (a NIfTI file, a folder of one DICOM series), through the reader of its format."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    reader = reader_for(path)
    if not reader.volume:
        raise UserError(f"{path}: not a volume (a .nii / .nii.gz file or a folder of one DICOM series)")
    return reader.read(path)


def read_volume_bytes(data: bytes, label: str, caps: Caps) -> Volume:
    """An uploaded volume, told by its first bytes: a zip of one DICOM series, else a NIfTI (gzip or not),
    read by the same readers as files; over a cap raises VolumeTooLarge, before the memory is taken."""
    if data[:4] == ZIP_MAGIC:
        return reader_by_name("dicom-series").read_bytes(data, label, caps)
    try:
        return reader_by_name("nifti").read_bytes(data, label, caps)
    except NotNifti:  # an upload could have been either: say both
        raise UserError(f"{label}: not a NIfTI file or a zip of a DICOM series") from None


def is_volume(path: str | Path) -> bool:
    """Whether the registry reads `path` as a volume: told by its name and content, never by a model."""
    return reader_for(path).volume


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (not recursive) into image files, in the order given."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _input_files(p)
            if not any(not f.name.startswith(".") for f in p.iterdir()):
                raise UserError(f"{p}: an empty folder: nothing to segment (give images, NIfTI volumes, "
                                "DICOM files or a DICOM series folder)")
            if not found:
                raise UserError(
                    f"{p}: no images in this folder (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return out


def check_unique_ids(files: list[Path]) -> list[Path]:
    """`files`, refused with a UserError if two share an id (file stem): their outputs would collide."""
    ids: dict[str, Path] = {}
    for f in files:
        if f.stem in ids:
            raise UserError(f"{f}: same id '{f.stem}' as {ids[f.stem]}; outputs would collide")
        ids[f.stem] = f
    return files
