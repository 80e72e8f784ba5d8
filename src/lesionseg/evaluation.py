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
from .labels import IGNORED
from .metrics import aggregate, aggregate_structures, confusion, image_scores, structure_scores
from .model_file import recorded_pixel_spacing
from .pairs import Pair, discover, labels_of, load_pair, split_pairs, validate

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

    def load(self, i: int):
        """(image, truth) of pair i, from the cache when there is one."""
        return self.cache[i] if self.cache is not None else load_pair(self.pairs[i], self.mask_threshold)

    def read(self, i: int):
        """The pipeline's read step: pair i's frame, with its truth as the step's extra."""
        image, truth = self.load(i)
        return [(self.pairs[i].id, image)], truth


def load_labelled(data: str | Path, mask_threshold: int | None = None,
                  ids: str | Path | None = None) -> LabelledSet:
    """Discover and check every pair first, so all problems are reported before a model is loaded. `ids`: a
    file listing the ids to score (one per line; a dataset's fixed validation list)."""
    pairs = discover(data)
    if ids is not None:
        from .data.datamodule import read_ids

        wanted = read_ids(Path(data), str(ids))
        known = {p.id for p in pairs}
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise UserError(f"{ids}: {len(unknown)} id(s) not in {data} (e.g. {unknown[0]})")
        pairs = [p for p in pairs if p.id in set(wanted)]
    return LabelledSet(pairs, validate(pairs, mask_threshold, keep=True), mask_threshold)


@dataclass(frozen=True)
class Spacing:
    """The pixel size boundary metrics and areas are measured in, and where it came from."""

    mm: float | None
    source: str

    @property
    def unit(self) -> str:
        return "mm" if self.mm is not None else "px"

    @classmethod
    def choose(cls, given: float | None, card: dict) -> "Spacing":
        if given is not None:
            return cls(float(given), "--pixel-spacing")
        recorded = recorded_pixel_spacing(card)
        if recorded:
            return cls(recorded, "the model's training data (data.pixel_spacing_mm on its card)")
        return cls(None, "unknown: distances in pixels")


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


def evaluate(segmenter: Segmenter, data: LabelledSet | str | Path, workers: int = 2,
             spacing: Spacing | None = None, nsd_tolerance: float = 2.0) -> EvaluationResult:
    """Every pair through `predict`'s pipeline; each mask scored against its truth at the original size.
    Several structures: per structure Dice, Jaccard, HD95, ASSD and NSD at `nsd_tolerance` (in `spacing`'s
    unit)."""
    labelled = data if isinstance(data, LabelledSet) else load_labelled(data)
    if segmenter.labels.multi:
        return _evaluate_structures(segmenter, labelled, workers, spacing or Spacing(None, "pixels"),
                                    nsd_tolerance)

    def score(i: int, truth, frames: list[Segmented]):
        return confusion(frames[0].mask, truth), truth.mean()

    counts, rows = [], []
    for outcome in run_pipeline(range(len(labelled.pairs)), labelled.read, segmenter, score, workers):
        if outcome.error is not None:  # validated before: only a file changed since can fail here
            raise outcome.error
        c, fraction = outcome.result
        counts.append(c)
        pair_id = labelled.pairs[outcome.key].id
        rows.append({"id": pair_id, **image_scores(c), "foreground_fraction": fraction})
    rows.sort(key=lambda r: r["jaccard"])
    return EvaluationResult(aggregate(counts), rows)


def truth_order(segmenter: Segmenter, labelled: LabelledSet) -> list[int]:
    """The data's channel of each of the model's structures; refuses data with other structures."""
    ours, theirs = segmenter.labels.names, labels_of(labelled.pairs).names
    if sorted(ours) != sorted(theirs):
        raise UserError(f"the model segments {', '.join(ours)}; the data's masks are {', '.join(theirs)}")
    return [theirs.index(n) for n in ours]


