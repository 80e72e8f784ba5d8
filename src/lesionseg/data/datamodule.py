"""Lightning DataModule: discover + validate once, split, cache decoded images, build loaders.

Two ways to feed training, chosen by `data.on_device` once the device is known (`setup`):
- per image: albumentations on the CPU (loader workers optional), batches transferred to the device;
- resident: the decoded training set as uint8 tensors on the training device; the loader yields only
  indices, and `on_after_batch_transfer` gathers the batch there and augments it as a whole
  (`batch_augment.BatchAugment`), so a GPU is not starved by CPU-side augmentation.
Validation always uses the evaluation pre-processing, as `lesionseg evaluate` does.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import AugmentConfig, DataConfig
from ..errors import UserError
from ..inference.coverage import Slicing
from ..intensity import Intensity, modality_scheme
from ..labels import Declared, Labels
from ..model_file import Preprocessing
from ..pairs import discover, labels_of, read_modality, validate
from ..splits import kept_indices, listed_split, split_pairs
from .dataset import SegmentationDataset
from .preprocess import EvalTransform


def declared(folder: Path, cfg: DataConfig) -> Declared:
    return Declared.for_folder(folder, cfg.labels, cfg.label_mode, cfg.ignore_value)


def _sources(folder: Path, cfg: DataConfig, first: bool = False) -> tuple[list, list | None]:
    """A folder's cases, checked, and the cases read when they fit `data.cache_limit_gb` (volumes: always,
    since their slices are cut once)."""
    pairs = discover(folder, declared(folder, cfg))
    if first and cfg.exclude_ids:
        pairs = [pairs[i] for i in kept_indices(pairs, folder, cfg.exclude_ids)]
    volumes = pairs[0].layout.volumetric
    cases = validate(pairs, cfg.mask_threshold, keep=cfg.cache or volumes,
                     keep_limit_bytes=None if volumes else int(cfg.cache_limit_gb * 2**30))
    return pairs, cases


def _picked(cases: list | None, indices) -> list | None:
    return None if cases is None else [cases[i] for i in indices]


def _arrays(cases: list | None) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The dataset's cache: each case's (image, truth)."""
    return None if cases is None else [(c.image, c.truth) for c in cases]


@dataclasses.dataclass(frozen=True)
class SliceId:
    """What a training slice is, in the place a photo's Pair is kept."""

    id: str
    image_path: Path
    truth_path: Path


@dataclasses.dataclass
class SliceSet:
    ids: list[SliceId]
    items: list[tuple[np.ndarray, np.ndarray]]  # (rows, cols, channels) float32, (rows, cols, C) uint8
    foreground: np.ndarray  # bool (slices, structures): which structures each slice shows


def cut_slices(cases: list, labels: Labels, intensity: Intensity, slicing: Slicing) -> SliceSet:
    """Every case's slices, as the model will cut them at inference, with their label channels."""
    ids, out, foreground = [], [], []
    for case in cases:
        axis, slices = slicing.cut(case.image, case.truth, intensity, labels)
        for i, (image, mask) in enumerate(slices):
            ids.append(SliceId(f"{case.pair.id}:{axis}:{i}", case.pair.image_path, case.pair.truth_path))
            out.append((image, mask))
            foreground.append((mask == 1).any(axis=(0, 1)))
    return SliceSet(ids, out, np.asarray(foreground, bool).reshape(len(ids), len(labels.structures)))


def foreground_weights(foreground: np.ndarray, share: float) -> torch.Tensor | None:
    """Sampling weights that draw slices showing any structure at least `share` of the time (None: the
    data already show that much foreground, or none at all). `foreground`: bool (slices, structures).
    Drawing each structure alike, as the patch sampler does, was measured worse on slices (docs/planning.md:
    small structures in CT)."""
    shown = foreground.any(axis=1)
    n, n_fg = len(shown), int(shown.sum())
    if n_fg == 0 or n_fg == n or n_fg / n >= share:
        return None
    w = np.where(shown, share / n_fg, (1.0 - share) / (n - n_fg))
    return torch.as_tensor(w, dtype=torch.double)


def _reseed_worker(worker_id: int) -> None:
    # Each worker holds a copy of the same Compose RNG; without this they would all augment alike.
    info = torch.utils.data.get_worker_info()
    info.dataset.set_random_seed(torch.initial_seed() % 2**32)


