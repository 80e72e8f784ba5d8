"""The manifest of `predict` (photos and volumes): one record per input, written as CSV, and the output
folder check both verbs make before they load a model."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .io import write_csv

MANIFEST_FIELDS = [
    "id",
    "source",
    "mask",
    "status",
    "foreground_fraction",
    "width",
    "height",
    "error",
    "areas",
    "shape",
]
# the columns of earlier manifests, which merge-manifests still reads: before `shape` (a volume's voxel
# counts per axis), and before per-structure `areas`
EARLIER_MANIFEST_FIELDS = (MANIFEST_FIELDS[:-1], MANIFEST_FIELDS[:-2])


class Manifest:
    """One record per input: id → mask, status (ok, failed, skipped), foreground fraction, size (a photo's
    width and height; a volume's shape), error."""

    def __init__(self):
        self.records: list[dict] = []

    def add(
        self,
        image_id: str,
        source,
        status: str,
        mask: str = "",
        fraction: str = "",
        width="",
        height="",
        error: str = "",
        areas: str = "",
        shape: str = "",
    ) -> None:
        self.records.append(
            {
                "id": image_id,
                "source": str(source),
                "mask": mask,
                "status": status,
                "foreground_fraction": fraction,
                "width": width,
                "height": height,
                "error": error,
                "areas": areas,
                "shape": shape,
            }
        )

    def failed_sources(self) -> set[str]:
        return {r["source"] for r in self.records if r["status"] == "failed"}

    def write(self, path: str | Path) -> None:
        write_manifest(path, self.records)


def write_manifest(path: str | Path, records: list[dict]) -> None:
    write_csv(path, MANIFEST_FIELDS, sorted(records, key=lambda r: r["id"]))


def will_write_to(out: Path) -> None:
    """Refuses, before any work, an output folder that could not be written (it, or the nearest folder
    that would hold it, is read-only, or it is a file); creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{out}: output folder is not writable ({existing} is read-only)" if existing != out
                        else f"{out}: output folder is not writable")


def writable_folder(out: Path) -> None:
    """Refuse an output folder that could not be written, before any work, without creating it: it appears
    with the first result, so a refused run leaves nothing behind."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{out}: cannot create output folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{out}: output folder is not writable" if existing == out else
                        f"{out}: cannot create output folder ({existing} is not writable)")


def refuse_when_nothing_written(failures: list[str], total: int, written: int, noun: str) -> None:
    """A run that segmented nothing is the user's error (exit 2), said in one line when one input was given
    (its own line); a run that wrote some is partial (exit 1, each failure said as it came)."""
    if failures and not written:
        raise UserError(failures[0] if total == 1 else f"all {total} {noun} failed; nothing written")
