"""A labelled dataset's cases, found by id in whichever layout the folder has, and checked in one pass.

Photos: a folder holds `images/` and a mask folder (`masks/`, or `mask/`, `labels/`, `annotations/`,
`ground_truth/`). A mask pairs with an image by id, never by sorted order: `ID.<ext>` pairs with `ID.<ext>`
or `ID<suffix>.<ext>` (`_segmentation`, `_mask`, `_seg`, `_label`, `_gt`); `ID<suffix>_N.<ext>` are
instance masks of one image, merged by union; masks may also be label maps or one folder per structure.

Volumes, in the Medical Segmentation Decathlon and nnU-Net v2 layouts: `imagesTr/` (MSD `case.nii.gz`,
nnU-Net `case_0000.nii.gz`: one channel) beside `labelsTr/` (`case.nii.gz`), with `dataset.json` naming
the label values and the modality; `images/` + `labels/` folders of NIfTI files work the same way.

How each layout's files are read is its class in `layouts.py`; every problem of a folder is reported at
once, before anything is written.
"""

from __future__ import annotations

import collections
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError, ValidationError
from .io import IMAGE_EXTENSIONS, JPEG_MASK_THRESHOLD
from .io.volumes import Volume, is_nifti, nifti_id
from .labels import DECLARATION_FILE, Declared, Labels, read_dataset_json
from .layouts import BinaryMasks, LabelMaps, LabelVolumes, StructureFolders, TruthLayout

MASK_FOLDERS = ("masks", "mask", "labels", "annotations", "ground_truth")
MASK_SUFFIXES = ("_segmentation", "_mask", "_seg", "_label", "_gt")
MASK_SUFFIX = MASK_SUFFIXES[0]
MASK_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}  # SCR ships its masks as GIFs


@dataclass(frozen=True)
class Pair:
    id: str
    image_path: Path
    truth_path: Path  # a mask, a label map, or a label volume
    more_masks: tuple[Path, ...] = ()  # instance masks merged by union, or the other structures' masks
    layout: TruthLayout = field(default_factory=BinaryMasks, compare=False)

    @property
    def truth_paths(self) -> tuple[Path, ...]:
        return (self.truth_path, *self.more_masks)


def _image_files(folder: Path, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions
                  and not p.name.startswith("."))


def _mask_files(folder: Path) -> list[Path]:
    return _image_files(folder, MASK_EXTENSIONS)


def mask_id(path: Path) -> str:
    """The id a mask file names: its stem without a known mask suffix."""
    stem = path.stem
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _match(stem: str, ids: set[str]) -> tuple[str, bool] | None:
    """(image id, is an instance mask) for a mask stem, or None when it names no image."""
    if stem in ids:
        return stem, False
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in ids:
            return stem[: -len(suffix)], False
        m = re.fullmatch(rf"(.+){suffix}_(\d+)", stem)
        if m and m.group(1) in ids:
            return m.group(1), True
    return None


@dataclass
class _Masks:
    by_id: dict[str, list[Path]]
    unmatched: list[Path]
    instances: int = 0


def _pair_masks(files: list[Path], ids: set[str], problems: list[str]) -> _Masks:
    out = _Masks({}, [])
    plain: dict[str, Path] = {}
    for f in files:
        hit = _match(f.stem, ids)
        if hit is None:
            out.unmatched.append(f)
            continue
        key, instance = hit
        if not instance:
            if key in plain:
                problems.append(f"{f}: duplicate mask id '{key}' (also {plain[key].name})")
                continue
            plain[key] = f
        out.instances += instance
        out.by_id.setdefault(key, []).append(f)
    for key, paths in out.by_id.items():  # the plain mask first, then instances by number
        paths.sort(key=lambda p: (p != plain.get(key), _instance_number(p)))
    return out


def _instance_number(path: Path) -> int:
    m = re.search(r"_(\d+)$", path.stem)
    return int(m.group(1)) if m else -1


def _likely_cause(images: dict[str, Path], unmatched: list[Path], paired: int) -> str | None:
    """One line when most images failed to pair, with what the mask names have in common."""
    if paired * 2 >= len(images) or not unmatched:
        return None
    ends = collections.Counter(
        ("_" + f.stem.rsplit("_", 1)[1]) if "_" in f.stem else f.suffix for f in unmatched
    ).most_common(1)[0]
    cause = f"{paired} of {len(images)} images paired"
    if ends[1] * 2 >= len(unmatched):
        cause += f"; the masks end in `{ends[0]}`"
    example = sorted(images.values())[0].name
    return f"{cause} (e.g. image {example}, mask {unmatched[0].name}; masks pair by id, optionally + " \
           f"{', '.join(MASK_SUFFIXES)})"


def _mask_folder(folder: Path) -> Path | None:
    for name in MASK_FOLDERS:
        if (folder / name).is_dir():
            return folder / name
    return None


