"""Segment files and folders: masks + overlays (+ report, + manifest) in an output folder.

A pipeline: a small pool of threads reads and decodes inputs (at most `2 × workers` ahead, so memory stays
bounded on folders of huge photos) while the model runs batches in the calling thread, and the same pool
writes the results; the input order is kept. `--shard K/N` takes a deterministic part of the inputs (by a
hash of each id, so the parts do not depend on listing order and never overlap), `--skip-existing` resumes
a folder half done, and `--manifest` records id → mask, status and foreground fraction for every input.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .dicom import is_dicom, read_frames, write_seg
from .errors import UserError
from .inference import Segmenter
from .io import FAST_PNG, read_image, write_csv, write_mask, write_png
from .pairs import check_unique_ids, list_images
from .viz import overlay

RESULT_SUFFIXES = ("_mask.png", "_overlay.png", "_seg.dcm")
MANIFEST_FIELDS = ["id", "source", "mask", "status", "foreground_fraction", "width", "height", "error"]


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


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"K/N" (1 ≤ K ≤ N) → (K, N)."""
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 3/8") from None
    if not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: need 1 ≤ K ≤ N")
    return k, n


def shard_of(image_id: str, n: int) -> int:
    """1..n for an id: a stable hash, the same on every machine and whatever else is in the folder."""
    return int(hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:12], 16) % n + 1


def _items(path: Path) -> tuple[list[tuple[str, np.ndarray]], object]:
    """(id, RGB image) for every frame of one input, and the DICOM dataset when it is one."""
    if is_dicom(path):
        ds, frames = read_frames(path)
        if len(frames) == 1:
            return [(path.stem, frames[0])], ds
        return [(f"{path.stem}_frame{k:03d}", f) for k, f in enumerate(frames)], ds
    return [(path.stem, read_image(path))], None


