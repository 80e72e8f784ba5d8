"""`predict` on volumes: each NIfTI file or DICOM series folder → a NIfTI label map on its own grid
(`<id>_labels.nii.gz`, the input's affine and header), a multi-frame DICOM SEG for a series
(`<id>_seg.dcm`), orthogonal views and a slice montage (`<id>_views.png`), and each structure's volume in
mm³ and mL (printed, in `volumes.json`, the manifest and the report). An input's files are built in memory
and then written together (`atomic.write_together`): a failure leaves none of them. A SEG that the source
cannot carry is left out with one line saying why; the other files are still written."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .inference.coverage import Slicing, segment_volume
from .inference.pipeline import Progress
from .input_selection import ResultNames, select_inputs
from .io.atomic import write_text, write_together
from .io.dicom import SEG_SUFFIX, series_seg_bytes
from .io.registry import is_volume, read_volume
from .io.volumes import LABELS_SUFFIX, Volume, is_nifti, nifti_bytes, nifti_id
from .io.writers import encode_png
from .manifest import Manifest, refuse_when_nothing_written, writable_folder
from .measurement import structure_volumes

VIEWS_SUFFIX = "_views.png"
VOLUMES_FILE = "volumes.json"


def is_volume_input(path: Path) -> bool:
    """A volume (a NIfTI file, a DICOM series folder) or a folder holding volumes: as the reader registry
    tells it from the data, never by the model."""
    return is_volume(path) or (path.is_dir() and bool(volumes_in(path)))


def volumes_in(folder: Path) -> list[Path]:
    """A folder's volumes, sorted: its NIfTI files and series folders (its other files need not be opened)."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and (p.is_dir() or is_nifti(p)) and is_volume(p))


def list_volumes(inputs) -> list[Path]:
    """Each input: a NIfTI file, a folder of one DICOM series, or a folder of NIfTI files and series
    sub-folders."""
    found: list[Path] = []
    for given in map(Path, inputs):
        if not given.exists():
            raise UserError(f"{given}: not found")
        found += [given] if given.is_file() or is_volume(given) else volumes_in(given)
    if not found:
        raise UserError(
            f"{', '.join(map(str, inputs))}: no volumes (.nii / .nii.gz files or DICOM series folders)"
        )
    return found


def volume_id(path: Path) -> str:
    return nifti_id(path) if path.is_file() else path.name


def _labels_id(name: str) -> str | None:
    return name[: -len(LABELS_SUFFIX)] if name.endswith(LABELS_SUFFIX) else None


# a volume's results are named for its id; its label map says it was done
VOLUME_RESULTS = ResultNames(volume_id, _labels_id, lambda out, i: (out / (i + LABELS_SUFFIX)).is_file())


@dataclass
class VolumeOutcome:
    volume: Volume
    label_volume: np.ndarray
    measured: dict[str, dict]  # per structure: voxels, mm³ and mL
    files: list[str]


def output_files(out: Path, volume: Volume) -> dict[str, Path]:
    names = {"labels": volume.id + LABELS_SUFFIX, "views": volume.id + VIEWS_SUFFIX}
    if volume.datasets is not None:
        names["seg"] = volume.id + SEG_SUFFIX
    return {k: out / v for k, v in names.items()}


def encode_outputs(segmenter, volume: Volume, label_volume: np.ndarray, views: bool,
                   note: Callable[[str], None]) -> dict[str, bytes]:
    """Every file of one volume, in memory (so that a failure writes none). A DICOM SEG the source cannot
    carry is left out, said in one line through `note`."""
    labels = segmenter.labels
    files = {"labels": nifti_bytes(label_volume, volume)}
    if volume.datasets is not None:
        try:
            files["seg"] = series_seg_bytes(volume.datasets, label_volume, labels, volume.source)
        except UserError as exc:
            note(f"{exc}; no DICOM SEG written, the label map, views and volumes are")
    if views:
        from .viz import volume_views

        slicing: Slicing = segmenter.backend.preprocessing.slicing
        files["views"] = encode_png(
            volume_views(volume.array, label_volume, labels, slicing.axis_for(volume.spacing)), 1
        )
    return files


def segment_one(segmenter, path: Path, out: Path, views: bool, note: Callable[[str], None]) -> VolumeOutcome:
    volume = read_volume(path)
    label_volume = segment_volume(segmenter, volume)
    encoded = encode_outputs(segmenter, volume, label_volume, views, note)
    targets = output_files(out, volume)
    write_together({targets[k]: data for k, data in encoded.items()})
    return VolumeOutcome(
        volume,
        label_volume,
        structure_volumes(label_volume, segmenter.labels, volume.voxel_mm3),
        [targets[k].name for k in encoded],
    )


