"""What `predict` writes for a case, one class per kind of result, behind one interface (`predict.run_predict`
holds the policy both share: selection, the output folder, the model check, failures, the manifest and the
summary). Which class a run uses is the reader registry's answer about its inputs (`is_volume_input`).

- `ImageResults`: images (photos, radiographs, DICOM images, each frame of a multi-frame one) → a mask PNG (a
  label map PNG for exclusive structures, a PNG per structure for overlapping ones), an overlay, and the
  format's companion (a DICOM SEG); read, segmented in batches and written by `inference.pipeline`.
- `VolumeResults`: volumes (NIfTI files, DICOM series folders) → a NIfTI label map on the volume's own grid
  (its affine and header), a multi-frame DICOM SEG for a series, orthogonal views, and each structure's
  volume in mm³ and mL (printed, in `volumes.json`, the manifest and the report); one volume at a time.

A case's files are built in memory and written together (`atomic.write_together`): a failure leaves none of
them. A companion the source cannot carry is left out with one line saying why; the rest is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import UserError
from .inference.coverage import view_axis
from .inference.pipeline import Segmented, run_pipeline
from .inference.volume_coverage import segment_volume
from .input_selection import ResultNames
from .io import FAST_PNG, Input, check_unique_ids, list_images, read_input
from .io.atomic import write_text, write_together
from .io.dicom import SEG_SUFFIX, series_seg_bytes
from .io.registry import companion_suffixes, is_volume, read_volume
from .io.volumes import LABELS_SUFFIX, Volume, is_nifti, nifti_bytes, nifti_id
from .io.writers import encode_label_map, encode_png, mask_to_uint8, structure_mask_names
from .labels import Labels
from .measurement import structure_areas, structure_volumes
from .viz import overlay, structures_overlay


@dataclass
class CaseWritten:
    """What one case left in --out: its manifest records (`Manifest.add` arguments), the lines said on
    stdout and on stderr (a companion left out), and what the run's report and summary need."""

    records: list[dict]
    said: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)  # report rows (images) or volumes.json entries


# images


IMAGE_SUFFIXES = ("_mask.png", "_overlay.png", *companion_suffixes())


def _image_result_id(name: str) -> str | None:
    """The input id a result file name belongs to (`x_mask.png`, `x_frame001_overlay.png`,
    `x_mask_heart.png` → `x`), or None."""
    suffix = next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)
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
    import glob

    return (out / output_names(image_id)[0]).exists() or any(out.glob(f"{glob.escape(image_id)}_mask_*.png"))


