"""Training augmentation per image (albumentations, on the CPU), built by walking config.AUGMENT_STAGES.
The same keys applied to whole batches on the training device: batch_augment.py (tests/test_augment_paths.py
holds both to one contract). Evaluation/prediction pre-processing lives in preprocess.py."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..config import (  # noqa: E402
    AUGMENT_STAGES,
    BLUR_KERNEL_SIZES,
    BLUR_SIGMA,
    ELASTIC_ALPHA,
    ELASTIC_SIGMA,
    NOISE_STD,
    AugmentConfig,
)
from ..intensity import Normalization  # noqa: E402
from .artifacts import draw_artifacts  # noqa: E402


class SkinArtifacts(A.ImageOnlyTransform):
    """`artifacts.draw_artifacts` as an albumentations step: the same drawing as the batch path, its uniforms
    from a torch generator seeded by the pipeline's own RNG (so `Compose(seed=...)` repeats it)."""

    def __init__(self, hair: float, ink: float):
        super().__init__(p=1.0)  # the hair and ink chances are drawn inside, as in the batch path
        self.hair, self.ink = hair, ink

    def get_params_dependent_on_data(self, params, data):
        return {"seed": int(self.random_generator.integers(2**62)), "lesion": data.get("mask")}

    def apply(self, img: np.ndarray, seed: int = 0, lesion: np.ndarray | None = None, **params) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        scale = 255.0 if img.dtype == np.uint8 else 1.0
        # astype copies: cached images are read-only, and torch warns on those
        x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None] / scale
        m = np.zeros(img.shape[:2], np.float32) if lesion is None else lesion.astype(np.float32)
        out = draw_artifacts(x, torch.from_numpy(m)[None, None], self.hair, self.ink,
                             lambda *shape: torch.rand(*shape, generator=g))
        out = (out[0].permute(1, 2, 0) * scale).numpy()
        return out.round().astype(np.uint8) if img.dtype == np.uint8 else out.astype(img.dtype)


class Normalize(A.ImageOnlyTransform):
    """intensity.Normalization as the last albumentations step (the formula every path shares); slices of
    volumes arrive normalised (intensity.py) and only become float32."""

    def __init__(self, volumes: bool = False):
        super().__init__(p=1.0)
        self.normalization = None if volumes else Normalization()

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return img.astype(np.float32, copy=False) if self.normalization is None else self.normalization(img)


def pad_to(size: int) -> A.PadIfNeeded:
    """Slices smaller than the training patch are padded with zeros (background after normalisation)."""
    import cv2

    return A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=0,
                         fill_mask=0, position="center")


def _stage_steps(stage: str, size: int, aug: AugmentConfig) -> list:
    """The albumentations steps of one stage of config.AUGMENT_STAGES (none when its keys are off)."""
    if stage == "artifacts":
        return [SkinArtifacts(aug.hair, aug.ink)] if aug.hair > 0 or aug.ink > 0 else []
    if stage == "geometry":
        steps = [A.RandomResizedCrop(size=(size, size), scale=(aug.crop_scale_min, aug.crop_scale_max)),
                 A.HorizontalFlip(p=aug.hflip), A.VerticalFlip(p=aug.vflip), A.RandomRotate90(p=aug.rot90)]
        if aug.elastic > 0:
            steps.append(A.ElasticTransform(alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA, p=aug.elastic))
        return steps
    if stage == "color_jitter":
        s = aug.color_jitter_strength
        return [A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=aug.color_jitter)] \
            if aug.color_jitter > 0 else []
    if stage == "noise":
        return [A.GaussNoise(std_range=NOISE_STD, p=aug.noise)]
    if stage == "blur":
        return [A.GaussianBlur(blur_limit=BLUR_KERNEL_SIZES, sigma_limit=BLUR_SIGMA, p=aug.blur)]
    raise ValueError(f"unknown augmentation stage {stage!r}")


def train_stages(size: int, aug: AugmentConfig) -> list[tuple[str, list]]:
    """(stage, its steps) in config.AUGMENT_STAGES order, the stages whose keys are on."""
    return [(stage, steps) for stage, _ in AUGMENT_STAGES if (steps := _stage_steps(stage, size, aug))]


def train_transform(size: int, aug: AugmentConfig, seed: int | None = None,
                    volumes: bool = False) -> A.Compose:
    """The original recipe. Crop scale stays ≤ 1.0: the original 1.2 is not a valid crop fraction.
    `volumes`: slices, padded to the patch first and already normalised."""
    steps = [step for _, stage_steps in train_stages(size, aug) for step in stage_steps]
    first = [pad_to(size)] if volumes else []
    # Compose keeps its own RNG (global seeds do not reach it): seed it, or runs are not reproducible.
    return A.Compose([*first, *steps, Normalize(volumes)], seed=seed)


def slice_eval_transform(size: int) -> A.Compose:
    """Validation slices in training: padded to the patch (batches need one size), values as they are."""
    return A.Compose([pad_to(size), A.CenterCrop(size, size), Normalize(volumes=True)])
