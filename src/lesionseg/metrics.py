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