class ImageResults:
    noun, unit = "inputs", "images"
    names = ResultNames(lambda f: f.stem, _image_result_id, _has_mask)

    def __init__(self, overlays: bool, strict: bool, workers: int | None, pixel_spacing: float | None,
                 verbose: bool):
        self.overlays, self.strict, self.workers = overlays, strict, workers or 2
        self.pixel_spacing, self.verbose = pixel_spacing, verbose

    @staticmethod
    def listed(inputs) -> list[Path]:
        return check_unique_ids(list_images(inputs))

    @staticmethod
    def done_name(case_id: str) -> str:
        return output_names(case_id)[0]

    @staticmethod
    def check_model(segmenter, first) -> None:
        if segmenter.backend.preprocessing.covers_volumes:
            raise UserError(f"{first}: images, and {segmenter.weights_path.name} is a model for volumes "
                            "(give NIfTI files or DICOM series folders)")

    def segment(self, files: list[Path], segmenter, out: Path, on_failure,
                within=None) -> Iterator[tuple[Path, object]]:
        """(input, CaseWritten or the UserError that stopped it), in input order. A photo is one network
        call: `within` (how far one case has gone) has nothing to show."""
        preread = _read_all_or_stop(files, on_failure) if self.strict else None

        def read(f: Path):
            item = preread[f] if preread is not None else read_input(f)
            return item.frames, item.companion

        def write(f: Path, companion, frames: list[Segmented]) -> CaseWritten:
            return self._write(out, segmenter, f, companion, frames)

        for outcome in run_pipeline(files, read, segmenter, write, self.workers):
            yield outcome.key, outcome.error if outcome.error is not None else outcome.result

    def _write(self, out: Path, segmenter, source: Path, companion, frames: list[Segmented]) -> CaseWritten:
        """Every file of one input, written together: masks, overlays and the companion."""
        labels = segmenter.labels
        written, files = CaseWritten([]), {}
        spacing_mm = self.pixel_spacing or getattr(companion, "pixel_spacing_mm", None)
        for frame in frames:
            overlay_name = output_names(frame.id)[1]
            masks = _encode_masks(frame, labels)
            files.update(masks)
            if self.overlays:
                picture = structures_overlay(frame.image, frame.mask, labels) if labels.multi else \
                    overlay(frame.image, pred=frame.mask)
                files[overlay_name] = encode_png(picture, FAST_PNG)
            h, w = frame.image.shape[:2]
            fraction = float(frame.mask.any(0).mean()) if labels.multi else float(frame.mask.mean())
            areas = structure_areas(frame.mask, labels, spacing_mm) if labels.multi else None
            mask_name = ";".join(masks)
            written.summary.append({"id": frame.id, "source": str(source), "size": f"{w}x{h}",
                                    "overlay": overlay_name, "foreground_fraction": fraction,
                                    "mask": mask_name, "areas": areas})
            written.records.append(dict(image_id=frame.id, source=source, status="ok", mask=mask_name,
                                        fraction=f"{fraction:.6f}", width=w, height=h,
                                        areas=json.dumps(areas, separators=(",", ":")) if areas else ""))
            if self.verbose:
                written.said.append(f"{source} -> {out / mask_name} ({w}x{h}, {segmenter.label} "
                                    f"{fraction:.1%})")
        if companion is not None:
            name = companion.name(source.stem)
            try:
                files[name] = companion.encode([f.mask for f in frames], str(out / name),
                                               labels if labels.multi else segmenter.label)
                if self.verbose:
                    written.said.append(f"{source} -> {out / name}")
            except UserError as exc:
                written.notes.append(f"{exc}; no {companion.description} written, the masks are")
        write_together({out / name: data for name, data in files.items()})
        return written

    @staticmethod
    def finish(out: Path, written: list[CaseWritten], report: bool, segmenter, inputs) -> None:
        rows = [row for w in written for row in w.summary]
        if report and rows:
            from .report import write_predict_report

            write_predict_report(out / "report.html", rows, segmenter.label, {
                "model": segmenter.weights_path, "backend": segmenter.backend.name,
                "test-time augmentation": segmenter.describe_tta(),
                "post-processing": segmenter.post.describe(), "inputs": ", ".join(str(i) for i in inputs)})


def _encode_masks(frame: Segmented, labels: Labels) -> dict[str, bytes]:
    """The mask file(s) of one frame by name: one PNG, a label map, or one PNG per structure."""
    if not labels.multi:
        return {output_names(frame.id)[0]: encode_png(mask_to_uint8(frame.mask))}
    if labels.mode == "exclusive":
        return {output_names(frame.id)[0]: encode_label_map(frame.mask, labels)}
    return {name: encode_png(mask_to_uint8(mask))
            for name, mask in zip(structure_mask_names(frame.id, labels), frame.mask)}


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


# volumes


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


def volume_id(path: Path) -> str:
    return nifti_id(path) if path.is_file() else path.name


def _labels_id(name: str) -> str | None:
    return name[: -len(LABELS_SUFFIX)] if name.endswith(LABELS_SUFFIX) else None


