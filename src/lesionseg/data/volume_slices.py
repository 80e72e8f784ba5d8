"""Training data from labelled volumes: each volume read once, normalised by its modality, cut into 2-D
slices (k neighbouring slices as channels) at one in-plane spacing, with the label channels of each slice
and whether it shows a structure (foreground slices are over-sampled, as nnU-Net over-samples foreground
patches). What the model file must record to cut volumes the same way at inference comes out with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from ..config import DataConfig
from ..inference.coverage import Slicing
from ..intensity import Intensity, modality_scheme
from ..labels import IGNORED, Declared, Labels
from ..model_file import Preprocessing
from ..orientation import Canonical
from ..volume_pairs import LabelledVolume, discover_volumes, read_modality, validate_volumes, volume_labels


@dataclasses.dataclass(frozen=True)
class SliceId:
    """What a training slice is, in the place the photo path keeps its Pair."""

    id: str
    image_path: Path
    mask_path: Path


@dataclasses.dataclass
class SliceSet:
    ids: list[SliceId]
    items: list[tuple[np.ndarray, np.ndarray]]  # (rows, cols, channels) float32, (rows, cols, C) uint8
    foreground: np.ndarray  # bool per slice


def label_channels(label_slice: np.ndarray, labels: Labels) -> np.ndarray:
    """(rows, cols, C) uint8: 1 where the voxel holds structure k, IGNORED everywhere the ignore value is."""
    out = np.stack([label_slice == s.value for s in labels.structures], axis=-1).astype(np.uint8)
    if labels.ignore_value is not None:
        out[label_slice == labels.ignore_value] = IGNORED
    return out


def cut(items: list[LabelledVolume], labels: Labels, intensity: Intensity, slicing: Slicing) -> SliceSet:
    ids, out, foreground = [], [], []
    for item in items:
        volume = item.volume
        canonical = Canonical(volume.affine)  # the anatomical axes inference slices along
        spacing = canonical.spacing(volume.spacing)
        axis = slicing.axis_for(spacing)
        normalised = intensity.apply(canonical.forward(volume.array))
        size = slicing.plane_size(normalised.shape, spacing, axis)
        stack = np.moveaxis(canonical.forward(item.truth), axis, 0)
        for i, image in enumerate(slicing.images(normalised, axis, size)):
            lab = stack[i]
            if lab.shape != size:
                lab = cv2.resize(lab, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            mask = label_channels(lab, labels)
            ids.append(SliceId(f"{item.pair.id}:{axis}:{i}", item.pair.image_path, item.pair.label_path))
            out.append((image, mask))
            foreground.append(bool((mask == 1).any()))
    return SliceSet(ids, out, np.asarray(foreground, bool))


def plan_slicing(items: list[LabelledVolume], cfg: DataConfig, channels: int) -> Slicing:
    """The slicing of a training set: its axis rule, context, and the median in-plane spacing (or the
    config's)."""
    probe = Slicing(cfg.slice_axis, cfg.slice_context, None, channels)
    if cfg.slice_spacing_mm is not None:
        return dataclasses.replace(probe, spacing_mm=(cfg.slice_spacing_mm, cfg.slice_spacing_mm))
    spacings = [Canonical(i.volume.affine).spacing(i.volume.spacing) for i in items]
    planes = [Slicing.plane_spacing(s, probe.axis_for(s)) for s in spacings]
    median = np.median(np.asarray(planes, float), axis=0)
    return dataclasses.replace(probe, spacing_mm=(round(float(median[0]), 4), round(float(median[1]), 4)))


@dataclasses.dataclass
class VolumeData:
    labels: Labels
    preprocessing: Preprocessing
    train: SliceSet
    val: SliceSet
    n_volumes: tuple[int, int]  # training, validation
    val_cases: list[LabelledVolume]  # whole, for validation as `evaluate` scores (training/validation.py)


def volume_data(folder: Path, cfg: DataConfig, split) -> VolumeData:
    """`split(pairs) → (train indices, validation indices)`: the data module's rule (data.val_ids or the
    seeded carve)."""
    declared = Declared.for_folder(folder, cfg.labels, cfg.label_mode, cfg.ignore_value)
    labels = volume_labels(folder, declared)
    pairs = discover_volumes(folder)
    items = validate_volumes(pairs, labels)
    train_idx, val_idx = split(pairs)
    train_items, val_items = [items[i] for i in train_idx], [items[i] for i in val_idx]
    modality = read_modality(folder) if cfg.modality == "auto" else cfg.modality
    intensity = Intensity.fit(modality_scheme(modality), ((i.volume.array, i.truth) for i in train_items))
    channels = 3 if cfg.slice_context == 1 else cfg.slice_context
    slicing = plan_slicing(train_items, cfg, channels)
    preprocessing = Preprocessing(image_size=0, intensity=intensity, slicing=slicing)
    return VolumeData(
        labels,
        preprocessing,
        cut(train_items, labels, intensity, slicing),
        cut(val_items, labels, intensity, slicing),
        (len(train_items), len(val_items)),
        val_items,
    )


def foreground_weights(foreground: np.ndarray, share: float) -> torch.Tensor | None:
    """Sampling weights that draw foreground slices at least `share` of the time (None: the data already
    show that much foreground, or none at all)."""
    n, n_fg = len(foreground), int(foreground.sum())
    if n_fg == 0 or n_fg == n or n_fg / n >= share:
        return None
    w = np.where(foreground, share / n_fg, (1.0 - share) / (n - n_fg))
    return torch.as_tensor(w, dtype=torch.double)
