"""Segment files and folders: masks + overlays (+ report, + manifest) in an output folder.

Three parts: the input policy (`select_inputs`), the read → segment → write pipeline
(`inference.pipeline`, shared with evaluate and pseudo-label), and the `Manifest`. `--shard K/N` takes a
deterministic part of the inputs (by a hash of each id, so the parts do not depend on listing order and
never overlap), `--skip-existing` resumes a folder half done, and `--manifest` records id → mask, status
and foreground fraction for every input.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError
from .inference import Segmenter
from .inference.pipeline import Progress, Segmented, run_pipeline
from .input_selection import ResultNames, select_inputs
from .io import FAST_PNG, Input, check_unique_ids, list_images, read_input
from .io.atomic import write_together
from .io.registry import companion_suffixes
from .io.writers import encode_label_map, encode_png, mask_to_uint8, structure_mask_names
from .labels import Labels
from .manifest import (
    EARLIER_MANIFEST_FIELDS,
    MANIFEST_FIELDS,
    Manifest,
    refuse_when_nothing_written,
    writable_folder,
    write_manifest,
)
from .measurement import structure_areas
from .viz import overlay, structures_overlay

RESULT_SUFFIXES = ("_mask.png", "_overlay.png", *companion_suffixes())


def _result_id(name: str) -> str | None:
    """The input id a result file name belongs to (`x_mask.png`, `x_frame001_overlay.png`,
    `x_mask_heart.png` → `x`), or None."""
    suffix = next((s for s in RESULT_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        if not name.endswith(".png") or "_mask_" not in name:
            return None
        suffix = name[name.rindex("_mask_"):]  # a structure's mask
    stem = name[: -len(suffix)]
    head, _, tail = stem.rpartition("_frame")
    return head if head and tail.isdigit() and len(tail) == 3 else stem


def output_names(image_id: str) -> tuple[str, str]:
    return f"{image_id}_mask.png", f"{image_id}_overlay.png"


def _has_mask(out: Path, image_id: str) -> bool:
    return (out / output_names(image_id)[0]).exists() or any(out.glob(f"{glob_escape(image_id)}_mask_*.png"))


IMAGE_RESULTS = ResultNames(lambda f: f.stem, _result_id, _has_mask)  # the results of images


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


@dataclass
class Written:
    """What the write step did for one input: a row per frame, and the companion's outcome."""

    rows: list[dict]
    companion: str | None = None  # the companion file written, if any
    note: str | None = None  # why the companion was left out (the masks and overlays are written)


def _encode_masks(frame: Segmented, labels: Labels) -> dict[str, bytes]:
    """The mask file(s) of one frame by name: one PNG, a label map, or one PNG per structure."""
    if not labels.multi:
        return {output_names(frame.id)[0]: encode_png(mask_to_uint8(frame.mask))}
    if labels.mode == "exclusive":
        return {output_names(frame.id)[0]: encode_label_map(frame.mask, labels)}
    return {name: encode_png(mask_to_uint8(mask))
            for name, mask in zip(structure_mask_names(frame.id, labels), frame.mask)}


def _write_results(out: Path, overlays: bool, labels: Labels, label: str, source: Path, companion,
                   frames: list[Segmented], spacing_mm: float | None = None) -> Written:
    """Every file of one input, written together (all or none): masks, overlays and the companion. A
    companion the source cannot carry is left out, said in `Written.note`."""
    rows, files = [], {}
    spacing_mm = spacing_mm or getattr(companion, "pixel_spacing_mm", None)
    for frame in frames:
        overlay_name = output_names(frame.id)[1]
        masks = _encode_masks(frame, labels)
        files.update(masks)
        if overlays:
            picture = structures_overlay(frame.image, frame.mask, labels) if labels.multi else \
                overlay(frame.image, pred=frame.mask)
            files[overlay_name] = encode_png(picture, FAST_PNG)
        h, w = frame.image.shape[:2]
        fraction = float(frame.mask.any(0).mean()) if labels.multi else float(frame.mask.mean())
        rows.append({"id": frame.id, "source": str(source), "size": f"{w}x{h}", "overlay": overlay_name,
                     "foreground_fraction": fraction, "mask": ";".join(masks), "width": w, "height": h,
                     "areas": structure_areas(frame.mask, labels, spacing_mm) if labels.multi else None})
    written = Written(rows)
    if companion is not None:
        name = companion.name(source.stem)
        try:
            files[name] = companion.encode([f.mask for f in frames], str(out / name),
                                           labels if labels.multi else label)
            written.companion = f"{name} ({companion.description})"
        except UserError as exc:
            written.note = f"{exc}; no {companion.description} written, the masks are"
    write_together({out / name: data for name, data in files.items()})
    return written


def _read_all_or_stop(files: list[Path], on_failure) -> dict[Path, Input]:
    """--strict: every input read before anything is written; any failure stops the run."""
    loaded, bad = {}, 0
    for f in files:
        try:
            loaded[f] = read_input(f)
        except UserError as exc:
            on_failure(str(exc))
            bad += 1
    if bad:
        raise UserError(f"{bad} of {len(files)} inputs unreadable; nothing written (--strict)")
    return loaded


