"""Evaluate a model on labelled cases: the same segmentation as `predict`, scored case by case at each
case's own size, every metric side by side. Photos and volumes are found and read as pairs.py finds
them; rows, their aggregation, the CSV and the report are one code path.

One structure on photos: every "MIoU" side by side (metrics.aggregate). Several structures, and volumes:
per structure Dice, Jaccard, HD95, ASSD and NSD (metrics.structure_scores), in mm where the spacing is known
(a volume's own voxel spacing; a photo's from --pixel-spacing or the model's card), and for volumes the
difference in mL; a volume is scored in 3-D on its own grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .config import DataConfig
from .errors import UserError
from .inference import Segmenter
from .inference.pipeline import Segmented, run_pipeline
from .io import write_csv, write_png, write_text
from .labels import DECLARATION_FILE, IGNORED, Declared, Labels
from .metrics import (
    aggregate,
    aggregate_structures,
    confusion,
    image_scores,
    structure_scores,
)
from .model_file import recorded_pixel_spacing
from .pairs import LabelledCase, Pair, discover, labels_of, load_pair, validate
from .splits import listed, split_pairs, split_settings

CASES_FILE = "per_case.csv"  # a row per photo or per volume
ONE_STRUCTURE_FIELDS = ["id", "jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity",
                        "foreground_fraction"]
STRUCTURE_FIELDS = ("dice", "jaccard", "hd95", "assd", "nsd")
VOLUME_FIELDS = (*STRUCTURE_FIELDS, "pred_ml", "truth_ml", "volume_diff_ml")
HD_RULES = ("both masks empty: left out and counted (n_both_empty); one empty: HD95 and ASSD are the {}, "
            "NSD 0 (n_worst_case)")


@dataclass
class EvaluationResult:
    metrics: dict
    per_case: list[dict]  # worst first: Jaccard for one structure, mean Dice for several


@dataclass
class LabelledSet:
    pairs: list[Pair]
    cases: list[LabelledCase] | None  # the cases read, when they fit in memory
    mask_threshold: int | None = None

    def load(self, i: int):
        """(image, truth) of pair i, from memory when it was kept."""
        if self.cases is None:
            return load_pair(self.pairs[i], self.mask_threshold)
        return self.cases[i].image, self.cases[i].truth

    def read(self, i: int):
        """The pipeline's read step: pair i's frame, with its truth as the step's extra."""
        image, truth = self.load(i)
        return [(self.pairs[i].id, image)], truth


def load_labelled(data: str | Path, mask_threshold: int | None = None, ids: str | Path | list | None = None,
                  model_labels: Labels | None = None) -> LabelledSet:
    """Discover and check every case first, so all problems are reported before anything is scored. `ids`:
    the ids to score (a file listing them one per line, a dataset's fixed validation list, or the ids).
    `model_labels`: label volumes are read by value, with the model's structures where the dataset
    declares none, and refused where it declares others."""
    folder = Path(data)
    declared = None
    if model_labels is not None and not (folder / DECLARATION_FILE).is_file():
        declared = Declared({s.name: s.value for s in model_labels.structures}, source="the model")
    pairs = discover(folder, declared)
    if ids is not None:
        wanted = set(listed([p.id for p in pairs], folder, ids))
        pairs = [p for p in pairs if p.id in wanted]
    if model_labels is not None:
        ours, theirs = (", ".join(f"{s.name}={s.value}" for s in x.structures)
                        for x in (model_labels, labels_of(pairs)))
        if ours != theirs:
            raise UserError(f"{folder}: its structures ({theirs}) are not the model's ({ours})")
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
        case_id = labelled.pairs[outcome.key].id
        rows.append({"id": case_id, **image_scores(c), "foreground_fraction": fraction})
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
    order = truth_order(segmenter, labelled)

    def score(i: int, truth, frames: list[Segmented]):
        pred = frames[0].mask
        return [structure_scores(pred[k], truth[..., c] == 1, truth[..., c] != IGNORED, spacing.mm, tolerance)
                for k, c in enumerate(order)]

    cases = []
    for outcome in run_pipeline(range(len(labelled.pairs)), labelled.read, segmenter, score, workers):
        if outcome.error is not None:
            raise outcome.error
        cases.append((labelled.pairs[outcome.key].id, outcome.result))
    return _structure_result(segmenter.labels, cases, STRUCTURE_FIELDS, distance_unit=spacing.unit,
                             pixel_spacing_mm=spacing.mm, pixel_spacing_source=spacing.source,
                             nsd_tolerance=tolerance, hd_rules=HD_RULES.format("image diagonal"))


