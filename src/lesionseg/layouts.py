"""How a labelled case's files become its image and its truth: one `TruthLayout` class per layout.

- binary masks (one structure; 0/255, 0/1, JPEG-noisy): `BinaryMasks`;
- index label maps (8/16-bit or palette PNG), read when the structures are declared (labels.py):
  `LabelMaps`;
- one sub-folder per structure, `masks/<structure>/ID.<ext>`, structures may overlap: `StructureFolders`;
- label volumes (NIfTI label values on their image's grid; MSD, nnU-Net v2): `LabelVolumes`.

A photo's truth is bool (H, W) for one structure or uint8 (H, W, C) channels (0/1, labels.IGNORED) for
several; a volume's is its label values, read by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import read_image, read_label_map, read_mask
from .io.volumes import NiftiReader, read_label_volume
from .labels import IGNORED, Labels


class TruthLayout:
    """How a case's image and truth are read (from a `pairs.Pair`), counted for the data check, and what a
    case is called."""

    labels: Labels = Labels.binary()
    noun = "pairs"  # what the data check counts
    volumetric = False  # a case is a volume, cut into slices or patches to train
    all_empty = ("masks are empty: nothing to learn or score (masks inverted, or saved as 0/1 in a format "
                 "read as 0/255?)")
    share_decimals = 1

    def load(self, pair, threshold: int | None = None, on_auto=None):
        """(image, truth): a photo (H, W, 3) uint8 and its mask, each pair's sizes checked."""
        image = read_image(pair.image_path)
        mask = self.read(pair, threshold, on_auto)
        if image.shape[:2] != mask.shape[:2]:
            raise UserError(
                f"{pair.truth_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        return image, mask

    def read(self, pair, threshold: int | None = None, on_auto=None) -> np.ndarray:
        raise NotImplementedError

    def counts(self, truth: np.ndarray) -> tuple[np.ndarray, int]:
        """(pixels of each structure, pixels in all) of one case's truth."""
        channels = truth.reshape(-1, 1) if truth.ndim == 2 else truth.reshape(-1, truth.shape[-1])
        return (channels == 1).sum(0) if truth.ndim == 3 else channels.sum(0), channels.shape[0]


def _read_masks(pair, threshold, on_auto) -> list[np.ndarray]:
    """Every binary mask file of a pair (instances, or one per structure), all of one size."""
    masks = [read_mask(p, threshold=threshold, on_auto=on_auto) for p in pair.truth_paths]
    for p, m in zip(pair.truth_paths[1:], masks[1:]):
        if m.shape != masks[0].shape:
            raise UserError(f"{p}: mask is {m.shape[1]}x{m.shape[0]}, {pair.truth_path.name} is "
                            f"{masks[0].shape[1]}x{masks[0].shape[0]}")
    return masks


class BinaryMasks(TruthLayout):
    def read(self, pair, threshold=None, on_auto=None):
        masks = _read_masks(pair, threshold, on_auto)
        return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]


@dataclass(frozen=True)
class LabelMaps(TruthLayout):
    labels: Labels

    def read(self, pair, threshold=None, on_auto=None):
        path = pair.truth_path
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
class StructureFolders(TruthLayout):
    labels: Labels

    def read(self, pair, threshold=None, on_auto=None):
        out = np.stack(_read_masks(pair, threshold, on_auto), -1).astype(np.uint8)
        if self.labels.mode == "exclusive":
            shared = out.sum(-1) > 1
            if shared.any():
                y, x = np.argwhere(shared)[0]
                a, b = np.flatnonzero(out[y, x])[:2]
                names = self.labels.names
                raise UserError(f"{pair.truth_path.parent.parent}/*/{pair.truth_path.name}: structures "
                                f"{names[a]} and {names[b]} overlap ({int(shared.sum())} pixels) but the "
                                "labels are exclusive (set data.label_mode: overlapping)")
        return out


@dataclass(frozen=True)
class LabelVolumes(TruthLayout):
    """A NIfTI image and its label volume on the same grid; the values must be declared ones."""

    labels: Labels
    noun = "volumes"
    volumetric = True
    all_empty = "label volumes are empty: nothing to learn"
    share_decimals = 2

    def load(self, pair, threshold=None, on_auto=None):
        """(Volume, label values on its grid)."""
        volume = NiftiReader().read(pair.image_path)
        volume.id = pair.id
        truth = read_label_volume(pair.truth_path, volume)
        unknown = self.labels.undeclared(np.unique(truth).tolist())
        if unknown:
            raise UserError(f"{pair.truth_path}: label value(s) {unknown} not declared "
                            f"({', '.join(f'{s.name}={s.value}' for s in self.labels.structures)})")
        return volume, truth

    def counts(self, truth):
        counts = np.bincount(truth.ravel(), minlength=256)
        return np.array([counts[s.value] for s in self.labels.structures]), truth.size


def _is_palette(path: Path) -> bool:
    from .io.photo import open_image

    return open_image(path).mode == "P"
