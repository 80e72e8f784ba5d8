"""Batched augmentation on the training device (data/batch_augment.py), run here on CPU tensors: image and
mask stay aligned, each augment.* key has a visible effect at its probability, and seeded draws repeat."""

import dataclasses

import numpy as np
import pytest
import torch

from lesionseg.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from lesionseg.data.batch_augment import BatchAugment

KEYS = ["hflip", "vflip", "rot90", "noise", "blur", "elastic", "color_jitter", "hair", "ink"]
OFF = AugmentConfig(crop_scale_min=1.0, crop_scale_max=1.0, hflip=0, vflip=0, rot90=0, noise=0, blur=0,
                    elastic=0, color_jitter=0)


def lesions(n=16, size=64, seed=0):
    """uint8 images whose red channel is the mask (255 inside), other channels textured; uint8 0/1 masks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for _ in range(n):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g)
        ry, rx = torch.randint(size // 8, size // 4, (2,), generator=g)
        masks.append((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).to(torch.uint8))
    y = torch.stack(masks)[:, None]
    texture = torch.randint(40, 200, (n, 2, size, size), generator=g, dtype=torch.uint8)
    return torch.cat([y * 255, texture], 1), y


def unnormalise(x):
    return x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def run(aug, x, y, seed=0, size=None):
    return BatchAugment(size or x.shape[-1], aug)(x, y, torch.Generator().manual_seed(seed))


def test_shapes_types_and_ranges():
    x, y = lesions(8, 80)
    xa, ya = run(AugmentConfig(elastic=0.5, color_jitter=0.5), x, y, size=64)
    assert xa.shape == (8, 3, 64, 64) and ya.shape == (8, 1, 64, 64)
    assert xa.dtype == ya.dtype == torch.float32
    assert set(ya.unique().tolist()) <= {0.0, 1.0}
    raw = unnormalise(xa)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_image_and_mask_stay_aligned_under_every_geometric_key(seed):
    """The red channel carries the mask: after crop, flips, rot90 and elastic it must still match the
    augmented mask (bilinear image vs nearest mask may differ on the boundary only)."""
    x, y = lesions(16, 64, seed)
    aug = AugmentConfig(crop_scale_min=0.5, hflip=0.5, vflip=0.5, rot90=1.0, noise=0, blur=0, elastic=1.0)
    xa, ya = run(aug, x, y, seed)
    red = unnormalise(xa)[:, :1] > 0.5
    truth = ya > 0.5
    wrong = (red != truth).flatten(1).float().mean(1)
    assert wrong.max() < 0.03, wrong  # a flip/rotation/shift apart would miss ~2x the lesion area
    assert (truth.flatten(1).float().mean(1) > 0).all()


def test_all_keys_off_is_the_identity():
    x, y = lesions(4)
    xa, ya = run(OFF, x, y)
    torch.testing.assert_close(unnormalise(xa), x.float() / 255, atol=1e-5, rtol=0)
    assert torch.equal(ya, y.float())


@pytest.mark.parametrize("key", KEYS)
def test_each_key_has_its_effect_at_its_probability(key):
    x, y = lesions(200, 32, seed=1)
    identity = unnormalise(run(OFF, x, y)[0])

    def changed(p):
        xa = unnormalise(run(dataclasses.replace(OFF, **{key: p}), x, y, seed=5)[0])
        return ((xa - identity).abs().flatten(1).amax(1) > 1e-3).float().mean().item()

    assert changed(0.0) == 0.0
    # rot90 applied draws k in 0..3, and k = 0 leaves the image as it is: 3/4 of the draws change it.
    full = 0.75 if key == "rot90" else 1.0
    assert changed(1.0) == pytest.approx(full, abs=0.08)
    assert changed(0.5) == pytest.approx(full / 2, abs=0.1)


def test_flips_and_rotations_move_pixels_as_named():
    x, y = lesions(1, 16)
    for key, expected in (("hflip", x.flip(-1)), ("vflip", x.flip(-2))):
        xa, ya = run(dataclasses.replace(OFF, **{key: 1.0}), x, y)
        torch.testing.assert_close(unnormalise(xa), expected.float() / 255, atol=1e-5, rtol=0)
    xa, _ = run(dataclasses.replace(OFF, rot90=1.0), x, y, seed=3)
    rotations = [torch.rot90(x, k, (-2, -1)).float() / 255 for k in range(4)]
    assert any(torch.allclose(unnormalise(xa), r, atol=1e-5) for r in rotations)


def test_crop_scale_is_the_area_fraction_kept():
    x, y = lesions(400, 64, seed=2)
    xs = torch.arange(64).view(1, 1, 1, 64).expand(400, 3, 64, 64).to(torch.uint8) * 4  # x coordinate ramp
    ys = xs.transpose(-1, -2)
    for lo, hi in ((0.25, 0.25), (0.5, 1.0)):
        aug = dataclasses.replace(OFF, crop_scale_min=lo, crop_scale_max=hi)
        gx = unnormalise(run(aug, xs, y)[0])[:, 0] * 255 / 4  # source column each output pixel came from
        gy = unnormalise(run(aug, ys, y)[0])[:, 0] * 255 / 4
        width = gx.amax((1, 2)) - gx.amin((1, 2)) + 1
        height = gy.amax((1, 2)) - gy.amin((1, 2)) + 1
        area = (width * height / 64**2).mean().item()
        assert area == pytest.approx((lo + hi) / 2, abs=0.06)


def test_seeded_draws_repeat_and_other_seeds_differ():
    x, y = lesions(4)
    aug = AugmentConfig(elastic=0.5, color_jitter=0.5, noise=0.5, blur=0.5)
    a, b, c = run(aug, x, y, 7), run(aug, x, y, 7), run(aug, x, y, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_noise_blur_and_jitter_strengths_match_the_albumentations_ranges():
    flat = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    y = torch.zeros((64, 1, 32, 32), dtype=torch.uint8)
    noisy = unnormalise(run(dataclasses.replace(OFF, noise=1.0), flat, y)[0])
    std = noisy.flatten(1).std(1)
    assert 0.008 < std.min() and std.max() < 0.055  # GaussNoise std_range (0.01, 0.05)
    jit = unnormalise(run(dataclasses.replace(OFF, color_jitter=1.0, color_jitter_strength=0.2), flat, y)[0])
    level = jit.mean((1, 2, 3)) / (128 / 255)
    assert level.min() > 0.79 and level.max() < 1.21 and level.std() > 0.05
    edge = torch.zeros((8, 3, 32, 32), dtype=torch.uint8)
    edge[..., 16:] = 255
    blurred = unnormalise(run(dataclasses.replace(OFF, blur=1.0), edge, y[:8])[0])[:, 0, 0]
    assert ((blurred[:, 15] > 0.02) & (blurred[:, 15] < 0.5)).all()  # the step is smoothed
    assert (blurred[:, :12] < 0.01).all()  # by a 3- or 5-tap kernel only


def test_resident_tensors_resize_and_keep_masks_binary(tmp_path):
    from conftest import make_dataset
    from lesionseg.data.datamodule import resident_tensors
    from lesionseg.data.dataset import SegmentationDataset
    from lesionseg.pairs import discover, load_pair

    data = make_dataset(tmp_path / "d", n=3, size=(40, 56))
    pairs = discover(data)
    x, y = resident_tensors(SegmentationDataset(pairs, None), 32)
    assert x.shape == (3, 3, 32, 32) and y.shape == (3, 1, 32, 32) and x.dtype == y.dtype == torch.uint8
    assert set(y.unique().tolist()) <= {0, 1}
    _, mask = load_pair(pairs[0])
    assert abs(y[0].float().mean().item() - mask.mean()) < 0.03  # same lesion fraction after the resize


def test_choose_on_device(monkeypatch):
    from lesionseg.data.datamodule import choose_on_device

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert choose_on_device("auto", cpu, 10, 0.25)[0] is False
    assert choose_on_device("true", cpu, 10, 0.25)[0] is True
    assert choose_on_device("false", gpu, 10, 0.25)[0] is False
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    assert choose_on_device("auto", gpu, 1 * 2**30, 0.25)[0] is True
    fits, why = choose_on_device("auto", gpu, 3 * 2**30, 0.25)
    assert fits is False and "does not fit 25%" in why


def test_batch_augment_matches_numpy_reference_for_hflip():
    """A plain reference: with only hflip at p=1 the mask is np.fliplr of the input mask."""
    x, y = lesions(3, 24)
    _, ya = run(dataclasses.replace(OFF, hflip=1.0), x, y)
    for i in range(3):
        np.testing.assert_array_equal(ya[i, 0].numpy(), np.fliplr(y[i, 0].numpy()).astype(np.float32))
