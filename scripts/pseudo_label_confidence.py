"""How well does a teacher's confidence rank its own errors? The measurement behind `lesionseg pseudo-label`'s
rule and its default --min-confidence.

    .venv/bin/python scripts/pseudo_label_confidence.py [--weights cpu] [--data ../shared/data/isic2017]

The teacher (with flip and scale TTA, as pseudo-label runs it) predicts the seeded 10 % split carved from
train — images it never trained on, with masks — and each candidate confidence is compared with the real
per-image Jaccard: Spearman rank correlation, and for keep-thresholds at quantiles, the share kept, the mean
Jaccard of kept and dropped images and how many failures (Jaccard < 0.5) slip through. Markdown on stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from lesionseg.api import segmenter
from lesionseg.evaluation import carved_split
from lesionseg.metrics import confusion, image_scores
from lesionseg.pseudo_label import confidence

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "mean certainty, mean of abs(2p−1) over the image": lambda p: float(np.abs(2 * p - 1).mean()),
    "1 − uncertain band (0.1 < p < 0.9) / foreground": lambda p: max(0.0, 1 - ((p > .1) & (p < .9)).sum()
                                                                      / max((p > .5).sum(), 1)),
    "threshold stability, abs(p>0.7) / abs(p>0.3) (chosen)": confidence,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="cpu")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017")
    args = ap.parse_args()
    seg = segmenter(args.weights, tta=True, tta_scales=[0.75, 1.0, 1.25])
    labelled = carved_split(args.data / "train")
    jaccard, scores = [], {name: [] for name in CANDIDATES}
    for image, truth in ((c.image, c.truth) for c in labelled.cases):
        prob = seg.predict(image)
        jaccard.append(image_scores(confusion(seg.to_mask(prob, image), truth))["jaccard"])
        for name, rule in CANDIDATES.items():
            scores[name].append(rule(prob))
    j = np.asarray(jaccard)
    print(
        f"Teacher `{args.weights}` with TTA on the carved split ({len(j)} images): mean Jaccard "
        f"{j.mean():.4f}, "
        f"{(j < 0.5).sum()} images below 0.5.\n"
    )
    print(
        "| confidence | Spearman vs Jaccard | keep-threshold | kept | mean J kept | mean J dropped | J < 0.5 "
        "kept |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, values in scores.items():
        rule = CANDIDATES[name]
        c = np.asarray(values)
        rho = spearmanr(c, j).correlation
        thresholds = [float(np.quantile(c, q)) for q in (0.1, 0.2, 0.3)]
        if rule is confidence:
            thresholds += [0.8, 0.85, 0.9]  # the default, --min-confidence 0.85, and its neighbours
        for t in thresholds:
            keep = c >= t
            print(f"| {name} | {rho:.3f} | {t:.3f} | {keep.mean():.0%} | {j[keep].mean():.4f} | "
                  f"{j[~keep].mean():.4f} | {(j[keep] < 0.5).sum()} of {(j < 0.5).sum()} |")


if __name__ == "__main__":
    main()