def run_predict(inputs, out: str | Path, segmenter_factory: Callable[[], Segmenter], overwrite: bool = False,
                strict: bool = False, report: bool = False, on_failure: Callable[[str], None] = print,
                shard: str | None = None, skip_existing: bool = False, manifest: str | Path | None = None,
                workers: int | None = None, progress: bool | None = None, verbose: bool = False,
                overlays: bool = True, pixel_spacing: float | None = None) -> list[str]:
    """Returns the failure lines (one per input that could not be processed). `overlays=False` writes masks
    only (on full-size photos the overlay PNG costs more than the network).

    An input whose format has its own result (a DICOM's DICOM SEG, `io.registry`) gets it beside the masks;
    multi-frame inputs get one mask and overlay per frame (`<id>_frameNNN_mask.png`).
    """
    from .predict_volumes import is_volume_input, run_predict_volumes

    out = Path(out)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {workers}")
    if report and not overlays:
        raise UserError("--report shows the overlays: drop --no-overlays or --report")
    # volumes carry their own voxel spacing and go one after another, each read whole: these flags have
    # nothing to act on
    volume_args = dict(overwrite=overwrite, report=report, on_failure=on_failure, manifest=manifest,
                       overlays=overlays, progress=progress, shard=shard, skip_existing=skip_existing,
                       batch_options={"--strict": strict, "--workers": workers is not None,
                                      "--pixel-spacing": pixel_spacing})
    if any(is_volume_input(Path(i)) for i in inputs):
        return run_predict_volumes(inputs, out, segmenter_factory, **volume_args)
    chosen = select_inputs(check_unique_ids(list_images(inputs)), out, shard, skip_existing, overwrite,
                           IMAGE_RESULTS)
    writable_folder(out)
    segmenter = segmenter_factory()  # after the cheap checks: a model load costs seconds
    if segmenter.backend.preprocessing.covers_volumes:
        raise UserError(f"{chosen.files[0] if chosen.files else inputs[0]}: images, and "
                        f"{segmenter.weights_path.name} is a model for volumes (give NIfTI files or DICOM "
                        "series folders)")
    files, failures, records, rows = chosen.files, [], Manifest(), []
    for f in chosen.skipped:
        records.add(f.stem, f, "skipped", mask=output_names(f.stem)[0])
    preread = _read_all_or_stop(files, on_failure) if strict else None
    bar = Progress(len(files), progress)

    def read(f: Path):
        item = preread[f] if preread is not None else read_input(f)
        return item.frames, item.companion

    def write(f: Path, companion, frames: list[Segmented]) -> Written:
        return _write_results(out, overlays, segmenter.labels, segmenter.label, f, companion, frames,
                              pixel_spacing)

    try:
        for outcome in run_pipeline(files, read, segmenter, write, workers or 2):
            f = outcome.key
            if outcome.error is not None:
                failures.append(str(outcome.error))
                if len(files) > 1:  # one input: its line is the command's error
                    on_failure(str(outcome.error))
                records.add(f.stem, f, "failed", error=str(outcome.error))
            else:
                _record(outcome.result, f, out, records, rows, failures, on_failure,
                        segmenter.label if verbose else None)
            bar.advance()
    finally:
        seconds = bar.close()
    if manifest is not None:
        records.write(manifest)
    if report and rows:
        _report(out, rows, segmenter, inputs)
    refuse_when_nothing_written(failures, len(files), len(rows), "inputs")
    if failures:
        on_failure(f"{len(failures)} of {len(files)} inputs failed; {len(rows)} written to {out}")
    segmented = len(files) - len(records.failed_sources())
    print(chosen.summary(segmented, "inputs", out, seconds, len(rows), "images"))
    return failures


def _record(written: Written, f: Path, out: Path, records: Manifest, rows: list, failures: list, on_failure,
            verbose_label: str | None) -> None:
    rows.extend(written.rows)
    for r in written.rows:
        records.add(r["id"], r["source"], "ok", mask=r["mask"], fraction=f"{r['foreground_fraction']:.6f}",
                    width=r["width"], height=r["height"],
                    areas=json.dumps(r["areas"], separators=(",", ":")) if r["areas"] else "")
        if verbose_label is not None:
            print(f"{f} -> {out / r['mask']} ({r['size']}, {verbose_label} {r['foreground_fraction']:.1%})")
    if written.note:
        on_failure(written.note)
    elif written.companion and verbose_label is not None:
        print(f"{f} -> {out / written.companion}")


def _report(out: Path, rows: list[dict], segmenter: Segmenter, inputs) -> None:
    from .report import write_predict_report

    write_predict_report(out / "report.html", rows, segmenter.label, {
        "model": segmenter.weights_path, "backend": segmenter.backend.name,
        "test-time augmentation": segmenter.describe_tta(),
        "post-processing": segmenter.post.describe(), "inputs": ", ".join(str(i) for i in inputs)})


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
