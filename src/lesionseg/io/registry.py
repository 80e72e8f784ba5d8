"""Input formats by class, chosen by suffix and content (as nnU-Net's imageio/ does): a new format is one
`Reader` subclass added to READERS, plus its test. Every verb that reads inputs (`predict`, the service,
`export --check-images`) goes through `read_input`; none of them knows which formats exist.

A reader returns an `Input`: the frames to segment, each with the id its results are named by, and
optionally a `companion`, the format's own result written beside the masks (the DICOM SEG of a DICOM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from ..errors import UserError
from . import dicom
from .photo import IMAGE_EXTENSIONS, read_image


class Companion(Protocol):
    """A result in the input's own format, written from the frames' masks."""

    description: str
    media_type: str

    def name(self, input_id: str) -> str: ...

    def write(self, path: Path, masks: list[np.ndarray], label: str) -> None: ...

    def encode(self, masks: list[np.ndarray], where: str, label: str) -> bytes: ...


@dataclass
class Input:
    path: Path
    frames: list[tuple[str, np.ndarray]]  # (result id, RGB uint8 HxWx3)
    companion: Companion | None = None

    @property
    def id(self) -> str:
        return self.path.stem


class Reader:
    """One input format. `claims` decides by suffix, or by the file's first bytes (`head`)."""

    name = ""
    suffixes: tuple[str, ...] = ()
    companion_suffix: str | None = None  # the ending of its companion result's name, if it has one

    def claims(self, path: Path, head: bytes) -> bool:
        return path.suffix.lower() in self.suffixes

    def read(self, path: Path) -> Input:
        raise NotImplementedError

    def read_bytes(self, data: bytes, label: str) -> Input:
        """The same from bytes in memory (an upload); errors name `label`."""
        raise NotImplementedError


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
        return super().claims(path, head) or head[128:132] == b"DICM"

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


# Tried in order; the photo reader takes whatever no other reader claims (and says when it is no image).
READERS: list[Reader] = [DicomReader(), PhotoReader()]
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
    for reader in [FALLBACK] + [r for r in READERS if r is not FALLBACK]:
        out += sorted(p for p in files if p.suffix.lower() in reader.suffixes)
    return out


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(132)
    except OSError:
        return b""


def reader_for(path: str | Path) -> Reader:
    path = Path(path)
    head = _head(path)
    return next((r for r in READERS if r.claims(path, head)), FALLBACK)


def read_input(path: str | Path) -> Input:
    """Every frame of one input file, through the reader of its format."""
    path = Path(path)
    return reader_for(path).read(path)


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (not recursive) into image files, in the order given."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _input_files(p)
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
