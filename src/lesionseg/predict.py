"""Segment files and folders: masks + overlays (+ report) in an output folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .inference import Segmenter
from .io import read_image, write_mask, write_png
from .pairs import list_images
from .dicom import is_dicom, read_frames, write_seg
from .viz import overlay


RESULT_SUFFIXES = ("_mask.png", "_overlay.png", "_seg.dcm")


def _result_id(name: str) -> str | None:
    """The input id a result file name belongs to (`x_mask.png`, `x_frame001_overlay.png` → `x`), or None."""
    suffix = next((s for s in RESULT_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        return None
    stem = name[: -len(suffix)]
    head, _, tail = stem.rpartition("_frame")
    return head if head and tail.isdigit() and len(tail) == 3 else stem


def output_names(image_id: str) -> tuple[str, str]:
    return f"{image_id}_mask.png", f"{image_id}_overlay.png"


def _items(path: Path) -> tuple[list[tuple[str, np.ndarray]], object]:
    """(id, RGB image) for every frame of one input, and the DICOM dataset when it is one."""
    if is_dicom(path):
        ds, frames = read_frames(path)
        if len(frames) == 1:
            return [(path.stem, frames[0])], ds
        return [(f"{path.stem}_frame{k:03d}", f) for k, f in enumerate(frames)], ds
    return [(path.stem, read_image(path))], None


def run_predict(inputs, out: str | Path, segmenter_factory: Callable[[], Segmenter], overwrite: bool = False,
                strict: bool = False, report: bool = False, on_failure: Callable[[str], None] = print) -> list[str]:
    """Returns the failure lines (one per input that could not be processed).

    DICOM inputs also get `<id>_seg.dcm`, a DICOM SEG referencing the source; multi-frame objects get one
    mask and overlay per frame (`<id>_frameNNN_mask.png`).
    """
    out = Path(out)
    files = list_images(inputs)
    ids: dict[str, Path] = {}
    for f in files:
        if f.stem in ids:
            raise UserError(f"{f}: same id '{f.stem}' as {ids[f.stem]}; outputs would collide")
        ids[f.stem] = f
    if not overwrite and out.is_dir():
        taken = sorted(n for n in (p.name for p in out.iterdir()) if _result_id(n) in ids)
        if taken:
            raise UserError(f"{out}: already holds results ({taken[0]}{' and more' if len(taken) > 1 else ''}); "
                            "pass --overwrite to replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"{out}: output folder is not writable")
    segmenter = segmenter_factory()  # after the cheap checks: a model load costs seconds

    failures: list[str] = []

    def load(f: Path):
        try:
            return _items(f)
        except UserError as exc:
            failures.append(str(exc))
            on_failure(str(exc))
            return None

    loaded_all = {f: load(f) for f in files} if strict else None
    if strict and failures:  # everything was read first: any failure stops before a file is written
        raise UserError(f"{len(failures)} of {len(files)} inputs unreadable; nothing written (--strict)")
    rows = []
    # Inputs are grouped so that each forward pass sees up to batch_size images.
    pending: list[tuple[Path, list, object]] = []

    def flush():
        images = [im for _, items, _ in pending for _, im in items]
        masks = iter(segmenter.predict_masks(images))
        for f, items, ds in pending:
            file_masks = []
            for image_id, image in items:
                mask = next(masks)
                file_masks.append(mask)
                mask_name, overlay_name = output_names(image_id)
                write_mask(out / mask_name, mask)
                write_png(out / overlay_name, overlay(image, pred=mask))
                rows.append({"id": image_id, "source": str(f), "size": f"{image.shape[1]}x{image.shape[0]}",
                             "foreground_fraction": float(mask.mean()), "overlay": overlay_name, "mask": mask_name})
                print(f"{f} -> {out / mask_name} ({image.shape[1]}x{image.shape[0]}, {segmenter.label} "
                      f"{mask.mean():.1%})")
            if ds is not None:
                try:
                    write_seg(out / f"{f.stem}_seg.dcm", ds, file_masks, segmenter.label)
                    print(f"{f} -> {out / (f.stem + '_seg.dcm')} (DICOM SEG)")
                except UserError as exc:
                    failures.append(str(exc))
                    on_failure(str(exc))
        pending.clear()

    for f in files:
        got = loaded_all[f] if strict else load(f)
        if got is None:
            continue
        pending.append((f, *got))
        if sum(len(items) for _, items, _ in pending) >= segmenter.batch_size:
            flush()
    flush()
    if report and rows:
        from .report import write_predict_report

        write_predict_report(out / "report.html", rows, segmenter.label, {
            "model": segmenter.weights_path, "backend": segmenter.backend.name,
            "test-time augmentation": f"scales {list(segmenter.tta_scales)} x flips" if segmenter.tta else "off",
            "post-processing": segmenter.post.describe(), "inputs": ", ".join(str(i) for i in inputs)})
    if failures:
        on_failure(f"{len(failures)} of {len(files)} inputs failed; {len(rows)} written to {out}")
    return failures
