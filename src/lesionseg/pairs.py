"""Finding image/mask pairs by id, reading their masks in the folder's layout, checking a folder in one pass.

A data folder holds `images/` and a mask folder (`masks/`, or `mask/`, `labels/`, `annotations/`,
`ground_truth/`). A mask pairs with an image by id, never by sorted order: `ID.<ext>` pairs with `ID.<ext>`
or `ID<suffix>.<ext>` (`_segmentation`, `_mask`, `_seg`, `_label`, `_gt`); `ID<suffix>_N.<ext>` are
instance masks of one image, merged by union. Three layouts (one `MaskLayout` class each):
- binary masks (one structure; 0/255, 0/1, JPEG-noisy): `BinaryMasks`;
- index label maps (8/16-bit or palette PNG), read when the structures are declared (labels.py):
  `LabelMaps`;
- one sub-folder per structure, `masks/<structure>/ID.<ext>`, structures may overlap: `StructureFolders`.
"""

from __future__ import annotations

import collections
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError, ValidationError
from .io import IMAGE_EXTENSIONS, JPEG_MASK_THRESHOLD, read_image, read_label_map, read_mask
from .labels import IGNORED, Declared, Labels

MASK_FOLDERS = ("masks", "mask", "labels", "annotations", "ground_truth")
MASK_SUFFIXES = ("_segmentation", "_mask", "_seg", "_label", "_gt")
MASK_SUFFIX = MASK_SUFFIXES[0]
MASK_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}  # SCR ships its masks as GIFs


class MaskLayout:
    """How a folder's masks become a training target: bool (H, W) for one structure, uint8 (H, W, C)
    channels (0/1, labels.IGNORED) for several."""

    labels: Labels = Labels.binary()

    def read(self, pair: "Pair", threshold: int | None = None, on_auto=None) -> np.ndarray:
        raise NotImplementedError


def _read_masks(pair: "Pair", threshold, on_auto) -> list[np.ndarray]:
    """Every binary mask file of a pair (instances, or one per structure), all of one size."""
    masks = [read_mask(p, threshold=threshold, on_auto=on_auto) for p in pair.mask_paths]
    for p, m in zip(pair.mask_paths[1:], masks[1:]):
        if m.shape != masks[0].shape:
            raise UserError(f"{p}: mask is {m.shape[1]}x{m.shape[0]}, {pair.mask_path.name} is "
                            f"{masks[0].shape[1]}x{masks[0].shape[0]}")
    return masks


class BinaryMasks(MaskLayout):
    def read(self, pair, threshold=None, on_auto=None):
        masks = _read_masks(pair, threshold, on_auto)
        return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]


@dataclass(frozen=True)
class LabelMaps(MaskLayout):
    labels: Labels

    def read(self, pair, threshold=None, on_auto=None):
        path = pair.mask_path
        index = read_label_map(path)
        ignore = self.labels.ignore_value
        unknown = self.labels.undeclared(np.unique(index).tolist())
        if unknown:
            declared = ", ".join(f"{s.value} {s.name}" for s in self.labels.structures)
            what = "palette index" if _is_palette(path) else "value"
            raise UserError(f"{path}: {what} {', '.join(map(str, unknown[:5]))} not declared "
                            f"(declared: 0 background, {declared}"
                            f"{f', {ignore} ignore' if ignore is not None else ''})")
        out = np.stack([index == s.value for s in self.labels.structures], -1).astype(np.uint8)
        if ignore is not None:
            out[index == ignore] = IGNORED
        return out


@dataclass(frozen=True)
class StructureFolders(MaskLayout):
    labels: Labels

    def read(self, pair, threshold=None, on_auto=None):
        out = np.stack(_read_masks(pair, threshold, on_auto), -1).astype(np.uint8)
        if self.labels.mode == "exclusive":
            shared = out.sum(-1) > 1
            if shared.any():
                y, x = np.argwhere(shared)[0]
                a, b = np.flatnonzero(out[y, x])[:2]
                names = self.labels.names
                raise UserError(f"{pair.mask_path.parent.parent}/*/{pair.mask_path.name}: structures "
                                f"{names[a]} and {names[b]} overlap ({int(shared.sum())} pixels) but the "
                                "labels are exclusive (set data.label_mode: overlapping)")
        return out