NOC_DICE = (0.85, 0.90)  # NoC@85, NoC@90


def evaluate_clicks(segmenter: Segmenter, labelled: LabelledSet, max_clicks: int) -> dict:
    """The interactive protocol (clicks.py), per structure: on each case that holds it, the model alone,
    then up to `max_clicks` clicks, each at the deepest error of the mask so far (in mm on a volume, in 3-D),
    the mask thresholded and cleaned as `predict` does. Per structure: the mean Dice after 0..max_clicks
    clicks and NoC@85 / NoC@90 (mean clicks to reach that Dice; `max_clicks` for a case that never does).
    Volumes: a 3-D model reads each click as a ball; a 2-D model's clicks refine the slice they are on, so
    its volumes are also scored slice by slice (`per_slice`: each slice that holds the structure a case,
    its clicks on it, Dice in its plane)."""
    from .clicks import Click, click_curve
    from .inference.volume_coverage import SliceCoverage, volume_coverage

    labels = segmenter.labels
    volumes = segmenter.backend.preprocessing.covers_volumes
    order = truth_order(segmenter, labelled) if labels.multi and not volumes else None
    curves: dict[str, list[list[float]]] = {name: [] for name in labels.names}
    slice_curves: dict[str, list[list[float]]] = {name: [] for name in labels.names}
    for i in range(len(labelled.pairs)):
        image, truth = labelled.load(i)
        if volumes:
            coverage = volume_coverage(segmenter, image)
            alone = coverage.probabilities()
        for k, structure in enumerate(labels.structures):
            if volumes:
                held = truth == structure.value

                def mask_after(placed, k=k, value=structure.value):
                    probs = coverage.clicked(alone, [(k, Click(coverage.stack_position(c.position),
                                                               c.positive)) for c in placed])
                    return coverage.labels_of(probs, segmenter.post) == value
                if isinstance(coverage, SliceCoverage):
                    slice_curves[structure.name] += _slice_curves(coverage, alone, coverage.to_stack(held), k,
                                                                  structure.value, segmenter.post, max_clicks)
            else:
                held = truth[..., order[k]] == 1 if labels.multi else truth.astype(bool)
                valid = truth[..., order[k]] != IGNORED if labels.multi else None

                def mask_after(placed, k=k, valid=valid):
                    mask = segmenter.to_mask(segmenter.predict(image, [(k, c) for c in placed]), image)
                    mask = mask[k] if labels.multi else mask
                    return mask if valid is None else mask & valid
            if held.any():  # nothing to reach otherwise: the protocol scores cases that hold the structure
                curves[structure.name].append(click_curve(mask_after, held, max_clicks,
                                                          image.spacing if volumes else None))
    out = {"max_clicks": max_clicks, "protocol": "each click at the deepest error of the mask so far "
           "(RITM's), positive on missed truth, negative on a false region; NoC counts the model alone as 0 "
           "clicks and a case never reaching the Dice as max_clicks", "per_structure": _click_table(curves,
                                                                                              max_clicks)}
    if any(slice_curves.values()):
        out["per_slice"] = _click_table(slice_curves, max_clicks)
    return out


def _slice_curves(coverage, alone: np.ndarray, held: np.ndarray, k: int, value: int, post,
                  max_clicks: int) -> list:
    """The protocol slice by slice on one volume: each slice of `held` (bool, in slice order) that holds
    structure `k` (label `value`) is a case, clicked on alone, scored in its plane (in mm) on the volume's
    cleaned labels."""
    from .clicks import Click, click_curve

    plain = coverage.stack_labels(alone, post) == value
    in_plane = tuple(coverage.spacing[a] for a in range(3) if a != coverage.axis)
    curves = []
    for s in np.flatnonzero(held.any(axis=(1, 2))):
        def mask_after(placed, s=s):
            if not placed:
                return plain[s]
            probs = coverage.clicked(alone, [(k, Click((s, *c.position), c.positive)) for c in placed])
            return coverage.stack_labels(probs, post)[s] == value
        curves.append(click_curve(mask_after, held[s], max_clicks, in_plane))
    return curves


