"""DICOM in (pydicom) and DICOM SEG out (highdicom).

Frames become RGB uint8 like any other image: the modality LUT (rescale slope/intercept) and the VOI window
are applied when present (otherwise min-max), MONOCHROME1 is inverted so that high values are dark as
displayed, YBR_FULL / YBR_FULL_422 are converted to RGB, and multi-frame objects yield one image per frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from .photo import NotAnImage

SEG_SUFFIX = "_seg.dcm"  # `<id>_seg.dcm` beside `<id>_mask.png`
SUPPORTED_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"}


def read_dataset(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return parse_dataset(path, path)


def parse_dataset(source, label):
    """A DICOM image object from a path or a file object (an upload); errors name `label`."""
    import pydicom

    try:
        ds = pydicom.dcmread(source)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, ValueError, ...
        raise NotAnImage(f"{label}: not a readable DICOM file ({type(exc).__name__})") from None
    if "PixelData" not in ds:
        raise UserError(
            f"{label}: DICOM file has no pixel data (a {getattr(ds, 'Modality', 'non-image')} object?)"
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UserError(f"{label}: photometric interpretation {photometric or '(missing)'} is not supported "
                        f"(supported: {', '.join(sorted(SUPPORTED_PHOTOMETRIC))})")
    return ds


def _gray_to_uint8(frame: np.ndarray, ds, invert: bool) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(frame, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    out = (
        np.zeros(values.shape, np.uint8)
        if hi <= lo
        else np.round((values - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    )
    return 255 - out if invert else out


def frames_from_dataset(ds, path: str | Path = "") -> list[np.ndarray]:
    """Every frame as RGB uint8 (H, W, 3)."""
    try:
        arr = ds.pixel_array  # pydicom ≥ 3 converts YBR_FULL / YBR_FULL_422 to RGB here (as_rgb=True)
    except Exception as exc:
        raise UserError(
            f"{path}: cannot decode DICOM pixel data ({str(exc).splitlines()[0][:160]})"
        ) from None
    photometric = str(ds.PhotometricInterpretation)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    if n_frames == 1:
        arr = arr[None]
    if samples == 1:
        return [
            np.repeat(_gray_to_uint8(f, ds, photometric == "MONOCHROME1")[..., None], 3, axis=2) for f in arr
        ]
    if arr.dtype != np.uint8:
        arr = np.stack([_gray_to_uint8(f, ds, False) for f in arr])  # e.g. 16-bit RGB: stretch to 8 bits
    return [np.ascontiguousarray(f) for f in arr]


def read_frames(path: str | Path) -> tuple[object, list[np.ndarray]]:
    ds = read_dataset(path)
    return ds, frames_from_dataset(ds, path)


class DicomSeg:
    """The DICOM SEG written beside the masks of a DICOM input (`registry.Input.companion`)."""

    description = "DICOM SEG"
    media_type = "application/dicom"

    def __init__(self, source):
        self.source = source

    @property
    def pixel_spacing_mm(self) -> float | None:
        """The source's PixelSpacing (mean of row and column spacing; areas need one number), if it says."""
        spacing = self.source.get("PixelSpacing") or self.source.get("ImagerPixelSpacing")
        try:
            return float(np.mean([float(v) for v in spacing])) if spacing else None
        except (TypeError, ValueError):
            return None

    def name(self, input_id: str) -> str:
        return input_id + SEG_SUFFIX

    def encode(self, masks: list[np.ndarray], where: str, label) -> bytes:
        """The SEG as bytes (predict writes them beside the masks, the service answers them); errors name
        `where`."""
        import io

        buf = io.BytesIO()
        build_seg(self.source, masks, where, label).save_as(buf)
        return buf.getvalue()


def _segment_descriptions(segments):
    """One SegmentDescription per structure. A str: one lesion segment so named (SNOMED CT morphologically
    abnormal structure / lesion); a labels.Labels: one anatomical-structure segment per structure, typed by
    the SNOMED CT concept its name's last word names (heart, lung, clavicle...), else "tissue", with the
    structure's colour."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="lesionseg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    if isinstance(segments, str):
        return [hd.seg.SegmentDescription(
            segment_number=1, segment_label=segments,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)]
    out = []
    for number, s in enumerate(segments.structures, start=1):
        concept = getattr(codes.SCT, s.name.replace("-", "_").split("_")[-1].capitalize(), codes.SCT.Tissue)
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=s.name,
            segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=concept,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*s.color)))
    return out


def build_seg(source, masks: list[np.ndarray], label, segment_label="lesion"):
    """A BINARY DICOM SEG referencing `source` (same rows/columns, one frame per source frame); errors
    name `label`. `segment_label`: the model's label (one segment), or its labels.Labels (a segment per
    structure; each mask then (C, H, W))."""

    descriptions = _segment_descriptions(segment_label)
    if len(masks) > 1 and "FrameOfReferenceUID" not in source:
        # highdicom maps SEG frames to source frames through plane positions, which need a frame of reference.
        raise UserError(f"{label}: no DICOM SEG for a multi-frame source without a frame of reference "
                        "(the per-frame PNG masks were written)")
    fill_type2(source)
    pixels = np.stack([m.astype(np.uint8) for m in masks])
    if len(descriptions) > 1:  # (frames, C, H, W) → highdicom's (frames, H, W, segments)
        pixels = pixels.transpose(0, 2, 3, 1)
    elif len(masks) == 1:
        pixels = pixels[0]
    return _segmentation([source], pixels, descriptions, f"{label}: cannot build a DICOM SEG for this source")


def _segmentation(sources: list, pixels: np.ndarray, descriptions, refusal: str):
    """highdicom's BINARY Segmentation of `sources` (a frame per source frame, empty ones kept); a source it
    cannot reference raises UserError(`refusal` + why)."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    try:
        seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels,
                                   segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                                   segment_descriptions=descriptions, series_instance_uid=generate_uid(),
                                   series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
                                   sop_instance_uid=generate_uid(), instance_number=1,
                                   manufacturer="lesionseg", manufacturer_model_name="lesionseg U-Net",
                                   software_versions=__version__, device_serial_number="0",
                                   omit_empty_frames=False)
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{refusal} ({str(exc).splitlines()[0][:200]})") from None
    if "FrameOfReferenceUID" not in seg:
        # General Image: Type 2C where frames are not placed in the patient; highdicom leaves it out
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    return seg


# Type 2 attributes a SEG copies from its source (present, may be empty), which anonymised exports drop
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def fill_type2(ds) -> None:
    """Give `ds` (in memory, never written back) the Type 2 attributes it lacks, empty as the standard
    allows, so that the SEG built from it carries them."""
    for keyword in TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")


def build_series_seg(datasets: list, label_volume: np.ndarray, labels, where):
    """A multi-frame BINARY DICOM SEG of a series: one frame per source instance (all referenced, in slice
    order) and one segment per structure. `label_volume` is on the series' (column, row, slice) grid."""
    descriptions = _segment_descriptions(labels)
    values = [s.value for s in labels.structures]
    for ds in datasets:
        fill_type2(ds)
    # (slice, row, column, segment), the order of `datasets`
    pixels = np.stack([label_volume.transpose(2, 1, 0) == v for v in values], axis=-1).astype(np.uint8)
    return _segmentation(datasets, pixels, descriptions, f"{where}: cannot build a DICOM SEG for this series")


def series_seg_bytes(datasets: list, label_volume: np.ndarray, labels, where) -> bytes:
    import io

    buf = io.BytesIO()
    build_series_seg(datasets, label_volume, labels, where).save_as(buf)
    return buf.getvalue()