def _is_palette(path: Path) -> bool:
    from .io.photo import open_image

    return open_image(path).mode == "P"


@dataclass(frozen=True)
class Pair:
    id: str
    image_path: Path
    mask_path: Path
    more_masks: tuple[Path, ...] = ()  # instance masks merged by union, or the other structures' masks
    layout: MaskLayout = field(default_factory=BinaryMasks, compare=False)

    @property
    def mask_paths(self) -> tuple[Path, ...]:
        return (self.mask_path, *self.more_masks)


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


def _layout(declared: Declared, structure_dirs: list[Path]) -> MaskLayout:
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
    """Pairs of `folder` in its mask layout. Raises ValidationError listing every pairing problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found")
    masks_dir = _mask_folder(folder)
    if not (folder / "images").is_dir() or masks_dir is None:
        missing = ["images/"] if not (folder / "images").is_dir() else []
        missing += [] if masks_dir is not None else ["masks/ (or " + ", ".join(MASK_FOLDERS[1:]) + ")"]
        raise UserError(f"{folder}: expected sub-folders images/ and masks/ (missing: {', '.join(missing)})")
    declared = declared or Declared.for_folder(folder)
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


def load_pair(pair: Pair, mask_threshold: int | None = None, on_auto=None) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(pair.image_path)
    mask = pair.layout.read(pair, mask_threshold, on_auto)
    if image.shape[:2] != mask.shape[:2]:
        raise UserError(
            f"{pair.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    return image, mask


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

    def add_mask(self, mask: np.ndarray) -> None:
        """A target as the mask layouts read it: bool (H, W), or uint8 (H, W, C) channels."""
        channels = mask.reshape(-1, 1) if mask.ndim == 2 else mask.reshape(-1, mask.shape[-1])
        self.add((channels == 1).sum(0) if mask.ndim == 3 else channels.sum(0), channels.shape[0])

    def shares(self, labels: Labels, decimals: int = 1) -> str:
        """One line: each structure's share, and the cases with none."""
        shares = ", ".join(f"{n} {100 * c / max(1, self.pixels):.{decimals}f}%"
                           for n, c in zip(labels.names, self.per_structure))
        return (f"data: {self.cases} {self.noun}, {labels.mode} structures: {shares}"
                f"{f'; {self.empty} with no structure' if self.empty else ''}")


def check_each(items: list, load, use) -> list[str]:
    """`use(item, load(item))` for every item that loads (nothing is held here), every refusal collected:
    one line per problem."""
    problems = []
    for item in items:
        try:
            loaded = load(item)
        except UserError as exc:
            problems.append(str(exc))
            continue
        use(item, loaded)
    return problems


def validate(pairs: list[Pair], mask_threshold: int | None = None, keep: bool = False,
             keep_limit_bytes: int = 4 << 30) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Read every pair once and report *all* problems together; a set whose masks are all empty is
    refused. Several structures: one line with each one's pixel share.

    With `keep`, the decoded arrays are returned (a cache for training) as long as they stay under
    `keep_limit_bytes`; past that, None, and the dataset reads from disk.
    """
    auto: list[Path] = []
    tally = StructureTally("pairs")
    kept: list[tuple[np.ndarray, np.ndarray]] | None = [] if keep else None
    used = 0

    def use(pair: Pair, loaded: tuple[np.ndarray, np.ndarray]) -> None:
        nonlocal kept, used
        tally.add_mask(loaded[1])
        if kept is not None:
            used += loaded[0].nbytes + loaded[1].nbytes
            if used > keep_limit_bytes:
                kept = None
            else:
                kept.append(loaded)

    problems = check_each(pairs, lambda pair: load_pair(pair, mask_threshold, on_auto=auto.append), use)
    if problems:
        raise ValidationError(problems, what="data check")
    if pairs and tally.empty == len(pairs):
        raise UserError(f"{pairs[0].mask_path.parent}: all {len(pairs)} masks are empty: nothing to learn "
                        "or score (masks inverted, or saved as 0/1 in a format read as 0/255?)")
    labels = labels_of(pairs)
    if labels.multi and pairs:
        print(tally.shares(labels), file=sys.stderr, flush=True)
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
