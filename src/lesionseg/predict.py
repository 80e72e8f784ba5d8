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
from .viz import overlay


def output_names(image_id: str) -> tuple[str, str]:
    return f"{image_id}_mask.png", f"{image_id}_overlay.png"


def run_predict(inputs, out: str | Path, segmenter_factory: Callable[[], Segmenter], overwrite: bool = False,
                strict: bool = False, report: bool = False, on_failure: Callable[[str], None] = print) -> list[str]:
    """Returns the failure lines (one per input that could not be processed)."""
    out = Path(out)
    files = list_images(inputs)
    ids: dict[str, Path] = {}
    for f in files:
        if f.stem in ids:
            raise UserError(f"{f}: same id '{f.stem}' as {ids[f.stem]}; outputs would collide")
        ids[f.stem] = f
    if not overwrite and out.is_dir():
        taken = [n for i in ids for n in output_names(i) if (out / n).exists()]
        if taken:
            raise UserError(f"{out}: already holds results ({taken[0]}{' and more' if len(taken) > 1 else ''}); "
                            "pass --overwrite to replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output folder ({exc.strerror})") from None
    if not os_writable(out):
        raise UserError(f"{out}: output folder is not writable")
    segmenter = segmenter_factory()  # after the cheap checks: a model load costs seconds
    batch_size = segmenter.batch_size

    failures: list[str] = []
    readable: list[tuple[Path, np.ndarray]] = []

    def read_all(batch_files):
        got = []
        for f in batch_files:
            try:
                got.append((f, read_image(f)))
            except UserError as exc:
                failures.append(str(exc))
                on_failure(str(exc))
        return got

    if strict:  # read everything first: any failure stops before a file is written
        readable = read_all(files)
        if failures:
            raise UserError(f"{len(failures)} of {len(files)} inputs unreadable; nothing written (--strict)")
    rows = []
    chunks = [readable] if strict else [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    for chunk in chunks:
        loaded = chunk if strict else read_all(chunk)
        if not loaded:
            continue
        masks = segmenter.predict_masks([im for _, im in loaded])
        for (f, image), mask in zip(loaded, masks):
            mask_name, overlay_name = output_names(f.stem)
            write_mask(out / mask_name, mask)
            write_png(out / overlay_name, overlay(image, pred=mask))
            rows.append({"id": f.stem, "source": str(f), "size": f"{image.shape[1]}x{image.shape[0]}",
                         "lesion_fraction": float(mask.mean()), "overlay": overlay_name, "mask": mask_name})
            print(f"{f} -> {out / mask_name} ({image.shape[1]}x{image.shape[0]}, lesion {mask.mean():.1%})")
    if report and rows:
        from .report import write_predict_report

        write_predict_report(out / "report.html", rows, {
            "model": segmenter.weights_path, "backend": segmenter.backend.name,
            "test-time augmentation": f"scales {list(segmenter.tta_scales)} x flips" if segmenter.tta else "off",
            "post-processing": segmenter.post.describe(), "inputs": ", ".join(str(i) for i in inputs)})
    if failures:
        on_failure(f"{len(failures)} of {len(files)} inputs failed; {len(rows)} written to {out}")
    return failures


def os_writable(path: Path) -> bool:
    return os.access(path, os.W_OK)