class _Indices(Dataset):
    """What the loader yields in resident mode: sample indices (DDP's sampler shards them as usual)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def resident_tensors(dataset: SegmentationDataset, size: int,
                     channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training pair decoded once, resized to size×size: images (N,3,S,S) and masks (N,C,S,S), uint8
    0/1 (labels.IGNORED kept)."""
    n = len(dataset)
    x = torch.empty((n, 3, size, size), dtype=torch.uint8)
    y = torch.empty((n, channels, size, size), dtype=torch.uint8)
    for i in range(n):
        image, mask = dataset.load(i)
        mask = mask.view(np.uint8)
        if image.shape[:2] != (size, size):
            shrink = image.shape[0] * image.shape[1] > size * size
            image = cv2.resize(image, (size, size),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        x[i] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if mask.ndim == 3:
            y[i] = torch.from_numpy(np.ascontiguousarray(mask.reshape(size, size, -1).transpose(2, 0, 1)))
        else:
            y[i, 0] = torch.from_numpy(np.ascontiguousarray(mask > 0)).to(torch.uint8)
    return x, y


def resident_bytes(n: int, size: int, channels: int = 1) -> int:
    return n * (3 + channels) * size * size  # image and mask channels, uint8


def choose_on_device(choice: str, device: torch.device, nbytes: int, fraction: float) -> tuple[bool, str]:
    """(resident?, why) for `data.on_device` on `device`; auto = on an accelerator when it fits `fraction`."""
    if choice == "false":
        return False, "data.on_device=false"
    if choice == "true":
        return True, "data.on_device=true"
    if device.type != "cuda":
        return False, f"auto: training on {device.type}"
    free, _total = torch.cuda.mem_get_info(device)
    if nbytes > fraction * free:
        return False, (f"auto: {nbytes / 2**30:.2f} GiB does not fit {fraction:.0%} of the "
                       f"{free / 2**30:.1f} GiB free on {device}")
    return (
        True,
        f"auto: {nbytes / 2**30:.2f} GiB fits {fraction:.0%} of the {free / 2**30:.1f} GiB free on {device}",
    )


class SegmentationDataModule(L.LightningDataModule):
    def __init__(self, data: str | Path | Sequence[str | Path], val_data: str | Path | None, cfg: DataConfig,
                 aug: AugmentConfig, seed: int = 0, dimensions: int = 2):
        """`data`: one folder or several; without `val_data`, validation is carved from the first folder only,
        and the others (e.g. pseudo-labelled images) only add training pairs, so the carved split, and
        with it every score that selection sees, is the same whatever is added."""
        super().__init__()
        self.cfg, self.aug, self.seed, self.patches = cfg, aug, seed, dimensions == 3
        self.folders = folders = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
        if not folders:
            raise UserError("training data: give at least one --data folder")
        self.resident: tuple[torch.Tensor, torch.Tensor] | None = None
        self.batch_augment = None
        self.generator: torch.Generator | None = None
        self.feeding = "not set up"  # one line for the run's log and model card
        self._epoch, self._rank = 0, 0
        self.sample_weights: torch.Tensor | None = None
        pairs, cases = _sources(folders[0], cfg, first=True)
        layout = pairs[0].layout
        self.volumes = layout.volumetric
        if self.patches and not self.volumes:
            raise UserError(f"{folders[0]}: a 3-D network (model.arch unet3d) trains on volumes, not photos")
        if val_data is not None:
            val_pairs, val_cases = _sources(Path(val_data), cfg)
            train_idx = list(range(len(pairs)))
        else:
            if len(pairs) < 2:
                raise UserError(f"{folders[0]}: need at least 2 {layout.noun} to split off validation data")
            train_idx, val_idx = (listed_split(pairs, folders[0], cfg.val_ids) if cfg.val_ids else
                                  split_pairs(pairs, cfg.val_fraction, cfg.split_seed))
            val_pairs, val_cases = [pairs[i] for i in val_idx], _picked(cases, val_idx)
        self.labels: Labels = labels_of(pairs)
        if labels_of(val_pairs) != self.labels:
            theirs = ", ".join(labels_of(val_pairs).names)
            raise UserError(f"{val_data}: its structures ({theirs}) differ from the training data's "
                            f"({', '.join(self.labels.names)})")
        train_pairs, train_cases = [pairs[i] for i in train_idx], _picked(cases, train_idx)
        held_out = {p.id: "validation" for p in val_pairs}
        seen = {p.id: str(folders[0]) for p in train_pairs}
        for folder in folders[1:]:
            more, more_cases = _sources(folder, cfg)
            if labels_of(more) != self.labels:
                raise UserError(f"{folder}: its structures differ from those of {folders[0]}")
            for pair in more:  # a case twice would be weighted twice, or leak into the validation scores
                if pair.id in held_out or pair.id in seen:
                    where = "the validation set" if pair.id in held_out else seen[pair.id]
                    raise UserError(f"{pair.image_path}: id '{pair.id}' is also in {where}; "
                                    "training folders must not overlap each other or the validation data")
                seen[pair.id] = str(folder)
            train_pairs += more
            both = train_cases is not None and more_cases is not None
            train_cases = train_cases + more_cases if both else None
        if self.volumes:
            (self._patches if self.patches else self._slices)(train_cases, val_cases)
            return
        self.preprocessing = Preprocessing(cfg.image_size, color_constancy=cfg.color_constancy)
        # The training transform is chosen in setup(), once the device (and so the feeding path) is known.
        self.train_set = SegmentationDataset(train_pairs, None, _arrays(train_cases), cfg.mask_threshold,
                                             cfg.color_constancy)
        self.val_set = SegmentationDataset(val_pairs,
                                           EvalTransform(cfg.image_size, color_constancy=cfg.color_constancy),
                                           _arrays(val_cases), cfg.mask_threshold)

    def _slices(self, train_cases: list, val_cases: list) -> None:
        """Volumes train as slices, cut as the model will cut them (`Slicing`), normalised by an intensity
        setting fitted on the training volumes; the validation volumes are also kept whole, to be scored as
        `evaluate` scores them."""
        from .transforms import slice_eval_transform

        cfg = self.cfg
        intensity = self._intensity(train_cases)
        channels = 3 if cfg.slice_context == 1 else cfg.slice_context
        slicing = Slicing.fit([c.image for c in train_cases], cfg.slice_axis, cfg.slice_context, channels,
                              cfg.slice_spacing_mm)
        self.preprocessing = pre = Preprocessing(image_size=0, intensity=intensity, slicing=slicing)
        train, val = (cut_slices(c, self.labels, intensity, slicing) for c in (train_cases, val_cases))
        self.n_volumes = (len(train_cases), len(val_cases))
        self.validation_volumes = val_cases
        self.train_set = SegmentationDataset(train.ids, None, train.items)
        self.val_set = SegmentationDataset(val.ids, slice_eval_transform(cfg.image_size), val.items)
        self.sample_weights = foreground_weights(train.foreground, cfg.foreground_oversample)
        share = float(train.foreground.any(axis=1).mean()) if len(train.foreground) else 0.0
        drawn = "" if self.sample_weights is None else f", drawn {cfg.foreground_oversample:.0%} of the time"
        print(f"data: {len(train_cases)} training volumes → {len(train.ids)} slices "
              f"({share:.0%} with a structure{drawn}), "
              f"{len(val_cases)} validation volumes → {len(val.ids)} slices; "
              f"slicing {pre.slicing.to_dict()}, intensity {pre.intensity.to_dict()}",
              file=sys.stderr, flush=True)

    def _intensity(self, train_cases: list) -> Intensity:
        """The intensity setting fitted on the training volumes (dataset.json's modality, or
        data.modality)."""
        cfg = self.cfg
        modality = read_modality(self.folders[0]) if cfg.modality == "auto" else cfg.modality
        return Intensity.fit(modality_scheme(modality), ((c.image.array, c.truth) for c in train_cases))

    def _patches(self, train_cases: list, val_cases: list) -> None:
        """Volumes train a 3-D network as patches at the model's spacing (data/patch_sampler.py); the
        validation volumes are also kept whole, to be scored as `evaluate` scores them."""
        from .patch_sampler import PatchDataset, fit_patching, patch_cases

        cfg = self.cfg
        intensity = self._intensity(train_cases)
        patching = fit_patching(train_cases, cfg)
        self.preprocessing = Preprocessing(image_size=0, intensity=intensity, patching=patching)
        train = patch_cases(train_cases, intensity, patching, self.seed)
        val = patch_cases(val_cases, intensity, patching)
        self.n_volumes = (len(train_cases), len(val_cases))
        self.validation_volumes = val_cases
        self.train_set = PatchDataset(train, patching.patch, self.labels, cfg.patches_per_epoch,
                                      cfg.foreground_oversample, self.aug)
        self.val_set = PatchDataset(val, patching.patch, self.labels, len(val))
        self.feeding = (f"patches {'x'.join(map(str, patching.patch))} at {patching.spacing_mm} mm, "
                        f"{cfg.foreground_oversample:.0%} centred on a structure, augmented by "
                        f"batchgeneratorsv2 on the CPU, {cfg.num_workers} loader workers")
        print(f"data: {len(train_cases)} training volumes, {len(val_cases)} validation volumes (whole); "
              f"{self.feeding}; intensity {intensity.to_dict()}", file=sys.stderr, flush=True)

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.train_set.transform is not None or self.resident is not None:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self._rank = self.trainer.global_rank if self.trainer is not None else 0
        size = self.cfg.image_size
        channels = len(self.labels.structures)
        nbytes = resident_bytes(len(self.train_set), size, channels)
        resident, why = choose_on_device(self.cfg.on_device, device, nbytes, self.cfg.device_memory_fraction)
        if self.volumes:  # float slices of varied sizes: the resident path holds uint8 squares
            resident, why = False, "slices of volumes"
        if resident:
            from .batch_augment import BatchAugment

            x, y = resident_tensors(self.train_set, size, channels)
            self.resident = (x.to(device), y.to(device))
            self.batch_augment = BatchAugment(size, self.aug)
            mib = nbytes / 2**20
            self.feeding = (f"training set resident on {device} ({mib:.0f} MiB uint8), "
                            f"batched augmentation there ({why})")
        else:
            from .transforms import train_transform

            self.train_set.transform = train_transform(size, self.aug, self.seed, volumes=self.volumes)
            self.feeding = (
                f"albumentations per image on the CPU, {self.cfg.num_workers} loader workers ({why})"
            )
        if self._rank == 0:
            print(f"data: {self.feeding}", file=sys.stderr, flush=True)

    def reseed(self, epoch: int) -> None:
        """Augmentations become a function of (seed, epoch): reproducible, and a resumed run does not
        replay epoch 1's augmentations. Worker processes reseed from torch's per-worker seed instead."""
        self._epoch = epoch
        seed = self.seed * 100_003 + epoch
        if self.resident is not None:
            self.generator = torch.Generator(device=self.resident[0].device).manual_seed(
                seed * 1009 + self._rank
            )
        elif self.train_set.transform is not None:
            self.train_set.set_random_seed(seed)
        if self.sample_weights is not None:
            self.generator = torch.Generator().manual_seed(seed * 1009 + self._rank)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.resident is None or not (isinstance(batch, torch.Tensor) and batch.ndim == 1):
            return batch  # per-image batches and validation batches arrive ready
        x, y = self.resident
        if self.generator is None:
            self.reseed(self._epoch)
        idx = batch.to(x.device)
        return self.batch_augment(x[idx], y[idx], self.generator)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle,
                          num_workers=self.cfg.num_workers,
                          drop_last=shuffle and len(dataset) > self.cfg.batch_size,
                          worker_init_fn=_reseed_worker if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        if self.resident is not None:  # indices only: nothing for worker processes to do
            n = len(self.train_set)
            return DataLoader(_Indices(n), batch_size=self.cfg.batch_size, shuffle=True,
                              drop_last=n > self.cfg.batch_size)
        if self.sample_weights is not None:
            if self.generator is None:
                self.reseed(self._epoch)
            sampler = torch.utils.data.WeightedRandomSampler(self.sample_weights, len(self.train_set),
                                                             generator=self.generator)
            return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=sampler,
                              num_workers=self.cfg.num_workers, worker_init_fn=_reseed_worker,
                              drop_last=len(self.train_set) > self.cfg.batch_size)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