class Progress:
    """A rich progress bar (count, rate, ETA) on a terminal; elsewhere silence, then one summary line."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                           TimeRemainingColumn(), transient=False, console=Console(stderr=True))
            self.task = self.bar.add_task("predict", total=total, rate="")
            self.bar.start()

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, advance=1, rate=f"{rate:.1f} files/s")

    def close(self) -> float:
        if self.bar is not None:
            self.bar.stop()
        return time.perf_counter() - self.start


def run_predict(inputs, out: str | Path, segmenter_factory: Callable[[], Segmenter], overwrite: bool = False,
                strict: bool = False, report: bool = False, on_failure: Callable[[str], None] = print,
                shard: str | None = None, skip_existing: bool = False, manifest: str | Path | None = None,
                workers: int = 2, progress: bool | None = None, verbose: bool = False,
                overlays: bool = True) -> list[str]:
    """Returns the failure lines (one per input that could not be processed). `overlays=False` writes masks
    only (on full-size photos the overlay PNG costs more than the network).

    DICOM inputs also get `<id>_seg.dcm`, a DICOM SEG referencing the source; multi-frame objects get one
    mask and overlay per frame (`<id>_frameNNN_mask.png`).
    """
    out = Path(out)
    if workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {workers}")
    if report and not overlays:
        raise UserError("--report shows the overlays: drop --no-overlays or --report")
    files = check_unique_ids(list_images(inputs))
    part = parse_shard(shard)
    if part is not None:
        files = [f for f in files if shard_of(f.stem, part[1]) == part[0]]
    done_ids = {_result_id(n) for n in (p.name for p in out.iterdir())} if out.is_dir() else set()
    skipped = [f for f in files if f.stem in done_ids and (out / output_names(f.stem)[0]).exists()] \
        if skip_existing else []
    done = set(skipped)
    files = [f for f in files if f not in done]
    if not overwrite and not skip_existing:
        taken = sorted(f.stem for f in files if f.stem in done_ids)
        if taken:
            raise UserError(
                f"{out}: already holds results ({taken[0]}{' and more' if len(taken) > 1 else ''}); "
                "pass --overwrite to replace them or --skip-existing to resume"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"{out}: output folder is not writable")
    segmenter = segmenter_factory()  # after the cheap checks: a model load costs seconds

    failures: list[str] = []
    records: list[dict] = [
        {
            "id": f.stem,
            "source": str(f),
            "mask": output_names(f.stem)[0],
            "status": "skipped",
            "foreground_fraction": "",
            "width": "",
            "height": "",
            "error": "",
        }
        for f in skipped
    ]
    rows: list[dict] = []

    def fail(f: Path, message: str) -> None:
        failures.append(message)
        on_failure(message)
        records.append(
            {
                "id": f.stem,
                "source": str(f),
                "mask": "",
                "status": "failed",
                "foreground_fraction": "",
                "width": "",
                "height": "",
                "error": message,
            }
        )

    def load(f: Path):
        try:
            return _items(f)
        except UserError as exc:
            return exc

    bar = Progress(len(files), sys.stderr.isatty() if progress is None else progress)
    with ThreadPoolExecutor(workers, thread_name_prefix="lesionseg-io") as pool:
        if strict:  # everything is read first: any failure stops before a file is written
            loaded = [load(f) for f in files]
            bad = [(f, r) for f, r in zip(files, loaded) if isinstance(r, UserError)]
            for _, exc in bad:
                on_failure(str(exc))
            if bad:
                bar.close()
                raise UserError(f"{len(bad)} of {len(files)} inputs unreadable; nothing written (--strict)")
            reads = iter(loaded)
        else:
            reads = _prefetch(pool, load, files, ahead=2 * workers)
        writes: deque[Future] = deque()

        def write(f, items, ds, masks):
            file_rows = []
            for (image_id, image), mask in zip(items, masks):
                mask_name, overlay_name = output_names(image_id)
                write_mask(out / mask_name, mask)
                if overlays:
                    write_png(out / overlay_name, overlay(image, pred=mask), FAST_PNG)
                file_rows.append(
                    {
                        "id": image_id,
                        "source": str(f),
                        "size": f"{image.shape[1]}x{image.shape[0]}",
                        "foreground_fraction": float(mask.mean()),
                        "overlay": overlay_name,
                        "mask": mask_name,
                        "width": image.shape[1],
                        "height": image.shape[0],
                    }
                )
            seg_error = None
            if ds is not None:
                try:
                    write_seg(out / f"{f.stem}_seg.dcm", ds, masks, segmenter.label)
                except UserError as exc:
                    seg_error = str(exc)
            return f, file_rows, ds is not None and seg_error is None, seg_error

        def collect(block: bool) -> None:
            while writes and (block or writes[0].done()):
                f, file_rows, seg_written, seg_error = writes.popleft().result()
                rows.extend(file_rows)
                for r in file_rows:
                    records.append(
                        {
                            "id": r["id"],
                            "source": r["source"],
                            "mask": r["mask"],
                            "status": "ok",
                            "foreground_fraction": f"{r['foreground_fraction']:.6f}",
                            "width": r["width"],
                            "height": r["height"],
                            "error": "",
                        }
                    )
                    if verbose:
                        print(f"{f} -> {out / r['mask']} ({r['size']}, {segmenter.label} "
                              f"{r['foreground_fraction']:.1%})")
                if seg_error:
                    failures.append(seg_error)
                    on_failure(seg_error)
                elif seg_written and verbose:
                    print(f"{f} -> {out / (f.stem + '_seg.dcm')} (DICOM SEG)")
                bar.advance()

        pending: list[tuple[Path, list, object]] = []

        def flush() -> None:
            images = [im for _, items, _ in pending for _, im in items]
            masks = iter(segmenter.predict_masks(images)) if images else iter(())
            for f, items, ds in pending:
                writes.append(pool.submit(write, f, items, ds, [next(masks) for _ in items]))
            pending.clear()
            collect(block=len(writes) > 2 * workers)  # bounded: do not run ahead of the writers

        for f, got in zip(files, reads):
            if isinstance(got, UserError):
                fail(f, str(got))
                bar.advance()
                continue
            pending.append((f, *got))
            if sum(len(items) for _, items, _ in pending) >= segmenter.batch_size:
                flush()
        flush()
        collect(block=True)
    seconds = bar.close()
    if manifest is not None:
        write_manifest(manifest, records)
    if report and rows:
        from .report import write_predict_report

        write_predict_report(
            out / "report.html",
            rows,
            segmenter.label,
            {
                "model": segmenter.weights_path,
                "backend": segmenter.backend.name,
                "test-time augmentation": f"scales {list(segmenter.tta_scales)} x flips"
                if segmenter.tta
                else "off",
                "post-processing": segmenter.post.describe(),
                "inputs": ", ".join(str(i) for i in inputs),
            },
        )
    if failures:
        on_failure(f"{len(failures)} of {len(files)} inputs failed; {len(rows)} written to {out}")
    shard_text = f" (shard {part[0]}/{part[1]})" if part else ""
    print(
        f"segmented {len(files) - len({r['source'] for r in records if r['status'] == 'failed'})} of "
        f"{len(files)} inputs{shard_text} into {out} in {seconds:.1f} s "
        f"({len(rows) / max(seconds, 1e-9):.1f} images/s)"
        + (f"; {len(skipped)} already done" if skipped else "")
    )
    return failures


def _prefetch(pool: ThreadPoolExecutor, fn, items: list, ahead: int):
    """fn(item) for every item, computed by the pool at most `ahead` items in advance, yielded in order."""
    queue: deque[Future] = deque()
    it = iter(items)
    for item in it:
        queue.append(pool.submit(fn, item))
        if len(queue) >= ahead:
            break
    while queue:
        result = queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(fn, nxt))
        yield result


def write_manifest(path: str | Path, records: list[dict]) -> None:
    write_csv(path, MANIFEST_FIELDS, sorted(records, key=lambda r: r["id"]))


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
            if reader.fieldnames != MANIFEST_FIELDS:
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
                    merged[row["id"]] = row
    write_manifest(out, list(merged.values()))
    counts: dict[str, int] = {}
    for row in merged.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
