"""Segment files and folders into an output folder: one front for every kind of case.

The policy every run shares lives here: the flags, the input policy (`select_inputs`: `--shard K/N` takes a
deterministic part of the inputs by a hash of each id, so the parts never overlap; `--skip-existing` resumes
a folder half done; results already there are refused without `--overwrite`), the output folder checked
before any work, the model's kind against the inputs', failures (one line each; exit 1 when some were
written, 2 when none), the `--manifest` (id → results, status, foreground fraction, size, areas or mL) and
the run's summary line. What is written for each case is its kind's (`case_results`: images or volumes, as
the reader registry tells the inputs apart).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from .case_results import ImageResults, VolumeResults, is_volume_input
from .errors import UserError
from .inference import Segmenter
from .inference.pipeline import Progress
from .input_selection import select_inputs
from .manifest import (
    EARLIER_MANIFEST_FIELDS,
    MANIFEST_FIELDS,
    Manifest,
    refuse_when_nothing_written,
    writable_folder,
    write_manifest,
)


def run_predict(inputs, out: str | Path, segmenter_factory: Callable[[], Segmenter], overwrite: bool = False,
                strict: bool = False, report: bool = False, on_failure: Callable[[str], None] = print,
                shard: str | None = None, skip_existing: bool = False, manifest: str | Path | None = None,
                workers: int | None = None, progress: bool | None = None, verbose: bool = False,
                overlays: bool = True, pixel_spacing: float | None = None) -> list[str]:
    """Returns the failure lines (one per input that could not be processed). `overlays=False` writes masks
    (or label maps) only: on full-size photos the overlay PNG costs more than the network.

    An input whose format has its own result (a DICOM's DICOM SEG, `io.registry`) gets it beside the masks;
    multi-frame inputs get one mask and overlay per frame (`<id>_frameNNN_mask.png`).
    """
    out = Path(out)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {workers}")
    if report and not overlays:
        raise UserError("--report shows the overlays: drop --no-overlays or --report")
    if any(is_volume_input(Path(i)) for i in inputs):
        # volumes carry their own voxel spacing and go one after another, each read whole: these flags have
        # nothing to act on, and are refused rather than dropped
        cases = VolumeResults(overlays, {"--strict": strict, "--workers": workers is not None,
                                         "--pixel-spacing": pixel_spacing})
    else:
        cases = ImageResults(overlays, strict, workers, pixel_spacing, verbose)
    chosen = select_inputs(cases.listed(inputs), out, shard, skip_existing, overwrite, cases.names)
    writable_folder(out)
    segmenter = segmenter_factory()  # after the cheap checks: a model load costs seconds
    cases.check_model(segmenter, (chosen.files or chosen.skipped or inputs)[0])
    files, failures, records, written = chosen.files, [], Manifest(), []
    for f in chosen.skipped:
        case_id = cases.names.input_id(f)
        records.add(case_id, f, "skipped", mask=cases.done_name(case_id))
    bar = Progress(len(files), progress)
    try:
        for f, result in cases.segment(files, segmenter, out, on_failure, bar.within):
            if isinstance(result, UserError):
                failures.append(str(result))
                if len(files) > 1:  # one input: its line is the command's error
                    on_failure(str(result))
                records.add(cases.names.input_id(f), f, "failed", error=str(result))
            else:
                written.append(result)
                for record in result.records:
                    records.add(**record)
                for line in result.said:
                    print(line)
                for line in result.notes:
                    on_failure(line)
            bar.advance()
    finally:
        seconds = bar.close()
    cases.finish(out, written, report, segmenter, inputs)
    if manifest is not None:
        records.write(manifest)
    made = sum(len(w.summary) for w in written)  # images (frames) or volumes written
    refuse_when_nothing_written(failures, len(files), made, cases.noun)
    if failures:
        on_failure(f"{len(failures)} of {len(files)} {cases.noun} failed; {made} written to {out}")
    print(chosen.summary(len(written), cases.noun, out, seconds, made, cases.unit))
    return failures


def merge_manifests(paths: list[str | Path], out: str | Path) -> dict:
    """One manifest from the shards' manifests; an id seen twice is an error (the shards overlapped). Returns
    counts by status."""
    merged: dict[str, dict] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: manifest not found")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames not in (MANIFEST_FIELDS, *EARLIER_MANIFEST_FIELDS):
                raise UserError(f"{path}: not a lesionseg manifest (columns {reader.fieldnames})")
            for row in reader:
                if (
                    row["id"] in merged
                    and merged[row["id"]]["status"] != "skipped"
                    and row["status"] != "skipped"
                ):
                    raise UserError(
                        f"{path}: id '{row['id']}' is also in another manifest (overlapping shards?)"
                    )
                if row["id"] not in merged or merged[row["id"]]["status"] == "skipped":
                    merged[row["id"]] = {"areas": "", "shape": "", **row}
    write_manifest(out, list(merged.values()))
    counts: dict[str, int] = {}
    for row in merged.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
