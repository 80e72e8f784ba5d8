"""Labelled volumes in the Medical Segmentation Decathlon and nnU-Net v2 layouts, read as they are:
`imagesTr/` (MSD `case.nii.gz`, nnU-Net `case_0000.nii.gz`: one channel) beside `labelsTr/` (`case.nii.gz`),
with `dataset.json` naming the label values and the modality. `images/` + `labels/` folders of NIfTI files
work the same way. Every problem of a folder is reported at once, before anything is written."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np

from .errors import UserError, ValidationError
from .io.volumes import NiftiReader, Volume, is_nifti, nifti_id, read_label_volume
from .labels import DECLARATION_FILE, Declared, Labels, read_dataset_json
from .pairs import StructureTally, check_each

IMAGE_FOLDERS = ("imagesTr", "images")
LABEL_FOLDERS = ("labelsTr", "labels")
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclasses.dataclass(frozen=True)
class VolumePair:
    id: str
    image_path: Path
    label_path: Path


def volume_folders(folder: Path) -> tuple[Path, Path] | None:
    """(images, labels) when `folder` is a labelled-volume dataset (NIfTI files in both), else None."""
    for images, labels in zip(IMAGE_FOLDERS, LABEL_FOLDERS):
        i, lab = folder / images, folder / labels
        if (
            i.is_dir()
            and lab.is_dir()
            and any(is_nifti(p) for p in i.iterdir() if not p.name.startswith("."))
        ):
            return i, lab
    return None


def is_volume_dataset(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and volume_folders(folder) is not None


def _nifti_files(folder: Path) -> list[Path]:
    # "._name" files are macOS resource forks that copies of the Decathlon carry
    return sorted(p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith("."))


def read_modality(folder: Path) -> str | None:
    """dataset.json's modality (MSD `modality`, nnU-Net v2 `channel_names`: channel "0")."""
    path = folder / DECLARATION_FILE
    doc = read_dataset_json(folder)
    if doc is None:
        return None
    channels = doc.get("channel_names") or doc.get("modality") or {}
    if isinstance(channels, dict) and len(channels) > 1:
        raise UserError(
            f"{path}: {len(channels)} input channels ({', '.join(map(str, channels.values()))}); "
            "volumes of one channel are supported"
        )
    value = next(iter(channels.values()), None) if isinstance(channels, dict) else None
    return str(value) if value is not None else None


def discover_volumes(folder: str | Path) -> list[VolumePair]:
    folder = Path(folder)
    found = volume_folders(folder)
    if found is None:
        raise UserError(f"{folder}: no imagesTr/ + labelsTr/ (or images/ + labels/) folders of NIfTI volumes")
    images_dir, labels_dir = found
    labels = {nifti_id(p): p for p in _nifti_files(labels_dir)}
    pairs, problems = [], []
    for path in _nifti_files(images_dir):
        case = nifti_id(path)
        m = CHANNEL_SUFFIX.match(case)
        if m and m["case"] in labels:  # nnU-Net v2: case_0000 is channel 0 of case
            if m["channel"] != "0000":
                problems.append(
                    f"{path}: a second input channel ({m['channel']}); volumes of one channel are supported"
                )
                continue
            case = m["case"]
        if case not in labels:
            problems.append(f"{path}: no label volume {labels_dir.name}/{case}.nii.gz")
            continue
        pairs.append(VolumePair(case, path, labels[case]))
    if problems:
        raise ValidationError(problems, what="data check")
    if not pairs:
        raise UserError(f"{images_dir}: no volumes")
    return pairs


def volume_labels(folder: Path, declared: Declared) -> Labels:
    """The structures the dataset declares (exclusive values of one label map)."""
    structures, ignore = declared.structures()
    if not structures:
        raise UserError(
            f"{folder}: label volumes need their values declared (a {DECLARATION_FILE} with "
            '"labels", or data.labels in the config)'
        )
    return Labels.of(
        "exclusive" if declared.mode in ("auto", "exclusive") else declared.mode, structures, ignore
    )


@dataclasses.dataclass
class LabelledVolume:
    pair: VolumePair
    volume: Volume
    truth: np.ndarray  # the label volume: label values on the volume's grid


def load_volume_pair(pair: VolumePair) -> LabelledVolume:
    volume = NiftiReader().read(pair.image_path)
    volume.id = pair.id
    return LabelledVolume(pair, volume, read_label_volume(pair.label_path, volume))


def validate_volumes(pairs: list[VolumePair], labels: Labels) -> list[LabelledVolume]:
    """Read every pair, report every problem at once, and print each structure's share of the voxels."""
    out: list[LabelledVolume] = []
    tally = StructureTally("volumes")

    def load(pair: VolumePair) -> LabelledVolume:
        item = load_volume_pair(pair)
        unknown = labels.undeclared(np.unique(item.truth).tolist())
        if unknown:
            raise UserError(f"{pair.label_path}: label value(s) {unknown} not declared "
                            f"({', '.join(f'{s.name}={s.value}' for s in labels.structures)})")
        return item

    def use(pair: VolumePair, item: LabelledVolume) -> None:
        counts = np.bincount(item.truth.ravel(), minlength=256)
        tally.add(np.array([counts[s.value] for s in labels.structures]), item.truth.size)
        out.append(item)

    problems = check_each(pairs, load, use)
    if problems:
        raise ValidationError(problems, what="data check")
    if tally.empty == len(out):
        raise UserError(
            f"{pairs[0].label_path.parent}: all {len(out)} label volumes are empty: nothing to learn"
        )
    print(tally.shares(labels, decimals=2), file=sys.stderr, flush=True)
    return out
