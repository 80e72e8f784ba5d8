"""One contract for both training feeding paths: albumentations per image (data/transforms.py) and the batch
on the training device (data/batch_augment.py). Both apply the stages of config.AUGMENT_STAGES in that
order, normalise the same way, and each augment.* key has the same effect in both."""

import dataclasses

import numpy as np
import pytest
import torch

from lesionseg.config import AUGMENT_STAGES, IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from lesionseg.data.batch_augment import BatchAugment
from lesionseg.data.preprocess import EvalTransform
from lesionseg.data.transforms import train_stages, train_transform

SIZE = 64
OFF = AugmentConfig(crop_scale_min=1.0, crop_scale_max=1.0, hflip=0, vflip=0, rot90=0, noise=0, blur=0,
                    elastic=0, color_jitter=0, hair=0, ink=0)
EVERY_KEY = AugmentConfig(crop_scale_min=0.5, hflip=0.5, vflip=0.5, rot90=0.5, noise=0.5, blur=0.5,
                          elastic=0.5, color_jitter=0.5, hair=0.5, ink=0.5)


def per_image(aug: AugmentConfig, image: np.ndarray, mask: np.ndarray, seed: int):
    out = train_transform(SIZE, aug, seed=seed)(image=image, mask=mask.astype(np.uint8))
    return out["image"], out["mask"].astype(bool)


def batched(aug: AugmentConfig, image: np.ndarray, mask: np.ndarray, seed: int):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    y = torch.from_numpy(mask.astype(np.uint8))[None, None]
    xa, ya = BatchAugment(SIZE, aug)(x, y, torch.Generator().manual_seed(seed))
    return xa[0].permute(1, 2, 0).numpy(), ya[0, 0].numpy() > 0.5


PATHS = {"albumentations": per_image, "batch": batched}


def unnormalise(x: np.ndarray) -> np.ndarray:
    return x * np.array(IMAGENET_STD, np.float32) + np.array(IMAGENET_MEAN, np.float32)


