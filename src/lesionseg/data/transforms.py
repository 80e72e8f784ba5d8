"""Training augmentation per image (albumentations, on the CPU). The same keys applied to whole batches on the
training device: batch_augment.py. Evaluation/prediction pre-processing lives in preprocess.py."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import

import albumentations as A  # noqa: E402

from ..config import (BLUR_KERNEL_SIZES, BLUR_SIGMA, ELASTIC_ALPHA, ELASTIC_SIGMA, IMAGENET_MEAN,  # noqa: E402
                      IMAGENET_STD, NOISE_STD, AugmentConfig)
from .preprocess import EvalTransform  # noqa: E402


def train_transform(size: int, aug: AugmentConfig, seed: int | None = None) -> A.Compose:
    """The seed's recipe. Crop scale stays ≤ 1.0: the seed's 1.2 is not a valid crop fraction."""
    steps = [
        A.RandomResizedCrop(size=(size, size), scale=(aug.crop_scale_min, aug.crop_scale_max)),
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rot90),
    ]
    if aug.color_jitter > 0:
        s = aug.color_jitter_strength
        steps.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=aug.color_jitter))
    steps += [
        A.GaussNoise(std_range=NOISE_STD, p=aug.noise),
        A.GaussianBlur(blur_limit=BLUR_KERNEL_SIZES, sigma_limit=BLUR_SIGMA, p=aug.blur),
    ]
    if aug.elastic > 0:
        steps.append(A.ElasticTransform(alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA, p=aug.elastic))
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    # Compose keeps its own RNG (global seeds do not reach it): seed it, or runs are not reproducible.
    return A.Compose(steps, seed=seed)


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> EvalTransform:
    return EvalTransform(size, mean, std)
