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
