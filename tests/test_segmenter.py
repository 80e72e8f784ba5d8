import numpy as np
import pytest

from lesionseg.errors import UserError
from lesionseg.inference import Segmenter


@pytest.fixture(scope="module")
def segmenter(tiny_model_file):
    return Segmenter.load(tiny_model_file, batch_size=3)


@pytest.mark.parametrize("hw", [(32, 32), (301, 157), (1, 1), (20, 900)])
def test_probabilities_at_original_size(segmenter, rng, hw):
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    prob = segmenter.predict(image)
    assert prob.shape == hw and prob.dtype == np.float32
    assert (prob >= 0).all() and (prob <= 1).all()
    mask = segmenter.predict_mask(image)
    assert mask.shape == hw and mask.dtype == bool
    np.testing.assert_array_equal(mask, prob > 0.5)


def test_batched_equals_one_by_one(segmenter, rng):
    images = [rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8) for i in range(5)]
    batched = segmenter.predict_batch(images)
    for image, prob in zip(images, batched):
        np.testing.assert_allclose(segmenter.predict(image), prob, atol=1e-5)


def test_bad_threshold_and_backend(tiny_model_file):
    with pytest.raises(UserError, match="threshold"):
        Segmenter.load(tiny_model_file, threshold=1.5)
    with pytest.raises(UserError, match="backend"):
        Segmenter.load(tiny_model_file, backend="tensorrt")
