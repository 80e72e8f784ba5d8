"""Pseudo-labels for self-training: a teacher model's confident masks on unlabelled images.

`lesionseg pseudo-label --weights W --data UNLABELLED --out DIR` writes DIR/images (the kept images, copied),
DIR/masks (their masks, 0/255 PNG, `<id>_segmentation.png`) and DIR/pseudo_labels.csv (every image: its
confidence, foreground fraction and whether it was kept), so `lesionseg train --data TRAIN --data DIR`
trains a student on both. DIR is built beside itself and renamed into place at the end: a run cut short
leaves no half-written folder behind.

`lesionseg rank --data UNLABELLED --out ranking.csv` orders unlabelled images for annotation, the least
confident first (MONAI Label's "next sample"): the case the model is least sure of gains most from a person.

Confidence is the mask's stability under the threshold: |p > 0.7| / |p > 0.3|, the Jaccard index between
the masks the teacher gives at thresholds 0.7 and 0.3 (1 = every pixel is confidently in or out; 0 = nothing
confidently foreground). docs/accuracy.md measures how it ranks the teacher's real errors.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .inference import Segmenter
from .inference.pipeline import Segmented, run_pipeline
from .io import check_unique_ids, list_images, read_image, write_csv, write_mask
from .pairs import MASK_SUFFIX

CSV_FIELDS = ["id", "source", "confidence", "foreground_fraction", "kept"]
LOW, HIGH = 0.3, 0.7


def confidence(prob: np.ndarray) -> float:
    """|p > 0.7| / |p > 0.3|: how little the mask moves between a strict and a lenient threshold."""
    lenient = int((prob > LOW).sum())
    return float((prob > HIGH).sum()) / lenient if lenient else 0.0


@dataclass
class PseudoLabelSummary:
    total: int
    kept: int
    failed: int
    out: Path


def _input_folder(data: Path) -> Path:
    """An unlabelled folder is either a folder of images or one with an images/ sub-folder."""
    if not data.is_dir():
        raise UserError(f"{data}: folder not found")
    return data / "images" if (data / "images").is_dir() else data


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "pseudo_labels.csv").is_file():
        raise UserError(f"{out}: folder is not empty and holds no pseudo-labels (pseudo_labels.csv missing); "
                        "choose another --out")


def _read(path: Path):
    """The pipeline's read step for an unlabelled image: its one frame, no truth."""
    return [(path.stem, read_image(path))], None


def pseudo_label(segmenter: Segmenter, data: str | Path, out: str | Path, min_confidence: float = 0.85,
                 on_failure: Callable[[str], None] | None = None) -> PseudoLabelSummary:
    """Label every image in `data` with `segmenter`; keep those with confidence ≥ `min_confidence`.

    An unreadable image is reported (one line, through `on_failure`) and skipped. An earlier output in `out`
    (recognised by its pseudo_labels.csv) is replaced as a whole.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be between 0 and 1, got {min_confidence}")
    if segmenter.labels.multi:
        names = segmenter.labels.names
        raise UserError(f"pseudo-label writes one-structure masks; this model has {len(names)} structures "
                        f"({', '.join(names)})")
    data, out = Path(data), Path(out)
    files = check_unique_ids(list_images([_input_folder(data)]))
    _check_out(out)
    staging = out.with_name(out.name + ".part")
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "images").mkdir(parents=True)
    (staging / "masks").mkdir()
    rows, failed = [], 0
    report = on_failure or (lambda line: print(line, file=sys.stderr))

    def keep(path: Path, _, frames: list[Segmented]) -> dict:
        frame = frames[0]
        score = confidence(frame.prob)
        kept = score >= min_confidence and bool(frame.mask.any())
        if kept:
            shutil.copyfile(path, staging / "images" / path.name)
            write_mask(staging / "masks" / f"{path.stem}{MASK_SUFFIX}.png", frame.mask)
        return {"id": path.stem, "source": str(path), "confidence": f"{score:.4f}",
                "foreground_fraction": f"{frame.mask.mean():.4f}", "kept": int(kept)}

    try:
        for outcome in run_pipeline(files, _read, segmenter, keep):
            if outcome.error is not None:
                report(str(outcome.error))
                failed += 1
            else:
                rows.append(outcome.result)
        write_csv(staging / "pseudo_labels.csv", CSV_FIELDS, rows)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return PseudoLabelSummary(len(files), sum(r["kept"] for r in rows), failed, out)


RANK_FIELDS = ["rank", "id", "source", "uncertainty", "foreground_fraction"]


def rank_for_annotation(segmenter: Segmenter, data: str | Path,
                        on_failure: Callable[[str], None] | None = None) -> list[dict]:
    """Every image in `data`, the least confident first: uncertainty = 1 − confidence (over every structure's
    probabilities together). An unreadable image is reported (one line, through `on_failure`) and left out."""
    files = check_unique_ids(list_images([_input_folder(Path(data))]))
    report = on_failure or (lambda line: print(line, file=sys.stderr))

    def score(path: Path, _, frames: list[Segmented]) -> dict:
        frame = frames[0]
        return {"id": path.stem, "source": str(path), "uncertainty": round(1.0 - confidence(frame.prob), 4),
                "foreground_fraction": round(float(frame.mask.mean()), 4)}

    rows = []
    for outcome in run_pipeline(files, _read, segmenter, score):
        if outcome.error is not None:
            report(str(outcome.error))
        else:
            rows.append(outcome.result)
    rows.sort(key=lambda r: (-r["uncertainty"], r["id"]))
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]
