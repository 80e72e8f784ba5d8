from pathlib import Path

import numpy as np
import pytest

from lesionseg.io import write_mask
from lesionseg.metrics import Counts, aggregate, batch_jaccard_dice, confusion, image_scores


def test_confusion_and_scores_hand_computed():
    truth = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    c = confusion(pred, truth)
    assert c == Counts(tp=1, fp=1, fn=1, tn=1)
    s = image_scores(c)
    assert s["jaccard"] == pytest.approx(1 / 3) and s["dice"] == pytest.approx(0.5)
    assert s["pixel_accuracy"] == 0.5 and s["sensitivity"] == 0.5 and s["specificity"] == 0.5


def test_empty_prediction_and_truth_is_perfect():
    z = np.zeros((3, 3), bool)
    s = image_scores(confusion(z, z))
    assert s == {"jaccard": 1.0, "dice": 1.0, "pixel_accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0}
    full = np.ones((3, 3), bool)
    assert image_scores(confusion(z, full))["jaccard"] == 0.0


def test_aggregates_side_by_side():
    counts = [Counts(tp=8, fp=2, fn=0, tn=90), Counts(tp=1, fp=1, fn=2, tn=96)]
    m = aggregate(counts)
    j1, j2 = 8 / 10, 1 / 4
    assert m["mean_jaccard"] == pytest.approx((j1 + j2) / 2)
    assert m["thresholded_jaccard"] == pytest.approx((j1 + 0) / 2)
    assert m["pooled_iou"] == pytest.approx(9 / 14)
    bg = 186 / (186 + 3 + 2)  # tn / (tn + fp + fn)
    assert m["miou_fg_bg"] == pytest.approx((9 / 14 + bg) / 2)
    assert m["mean_dice"] == pytest.approx((16 / 18 + 2 / 5) / 2)
    assert m["n_images"] == 2


def test_torch_batch_metrics_match_numpy(rng):
    import torch

    pred = rng.random((5, 1, 9, 11)) > 0.6
    truth = rng.random((5, 1, 9, 11)) > 0.5
    pred[0] = False
    truth[0] = False
    jac, dice = batch_jaccard_dice(torch.from_numpy(pred), torch.from_numpy(truth))
    for i in range(5):
        s = image_scores(confusion(pred[i], truth[i]))
        assert jac[i].item() == pytest.approx(s["jaccard"]) and dice[i].item() == pytest.approx(s["dice"])


def test_matches_isic_challenge_scoring(tmp_path, rng):
    """Masks written to disk and scored by the official ISIC scorer agree with ours to 1e-6."""
    from isic_challenge_scoring.segmentation import SegmentationScore

    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    counts = []
    for i in range(12):
        truth = np.zeros((40, 50), bool)
        y, x = rng.integers(5, 20, 2)
        truth[y:y + rng.integers(5, 20), x:x + rng.integers(5, 25)] = True
        pred = np.roll(truth, rng.integers(-6, 7), axis=1)
        if i == 0:
            truth[:], pred[:] = False, False  # empty vs empty
        if i == 1:
            pred[:] = False  # missed lesion
        image_id = f"ISIC_{i:07d}"
        write_mask(truth_dir / f"{image_id}_segmentation.png", truth)
        write_mask(pred_dir / f"{image_id}_segmentation.png", pred)
        counts.append(confusion(pred, truth))
    ours = aggregate(counts)
    ref = SegmentationScore.from_dir(Path(truth_dir), Path(pred_dir)).macro_average
    assert ours["mean_jaccard"] == pytest.approx(ref["jaccard"], abs=1e-6)
    assert ours["thresholded_jaccard"] == pytest.approx(ref["threshold_jaccard"], abs=1e-6)
    assert ours["mean_dice"] == pytest.approx(ref["dice"], abs=1e-6)
    assert ours["pixel_accuracy"] == pytest.approx(ref["accuracy"], abs=1e-6)
    assert ours["sensitivity"] == pytest.approx(ref["sensitivity"], abs=1e-6)
    assert ours["specificity"] == pytest.approx(ref["specificity"], abs=1e-6)
