"""Shades-of-grey colour constancy: what it does to images, and that a model trained with it carries it to
every inference path (torch, ONNX Runtime) through its model file."""

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import SEED_RECIPE, make_dataset
from lesionseg.cli import app
from lesionseg.config import ModelConfig, load_config
from lesionseg.data.preprocess import EvalTransform
from lesionseg.errors import UserError
from lesionseg.inference import Segmenter
from lesionseg.intensity import MAX_GAIN, shades_of_grey
from lesionseg.models import build_model, load_model, save_model

CAST = np.array([1.25, 0.9, 0.65], np.float32)  # a warm illuminant


@pytest.fixture
def skin(rng):
    """A smooth, unsaturated (≤ 180, so a cast does not clip) image with a darker 'lesion'."""
    yy, xx = np.mgrid[0:120, 0:160]
    base = np.stack(
        [140 + 20 * np.sin(xx / 17), 120 + 15 * np.cos(yy / 13), 110 + 10 * np.sin((xx + yy) / 23)], -1
    )
    base[(yy - 60) ** 2 + (xx - 80) ** 2 < 35**2] *= 0.55
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 180).astype(np.uint8)


def test_a_colour_cast_is_removed(skin):
    """Up to overall brightness (which the step keeps), a cast image comes out as the uncast one does."""
    def chroma(image):
        x = image.astype(np.float64)
        return x / x.mean()

    cast = np.rint(skin * CAST).astype(np.uint8)
    before = np.abs(chroma(cast) - chroma(skin)).mean()
    after = np.abs(chroma(shades_of_grey(cast)) - chroma(shades_of_grey(skin))).mean()
    assert before > 0.15 and after < 0.1 * before


def test_a_grey_illuminant_changes_nothing():
    grey = np.full((40, 50, 3), 97, np.uint8)
    np.testing.assert_array_equal(shades_of_grey(grey), grey)


def test_the_illuminant_does_not_depend_on_the_image_size(skin):
    """A large photo and its thumbnail get the same gains (the estimate runs on a ≤128-pixel copy)."""
    large = cv2.resize(skin, (1600, 1200), interpolation=cv2.INTER_LINEAR)
    gains_large = shades_of_grey(large).reshape(-1, 3).mean(0) / large.reshape(-1, 3).mean(0)
    gains_small = shades_of_grey(skin).reshape(-1, 3).mean(0) / skin.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(gains_large, gains_small, rtol=0.02)


def test_gains_are_bounded_for_a_saturated_photo():
    red = np.zeros((30, 30, 3), np.uint8)
    red[..., 0] = 200
    red[..., 1] = 1
    out = shades_of_grey(red)
    assert out.dtype == np.uint8 and out.shape == red.shape
    assert out[..., 1].max() <= np.ceil(1 * MAX_GAIN) and out[..., 0].min() > 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same tiny weights saved with and without colour constancy."""
    torch.manual_seed(0)
    cfg = ModelConfig(base_width=4, depth=3)
    model = build_model(cfg)
    folder = tmp_path_factory.mktemp("cc")
    plain, sog = folder / "plain.pt", folder / "sog.pt"
    save_model(plain, model, cfg, image_size=32)
    save_model(sog, model, cfg, image_size=32, color_constancy="shades_of_grey")
    return plain, sog


def test_the_model_file_records_it(models):
    plain, sog = models
    assert load_model(plain).color_constancy == "none" and load_model(sog).color_constancy == "shades_of_grey"
    # A reader that predates the step refuses the file instead of silently skipping it.
    version = [torch.load(p, weights_only=True)["format_version"] for p in (plain, sog)]
    assert version == [1, 2]


def test_segmenter_applies_it_after_resizing(models, skin):
    plain, sog = models
    image = np.rint(skin * CAST).astype(np.uint8)
    with_cc = Segmenter.load(sog).predict(image)
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)
    by_hand = Segmenter.load(plain).predict(shades_of_grey(small))  # the network sees exactly this
    expected = cv2.resize(by_hand, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(with_cc, expected, atol=1e-5)
    assert np.abs(with_cc - Segmenter.load(plain).predict(image)).max() > 1e-3  # the step does something


def test_onnx_export_carries_it(models, skin, tmp_path):
    from lesionseg.export import export_onnx

    _, sog = models
    image = np.rint(skin * CAST).astype(np.uint8)
    onnx_seg = Segmenter.load(export_onnx(sog, tmp_path / "sog.onnx"))
    assert onnx_seg.backend.preprocessing.color_constancy == "shades_of_grey"
    np.testing.assert_allclose(onnx_seg.predict(image), Segmenter.load(sog).predict(image), atol=1e-4)


def test_unknown_step_in_a_model_file_is_one_clear_error():
    with pytest.raises(UserError, match="unknown colour constancy 'retinex'"):
        EvalTransform(32, color_constancy="retinex")


def test_training_with_it_records_it_and_validates_with_it(tmp_path):
    data = make_dataset(tmp_path / "data", n=8)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(run), *SEED_RECIPE,
                                      "model.base_width=4", "model.depth=2", "data.image_size=32",
                                      "data.batch_size=4", "trainer.max_epochs=1",
                                      "data.color_constancy=shades_of_grey"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert load_model(run / "model.pt").color_constancy == "shades_of_grey"
    with pytest.raises(UserError, match="data.color_constancy"):
        load_config(overrides=["data.color_constancy=grey_world"])