class VolumeResults:
    noun, unit = "volumes", "volumes"
    # a volume's results are named for its id; its label map says it was done
    names = ResultNames(volume_id, _labels_id, lambda out, i: (out / (i + LABELS_SUFFIX)).is_file())

    def __init__(self, views: bool, photo_flags: dict):
        given = [name for name, value in photo_flags.items() if value not in (None, False)]
        if given:
            raise UserError(f"{', '.join(given)}: for photos; volumes are segmented one after another, each "
                            "written whole or not at all, and measured at their own voxel spacing")
        self.views = views

    @staticmethod
    def listed(inputs) -> list[Path]:
        """Each input: a NIfTI file, a folder of one DICOM series, or a folder of NIfTI files and series
        sub-folders."""
        found: list[Path] = []
        for given in map(Path, inputs):
            if not given.exists():
                raise UserError(f"{given}: not found")
            found += [given] if given.is_file() or is_volume(given) else volumes_in(given)
        if not found:
            raise UserError(
                f"{', '.join(map(str, inputs))}: no volumes (.nii / .nii.gz files or DICOM series folders)")
        return found

    @staticmethod
    def done_name(case_id: str) -> str:
        return case_id + LABELS_SUFFIX

    @staticmethod
    def check_model(segmenter, first) -> None:
        if not segmenter.backend.preprocessing.covers_volumes:
            raise UserError(f"{first}: a volume, and {segmenter.weights_path.name} is a model for photos; "
                            "give a model trained on volumes (e.g. --weights hippocampus)")

    def segment(self, files: list[Path], segmenter, out: Path, on_failure,
                within=None) -> Iterator[tuple[Path, object]]:
        """(input, CaseWritten or the UserError that stopped it), in input order; `within(done, total)` is
        told how far each volume's slices or windows have gone."""
        for path in files:
            try:
                yield path, self._one(segmenter, path, out, within)
            except UserError as exc:
                yield path, exc

    def _one(self, segmenter, path: Path, out: Path, within=None) -> CaseWritten:
        volume = read_volume(path)
        label_volume = segment_volume(segmenter, volume, within)
        written = CaseWritten([])
        files = self._encode(segmenter, volume, label_volume, written.notes)
        write_together({out / name: data for name, data in files.items()})
        measured = structure_volumes(label_volume, segmenter.labels, volume.voxel_mm3)
        names = list(files)
        written.summary.append({
            "id": volume.id, "source": str(volume.source), "shape": list(volume.array.shape),
            "spacing_mm": [round(s, 5) for s in volume.spacing],
            "affine": np.round(volume.affine, 6).tolist(), "files": names, "structures": measured})
        text = ", ".join(f"{n} {v['ml']:.3f} mL" for n, v in measured.items())
        written.said.append(f"{path} -> {out / names[0]} ({text})")
        written.records.append(dict(
            image_id=volume.id, source=path, status="ok", mask=";".join(names),
            fraction=f"{float((label_volume > 0).mean()):.6f}", shape="x".join(map(str, volume.array.shape)),
            areas=json.dumps(measured, separators=(",", ":"))))
        return written

    def _encode(self, segmenter, volume: Volume, label_volume: np.ndarray,
                notes: list[str]) -> dict[str, bytes]:
        """Every file of one volume by name, in memory (so that a failure writes none). A DICOM SEG the
        source cannot carry is left out, said in `notes`."""
        labels = segmenter.labels
        files = {volume.id + LABELS_SUFFIX: nifti_bytes(label_volume, volume)}
        if volume.datasets is not None:
            try:
                files[volume.id + SEG_SUFFIX] = series_seg_bytes(volume.datasets, label_volume, labels,
                                                                 volume.source)
            except UserError as exc:
                notes.append(f"{exc}; no DICOM SEG written, the label map, views and volumes are")
        if self.views:
            from .viz import volume_views

            axis = view_axis(segmenter.backend.preprocessing, volume.spacing)
            views = volume_views(volume.array, label_volume, labels, axis)
            files[volume.id + VIEWS_SUFFIX] = encode_png(views, 1)
        return files

    @staticmethod
    def finish(out: Path, written: list[CaseWritten], report: bool, segmenter, inputs) -> None:
        """volumes.json (keeping the volumes earlier runs wrote into `out`: other shards, a resumed run, as
        long as their label maps are there) and the report."""
        done = [v for w in written for v in w.summary]
        if not done:
            return
        write_text(out / VOLUMES_FILE, json.dumps({"unit": "mm3 and mL (1 mL = 1000 mm3)",
                                                   "volumes": _earlier(out, done) + done}, indent=1))
        if report:
            from .report import write_volumes_report

            write_volumes_report(out / "report.html", done, {
                "model": segmenter.weights_path, "backend": segmenter.backend.name,
                "inputs": ", ".join(map(str, inputs))})


def _earlier(out: Path, done: list[dict]) -> list[dict]:
    """The entries of `out`'s volumes.json that this run did not redo and whose label map is still there."""
    try:
        earlier = json.loads((out / VOLUMES_FILE).read_text())["volumes"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    redone = {v["id"] for v in done}
    return [v for v in earlier if isinstance(v, dict) and v.get("id") not in redone
            and (out / (str(v.get("id")) + LABELS_SUFFIX)).is_file()]
