"""`lesionseg train --folds K`: k-fold cross-validation, inference settings chosen out of fold, and the fold
ensemble as one model file (docs/planning.md).

The cases are split into K seeded folds (or the user's `splits.json`, nnU-Net's format: a list of
{"train": [ids], "val": [ids]}). A dataset's own `val_ids.txt` stays out of every fold, so it is still a
report. Each fold trains through the one training loop into OUT/fold_<i>/ and keeps its last epoch, since
its validation cases are what the choices are scored on. Each fold's model then predicts its own validation
cases under every candidate setting (TTA on or off, threshold, largest component), and the pooled
out-of-fold scores choose, in nnU-Net's order:

1. TTA, when it scores higher (ties: off, the cheaper);
2. the threshold (one structure or overlapping ones; ties: the nearest to 0.5);
3. the largest component, kept only if it helps and no structure gets worse.

The folds' networks become one ensemble file (models/ensemble.py) that `predict`, `evaluate`, `export` and
`serve` load like any model, with the choices as its inference defaults. The ensemble itself cannot be
scored out of fold (every other fold trained on each case), so it is kept whenever the folds can be
averaged: they share their pre-processing. Evidence: OUT/crossval/oof.csv (every case under every
candidate), OUT/crossval.json (per fold and pooled figures, mean ± spread, and the choices), the card.
Rerunning the command resumes: finished folds and their scores are kept.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .io.atomic import write_text
from .splits import SPLITS, fold_splits

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def case_ids(folder: Path, cfg) -> list[str]:
    """Every case id of a training folder (photo pairs or volumes), in sorted order."""
    from .data.datamodule import declared
    from .pairs import discover

    return sorted(p.id for p in discover(folder, declared(folder, cfg.data)))


# out-of-fold scores


def candidates(mode: str) -> list[dict]:
    thresholds = (None,) if mode == "exclusive" else THRESHOLDS
    return [
        {"tta": tta, "threshold": t, "largest_component": lcc}
        for tta in (False, True)
        for t in thresholds
        for lcc in (False, True)
    ]


def _scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    from .metrics import confusion, image_scores

    if valid is not None:
        pred, truth = pred[valid], truth[valid]
    s = image_scores(confusion(pred.astype(bool), truth.astype(bool)))
    return s["dice"], s["jaccard"]


def _row(fold: int, case: str, cand: dict, names, per_class) -> dict:
    row = {
        "fold": fold,
        "id": case,
        "tta": int(cand["tta"]),
        "threshold": "" if cand["threshold"] is None else cand["threshold"],
        "largest_component": int(cand["largest_component"]),
    }
    for name, (dice, jac) in zip(names, per_class):
        row[f"{name}_dice"], row[f"{name}_jaccard"] = round(dice, 6), round(jac, 6)
    return row


def out_of_fold(fold: int, mode: str, names, cases) -> list[dict]:
    """A row per case and candidate setting, candidate by candidate (as the choice reads them). `cases`
    yields (case id, its probabilities per TTA setting, scores(probabilities, candidate) → (Dice, Jaccard)
    per structure): the network runs once per TTA setting, and every candidate's post-processing reuses it."""
    cands = candidates(mode)
    rows: list[list[dict]] = [[] for _ in cands]
    for case_id, probabilities, scores in cases:
        for k, cand in enumerate(cands):
            rows[k].append(_row(fold, case_id, cand, names, scores(probabilities[cand["tta"]], cand)))
    return [row for per_candidate in rows for row in per_candidate]


