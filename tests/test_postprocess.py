import numpy as np

from lesionseg.postprocess import (
    PostprocessConfig,
    apply,
    fill_holes,
    largest_component,
    remove_small,
    threshold,
)


def blobs():
    m = np.zeros((20, 20), bool)
    m[2:10, 2:10] = True  # 64 px, with a hole
    m[5, 5] = False
    m[14:17, 14:17] = True  # 9 px
    m[0, 19] = True  # 1 px
    return m


def test_threshold_is_strict():
    np.testing.assert_array_equal(threshold(np.array([0.4, 0.5, 0.6]), 0.5), [False, False, True])


def test_largest_component_keeps_the_biggest():
    out = largest_component(blobs())
    assert out.sum() == 63 and out[2, 2] and not out[15, 15] and not out[0, 19]


def test_fill_holes():
    out = fill_holes(blobs())
    assert out[5, 5] and out.sum() == 64 + 9 + 1


def test_remove_small():
    out = remove_small(blobs(), min_area=5)
    assert out.sum() == 63 + 9 and not out[0, 19]


def test_apply_runs_steps_in_order_and_empty_is_safe():
    prob = blobs().astype(np.float32)
    cfg = PostprocessConfig(threshold=0.5, largest_component=True, fill_holes=True)
    assert apply(prob, cfg).sum() == 64
    assert not apply(
        np.zeros((5, 5)), PostprocessConfig(largest_component=True, fill_holes=True, min_area=3)
    ).any()
    assert "largest component" in cfg.describe() and "fill holes" in cfg.describe()


def test_dense_crf_follows_image_edges():
    """A blurry, shifted probability map snaps to the sharp colour edge of the image."""
    from scipy import ndimage

    from lesionseg.postprocess import dense_crf

    image = np.full((40, 40, 3), 220, np.uint8)
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    image[truth] = (60, 30, 20)
    prob = ndimage.gaussian_filter(np.roll(truth, 3, axis=1).astype(np.float32), 3) * 0.8 + 0.1
    cfg = PostprocessConfig(crf=True)
    image.setflags(write=False)  # decoded images (np.asarray of a PIL image) are read-only
    refined = dense_crf(prob, image, cfg)
    assert refined.shape == prob.shape and refined.min() >= 0 and refined.max() <= 1

    def iou(m):
        return (m & truth).sum() / (m | truth).sum()

    assert iou(refined > 0.5) > iou(prob > 0.5) and iou(refined > 0.5) > 0.9
    assert (apply(prob, cfg, image) == (refined > 0.5)).all()
    assert "dense CRF" in cfg.describe()
