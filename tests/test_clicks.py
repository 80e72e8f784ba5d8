"""The simulated user's clicks, their prompt channels and NoC, against RITM's protocol written as its
evaluation code writes it (OpenCV's distance transform on the padded error masks)."""

import cv2
import numpy as np
import pytest

from lesionseg.clicks import Click, click_maps, clicks_to_reach, next_click


def ritm_next_click(pred: np.ndarray, truth: np.ndarray, not_clicked: np.ndarray) -> Click:
    """isegm/inference/clicker.py `_get_next_click`, padding on."""
    fn = np.pad(truth & ~pred, 1).astype(np.uint8)
    fp = np.pad(pred & ~truth, 1).astype(np.uint8)
    fn_dt = cv2.distanceTransform(fn, cv2.DIST_L2, 0)[1:-1, 1:-1] * not_clicked
    fp_dt = cv2.distanceTransform(fp, cv2.DIST_L2, 0)[1:-1, 1:-1] * not_clicked
    positive = fn_dt.max() > fp_dt.max()
    rows, cols = np.where(fn_dt == fn_dt.max()) if positive else np.where(fp_dt == fp_dt.max())
    return Click((int(rows[0]), int(cols[0])), bool(positive))


def blobs(rng, shape=(48, 64)) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4)
    return noise > np.quantile(noise, rng.uniform(0.4, 0.8))


@pytest.mark.parametrize("seed", range(12))
def test_a_sequence_of_clicks_follows_ritm(seed):
    """Ten clicks on a random case, each scored against a prediction that the click fixed locally."""
    rng = np.random.default_rng(seed)
    truth, pred = blobs(rng), blobs(rng)
    clicked: list[Click] = []
    not_clicked = np.ones(truth.shape, np.float32)
    for _ in range(10):
        ours, theirs = next_click(pred, truth, clicked), ritm_next_click(pred, truth, not_clicked)
        assert ours == theirs
        clicked.append(ours)
        not_clicked[ours.position] = 0
        disk = click_maps(truth.shape, [Click(ours.position, True)], 3)[0] > 0
        pred = (pred | (disk & truth)) if ours.positive else (pred & ~(disk & ~truth))


def test_positive_at_the_centre_of_what_was_missed_negative_on_a_false_region():
    truth = np.zeros((21, 31), bool)
    truth[5:16, 5:16] = True  # an 11x11 square, centre (10, 10)
    assert next_click(np.zeros_like(truth), truth) == Click((10, 10), True)
    pred = truth.copy()
    pred[2:19, 20:29] = True  # a false region wider (9 across) than any miss
    pred[10, 10] = False  # a one-pixel miss
    # 5 deep along the rows 6 to 14 of the false region's middle column: the first of them in C order
    assert next_click(pred, truth) == Click((6, 24), False)
    assert next_click(truth, truth) is None


def test_volumes_measure_depth_in_mm():
    """A box of 7 slices of 5 mm and 21x21 pixels of 1 mm: in voxels its middle slice is the only one 4 deep
    (the first such voxel in C order is near its corner); in mm the in-plane centre is deepest (11 mm),
    from the first slice at least 11 mm inside (slice 3, 15 mm)."""
    truth = np.zeros((9, 30, 30), bool)
    truth[1:8, 5:26, 5:26] = True
    empty = np.zeros_like(truth)
    assert next_click(empty, truth) == Click((4, 8, 8), True)
    assert next_click(empty, truth, spacing=(5.0, 1.0, 1.0)) == Click((3, 15, 15), True)


def test_click_maps_are_disks_and_balls_on_their_channel():
    maps = click_maps((40, 50), [Click((10, 12), True), Click((30, 40), False)], 3)
    assert maps.shape == (2, 40, 50) and maps.dtype == np.float32
    assert maps[0].sum() == maps[1].sum() == 29  # the lattice points within 3 of a centre
    assert maps[0][10, 12] == maps[0][10, 15] == maps[0][13, 12] == 1 and maps[0][12, 15] == 0
    assert maps[1][30, 40] == 1 and maps[1][10, 12] == 0
    ball = click_maps((9, 9, 9), [Click((4, 4, 4), True)], 2)
    assert ball[1].sum() == 0 and ball[0].sum() == 33  # the lattice points within 2 of the centre
    assert not click_maps((5, 5), [], 2).any()


def test_noc_counts_clicks_to_reach_a_dice():
    assert clicks_to_reach([0.5, 0.8, 0.86, 0.91], 0.85, 20) == 2
    assert clicks_to_reach([0.5, 0.8, 0.86, 0.91], 0.90, 20) == 3
    assert clicks_to_reach([0.93], 0.90, 20) == 0  # the model alone was enough
    assert clicks_to_reach([0.1] * 30, 0.85, 20) == 20
