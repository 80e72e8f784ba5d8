"""Evaluate a model on a labelled folder: the same Segmenter as `predict`, every metric side by side."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import DataConfig
from .errors import UserError
from .inference import Segmenter
from .inference.pipeline import Segmented, run_pipeline
from .io import write_csv, write_text
from .metrics import aggregate, confusion, image_scores
from .pairs import Pair, discover, load_pair, split_pairs, validate

PER_IMAGE_FIELDS = ["id", "jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity",
                    "foreground_fraction"]


@dataclass
class EvaluationResult:
    metrics: dict
    per_image: list[dict]  # worst Jaccard first


@dataclass
class LabelledSet:
    pairs: list[Pair]
    cache: list | None  # decoded (image, mask) when they fit in memory
    mask_threshold: int | None = None


def load_labelled(data: str | Path, mask_threshold: int | None = None) -> LabelledSet:
    """Discover and check every pair first, so all problems are reported before a model is loaded."""
    pairs = discover(data)
    return LabelledSet(pairs, validate(pairs, mask_threshold, keep=True), mask_threshold)


def carved_split(train_dir: str | Path, fraction: float = DataConfig.val_fraction,
                 seed: int = DataConfig.split_seed, of: str | Path | dict | None = None) -> LabelledSet:
    """The seeded split `lesionseg train` carves from a training folder when no --val-data is given
    (the same ids for the same folder, fraction and seed): the set that model selection may look at.
    `of` (a run directory, model file, bundled name or model card): that model's own fraction and seed."""
    if of is not None:
        from .run_dir import split_settings

        fraction, seed = split_settings(of)
    pairs = discover(train_dir)
    _, val_idx = split_pairs(pairs, fraction, seed)
    subset = [pairs[i] for i in val_idx]
    return LabelledSet(subset, validate(subset, keep=True))


def evaluate(segmenter: Segmenter, data: LabelledSet | str | Path, workers: int = 2) -> EvaluationResult:
    """Every pair through `predict`'s pipeline; each mask scored against its truth at the original size."""
    labelled = data if isinstance(data, LabelledSet) else load_labelled(data)

    def read(i: int):
        pair = labelled.pairs[i]
        image, truth = labelled.cache[i] if labelled.cache is not None else \
            load_pair(pair, labelled.mask_threshold)
        return [(pair.id, image)], truth

    def score(i: int, truth, frames: list[Segmented]):
        return confusion(frames[0].mask, truth), truth.mean()

    counts, rows = [], []
    for outcome in run_pipeline(range(len(labelled.pairs)), read, segmenter, score, workers):
        if outcome.error is not None:  # validated before: only a file changed since can fail here
            raise outcome.error
        c, fraction = outcome.result
        counts.append(c)
        pair_id = labelled.pairs[outcome.key].id
        rows.append({"id": pair_id, **image_scores(c), "foreground_fraction": fraction})
    rows.sort(key=lambda r: r["jaccard"])
    return EvaluationResult(aggregate(counts), rows)


def write_results(result: EvaluationResult, out: str | Path, extra: dict | None = None) -> None:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output folder ({exc.strerror})") from None
    payload = {**result.metrics, **(extra or {})}
    write_text(out / "metrics.json", json.dumps(payload, indent=2) + "\n")
    write_csv(
        out / "per_image.csv",
        PER_IMAGE_FIELDS,
        [
            {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}
            for row in result.per_image
        ],
    )


def write_report(result: EvaluationResult, segmenter: Segmenter, labelled: LabelledSet, out: str | Path,
                 settings: dict, n_worst: int = 10, n_best: int = 5) -> Path:
    """out/report.html + out/report_files/: histogram and three-panel figures of the worst and best cases."""
    from .report import write_evaluation_report
    from .viz import jaccard_histogram, three_panel

    out = Path(out)
    files = out / "report_files"
    jaccard_histogram([r["jaccard"] for r in result.per_image], files / "jaccard_histogram.png")
    index = {p.id: i for i, p in enumerate(labelled.pairs)}
    worst = result.per_image[:n_worst]
    best = list(reversed(result.per_image[-n_best:])) if len(result.per_image) > n_worst else []

    def panels(rows, tag):
        cases = []
        for r in rows:
            i = index[r["id"]]
            image, truth = (labelled.cache[i] if labelled.cache is not None
                            else load_pair(labelled.pairs[i], labelled.mask_threshold))
            pred = segmenter.predict_mask(image)
            name = f"{tag}_{r['id']}.png"
            three_panel(files / name, image, truth, pred, title=f"{r['id']}  Jaccard {r['jaccard']:.3f}")
            cases.append((r["id"], r["jaccard"], f"report_files/{name}"))
        return cases

    page = out / "report.html"
    write_evaluation_report(page, result.metrics, settings, "report_files/jaccard_histogram.png",
                            panels(worst, "worst"), panels(best, "best"))
    return page
