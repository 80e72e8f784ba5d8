"""HD95, ASSD and NSD against MONAI's implementation (the maintained reference), on synthetic shapes and on
real chest X-ray masks, in pixels and in mm; and the written rules for empty masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_ISIC
from lesionseg.metrics import aggregate_structures, boundary_scores, structure_scores

monai_metrics = pytest.importorskip("monai.metrics", reason="MONAI is installed by `make venv`")
TOLERANCE = 1e-5  # float32 (MONAI) against float64 distances


def monai_reference(pred: np.ndarray, truth: np.ndarray, spacing, tolerance: float):
    p = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    t = torch.from_numpy(np.stack([~truth, truth])[None].astype(np.float32))
    kw = {} if spacing is None else {"spacing": spacing}
    hd95 = monai_metrics.compute_hausdorff_distance(p, t, include_background=False, percentile=95, **kw)
    assd = monai_metrics.compute_average_surface_distance(
        p, t, include_background=False, symmetric=True, **kw
    )
    nsd = monai_metrics.compute_surface_dice(p, t, [tolerance], include_background=False, **kw)
    return float(hd95), float(assd), float(nsd)


def shapes(kind: str, h: int = 96, w: int = 120):
    yy, xx = np.mgrid[:h, :w]
    if kind == "circles":
        return ((yy - 40) ** 2 + (xx - 50) ** 2 < 25**2), ((yy - 44) ** 2 + (xx - 57) ** 2 < 22**2)
    if kind == "squares_at_the_border":
        return (yy < 30) & (xx < 40), (yy < 34) & (xx < 30)
    if kind == "two_pieces_against_one":
        a = ((yy - 30) ** 2 + (xx - 30) ** 2 < 15**2) | ((yy - 70) ** 2 + (xx - 95) ** 2 < 8**2)
        return a, ((yy - 32) ** 2 + (xx - 33) ** 2 < 16**2)
    rng = np.random.default_rng(0)  # noisy blobs
    from scipy import ndimage

    a = ndimage.gaussian_filter(rng.random((h, w)), 4) > 0.5
    return a, ndimage.binary_dilation(a, iterations=2) ^ (rng.random((h, w)) > 0.97)


@pytest.mark.parametrize("kind", ["circles", "squares_at_the_border", "two_pieces_against_one", "blobs"])
@pytest.mark.parametrize("spacing", [None, 0.35, (0.5, 0.8)])
def test_distances_equal_monai(kind, spacing):
    pred, truth = shapes(kind)
    tolerance = 2.0
    ours = boundary_scores(pred, truth, spacing, tolerance)
    hd95, assd, nsd = monai_reference(pred, truth, spacing, tolerance)
    assert ours.hd95 == pytest.approx(hd95, rel=TOLERANCE, abs=TOLERANCE)
    assert ours.assd == pytest.approx(assd, rel=TOLERANCE, abs=TOLERANCE)
    assert ours.nsd == pytest.approx(nsd, rel=TOLERANCE, abs=TOLERANCE)


def test_distances_equal_monai_on_real_chest_masks():
    from lesionseg.pairs import discover, load_pair

    root = SHARED_ISIC.parent / "jsrt"
    if not (root / "masks").is_dir():
        pytest.skip(f"JSRT data not found at {root} (only present on the project's machines)")
    pairs = discover(root)[:3]
    for a, b in zip(pairs, pairs[1:]):  # one radiograph's lungs against another's: real, different shapes
        ma, mb = load_pair(a)[1], load_pair(b)[1]
        for k in range(ma.shape[-1]):
            ours = boundary_scores(ma[..., k] == 1, mb[..., k] == 1, 0.35, 2.0)
            hd95, assd, nsd = monai_reference(ma[..., k] == 1, mb[..., k] == 1, 0.35, 2.0)
            assert (ours.hd95, ours.assd, ours.nsd) == pytest.approx((hd95, assd, nsd), rel=1e-4, abs=1e-4)


def test_empty_masks_follow_the_written_rules():
    pred, truth = shapes("circles")
    empty = np.zeros_like(pred)
    assert boundary_scores(empty, empty) is None
    assert structure_scores(empty, empty) is None
    diagonal_mm = np.hypot(96 * 0.5, 120 * 0.5)
    for a, b in ((empty, truth), (pred, empty)):
        s = boundary_scores(a, b, 0.5)
        assert s.worst_case and s.hd95 == pytest.approx(diagonal_mm) and s.assd == s.hd95 and s.nsd == 0.0
    rows = [[structure_scores(pred, truth)], [None], [structure_scores(empty, truth)]]
    agg = aggregate_structures(("x",), rows)["per_class"]["x"]
    assert agg["n_scored"] == 2 and agg["n_both_empty"] == 1 and agg["n_worst_case"] == 1
    assert agg["dice"] == pytest.approx(rows[0][0]["dice"] / 2)  # the miss counts as 0, not as a NaN
