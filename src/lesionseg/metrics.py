"""Per-image confusion counts → every figure papers call "MIoU", side by side.

- mean_jaccard: mean over images of per-image Jaccard (the original "MIoU"; ISIC 2017's ranking metric)
- thresholded_jaccard: ISIC 2018 rule, per-image Jaccard below 0.65 counts as 0, then the mean
- pooled_iou: one IoU over all pixels of the set (several lightweight-model papers)
- miou_fg_bg: mean of foreground IoU and background IoU over all pixels (semantic-segmentation convention)
- mean_dice, pixel_accuracy, sensitivity, specificity: means over images

Empty prediction against empty truth is a perfect score (1) for Jaccard, Dice, sensitivity and
specificity alike, so images without foreground are not punished for being right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ISIC_JACCARD_THRESHOLD = 0.65


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int


def confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return Counts(tp, fp, fn, pred.size - tp - fp - fn)


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


def image_scores(c: Counts) -> dict[str, float]:
    return {"jaccard": _ratio(c.tp, c.tp + c.fp + c.fn), "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
            "pixel_accuracy": _ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
            "sensitivity": _ratio(c.tp, c.tp + c.fn), "specificity": _ratio(c.tn, c.tn + c.fp)}


def aggregate(counts: list[Counts]) -> dict[str, float]:
    """Every set-level figure from per-image counts."""
    if not counts:
        raise ValueError("no images to aggregate")
    per = [image_scores(c) for c in counts]
    jac = np.array([s["jaccard"] for s in per])
    tp = sum(c.tp for c in counts)
    fp = sum(c.fp for c in counts)
    fn = sum(c.fn for c in counts)
    tn = sum(c.tn for c in counts)
    fg = _ratio(tp, tp + fp + fn)
    bg = _ratio(tn, tn + fp + fn)
    return {"mean_jaccard": float(jac.mean()), "mean_dice": float(np.mean([s["dice"] for s in per])),
            "thresholded_jaccard": float(np.where(jac >= ISIC_JACCARD_THRESHOLD, jac, 0.0).mean()),
            "pooled_iou": float(fg), "miou_fg_bg": float((fg + bg) / 2),
            "pixel_accuracy": float(np.mean([s["pixel_accuracy"] for s in per])),
            "sensitivity": float(np.mean([s["sensitivity"] for s in per])),
            "specificity": float(np.mean([s["specificity"] for s in per])), "n_images": len(counts)}


def batch_jaccard_dice(pred, truth):
    """Per-image Jaccard and Dice for torch tensors (N, 1, H, W) of bools; used during training."""
    p = pred.flatten(1)
    t = truth.flatten(1)
    inter = (p & t).sum(1).double()
    ps, ts = p.sum(1).double(), t.sum(1).double()
    union = ps + ts - inter
    jac = (inter / union.clamp(min=1)).where(union > 0, inter.new_ones(()))
    dice = (2 * inter / (ps + ts).clamp(min=1)).where(ps + ts > 0, inter.new_ones(()))
    return jac, dice


# Boundary metrics per structure (Metrics Reloaded: one overlap and one boundary metric). Edges and
# distances as MONAI computes them (tests/test_boundary_metrics.py holds the two equal): a mask's edge is
# its pixels that erosion (4-connectivity, outside the image counts as background) removes; distances are
# exact Euclidean distances between edge pixels, in mm when the pixel spacing is known.
HD_PERCENTILE = 95


def mask_edges(mask: np.ndarray, box: tuple[slice, ...] | None = None) -> np.ndarray:
    from scipy import ndimage

    mask = mask[box] if box is not None else mask
    return mask & ~ndimage.binary_erosion(mask)


def _box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a | b, one pixel wider on each side (inside the image)."""
    either = a | b
    box = []
    for axis in range(either.ndim):
        on = np.flatnonzero(either.any(axis=tuple(i for i in range(either.ndim) if i != axis)))
        box.append(slice(max(on[0] - 1, 0), min(on[-1] + 2, either.shape[axis])))
    return tuple(box)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each predicted edge pixel to the truth's edge, and of each truth edge pixel to the
    prediction's); both masks must be non-empty."""
    from scipy import ndimage

    box = _box(pred, truth)
    ep, et = mask_edges(pred, box), mask_edges(truth, box)
    sampling = None if spacing is None else np.broadcast_to(np.asarray(spacing, float), (pred.ndim,))
    to_truth = ndimage.distance_transform_edt(~et, sampling=sampling)[ep]
    to_pred = ndimage.distance_transform_edt(~ep, sampling=sampling)[et]
    return to_truth, to_pred