def lesion(seed: int = 0):
    """A textured uint8 image whose red channel is the mask (255 inside), and the bool mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = ((yy - 28) / 14) ** 2 + ((xx - 36) / 20) ** 2 <= 1
    image = rng.integers(40, 200, (SIZE, SIZE, 3)).astype(np.uint8)
    image[..., 0] = np.where(mask, 255, 0)
    return image, mask


def test_both_paths_walk_the_stages_in_the_declared_order():
    declared = [stage for stage, _ in AUGMENT_STAGES]
    assert [stage for stage, _ in train_stages(SIZE, EVERY_KEY)] == declared
    assert BatchAugment(SIZE, EVERY_KEY).stages() == declared
    elastic_stage = next(stage for stage, steps in train_stages(SIZE, EVERY_KEY)
                         if any(type(s).__name__ == "ElasticTransform" for s in steps))
    assert elastic_stage == "geometry"  # deformed with the other geometric keys, before colour and noise


@pytest.mark.parametrize("path", PATHS)
def test_nothing_on_is_the_evaluation_preprocessing(path):
    image, mask = lesion()
    x, m = PATHS[path](OFF, image, mask, seed=0)
    np.testing.assert_allclose(x, EvalTransform(SIZE)(image)["image"], atol=5e-5)  # /255 then ·scale
    assert (m == mask).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("key, expected", [("hflip", lambda a: a[:, ::-1]), ("vflip", lambda a: a[::-1])])
def test_flips(path, key, expected):
    image, mask = lesion()
    x, m = PATHS[path](dataclasses.replace(OFF, **{key: 1.0}), image, mask, seed=1)
    np.testing.assert_allclose(unnormalise(x), expected(image) / 255, atol=1e-5)
    assert (m == expected(mask)).all()


@pytest.mark.parametrize("path", PATHS)
def test_rot90_is_a_quarter_turn_of_image_and_mask_alike(path):
    image, mask = lesion()
    for seed in range(4):
        x, m = PATHS[path](dataclasses.replace(OFF, rot90=1.0), image, mask, seed)
        turns = [k for k in range(4) if (np.rot90(mask, k) == m).all()]
        assert turns, seed
        np.testing.assert_allclose(unnormalise(x), np.rot90(image, turns[0]) / 255, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("key", ["crop", "elastic"])
def test_crop_and_elastic_move_image_and_mask_together(path, key):
    aug = dataclasses.replace(OFF, **({"crop_scale_min": 0.5} if key == "crop" else {"elastic": 1.0}))
    image, mask = lesion()
    x, m = PATHS[path](aug, image, mask, seed=3)
    red = unnormalise(x)[..., 0] > 0.5
    assert (m != mask).sum() >= 10  # it moved
    assert (red != m).mean() < 0.03  # and the image moved with it (bilinear vs nearest on the edge only)


@pytest.mark.parametrize("path", PATHS)
def test_photometric_keys_leave_the_mask_alone(path):
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    noisy, m = PATHS[path](dataclasses.replace(OFF, noise=1.0), flat, mask, seed=0)
    assert 0.008 < unnormalise(noisy).std() < 0.055 and not m.any()  # GaussNoise std_range (0.01, 0.05)
    jitter = dataclasses.replace(OFF, color_jitter=1.0)
    levels = [unnormalise(PATHS[path](jitter, flat, mask, seed=s)[0]).mean() for s in range(6)]
    assert all(0.79 * 128 / 255 < v < 1.21 * 128 / 255 for v in levels) and np.std(levels) > 0.005
    edge = np.zeros((SIZE, SIZE, 3), np.uint8)
    edge[:, SIZE // 2:] = 255
    blurred = unnormalise(PATHS[path](dataclasses.replace(OFF, blur=1.0), edge, mask, seed=0)[0])[0, :, 0]
    assert 0.02 < blurred[SIZE // 2 - 1] < 0.5 and (blurred[: SIZE // 2 - 4] < 0.01).all()


@pytest.mark.parametrize("path", PATHS)
def test_hair_and_ink_draw_on_the_image_only(path):
    image, mask = lesion()
    x, m = PATHS[path](dataclasses.replace(OFF, hair=1.0, ink=1.0), image, mask, seed=2)
    assert (m == mask).all()
    assert np.abs(unnormalise(x) - image / 255).max() > 0.1


def structures(seed: int = 0):
    """Three overlapping structures as channel masks (the third with an ignored patch) and an image whose
    channel k is structure k (255 inside)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    a = ((yy - 28) / 14) ** 2 + ((xx - 36) / 20) ** 2 <= 1
    b = (abs(yy - 20) < 6) & (xx > 10) & (xx < 50)  # overlaps a
    c = (yy > 44) & (xx < 24)
    mask = np.stack([a, b, c], -1).astype(np.uint8)
    mask[2:8, 50:60, :] = 255  # labels.IGNORED in every channel
    image = np.where(mask == 1, 255, 0).astype(np.uint8)
    return image, mask


def per_image_structures(aug, image, mask, seed):
    out = train_transform(SIZE, aug, seed=seed)(image=image, mask=mask)
    return out["image"], out["mask"]


def batched_structures(aug, image, mask, seed):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    y = torch.from_numpy(mask).permute(2, 0, 1)[None].contiguous()
    xa, ya = BatchAugment(SIZE, aug)(x, y, torch.Generator().manual_seed(seed))
    return xa[0].permute(1, 2, 0).numpy(), ya[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("path", [per_image_structures, batched_structures], ids=["albumentations", "batch"])
def test_every_structure_channel_moves_with_the_image(path):
    geometry = dataclasses.replace(OFF, crop_scale_min=0.5, hflip=0.5, vflip=0.5, rot90=1.0)
    image, mask = structures()
    for seed in range(3):
        x, m = path(geometry, image, mask, seed)
        assert m.shape == (SIZE, SIZE, 3)
        assert set(np.unique(m).tolist()) <= {0, 1, 255}  # nearest: no value between labels
        drawn = unnormalise(x) > 0.5
        for k in range(3):
            assert (drawn[..., k] != (m[..., k] == 1)).mean() < 0.03, (seed, k)
        assert (m == 255).all(-1).sum() == (m == 255).any(-1).sum()  # ignored in every channel alike