def volume_record(o: VolumeOutcome) -> dict:
    v = o.volume
    return {
        "id": v.id,
        "source": str(v.source),
        "shape": list(v.array.shape),
        "spacing_mm": [round(s, 5) for s in v.spacing],
        "affine": np.round(v.affine, 6).tolist(),
        "files": o.files,
        "structures": o.measured,
    }


def run_predict_volumes(
    inputs,
    out: str | Path,
    segmenter_factory: Callable,
    overwrite: bool = False,
    report: bool = False,
    on_failure: Callable[[str], None] = print,
    manifest: str | Path | None = None,
    overlays: bool = True,
    segmenter=None,
    batch_options: dict | None = None,
    progress: bool | None = None,
    shard: str | None = None,
    skip_existing: bool = False,
) -> list[str]:
    """Segment every volume of `inputs` into `out`; returns the failure lines. `batch_options`: the photo
    flags the caller was given (refused here)."""
    out = Path(out)
    given = [name for name, value in (batch_options or {}).items() if value not in (None, False)]
    if given:
        raise UserError(
            f"{', '.join(given)}: for photos; volumes are segmented one after another, each written whole "
            "or not at all, and measured at their own voxel spacing"
        )
    chosen = select_inputs(list_volumes(inputs), out, shard, skip_existing, overwrite, VOLUME_RESULTS)
    files = chosen.files
    writable_folder(out)
    segmenter = segmenter or segmenter_factory()
    if not segmenter.backend.preprocessing.covers_volumes:
        raise UserError(
            f"{(files or chosen.skipped)[0]}: a volume, and {segmenter.weights_path.name} is a model for "
            "photos; give a model trained on volumes (e.g. --weights hippocampus)"
        )
    failures, records, done = [], Manifest(), []
    for path in chosen.skipped:
        records.add(volume_id(path), path, "skipped", mask=volume_id(path) + LABELS_SUFFIX)
    bar = Progress(len(files), progress)
    for path in files:
        try:
            outcome = segment_one(segmenter, path, out, overlays, on_failure)
        except UserError as exc:
            failures.append(str(exc))
            if len(files) > 1:  # one input: its line is the command's error
                on_failure(str(exc))
            records.add(path.name, path, "failed", error=str(exc))
            continue
        finally:
            bar.advance()
        done.append(volume_record(outcome))
        text = ", ".join(f"{n} {v['ml']:.3f} mL" for n, v in outcome.measured.items())
        print(f"{path} -> {out / outcome.files[0]} ({text})")
        fraction = float((outcome.label_volume > 0).mean())
        records.add(
            outcome.volume.id,
            path,
            "ok",
            mask=";".join(outcome.files),
            fraction=f"{fraction:.6f}",
            shape="x".join(map(str, outcome.volume.array.shape)),
            areas=json.dumps(outcome.measured, separators=(",", ":")),
        )
    seconds = bar.close()
    _write_summary(out, done, records, manifest, report, segmenter, inputs)
    refuse_when_nothing_written(failures, len(files), len(done), "volumes")
    if failures:
        on_failure(f"{len(failures)} of {len(files)} volumes failed; {len(done)} written to {out}")
    print(chosen.summary(len(done), "volumes", out, seconds, len(done), "volumes"))
    return failures


def _earlier(out: Path, done: list[dict]) -> list[dict]:
    """The entries of `out`'s volumes.json that this run did not redo and whose label map is still there."""
    try:
        earlier = json.loads((out / VOLUMES_FILE).read_text())["volumes"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    redone = {v["id"] for v in done}
    return [v for v in earlier if isinstance(v, dict) and v.get("id") not in redone
            and (out / (str(v.get("id")) + LABELS_SUFFIX)).is_file()]


def _write_summary(
    out: Path, done: list[dict], records: Manifest, manifest, report: bool, segmenter, inputs
) -> None:
    """volumes.json, the manifest and the report of a run. volumes.json keeps the volumes earlier runs (other
    shards, a resumed run) wrote into `out`, as long as their label maps are still there."""
    if done:
        write_text(
            out / VOLUMES_FILE,
            json.dumps({"unit": "mm3 and mL (1 mL = 1000 mm3)", "volumes": _earlier(out, done) + done},
                       indent=1),
        )
    if manifest is not None:
        records.write(manifest)
    if report and done:
        from .report import write_volumes_report

        write_volumes_report(
            out / "report.html",
            done,
            {
                "model": segmenter.weights_path,
                "backend": segmenter.backend.name,
                "inputs": ", ".join(map(str, inputs)),
            },
        )