@dataclass(frozen=True)
class BoundaryScores:
    hd95: float
    assd: float
    nsd: float
    worst_case: bool  # one mask empty: the worst values stand in


def boundary_scores(pred: np.ndarray, truth: np.ndarray, spacing=None,
                    tolerance: float = 2.0) -> BoundaryScores | None:
    """HD95, ASSD and NSD (normalised surface Dice at `tolerance`, same unit as `spacing`) of one structure.
    Both masks empty: None (left out of the means and counted). One empty: the worst case, the image
    diagonal for HD95 and ASSD and 0 for NSD, never a NaN that would drop the miss."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return None
    if not (has_pred and has_truth):
        step = np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, float), (pred.ndim,))
        diagonal = float(np.sqrt(np.sum((np.asarray(pred.shape) * step) ** 2)))
        return BoundaryScores(diagonal, diagonal, 0.0, True)
    to_truth, to_pred = surface_distances(pred, truth, spacing)
    hd95 = max(float(np.percentile(to_truth, HD_PERCENTILE)), float(np.percentile(to_pred, HD_PERCENTILE)))
    both = np.concatenate([to_truth, to_pred])
    within = np.count_nonzero(to_truth <= tolerance) + np.count_nonzero(to_pred <= tolerance)
    nsd = float(within / both.size)
    return BoundaryScores(hd95, float(both.mean()), nsd, False)


def structure_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, spacing=None,
                     tolerance: float = 2.0) -> dict[str, float] | None:
    """Dice, Jaccard, HD95, ASSD, NSD of one structure in one image (ignored pixels left out of the overlap
    metrics), or None when prediction and truth are both empty."""
    if valid is not None:
        pred, truth = pred & valid, truth & valid
    overlap = overlap_scores(pred, truth)
    if overlap is None:
        return None
    b = boundary_scores(pred, truth, spacing, tolerance)
    return {**overlap, "hd95": b.hd95, "assd": b.assd, "nsd": b.nsd, "worst_case": b.worst_case,
            "area_px": int(pred.sum()), "truth_area_px": int(truth.sum())}


def overlap_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float] | None:
    """Dice and Jaccard of one structure in one case, or None when prediction and truth are both empty
    (left out of the means, as `evaluate` leaves them)."""
    c = confusion(pred, truth)
    if c.tp + c.fp + c.fn == 0:
        return None
    return {"dice": 2 * c.tp / (2 * c.tp + c.fp + c.fn), "jaccard": c.tp / (c.tp + c.fp + c.fn)}


STRUCTURE_METRICS = ("dice", "jaccard", "hd95", "assd", "nsd")


def aggregate_structures(names: tuple[str, ...], per_image: list[list[dict | None]]) -> dict:
    """Per structure: the mean of each metric over images where it was scored, how many were, how many had
    it in neither mask and how many stood at the worst case; then the mean over structures (the headline)."""
    per_class: dict[str, dict] = {}
    for k, name in enumerate(names):
        scored = [row[k] for row in per_image if row[k] is not None]
        entry: dict[str, float | int] = {m: structure_mean(per_image, k, m) for m in STRUCTURE_METRICS}
        entry.update(n_scored=len(scored), n_both_empty=len(per_image) - len(scored),
                     n_worst_case=sum(bool(s["worst_case"]) for s in scored))
        per_class[name] = entry
    means = {f"mean_{m}": float(np.nanmean([per_class[n][m] for n in names])) for m in STRUCTURE_METRICS}
    return {**means, "n_images": len(per_image), "per_class": per_class}


def structure_mean(per_case: list[list[dict | None]], k: int, metric: str) -> float:
    """Structure k's mean `metric` over the cases that scored it (NaN when none did)."""
    scored = [row[k][metric] for row in per_case if row[k] is not None]
    return float(np.mean(scored)) if scored else float("nan")


def headline(per_case: list[list[dict | None]], metric: str) -> float:
    """`evaluate`'s headline: each structure's mean over the cases that scored it, then the mean over
    structures (`mean_dice`, `mean_jaccard` of metrics.json)."""
    n = len(per_case[0]) if per_case else 0
    return float(np.nanmean([structure_mean(per_case, k, metric) for k in range(n)])) if n else float("nan")
