"""Training a 3-D network: patches drawn from whole volumes, as nnU-Net draws them.

Each case is read once, turned to the closest RAS+ order, normalised (intensity.py) and resampled to the
model's spacing (images linearly, labels by nearest value), exactly as `PatchCoverage` treats a volume at
inference. A sample is a patch: a third of them (`data.foreground_oversample`) centred on a voxel of a
structure the case holds (each structure drawn alike, so small ones are seen), the rest anywhere. A region
a quarter larger than the patch is cut out and augmented by batchgeneratorsv2 (nnU-Net's library, the
fastest of three on this machine: benchmarks/augment3d_throughput.py) with nnU-Net's default recipe and
`augment.elastic`, which crops the patch from its centre."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import AugmentConfig, DataConfig
from ..errors import UserError
from ..inference.coverage import Patching, grid_shape, resample
from ..intensity import Intensity
from ..labels import IGNORED, Labels
from ..orientation import Canonical

MARGIN = 1.25  # the region cut around a patch, for rotation and scaling to draw from
MAX_PATCH_VOXELS = 48 * 64 * 48  # a patch a 2-core CPU trains a few per second at base width 16
LOCATIONS_PER_STRUCTURE = 10_000  # voxels kept per case and structure to centre patches on


@dataclasses.dataclass
class PatchCase:
    id: str
    image: np.ndarray  # float32 (z, y, x) normalised, at the model's spacing, RAS+ order
    labels: np.ndarray  # uint8 label values on the same grid
    locations: dict[int, np.ndarray]  # label value → (n, 3) voxels of that structure


def fit_patching(cases: list, cfg: DataConfig) -> Patching:
    """The model's spacing (the training volumes' median, per axis in RAS+ order, or data.target_spacing_mm)
    and patch (data.patch_size, or the median resampled shape, shrunk to MAX_PATCH_VOXELS along its
    largest axes, in multiples of 8)."""
    spacings = np.asarray([Canonical(c.image.affine).spacing(c.image.spacing) for c in cases], float)
    spacing = tuple(cfg.target_spacing_mm or np.round(np.median(spacings, 0), 4).tolist())
    if cfg.patch_size:
        return Patching(tuple(cfg.patch_size), spacing)
    shapes = [grid_shape(Canonical(c.image.affine).forward(c.image.array).shape, s, spacing)
              for c, s in zip(cases, spacings)]
    return Patching(capped_patch(np.median(np.asarray(shapes), 0)), spacing)


def capped_patch(shape) -> tuple[int, ...]:
    """A patch covering `shape` (voxels), in multiples of 8, shrunk along its largest axes to
    MAX_PATCH_VOXELS."""
    patch = [max(8, math.ceil(n / 8) * 8) for n in shape]
    while math.prod(patch) > MAX_PATCH_VOXELS:
        patch[int(np.argmax(patch))] -= 8
    return tuple(patch)


def patch_cases(cases: list, intensity: Intensity, patching: Patching, seed: int = 0) -> list[PatchCase]:
    rng = np.random.default_rng(seed)
    out = []
    for case in cases:
        canonical = Canonical(case.image.affine)
        spacing = canonical.spacing(case.image.spacing)
        normalised = intensity.apply(canonical.forward(case.image.array)).astype(np.float32, copy=False)
        grid = patching.grid(normalised.shape, spacing)
        image = resample(normalised, grid, order=1)
        labels = resample(canonical.forward(case.truth), grid, order=0).astype(np.uint8)
        locations = {}
        for value in np.unique(labels):
            if value == 0:
                continue
            where = np.argwhere(labels == value)
            if len(where) > LOCATIONS_PER_STRUCTURE:
                where = where[rng.choice(len(where), LOCATIONS_PER_STRUCTURE, replace=False)]
            locations[int(value)] = where
        out.append(PatchCase(case.pair.id, image, labels, locations))
    return out


def augmentation(patch, aug: AugmentConfig):
    """nnU-Net v2's default training augmentation, in batchgeneratorsv2, with `augment.elastic` as the
    probability of elastic deformation."""
    try:
        from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
        from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
        from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
        from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
        from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
        from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
        from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
        from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
        from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
        from batchgeneratorsv2.transforms.utils.random import RandomTransform
    except ImportError:
        raise UserError("training a 3-D network needs batchgeneratorsv2 (`make venv`, or pip install "
                        "batchgeneratorsv2==0.3.6)") from None
    rotation = (-math.pi / 6, math.pi / 6)
    contrast = BGContrast((0.75, 1.25))
    return ComposeTransforms([
        SpatialTransform(tuple(patch), 0, random_crop=False, p_elastic_deform=aug.elastic, p_rotation=0.2,
                         rotation=rotation, p_scaling=0.2, scaling=(0.7, 1.4),
                         p_synchronize_scaling_across_axes=1, mode_seg="nearest"),
        RandomTransform(GaussianNoiseTransform((0, 0.1), 1, synchronize_channels=True), 0.1),
        RandomTransform(GaussianBlurTransform((0.5, 1.0), synchronize_channels=False, synchronize_axes=False,
                                              p_per_channel=0.5, benchmark=True), 0.2),
        RandomTransform(MultiplicativeBrightnessTransform(contrast, False, 1), 0.15),
        RandomTransform(ContrastTransform(contrast, True, False, 1), 0.15),
        RandomTransform(SimulateLowResolutionTransform((0.5, 1), False, True, None, None, 0.5), 0.25),
        RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), 1, False, 1, 1), 0.1),
        RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), 0, False, 1, 1), 0.3),
        MirrorTransform((0, 1, 2)),
    ])


def target_channels(labels: np.ndarray, structures: Labels) -> np.ndarray:
    """(C, z, y, x) uint8: 1 where the voxel holds structure k, IGNORED where the ignore value is."""
    out = np.stack([labels == s.value for s in structures.structures]).astype(np.uint8)
    if structures.ignore_value is not None:
        out[:, labels == structures.ignore_value] = IGNORED
    return out


def crop(array: np.ndarray, centre, size) -> np.ndarray:
    """The `size` box of `array` centred at `centre`, zero outside the array."""
    out = np.zeros(size, array.dtype)
    start = [int(c) - s // 2 for c, s in zip(centre, size)]
    src = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in zip(start, size, array.shape))
    dst = tuple(slice(r.start - a, r.stop - a) for r, a in zip(src, start))
    out[dst] = array[src]
    return out


class PatchDataset(Dataset):
    """`length` patches an epoch, each drawn afresh from a seeded generator (`set_random_seed`, per epoch),
    augmented (training) or not (validation: one patch per case, centred on its structures)."""

    def __init__(self, cases: list[PatchCase], patch, labels: Labels, length: int,
                 foreground: float = 0.33, aug: AugmentConfig | None = None):
        self.cases, self.patch, self.labels, self.length = cases, tuple(patch), labels, length
        self.foreground = foreground
        self.region = tuple(math.ceil(p * MARGIN) for p in self.patch) if aug else self.patch
        self.transform = augmentation(self.patch, aug) if aug else None
        self.seed = 0

    def set_random_seed(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def centre(self, case: PatchCase, rng: np.random.Generator) -> np.ndarray:
        if case.locations and (self.transform is None or rng.random() < self.foreground):
            where = case.locations[list(case.locations)[rng.integers(len(case.locations))]]
            return where[rng.integers(len(where))]
        return np.asarray([rng.integers(n) for n in case.image.shape])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        case = self.cases[i % len(self.cases)] if self.transform is None else \
            self.cases[rng.integers(len(self.cases))]
        centre = self.centre(case, rng)
        image = torch.from_numpy(crop(case.image, centre, self.region))[None]
        labels = torch.from_numpy(crop(case.labels, centre, self.region).astype(np.int16))[None]
        if self.transform is not None:  # batchgeneratorsv2 draws from numpy's and torch's global generators
            state = np.random.get_state()
            with torch.random.fork_rng(devices=[]):
                np.random.seed(int(rng.integers(2**31)))
                torch.manual_seed(int(rng.integers(2**31)))
                out = self.transform(image=image, segmentation=labels)
            np.random.set_state(state)
            image, labels = out["image"], out["segmentation"]
        target = target_channels(labels[0].numpy().astype(np.uint8), self.labels)
        return image.float().contiguous(), torch.from_numpy(target).float()
