"""Volume uploads for the service: a NIfTI file (.nii or .nii.gz) or a zip of one DICOM series, unpacked in
memory with the size cap applied to the unpacked bytes too (a zip or gzip bomb is refused as it inflates,
whatever sizes its headers claim), and the volume's slices run through the service's one model thread."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.volumes import Volume, read_nifti_bytes, series_volume

CHUNK = 1 << 20


class TooLarge(Exception):
    """The unpacked upload is over the cap (the service answers 413)."""


def gunzip_capped(data: bytes, limit: int, label: str) -> bytes:
    inflater, out, size = zlib.decompressobj(16 + zlib.MAX_WBITS), [], 0
    view = memoryview(data)
    try:
        for start in range(0, len(data), CHUNK):
            piece = inflater.decompress(view[start : start + CHUNK], limit + 1 - size)
            size += len(piece)
            out.append(piece)
            while inflater.unconsumed_tail and size <= limit:
                piece = inflater.decompress(inflater.unconsumed_tail, limit + 1 - size)
                size += len(piece)
                out.append(piece)
            if size > limit:
                raise TooLarge(f"{label}: unpacks to over the limit of {limit:,} bytes")
    except zlib.error as exc:
        raise UserError(f"{label}: not a readable .nii.gz (truncated or corrupt: {exc})") from None
    if not inflater.eof:
        raise UserError(f"{label}: not a readable .nii.gz (truncated or corrupt)")
    return b"".join(out)


def _read_member_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, label: str) -> bytes:
    out, size = [], 0
    with archive.open(info) as f:
        while piece := f.read(CHUNK):
            size += len(piece)
            if size > budget:
                raise TooLarge(f"{label}: unpacks to over the limit")
            out.append(piece)
    return b"".join(out)


def series_from_zip(data: bytes, limit: int, label: str) -> Volume:
    import pydicom

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [
            i for i in archive.infolist() if not i.is_dir() and not Path(i.filename).name.startswith(".")
        ]
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{label}: not a readable zip ({exc})") from None
    if sum(i.file_size for i in members) > limit:
        raise TooLarge(f"{label}: its files add up to over the limit of {limit:,} bytes")
    datasets, used = [], 0
    for info in members:
        try:
            raw = _read_member_capped(archive, info, limit - used, label)
        except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, NotImplementedError) as exc:
            raise UserError(f"{label}: cannot unpack {info.filename} ({exc})") from None
        used += len(raw)
        try:
            ds = pydicom.dcmread(io.BytesIO(raw))
        except Exception:  # not DICOM: a README or a DICOMDIR's companions
            continue
        if "PixelData" in ds:
            ds.filename = f"{label}:{info.filename}"
            datasets.append(ds)
    if not datasets:
        raise UserError(f"{label}: the zip holds no DICOM image instances")
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(uids) > 1:
        raise UserError(f"{label}: {len(uids)} DICOM series in one zip ({', '.join(uids)}); send one series")
    return series_volume(datasets, Path(label), "upload")


def read_volume_upload(data: bytes, label: str, limit: int) -> Volume:
    """A NIfTI (gzip or not) or a zip of one DICOM series; over `limit` unpacked bytes raises TooLarge."""
    if data[:4] == b"PK\x03\x04":
        return series_from_zip(data, limit, label)
    if data[:2] == b"\x1f\x8b":
        data = gunzip_capped(data, limit, label)
    elif len(data) > limit:
        raise TooLarge(f"{label}: over the limit of {limit:,} bytes")
    if (
        len(data) < 348
        or int.from_bytes(data[:4], "little") not in (348, 540)
        and int.from_bytes(data[:4], "big") not in (348, 540)
    ):
        raise UserError(f"{label}: not a NIfTI file or a zip of a DICOM series")
    return read_nifti_bytes(data, label)


class BatchedSegmenter:
    """A Segmenter as `inference.coverage.SliceCoverage` uses one, whose network calls go through the
    service's MicroBatcher (the one thread that owns the model), a batch at a time."""

    def __init__(self, segmenter, batcher, batch: int, tta: bool, post, timeout_s: float):
        self.segmenter, self.batcher, self.batch_size, self.tta, self.post = (
            segmenter,
            batcher,
            batch,
            tta,
            post,
        )
        self.timeout_s = timeout_s

    @property
    def labels(self):
        return self.segmenter.labels

    @property
    def backend(self):
        return self.segmenter.backend

    @property
    def weights_path(self):
        return self.segmenter.weights_path

    def predict_batch(self, images: list[np.ndarray], tta: bool | None = None,
                      batch_size: int | None = None) -> list[np.ndarray]:
        """In chunks of this adapter's batch size (the batcher's queue holds no more)."""
        out = []
        tta = self.tta if tta is None else tta
        for start in range(0, len(images), self.batch_size):
            futures = [self.batcher.submit(image, tta) for image in images[start : start + self.batch_size]]
            out += [f.result(timeout=self.timeout_s).prob for f in futures]
        return out