def photo_oof(model: Path, data: Path, listing: Path, fold: int, mask_threshold=None) -> list[dict]:
    """Fold `fold`'s model on its validation photos (the ids in `listing`) under every candidate setting."""
    from .evaluation import load_labelled, truth_order
    from .inference import Segmenter
    from .labels import IGNORED
    from .postprocess import PostprocessConfig

    seg = Segmenter.load(model, backend="torch")
    labelled = load_labelled(data, mask_threshold, listing)  # decodes this fold's cases only
    labels = seg.labels
    order = truth_order(seg, labelled) if labels.multi else [0]

    def scored(image, truth):
        def scores(prob, cand) -> list[tuple[float, float]]:
            post = PostprocessConfig(cand["threshold"] or 0.5, largest_component=cand["largest_component"])
            mask = seg.to_mask(prob, image, post)
            if not labels.multi:
                return [_scores(mask, truth)]
            return [_scores(mask[k], truth[..., c] == 1, truth[..., c] != IGNORED)
                    for k, c in enumerate(order)]

        return scores

    def cases():
        for start in range(0, len(labelled.pairs), seg.batch_size):  # the network takes a batch at a time
            chunk = [(labelled.pairs[i].id, *labelled.load(i))
                     for i in range(start, min(start + seg.batch_size, len(labelled.pairs)))]
            images = [image for _, image, _ in chunk]
            probs = {tta: seg.predict_batch(images, tta=tta) for tta in (False, True)}
            for j, (case_id, image, truth) in enumerate(chunk):
                yield case_id, {tta: probs[tta][j] for tta in probs}, scored(image, truth)

    return out_of_fold(fold, labels.mode, labels.names if labels.multi else ("foreground",), cases())


def volume_oof(model: Path, data: Path, val: list[str], fold: int) -> list[dict]:
    """Fold `fold`'s model on its validation volumes, segmented in 3-D under every candidate setting."""
    from .evaluation import load_labelled
    from .inference import InferenceOptions, Segmenter
    from .inference.volume_coverage import volume_coverage

    base = Segmenter.load(model, backend="torch")
    structures = base.labels.structures
    posts = {(c["tta"], c["largest_component"]): Segmenter(base.backend, InferenceOptions(
        tta=c["tta"], largest_component=c["largest_component"])).post for c in candidates(base.labels.mode)}

    def cases():
        labelled = load_labelled(data, ids=val, model_labels=base.labels)
        for i, pair in enumerate(labelled.pairs):
            volume, truth = labelled.load(i)
            coverage = volume_coverage(base, volume)

            def scores(prob, cand, coverage=coverage, truth=truth) -> list[tuple[float, float]]:
                pred = coverage.labels_of(prob, posts[cand["tta"], cand["largest_component"]])
                return [_scores(pred == s.value, truth == s.value) for s in structures]

            yield pair.id, {tta: coverage.probabilities(tta) for tta in (False, True)}, scores

    return out_of_fold(fold, base.labels.mode, [s.name for s in structures], cases())