def _click_table(curves: dict[str, list[list[float]]], max_clicks: int) -> dict:
    from .clicks import clicks_to_reach

    return {name: {"n": len(cases),
                   "dice_after_clicks": [round(float(v), 4) for v in np.mean(cases, axis=0)],
                   **{f"noc{round(t * 100)}": round(float(np.mean([clicks_to_reach(c, t, max_clicks)
                                                                   for c in cases])), 3)
                      for t in NOC_DICE}}
            for name, cases in curves.items() if cases}


def evaluate_volumes(segmenter, labelled: LabelledSet, tolerance: float = 2.0) -> EvaluationResult:
    """Each volume segmented as `predict` does and scored in 3-D on its own grid, in mm."""
    from .inference.volume_coverage import segment_volume

    cases = []
    for i, pair in enumerate(labelled.pairs):
        volume, truth = labelled.load(i)
        pred = segment_volume(segmenter, volume)
        cases.append((pair.id, score_volume(pred, truth, segmenter.labels, volume.spacing, volume.voxel_mm3,
                                            tolerance)))
    result = _structure_result(segmenter.labels, cases, VOLUME_FIELDS, distance_unit="mm",
                               pixel_spacing_source="each volume's own voxel spacing", pixel_spacing_mm=None,
                               nsd_tolerance=tolerance, hd_rules=HD_RULES.format("volume's diagonal in mm"),
                               scored_in="3-D, per volume")
    metrics = result.metrics
    for k, name in enumerate(segmenter.labels.names):
        present = [scores[k] for _, scores in cases if scores[k] is not None]
        entry = metrics["per_class"][name]
        for key, field, mean in (("mean_volume_diff_ml", "volume_diff_ml", np.mean),
                                 ("mean_abs_volume_diff_pct", "abs_volume_diff_pct", np.nanmean),
                                 ("mean_truth_ml", "truth_ml", np.mean)):
            entry[key] = float(mean([s[field] for s in present])) if present else 0.0
    metrics["n_volumes"] = metrics["n_images"]
    return result


def score_volume(pred: np.ndarray, truth: np.ndarray, labels: Labels, spacing, voxel_mm3: float,
                 tolerance: float) -> list[dict | None]:
    out = []
    for s in labels.structures:
        p, t = pred == s.value, truth == s.value
        scores = structure_scores(p, t, None, spacing, tolerance)
        if scores is not None:
            pred_ml, truth_ml = p.sum() * voxel_mm3 / 1000, t.sum() * voxel_mm3 / 1000
            scores.update(pred_ml=float(pred_ml), truth_ml=float(truth_ml),
                          volume_diff_ml=float(pred_ml - truth_ml),
                          abs_volume_diff_pct=float(abs(pred_ml - truth_ml) / truth_ml * 100)
                          if truth_ml else float("nan"))
        out.append(scores)
    return out


def _structure_result(labels: Labels, cases: list[tuple[str, list[dict | None]]], fields: tuple[str, ...],
                      **notes) -> EvaluationResult:
    """A row per case (each structure's `fields`, and the mean Dice of the structures it scored), worst
    first, and the per-structure means."""
    names = labels.names
    rows = []
    for case_id, scores in cases:
        row: dict = {"id": case_id}
        for name, s in zip(names, scores):
            for m in fields:
                row[f"{name}_{m}"] = "" if s is None else s[m]
        dice = [s["dice"] for s in scores if s is not None]
        row["mean_dice"] = float(np.mean(dice)) if dice else 1.0
        rows.append(row)
    rows.sort(key=lambda r: r["mean_dice"])
    metrics = aggregate_structures(names, [scores for _, scores in cases])
    metrics.update(label_mode=labels.mode, **notes)
    return EvaluationResult(metrics, rows)


