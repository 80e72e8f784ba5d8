"""What every input format's reader is (one class per format, registered in registry.READERS), and what a
reader of images gives back. A reader of volumes gives a `volumes.Volume`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class Companion(Protocol):
    """A result in the input's own format, encoded from the frames' masks (written with the others)."""

    description: str
    media_type: str

    def name(self, input_id: str) -> str: ...

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
    """One input format. `claims` decides by suffix, or by content: the file's first bytes (`head`), or
    what a folder holds. `volume`: it reads a volume (`volumes.Volume`), else images (`Input`)."""

    name = ""
    suffixes: tuple[str, ...] = ()  # listed as images in a folder (volume readers list none)
    volume = False
    companion_suffix: str | None = None  # the ending of its companion result's name, if it has one

    def claims(self, path: Path, head: bytes) -> bool:
        return path.suffix.lower() in self.suffixes

    def read(self, path: Path) -> Input:
        raise NotImplementedError

    def read_bytes(self, data: bytes, label: str) -> Input:
        """The same from bytes in memory (an upload); errors name `label`."""
        raise NotImplementedError


HEAD_BYTES = 132  # a DICOM file's 128-byte preamble and its DICM marker


def has_dicm_marker(head: bytes) -> bool:
    """DICOM told by content, as every DICOM tool tells it: `DICM` after the 128-byte preamble."""
    return head[128:HEAD_BYTES] == b"DICM"


def file_head(path: Path) -> bytes:
    """A file's first bytes, for readers that tell a format by content; b"" for a folder or an unreadable
    file."""
    if not path.is_file():
        return b""
    try:
        with path.open("rb") as f:
            return f.read(HEAD_BYTES)
    except OSError:
        return b""
