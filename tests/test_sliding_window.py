"""Sliding-window inference against MONAI's `sliding_window_inference` (gaussian blending, the reference)."""

import numpy as np
import pytest
import torch

from lesionseg.inference.sliding_window import importance_map, sliding_window, window_starts


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Softmax(1)).eval()


def as_numpy(network):
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(batch)).numpy()
    return predict


@pytest.mark.parametrize("shape, patch, overlap", [((20, 37, 29), (8, 16, 16), 0.5),
                                                   ((5, 40, 33), (8, 16, 12), 0.5),  # padded along z
                                                   ((16, 16, 16), (16, 16, 16), 0.5),
                                                   ((23, 30, 19), (8, 12, 8), 0.25)])
def test_equals_monai(network, shape, patch, overlap):
    from monai.inferers import sliding_window_inference

    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    ours = sliding_window(as_numpy(network), image, patch, overlap, batch_size=3)
    with torch.no_grad():
        ref = sliding_window_inference(torch.from_numpy(image)[None], patch, 3, network, overlap=overlap,
                                       mode="gaussian", sigma_scale=0.125)[0].numpy()
    assert ours.shape == ref.shape == (3, *shape) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_importance_map_and_windows_are_monais():
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for patch in [(8, 16, 12), (5, 5, 5), (1, 64, 64)]:
        ref = compute_importance_map(patch, "gaussian", 0.125).numpy()
        np.testing.assert_allclose(importance_map(patch), ref, atol=1e-7)
    size, patch = (50, 37, 64), (16, 16, 64)
    interval = _get_scan_interval(size, patch, 3, (0.5,) * 3)
    theirs = {tuple(s.start for s in box) for box in dense_patch_slices(size, patch, interval)}
    starts = [window_starts(n, p, 0.5) for n, p in zip(size, patch)]
    assert theirs == {(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]}


def test_mirroring_averages_flips_and_float16_stays_close(network):
    image = np.random.default_rng(1).normal(size=(1, 12, 20, 18)).astype(np.float32)
    predict = as_numpy(network)
    plain = sliding_window(predict, image, (8, 16, 16))
    mirrored = sliding_window(predict, image, (8, 16, 16), mirror_axes=(0, 1, 2))
    flipped = np.ascontiguousarray(image[:, ::-1, :, ::-1])
    # mirroring makes the result equivariant to flips: flipping the input flips the output
    again = sliding_window(predict, flipped, (8, 16, 16), mirror_axes=(0, 1, 2))[:, ::-1, :, ::-1]
    np.testing.assert_allclose(mirrored, again, atol=1e-5)
    assert np.abs(mirrored - plain).max() > 1e-3  # the flips did change something
    half = sliding_window(predict, image, (8, 16, 16), dtype=np.float16)
    assert half.dtype == np.float16 and np.abs(half.astype(np.float32) - plain).max() < 2e-3
    seen = []
    sliding_window(predict, image, (8, 16, 16), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(seen)