def write_rows(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_rows(path: Path) -> list[dict]:
    def value(key, text):
        if key == "id" or text == "":
            return text if key == "id" else None
        return float(text) if key.endswith(("_dice", "_jaccard")) or key == "threshold" else int(text)

    with open(path, newline="") as f:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


# the choice


def _key(row_or_cand: dict) -> tuple:
    t = row_or_cand["threshold"]
    return (
        bool(row_or_cand["tta"]),
        None if t in (None, "") else float(t),
        bool(row_or_cand["largest_component"]),
    )


def pooled_table(rows: list[dict], names, metric: str) -> dict[tuple, dict]:
    """Per candidate: the pooled mean of `metric` per structure and overall, and each fold's mean."""
    table: dict[tuple, dict] = {}
    for key in dict.fromkeys(_key(r) for r in rows):
        chosen = [r for r in rows if _key(r) == key]
        per_class = {n: float(np.mean([r[f"{n}_{metric}"] for r in chosen])) for n in names}
        case_means = [np.mean([r[f"{n}_{metric}"] for n in names]) for r in chosen]
        folds = sorted({r["fold"] for r in chosen})
        by_fold = [float(np.mean([m for m, r in zip(case_means, chosen) if r["fold"] == f])) for f in folds]
        table[key] = {
            "mean": float(np.mean(case_means)),
            "per_structure": per_class,
            "per_fold": by_fold,
            "fold_spread": float(np.std(by_fold)),
            "n_cases": len(chosen),
        }
    return table


def choose(table: dict[tuple, dict], mode: str) -> tuple[dict, list[str]]:
    """nnU-Net's order on the pooled out-of-fold scores; returns the choice and why, one line per step."""
    base_t = None if mode == "exclusive" else 0.5
    mean = {k: v["mean"] for k, v in table.items()}
    on, off = mean[(True, base_t, False)], mean[(False, base_t, False)]
    tta = on > off
    why = [f"TTA {'on' if tta else 'off'}: {on:.4f} with, {off:.4f} without"]
    threshold = base_t
    if mode != "exclusive":
        scored = {t: mean[(tta, t, False)] for t in THRESHOLDS}
        threshold = max(THRESHOLDS, key=lambda t: (round(scored[t], 6), -abs(t - 0.5)))
        why.append("threshold " + f"{threshold}: " + ", ".join(f"{t} → {s:.4f}" for t, s in scored.items()))
    plain, kept = table[(tta, threshold, False)], table[(tta, threshold, True)]
    worse = [n for n, v in kept["per_structure"].items() if v < plain["per_structure"][n] - 1e-9]
    largest = kept["mean"] > plain["mean"] and not worse
    why.append(
        f"largest component {'on' if largest else 'off'}: {kept['mean']:.4f} with, "
        f"{plain['mean']:.4f} without" + (f"; worse for {', '.join(worse)}" if worse else "")
    )
    return {"tta": tta, "threshold": threshold, "largest_component": largest}, why


# the driver


def _fold_lists(out: Path, i: int, split: dict, all_ids: list[str]) -> dict[str, Any]:
    """Fold i's validation list (and the cases no part of it may see) as files; the training overrides."""
    lists = out / "crossval"
    val_file = lists / f"fold_{i}_val.txt"
    write_text(val_file, "\n".join(split["val"]) + "\n")
    # a fold's model is scored on its validation cases: its last epoch is kept, never the best on them
    extra: dict[str, Any] = {
        "data.val_ids": str(val_file.resolve()),
        "trainer.selection": "last",
        "optim.ema_selection": False,
    }
    excluded = sorted(set(all_ids) - set(split["train"]) - set(split["val"]))
    if excluded:
        held = lists / f"fold_{i}_excluded.txt"
        write_text(held, "\n".join(excluded) + "\n")
        extra["data.exclude_ids"] = str(held.resolve())
    return extra


def train_folds(
    data: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    folds: int | None = None,
    splits: str | Path | None = None,
    *,
    command: str | None = None,
    overrides: dict[str, Any] | None = None,
    only: int | None = None,
) -> Path | None:
    """Train every fold (resuming what is done), choose out of fold, write OUT/model.pt; returns its path.
    `only`: train and score that fold alone (one process per device, the same OUT); the ensemble is written
    by whichever call finds every fold scored, else None is returned."""
    from .api import _nested_overrides
    from .api import train as train_one
    from .config import load_config
    from .pairs import is_volume_dataset

    folder, out = Path(data), Path(out)
    overrides = dict(overrides or {})
    cfg = load_config(config, _nested_overrides(overrides))
    all_ids = case_ids(folder, cfg)
    chosen = fold_splits(folder, out, folds, Path(splits) if splits else None, all_ids)
    volumes = is_volume_dataset(folder)
    if only is not None and not 0 <= only < len(chosen):
        raise UserError(f"--fold {only}: the run has folds 0 to {len(chosen) - 1}")
    rows: list[dict] = []
    for i, split in enumerate(chosen):
        scores = out / "crossval" / f"fold_{i}_oof.csv"
        if not scores.is_file() and only in (None, i):
            extra = _fold_lists(out, i, split, all_ids)
            print(
                f"fold {i + 1}/{len(chosen)}: training on {len(split['train'])} cases, validating on "
                f"{len(split['val'])} ({out / f'fold_{i}'})",
                file=sys.stderr,
                flush=True,
            )
            model = train_one(folder, out / f"fold_{i}", config, command=command, **overrides, **extra)
            found = (
                volume_oof(model, folder, split["val"], i)
                if volumes
                else photo_oof(model, folder, Path(extra["data.val_ids"]), i, cfg.data.mask_threshold)
            )
            write_rows(scores, found)
        if not scores.is_file():
            continue
        rows += read_rows(scores)
    done = len({r["fold"] for r in rows})
    if done < len(chosen):
        print(f"crossval: {done} of {len(chosen)} folds scored; the ensemble is written once all are",
              file=sys.stderr)
        return None
    return write_ensemble(out, len(chosen), rows)


def write_ensemble(out: Path, k: int, rows: list[dict]) -> Path:
    """The choice on the pooled out-of-fold rows, the evidence, and OUT/model.pt."""
    from .inference.options import FALLBACK_TTA_SCALES
    from .model_file import ModelFile

    files = [ModelFile.read(out / f"fold_{i}" / "model.pt") for i in range(k)]
    labels = files[0].labels
    names = labels.names if labels.multi else ("foreground",)
    metric = "dice" if labels.multi or files[0].preprocessing.covers_volumes else "jaccard"
    table = pooled_table(rows, names, metric)
    choice, why = choose(table, labels.mode)
    best = table[_key(choice)]
    inference: dict[str, Any] = {"largest_component": choice["largest_component"]}
    if choice["threshold"] is not None:
        inference["threshold"] = choice["threshold"]
    if choice["tta"]:
        inference["tta_scales"] = list(FALLBACK_TTA_SCALES)
    evidence = {
        "folds": k,
        "metric": f"mean {metric} per case" + (" (mean over structures)" if len(names) > 1 else ""),
        "chosen": choice,
        "why": why,
        "out_of_fold": {
            "pooled_mean": round(best["mean"], 4),
            "per_fold": [round(v, 4) for v in best["per_fold"]],
            "fold_mean": round(float(np.mean(best["per_fold"])), 4),
            "fold_spread": round(best["fold_spread"], 4),
            "per_structure": {n: round(v, 4) for n, v in best["per_structure"].items()},
            "n_cases": best["n_cases"],
        },
        "candidates": [
            {
                "tta": t,
                "threshold": th,
                "largest_component": lc,
                "pooled_mean": round(v["mean"], 4),
                "fold_spread": round(v["fold_spread"], 4),
            }
            for (t, th, lc), v in table.items()
        ],
    }
    card = {**files[0].card, "inference": inference, "crossval": evidence}
    for key in ("selection_value", "best_epoch", "selected_weights"):  # one fold's, not the ensemble's
        card.pop(key, None)
    card["training_data"] = {
        "train": files[0].card.get("training_data", {}).get("train"),
        "val": f"out of fold: each of the {k} folds validated on its own cases ({out / SPLITS})",
        "n_cases": best["n_cases"],
    }
    try:
        model = ModelFile.ensemble(files, card)
        evidence["model"] = f"the ensemble of the {k} folds (the ensemble cannot be scored out of fold)"
    except UserError as exc:
        single = int(np.argmax(best["per_fold"]))
        model, evidence["model"] = files[single], f"fold {single} alone, the best out of fold: {exc}"
        model.card = card
    from .planning import plan_evidence

    card.update(plan_evidence(out / "plan"))
    card["training_minutes"] = round(sum(f.card.get("training_minutes", 0) for f in files), 2)
    card["parameters"] = sum(f.card.get("parameters", 0) for f in files)
    write_text(out / "crossval.json", json.dumps(evidence, indent=1, default=str) + "\n")
    write_rows(out / "crossval" / "oof.csv", rows)
    model.write(out / "model.pt")
    for line in [
        *why,
        f"out of fold: {best['mean']:.4f} pooled, per fold "
        f"{', '.join(f'{v:.4f}' for v in best['per_fold'])} (± {best['fold_spread']:.4f}); "
        f"{evidence['model']}",
    ]:
        print(f"crossval: {line}", file=sys.stderr)
    return out / "model.pt"
