"""Synthetic hair and ink rings (data/artifacts.py): drawn on the image only, where they belong, the same in
both feeding paths, repeatable from a seed, and sized for the image."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from lesionseg.config import AugmentConfig, load_config
from lesionseg.data.artifacts import (
    HAIR_WIDTH,
    INK_WIDTH,
    draw_artifacts,
    max_filter_radius,
)
from lesionseg.errors import UserError

OFF = AugmentConfig(crop_scale_min=1.0, crop_scale_max=1.0, hflip=0, vflip=0, rot90=0, noise=0, blur=0,
                    elastic=0, color_jitter=0)


def disc(n=8, size=128, radius=16, centre=(64, 64)):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    m = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).float()
    return m.expand(n, 1, size, size).clone()


def uniforms(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.rand(*shape, generator=g)


def test_hair_only_darkens_and_leaves_most_of_the_image():
    x = torch.full((16, 3, 128, 128), 0.8)
    out = draw_artifacts(x, disc(16), hair=1.0, ink=0.0, u=uniforms(0))
    changed = (out - x).abs().amax(1) > 1e-3
    assert (out <= x + 1e-6).all()  # hair is dark: it never brightens skin
    fraction = changed.flatten(1).float().mean(1)
    assert (fraction > 0.005).all() and (fraction < 0.25).all()  # thin curves, not a wash over the image


def test_ink_ring_surrounds_the_lesion_outside_it():
    size, radius = 128, 16
    m = disc(32, size, radius)
    x = torch.full((32, 3, size, size), 0.8)
    out = draw_artifacts(x, m, hair=0.0, ink=1.0, u=uniforms(1))
    changed = (out - x).abs().amax(1) > 0.05
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist = ((yy - 64) ** 2 + (xx - 64) ** 2).float().sqrt()
    for i in range(32):
        d = dist[changed[i]]
        assert d.numel() > 2 * radius  # an arc of ≥ 0.6 turn around the lesion
        # 2 standard deviations of a disc are its radius; the ring lies at 1.3–1.8 of that (± 6 % wobble, its
        # width and a soft edge), so no pixel of it falls on the lesion
        assert d.min() > 0.9 * radius and d.max() < 1.8 * 1.06 * radius + 3
        assert (changed[i] & (m[i, 0] > 0)).sum() == 0


def test_ink_ring_follows_the_lesion_and_needs_none():
    m = disc(8, 128, 10, centre=(30, 90))
    out = draw_artifacts(torch.full((8, 3, 128, 128), 0.8), m, hair=0.0, ink=1.0, u=uniforms(2))
    changed = (out - 0.8).abs().amax(1) > 0.05
    yy, xx = torch.nonzero(changed.any(0), as_tuple=True)
    assert abs(yy.float().mean() - 30) < 12 and abs(xx.float().mean() - 90) < 12
    empty = draw_artifacts(torch.full((8, 3, 128, 128), 0.8), torch.zeros(8, 1, 128, 128), 0.0, 1.0,
                           uniforms(2))
    assert ((empty - 0.8).abs().amax(1) > 0.05).flatten(1).any(1).all()  # a ring somewhere, no crash


def test_probabilities_zero_is_the_identity_and_seeds_repeat():
    x = torch.rand(4, 3, 64, 64)
    assert torch.equal(draw_artifacts(x, disc(4, 64, 8, (32, 32)), 0.0, 0.0, uniforms(0)), x)
    a = draw_artifacts(x, disc(4, 64, 8, (32, 32)), 1.0, 1.0, uniforms(5))
    b = draw_artifacts(x, disc(4, 64, 8, (32, 32)), 1.0, 1.0, uniforms(5))
    c = draw_artifacts(x, disc(4, 64, 8, (32, 32)), 1.0, 1.0, uniforms(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_widths_scale_with_the_image():
    """Widths are given for 256² and scale, so a full-size photo (per-image path) and a resident 160² batch
    get the same look."""
    thin, thick = torch.tensor([False]), torch.tensor([True])
    assert (
        max_filter_radius(thin, HAIR_WIDTH, 256).item() == 0
        and max_filter_radius(thick, HAIR_WIDTH, 256) == 1
    )
    assert max_filter_radius(thin, HAIR_WIDTH, 1024).item() == 2  # 1 px at 256² is 4 px here: 5 drawn
    assert max_filter_radius(thick, INK_WIDTH, 1024).item() == 10  # 5 px → 20: 21 drawn

    def coverage(size):
        x = torch.full((12, 3, size, size), 0.8)  # 150 MB at 1024²: the test process keeps its peak
        out = draw_artifacts(x, torch.zeros(12, 1, size, size), 1.0, 0.0, uniforms(3))
        return ((out - x).abs().amax(1) > 0.05).float().mean().item()

    # Unscaled widths would cover a quarter of the fraction on a 4x larger side; the soft 1-px edge does not
    # scale, so the scaled ones land between.
    assert 0.5 < coverage(1024) / coverage(256) < 1.3


def test_both_feeding_paths_leave_the_mask_alone_and_draw_the_same_artefacts():
    from lesionseg.data.batch_augment import BatchAugment
    from lesionseg.data.transforms import SkinArtifacts, train_transform

    aug = dataclasses.replace(OFF, hair=1.0, ink=1.0)
    m = disc(1, 96, 12, (48, 40))
    img = (torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    _, ya = BatchAugment(96, aug)(img, m.to(torch.uint8), torch.Generator().manual_seed(4))
    assert torch.equal(ya, m)
    image = img[0].permute(1, 2, 0).numpy().copy()
    mask = m[0, 0].numpy().astype(np.uint8)
    out = train_transform(96, aug, seed=4)(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask)
    assert (
        np.abs(out["image"] - train_transform(96, OFF, seed=4)(image=image, mask=mask)["image"]).max() > 0.1
    )
    # One drawing: the albumentations step is draw_artifacts on the uint8 image, given the step's seed.
    step = SkinArtifacts(1.0, 1.0)
    image.setflags(write=False)  # as the decoded-image cache hands them out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drawn = step.apply(image, seed=11, lesion=mask)
    ref = draw_artifacts(img.float() / 255, m, 1.0, 1.0, uniforms(11))[0].permute(1, 2, 0).numpy() * 255
    np.testing.assert_array_equal(drawn, ref.round().astype(np.uint8))


def test_probabilities_outside_zero_to_one_are_refused(tmp_path):
    for key in ("hair", "ink"):
        with pytest.raises(UserError, match=f"augment.{key}"):
            load_config(None, [f"augment.{key}=1.5"])