def _evaluate_structures(segmenter: Segmenter, labelled: LabelledSet, workers: int, spacing: Spacing,
                         tolerance: float) -> EvaluationResult:
    names = segmenter.labels.names
    order = truth_order(segmenter, labelled)

    def score(i: int, truth, frames: list[Segmented]):
        pred = frames[0].mask
        return [structure_scores(pred[k], truth[..., c] == 1, truth[..., c] != IGNORED, spacing.mm, tolerance)
                for k, c in enumerate(order)]

    scored, rows = [], []
    for outcome in run_pipeline(range(len(labelled.pairs)), labelled.read, segmenter, score, workers):
        if outcome.error is not None:
            raise outcome.error
        scored.append(outcome.result)
        row: dict = {"id": labelled.pairs[outcome.key].id}
        for name, s in zip(names, outcome.result):
            for m in ("dice", "jaccard", "hd95", "assd", "nsd"):
                row[f"{name}_{m}"] = "" if s is None else s[m]
        dice = [s["dice"] for s in outcome.result if s is not None]
        row["mean_dice"] = float(sum(dice) / len(dice)) if dice else 1.0
        rows.append(row)
    rows.sort(key=lambda r: r["mean_dice"])
    metrics = aggregate_structures(names, scored)
    metrics.update(label_mode=segmenter.labels.mode, distance_unit=spacing.unit, pixel_spacing_mm=spacing.mm,
                   pixel_spacing_source=spacing.source, nsd_tolerance=tolerance,
                   hd_rules="both masks empty: left out and counted (n_both_empty); one empty: HD95 and ASSD "
                            "are the image diagonal, NSD 0 (n_worst_case)")
    return EvaluationResult(metrics, rows)


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
        list(result.per_image[0]) if result.per_image and "mean_dice" in result.per_image[0]
        else PER_IMAGE_FIELDS,
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
    if segmenter.labels.multi:
        return _write_structures_report(result, segmenter, labelled, out, settings)
    files = out / "report_files"
    jaccard_histogram([r["jaccard"] for r in result.per_image], files / "jaccard_histogram.png")
    index = {p.id: i for i, p in enumerate(labelled.pairs)}
    worst = result.per_image[:n_worst]
    best = list(reversed(result.per_image[-n_best:])) if len(result.per_image) > n_worst else []

    def panels(rows, tag):
        cases = []
        for r in rows:
            i = index[r["id"]]
            image, truth = labelled.load(i)
            pred = segmenter.predict_mask(image)
            name = f"{tag}_{r['id']}.png"
            three_panel(files / name, image, truth, pred, title=f"{r['id']}  Jaccard {r['jaccard']:.3f}")
            cases.append((r["id"], r["jaccard"], f"report_files/{name}"))
        return cases

    page = out / "report.html"
    write_evaluation_report(page, result.metrics, settings, "report_files/jaccard_histogram.png",
                            panels(worst, "worst"), panels(best, "best"))
    return page


def _write_structures_report(result: EvaluationResult, segmenter: Segmenter, labelled: LabelledSet, out: Path,
                             settings: dict, n_worst: int = 3) -> Path:
    import numpy as np

    from .io import write_png
    from .report import write_structures_report
    from .viz import structures_overlay

    index = {p.id: i for i, p in enumerate(labelled.pairs)}
    order = truth_order(segmenter, labelled)
    labels = segmenter.labels
    worst: dict[str, list] = {}
    for name in labels.names:
        scored = [r for r in result.per_image if r[f"{name}_dice"] != ""]
        scored.sort(key=lambda r: r[f"{name}_dice"])
        worst[name] = []
        for r in scored[:n_worst]:
            i = index[r["id"]]
            image, truth = labelled.load(i)
            pred = segmenter.predict_mask(image)
            truth_masks = np.stack([truth[..., c] == 1 for c in order])
            picture = np.concatenate([structures_overlay(image, truth_masks, labels),
                                      structures_overlay(image, pred, labels)], axis=1)
            rel = f"report_files/worst_{name}_{r['id']}.png"
            write_png(out / rel, picture, 1)
            worst[name].append((r["id"], r[f"{name}_dice"], rel))
    page = out / "report.html"
    write_structures_report(page, result.metrics, settings, worst)
    return page