def _images(folder: Path, problems: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in _image_files(folder / "images"):
        if f.stem in out:
            problems.append(f"{f}: duplicate image id '{f.stem}' (also {out[f.stem].name})")
        else:
            out[f.stem] = f
    if not out:
        raise UserError(f"{folder}: no images found in images/ "
                        f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return out


def _layout(declared: Declared, structure_dirs: list[Path]) -> TruthLayout:
    pairs, ignore = declared.structures()
    if structure_dirs:
        names = [d.name for d in structure_dirs]
        declared_names = [n for n, _ in pairs]
        if declared_names and sorted(declared_names) != sorted(names):
            raise UserError(f"{declared.source}: declares {', '.join(declared_names)} but the mask folder "
                            f"has {', '.join(names)}")
        order = declared_names or names
        mode = "overlapping" if declared.mode in ("auto", "binary") else declared.mode
        return StructureFolders(Labels.of(mode, [(n, i + 1) for i, n in enumerate(order)]))
    if declared.mode == "binary" or (not pairs and declared.mode == "auto"):
        return BinaryMasks()
    if not pairs:
        raise UserError(f"data.label_mode={declared.mode} needs the structures declared (a dataset.json with "
                        "\"labels\", or data.labels in the config)")
    mode = "exclusive" if declared.mode == "auto" else declared.mode
    return LabelMaps(Labels.of(mode, pairs, ignore))


def discover(folder: str | Path, declared: Declared | None = None) -> list[Pair]:
    """The labelled cases of `folder` in its layout (`declared`: what its dataset.json or the config says
    of its labels). Raises ValidationError listing every pairing problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found")
    declared = declared or Declared.for_folder(folder)
    found = volume_folders(folder)
    if found is not None:
        return _volume_pairs(*found, volume_labels(folder, declared))
    return _photo_pairs(folder, declared)


def _photo_pairs(folder: Path, declared: Declared) -> list[Pair]:
    masks_dir = _mask_folder(folder)
    if not (folder / "images").is_dir() or masks_dir is None:
        missing = ["images/"] if not (folder / "images").is_dir() else []
        missing += [] if masks_dir is not None else ["masks/ (or " + ", ".join(MASK_FOLDERS[1:]) + ")"]
        raise UserError(f"{folder}: expected sub-folders images/ and masks/ (missing: {', '.join(missing)})")
    problems: list[str] = []
    images = _images(folder, problems)
    structure_dirs = sorted(d for d in masks_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    layout = _layout(declared, structure_dirs if not _mask_files(masks_dir) else [])
    ids = set(images)
    if isinstance(layout, StructureFolders):
        dirs = {d.name: d for d in structure_dirs}
        per = {}
        unmatched: list[Path] = []
        for name in layout.labels.names:
            found = _pair_masks(_mask_files(dirs[name]), ids, problems)
            per[name] = found.by_id
            unmatched += found.unmatched
            for i in sorted(ids - found.by_id.keys()):
                problems.append(f"{dirs[name]}: no mask for image {images[i].name} (structure {name})")
        paired = [i for i in sorted(ids) if all(i in per[n] for n in per)]
        by_id = {i: [per[n][i][0] for n in layout.labels.names] for i in paired}
        instances = 0
    else:
        found = _pair_masks(_mask_files(masks_dir), ids, problems)
        by_id, unmatched, instances = found.by_id, found.unmatched, found.instances
        for i in sorted(ids - by_id.keys()):
            problems.append(f"{images[i]}: no mask for this image (looked for {i}.* or {i}<suffix>.* in "
                            f"{masks_dir.name}/, suffixes {', '.join(MASK_SUFFIXES)})")
    for f in unmatched:
        problems.append(f"{f}: no image for this mask (looked for {mask_id(f)}.* in images/)")
    if problems:
        raise ValidationError(problems, what=f"pairing in {folder}",
                              cause=_likely_cause(images, unmatched, len(by_id)))
    if instances:
        example = next(p for ps in by_id.values() for p in ps[1:]).name
        print(f"data: {instances} instance mask(s) (e.g. {example}) merged by union with their image's other "
              "masks", file=sys.stderr, flush=True)
    return [Pair(i, images[i], by_id[i][0], tuple(by_id[i][1:]), layout) for i in sorted(by_id)]


def labels_of(pairs: list[Pair]) -> Labels:
    return pairs[0].layout.labels if pairs else Labels.binary()


VOLUME_IMAGE_FOLDERS = ("imagesTr", "images")
VOLUME_LABEL_FOLDERS = ("labelsTr", "labels")
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def volume_folders(folder: Path) -> tuple[Path, Path] | None:
    """(images, labels) when `folder` is a labelled-volume dataset (NIfTI files in both), else None."""
    for images, labels in zip(VOLUME_IMAGE_FOLDERS, VOLUME_LABEL_FOLDERS):
        i, lab = folder / images, folder / labels
        if i.is_dir() and lab.is_dir() and _nifti_files(i):
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


def volume_labels(folder: Path, declared: Declared) -> Labels:
    """The structures a volume dataset declares (exclusive values of one label map)."""
    structures, ignore = declared.structures()
    if not structures:
        raise UserError(
            f"{folder}: label volumes need their values declared (a {DECLARATION_FILE} with "
            '"labels", or data.labels in the config)'
        )
    return Labels.of(
        "exclusive" if declared.mode in ("auto", "exclusive") else declared.mode, structures, ignore
    )


def _volume_pairs(images_dir: Path, labels_dir: Path, labels: Labels) -> list[Pair]:
    layout = LabelVolumes(labels)
    truths = {nifti_id(p): p for p in _nifti_files(labels_dir)}
    pairs, problems = [], []
    for path in _nifti_files(images_dir):
        case = nifti_id(path)
        m = CHANNEL_SUFFIX.match(case)
        if m and m["case"] in truths:  # nnU-Net v2: case_0000 is channel 0 of case
            if m["channel"] != "0000":
                problems.append(
                    f"{path}: a second input channel ({m['channel']}); volumes of one channel are supported"
                )
                continue
            case = m["case"]
        if case not in truths:
            problems.append(f"{path}: no label volume {labels_dir.name}/{case}.nii.gz")
            continue
        pairs.append(Pair(case, path, truths[case], layout=layout))
    if problems:
        raise ValidationError(problems, what="data check")
    if not pairs:
        raise UserError(f"{images_dir}: no volumes")
    return pairs


def load_pair(pair: Pair, mask_threshold: int | None = None, on_auto=None):
    """(image, truth) of one case, as its layout reads them."""
    return pair.layout.load(pair, mask_threshold, on_auto)


@dataclass
class LabelledCase:
    """A case read and checked: its image (a photo's pixels, or a Volume) and its truth."""

    pair: Pair
    image: np.ndarray | Volume
    truth: np.ndarray


@dataclass
class StructureTally:
    """What a data check reports of the cases it read: how many hold no structure, and each structure's
    share of the pixels (or voxels)."""

    noun: str  # "pairs", "volumes"
    cases: int = 0
    empty: int = 0
    pixels: int = 0
    per_structure: np.ndarray | None = None

    def add(self, on: np.ndarray, pixels: int) -> None:
        """One case: its pixel count per structure, of `pixels` in all."""
        self.per_structure = on if self.per_structure is None else self.per_structure + on
        self.pixels += pixels
        self.cases += 1
        self.empty += int(on.sum() == 0)

    def shares(self, labels: Labels, decimals: int = 1) -> str:
        """One line: each structure's share, and the cases with none."""
        shares = ", ".join(f"{n} {100 * c / max(1, self.pixels):.{decimals}f}%"
                           for n, c in zip(labels.names, self.per_structure))
        return (f"data: {self.cases} {self.noun}, {labels.mode} structures: {shares}"
                f"{f'; {self.empty} with no structure' if self.empty else ''}")


def validate(pairs: list[Pair], mask_threshold: int | None = None, keep: bool = False,
             keep_limit_bytes: int | None = 4 << 30) -> list[LabelledCase] | None:
    """Read every case once and report *all* problems together; a set whose truths are all empty is
    refused. Several structures: one line with each one's share of the pixels (or voxels).

    With `keep`, the cases read are returned (a cache for training and scoring) as long as they stay under
    `keep_limit_bytes` (None: no limit); past that, None, and they are read from disk again.
    """
    auto: list[Path] = []
    layout = pairs[0].layout if pairs else BinaryMasks()
    tally = StructureTally(layout.noun)
    kept: list[LabelledCase] | None = [] if keep else None
    used, problems = 0, []
    for pair in pairs:
        try:
            image, truth = load_pair(pair, mask_threshold, on_auto=auto.append)
        except UserError as exc:
            problems.append(str(exc))
            continue
        tally.add(*layout.counts(truth))
        if kept is not None:
            used += image.nbytes + truth.nbytes
            if keep_limit_bytes is not None and used > keep_limit_bytes:
                kept = None
            else:
                kept.append(LabelledCase(pair, image, truth))
    if problems:
        raise ValidationError(problems, what="data check")
    if pairs and tally.empty == len(pairs):
        raise UserError(f"{pairs[0].truth_path.parent}: all {len(pairs)} {layout.all_empty}")
    labels = labels_of(pairs)
    if labels.multi and pairs:
        print(tally.shares(labels, layout.share_decimals), file=sys.stderr, flush=True)
    elif tally.empty:
        print(f"data: {tally.empty} of {len(pairs)} masks are empty", file=sys.stderr, flush=True)
    if auto:
        print(
            f"data: {len(auto)} JPEG mask(s) with compression grey levels around 0 and 255 (e.g. "
            f"{auto[0].name}) "
            f"binarised at {JPEG_MASK_THRESHOLD}; pass --mask-threshold T to choose",
            file=sys.stderr,
            flush=True,
        )
    return kept