def write_results(result: EvaluationResult, out: str | Path, extra: dict | None = None) -> None:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output folder ({exc.strerror})") from None
    payload = {**result.metrics, **(extra or {})}
    rows = result.per_case
    fields = list(rows[0]) if rows and "mean_dice" in rows[0] else ONE_STRUCTURE_FIELDS
    try:
        write_text(out / "metrics.json", json.dumps(payload, indent=2) + "\n")
        write_csv(out / CASES_FILE, fields,
                  [{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows])
    except OSError as exc:  # a full disk, or the folder made read-only while scoring
        raise UserError(f"{out}: cannot write the results ({exc.strerror or exc})") from None


def write_report(result: EvaluationResult, segmenter: Segmenter, labelled: LabelledSet, out: str | Path,
                 settings: dict, n_worst: int = 10, n_best: int = 5) -> Path:
    """out/report.html + out/report_files/: histogram and three-panel figures of the worst and best cases;
    several structures: each structure's worst cases."""
    from .report import write_evaluation_report
    from .viz import jaccard_histogram, structures_overlay, three_panel

    out = Path(out)
    index = {p.id: i for i, p in enumerate(labelled.pairs)}
    if segmenter.labels.multi:
        order = truth_order(segmenter, labelled)

        def picture(case_id: str) -> np.ndarray:
            image, truth = labelled.load(index[case_id])
            truth_masks = np.stack([truth[..., c] == 1 for c in order])
            return np.concatenate([structures_overlay(image, masks, segmenter.labels)
                                   for masks in (truth_masks, segmenter.predict_mask(image))], axis=1)

        return write_worst_cases_report(result, segmenter.labels, out, settings, picture)
    files = out / "report_files"
    jaccard_histogram([r["jaccard"] for r in result.per_case], files / "jaccard_histogram.png")
    worst = result.per_case[:n_worst]
    best = list(reversed(result.per_case[-n_best:])) if len(result.per_case) > n_worst else []

    def panels(rows, tag):
        cases = []
        for r in rows:
            image, truth = labelled.load(index[r["id"]])
            name = f"{tag}_{r['id']}.png"
            three_panel(files / name, image, truth, segmenter.predict_mask(image),
                        title=f"{r['id']}  Jaccard {r['jaccard']:.3f}")
            cases.append((r["id"], r["jaccard"], f"report_files/{name}"))
        return cases

    page = out / "report.html"
    write_evaluation_report(page, result.metrics, settings, "report_files/jaccard_histogram.png",
                            panels(worst, "worst"), panels(best, "best"))
    return page


def write_volume_report(result: EvaluationResult, segmenter, labelled: LabelledSet, out: Path,
                        settings: dict) -> Path:
    """The per-structure table and, per structure, its worst volumes (truth | prediction views)."""
    from .inference.coverage import view_axis
    from .inference.volume_coverage import segment_volume
    from .viz import volume_views

    index = {p.id: i for i, p in enumerate(labelled.pairs)}

    def picture(case_id: str) -> np.ndarray:
        v, truth = labelled.load(index[case_id])
        axis = view_axis(segmenter.backend.preprocessing, v.spacing)
        views = [volume_views(v.array, labels, segmenter.labels, axis)
                 for labels in (truth, segment_volume(segmenter, v))]
        h = max(x.shape[0] for x in views)
        return np.concatenate([np.pad(x, ((0, h - x.shape[0]), (0, 8), (0, 0)), constant_values=255)
                               for x in views], axis=1)

    return write_worst_cases_report(result, segmenter.labels, Path(out), settings, picture)


def write_worst_cases_report(result: EvaluationResult, labels: Labels, out: Path, settings: dict,
                             picture: Callable[[str], np.ndarray], n_worst: int = 3) -> Path:
    """The per-structure table, then each structure's `n_worst` cases as `picture(case id)` draws them."""
    from .report import write_structures_report

    worst: dict[str, list] = {}
    for name in labels.names:
        key = f"{name}_dice"
        scored = sorted((r for r in result.per_case if r[key] != ""), key=lambda r: r[key])
        worst[name] = []
        for r in scored[:n_worst]:
            rel = f"report_files/worst_{name}_{r['id']}.png"
            write_png(out / rel, picture(r["id"]), 1)
            worst[name].append((r["id"], r[key], rel))
    page = out / "report.html"
    write_structures_report(page, result.metrics, settings, worst)
    return page
