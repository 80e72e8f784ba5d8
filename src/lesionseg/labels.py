"""What a model segments: its structures, how they relate, their colours; read from a dataset's declaration.

Three modes:
- binary: one structure, one sigmoid channel (every model before there were several);
- exclusive: classes that never share a pixel, one softmax over background + the classes;
- overlapping: structures that may share pixels (a clavicle over its lung), one sigmoid channel each
  (nnU-Net's region-based training).

Masks of several structures travel as uint8 (H, W, C) arrays, one channel per structure, values 0/1, with
IGNORED in every channel where the dataset's ignore value was (left out of the loss and the metrics).
A declaration is a `dataset.json` beside images/ and masks/ (MSD: {"labels": {"0": "background", "1":
"heart"}}; nnU-Net v2: {"labels": {"background": 0, "heart": 1, "ignore": 255}}) or the config's
`data.labels` (name → value), `data.label_mode` and `data.ignore_value`. No torch here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .errors import UserError

MODES = ("binary", "exclusive", "overlapping")
IGNORED = 255  # in channel masks: a pixel no structure is scored on
DECLARATION_FILE = "dataset.json"
# Distinct colours for overlays, label-map palettes and DICOM SEG segments (structure 1 first).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))
BACKGROUND_NAMES = ("background", "bg")


@dataclasses.dataclass(frozen=True)
class Structure:
    name: str
    value: int  # its value in an index label map (1, 2, ...)
    color: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Labels:
    mode: str
    structures: tuple[Structure, ...]
    ignore_value: int | None = None

    @classmethod
    def binary(cls, name: str = "foreground") -> "Labels":
        return cls("binary", (Structure(name, 1, PALETTE[0]),))

    @classmethod
    def of(cls, mode: str, names_values: list[tuple[str, int]], ignore_value: int | None = None) -> "Labels":
        """Structures in the order given, coloured by position."""
        structures = tuple(Structure(n, int(v), PALETTE[i % len(PALETTE)])
                           for i, (n, v) in enumerate(names_values))
        return cls(mode, structures, ignore_value)

    @property
    def multi(self) -> bool:
        return self.mode != "binary"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures)

    @property
    def out_channels(self) -> int:
        """Network output channels: background is a channel of the softmax only."""
        return len(self.structures) + (1 if self.mode == "exclusive" else 0)

    def undeclared(self, values) -> list[int]:
        """The values of a label map that are neither background, a structure, nor the ignore value."""
        known = {0, *(s.value for s in self.structures)}
        if self.ignore_value is not None:
            known.add(self.ignore_value)
        return sorted(set(int(v) for v in values) - known)

    def index(self, name: str) -> int:
        """Position of a structure by name, or a UserError naming the ones there are."""
        if name not in self.names:
            raise UserError(f"no structure {name!r} in this model (it has {', '.join(self.names)})")
        return self.names.index(name)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "ignore_value": self.ignore_value,
                "structures": [{"name": s.name, "value": s.value, "color": list(s.color)}
                               for s in self.structures]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Labels":
        mode = str(values["mode"])
        if mode not in MODES:
            raise ValueError(f"unknown label mode {mode!r}")
        structures = tuple(Structure(str(s["name"]), int(s["value"]), tuple(int(c) for c in s["color"]))
                           for s in values["structures"])
        ignore = values.get("ignore_value")
        return cls(mode, structures, None if ignore is None else int(ignore))


def _parse_declared(labels: dict, source: str) -> tuple[list[tuple[str, int]], int | None]:
    """(name, value) of the foreground structures and the ignore value, from either spelling of "labels"."""
    pairs: list[tuple[str, int]] = []
    ignore = None
    for key, value in labels.items():
        if isinstance(value, str) and str(key).lstrip("-").isdigit():  # MSD: value → name
            name, number = value, int(key)
        elif isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2: name → value
            name, number = str(key), value
        else:
            raise UserError(f"{source}: label {key!r}: {value!r} is not a label value (regions given as "
                            "lists are not supported; declare each structure's value)")
        if name.lower() == "ignore":
            ignore = number
        elif name.lower() in BACKGROUND_NAMES or number == 0:
            if number != 0:
                raise UserError(f"{source}: background must be 0, not {number}")
        else:
            pairs.append((name, number))
    pairs.sort(key=lambda p: p[1])
    values = [v for _, v in pairs]
    if len(set(values)) != len(values):
        raise UserError(f"{source}: two structures share a value ({values})")
    if ignore is not None and ignore in values:
        raise UserError(f"{source}: the ignore value {ignore} is also a structure's value")
    return pairs, ignore


def read_dataset_json(folder: Path) -> dict | None:
    """folder/dataset.json (MSD / nnU-Net), or None when there is no such file."""
    path = folder / DECLARATION_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    return doc if isinstance(doc, dict) else {}


def read_declaration(folder: Path) -> dict | None:
    """The `labels` mapping of folder/dataset.json (or None when there is no such file)."""
    doc = read_dataset_json(folder)
    if doc is None:
        return None
    path = folder / DECLARATION_FILE
    labels = doc.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{path}: expected a \"labels\" mapping, e.g. {{\"background\": 0, \"heart\": 1}}")
    return labels


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a dataset's folder and config say about its labels, before the masks are looked at."""

    labels: dict | None = None  # name → value (or MSD's value → name)
    mode: str = "auto"  # auto | exclusive | overlapping | binary
    ignore_value: int | None = None
    source: str = "config"

    @classmethod
    def for_folder(cls, folder: Path, labels: dict | None = None, mode: str = "auto",
                   ignore_value: int | None = None) -> "Declared":
        """The folder's dataset.json when there is one, else the config's `data.labels`."""
        found = read_declaration(folder)
        if found is not None:
            return cls(found, mode, ignore_value, str(folder / DECLARATION_FILE))
        return cls(labels, mode, ignore_value, "config data.labels")

    def structures(self) -> tuple[list[tuple[str, int]], int | None]:
        if not self.labels:
            return [], self.ignore_value
        pairs, ignore = _parse_declared(self.labels, self.source)
        return pairs, self.ignore_value if self.ignore_value is not None else ignore
