"""`evaluate` on a labelled-volume dataset (volume_pairs.py): each volume segmented slice by slice
(inference/slices.py) and scored in 3-D on its own grid, per class and per case: Dice, Jaccard, HD95,
ASSD and NSD in mm from the volume's true spacing (metrics.structure_scores, the 2-D metrics' empty-mask
rules), and the volume difference in mL."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserError
from .evaluation import EvaluationResult
from .inference.slices import segment_volume
from .labels import DECLARATION_FILE, Declared
from .metrics import aggregate_structures, structure_scores
from .volume_pairs import LabelledVolume, discover_volumes, validate_volumes, volume_labels

HD_RULES = (
    "both masks empty: left out and counted (n_both_empty); one empty: HD95 and ASSD are the "
    "volume's diagonal in mm, NSD 0 (n_worst_case)"
)


def load_labelled_volumes(data: str | Path, segmenter, ids=None) -> list[LabelledVolume]:
    """The labelled volumes of `data` (only `ids`: a listing file, or a list of ids), checked against the
    model's structures."""
    from .data.datamodule import read_ids

    folder = Path(data)
    pairs = discover_volumes(folder)
    if ids is not None:
        wanted = list(ids) if isinstance(ids, (list, tuple)) else read_ids(folder, str(ids))
        known = {p.id: p for p in pairs}
        missing = [i for i in wanted if i not in known]
        if missing:
            raise UserError(f"{ids}: {len(missing)} id(s) not in {folder} (e.g. {missing[0]})")
        pairs = [known[i] for i in wanted]
    found = (folder / DECLARATION_FILE).is_file()
    labels = volume_labels(folder, Declared.for_folder(folder)) if found else segmenter.labels
    def declared(x):
        return ", ".join(f"{s.name}={s.value}" for s in x.structures)

    # the label values are compared too: the model's prediction and the truth are read by value
    if declared(labels) != declared(segmenter.labels):
        raise UserError(f"{folder}: its structures ({declared(labels)}) are not the model's "
                        f"({declared(segmenter.labels)})")
    return validate_volumes(pairs, segmenter.labels)


def score_volume(
    pred: np.ndarray, truth: np.ndarray, labels, spacing, voxel_mm3: float, tolerance: float
) -> list[dict | None]:
    out = []
    for s in labels.structures:
        p, t = pred == s.value, truth == s.value
        scores = structure_scores(p, t, None, spacing, tolerance)
        if scores is not None:
            pred_ml, truth_ml = p.sum() * voxel_mm3 / 1000, t.sum() * voxel_mm3 / 1000
            scores.update(
                pred_ml=float(pred_ml),
                truth_ml=float(truth_ml),
                volume_diff_ml=float(pred_ml - truth_ml),
                abs_volume_diff_pct=float(abs(pred_ml - truth_ml) / truth_ml * 100)
                if truth_ml
                else float("nan"),
            )
        out.append(scores)
    return out


def evaluate_volumes(segmenter, items: list[LabelledVolume], tolerance: float = 2.0) -> EvaluationResult:
    labels = segmenter.labels
    names = labels.names
    scored, rows = [], []
    for item in items:
        v = item.volume
        pred = segment_volume(segmenter, v)
        result = score_volume(pred, item.labels, labels, v.spacing, v.voxel_mm3, tolerance)
        scored.append(result)
        row: dict = {"id": item.pair.id}
        for name, s in zip(names, result):
            for m in ("dice", "jaccard", "hd95", "assd", "nsd", "pred_ml", "truth_ml", "volume_diff_ml"):
                row[f"{name}_{m}"] = "" if s is None else s[m]
        dice = [s["dice"] for s in result if s is not None]
        row["mean_dice"] = float(np.mean(dice)) if dice else 1.0
        rows.append(row)
    rows.sort(key=lambda r: r["mean_dice"])
    metrics = aggregate_structures(names, scored)
    for k, name in enumerate(names):
        present = [row[k] for row in scored if row[k] is not None]
        entry = metrics["per_class"][name]
        entry["mean_volume_diff_ml"] = (
            float(np.mean([s["volume_diff_ml"] for s in present])) if present else 0.0
        )
        entry["mean_abs_volume_diff_pct"] = (
            float(np.nanmean([s["abs_volume_diff_pct"] for s in present])) if present else 0.0
        )
        entry["mean_truth_ml"] = float(np.mean([s["truth_ml"] for s in present])) if present else 0.0
    metrics["n_volumes"] = metrics.pop("n_images")
    metrics.update(
        n_images=metrics["n_volumes"],
        label_mode=labels.mode,
        distance_unit="mm",
        pixel_spacing_source="each volume's own voxel spacing",
        pixel_spacing_mm=None,
        nsd_tolerance=tolerance,
        hd_rules=HD_RULES,
        scored_in="3-D, per volume",
    )
    return EvaluationResult(metrics, rows)


def write_volume_report(
    result: EvaluationResult,
    segmenter,
    items: list[LabelledVolume],
    out: Path,
    settings: dict,
    n_worst: int = 3,
) -> Path:
    """The per-structure table and, per structure, its worst volumes (truth | prediction views)."""
    from .io import write_png
    from .report import write_structures_report
    from .viz import volume_views

    index = {i.pair.id: i for i in items}
    worst: dict[str, list] = {}
    axis_for = segmenter.backend.preprocessing.slicing.axis_for
    for name in segmenter.labels.names:
        scored = sorted(
            (r for r in result.per_image if r[f"{name}_dice"] != ""), key=lambda r: r[f"{name}_dice"]
        )
        worst[name] = []
        for r in scored[:n_worst]:
            item = index[r["id"]]
            v = item.volume
            pred = segment_volume(segmenter, v)
            axis = axis_for(v.spacing)
            picture = _side_by_side(
                volume_views(v.array, item.labels, segmenter.labels, axis),
                volume_views(v.array, pred, segmenter.labels, axis),
            )
            rel = f"report_files/worst_{name}_{r['id']}.png"
            write_png(out / rel, picture, 1)
            worst[name].append((r["id"], r[f"{name}_dice"], rel))
    page = out / "report.html"
    write_structures_report(page, result.metrics, settings, worst)
    return page


def _side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    h = max(a.shape[0], b.shape[0])
    pad = [np.pad(x, ((0, h - x.shape[0]), (0, 8), (0, 0)), constant_values=255) for x in (a, b)]
    return np.concatenate(pad, axis=1)
