"""Volumes in and label volumes out, in the volume's own space: a reader class per format (NIfTI through
nibabel, a folder holding one DICOM series through pydicom), registered in registry.READERS; the NIfTI label
map is written with the input's affine and header.

A `Volume` keeps its voxels in the order its file stores them and the affine that maps voxel indices to
patient millimetres (RAS+, nibabel's convention; a DICOM series is converted from LPS). Nothing is resampled
or reoriented: an oblique volume is segmented in voxel space and its outputs carry the same affine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .atomic import atomic_path
from .nifti_geometry import itk_affine
from .reader import Reader

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABELS_SUFFIX = "_labels.nii.gz"  # `<id>_labels.nii.gz`: the label map of a volume input
# Relative tolerance on slice gaps and direction cosines: scanners round positions to ~1e-3 mm.
GEOMETRY_TOLERANCE = 1e-3
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass
class Volume:
    id: str
    array: np.ndarray  # 3-D, voxel order as stored (NIfTI i, j, k; DICOM column, row, slice)
    affine: np.ndarray  # 4×4 voxel index → RAS+ mm
    source: Path
    header: Any = None  # the NIfTI header, copied into the outputs
    datasets: list | None = None  # a DICOM series' instances in slice order (for the SEG's references)
    modality: str | None = None  # "MR", "CT" when the file says

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def nbytes(self) -> int:
        return self.array.nbytes


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_id(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class VolumeTooLarge(UserError):
    """An upload that unpacks to more than the cap (the service answers 413)."""


class NotNifti(UserError):
    """Bytes that hold no NIfTI-1 or NIfTI-2 header."""


GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20


def _nifti_class(data: bytes, label: str):
    """NIfTI-1 or NIfTI-2, told by the header size its first four bytes hold (either byte order)."""
    import nibabel as nib

    for order in ("little", "big"):
        size = int.from_bytes(data[:4], order)
        if size in (348, 540) and len(data) < size:
            raise UserError(f"{label}: not a readable NIfTI file (truncated: {len(data)} bytes, shorter "
                            "than its header)")
        if size in (348, 540):
            return nib.Nifti1Image if size == 348 else nib.Nifti2Image
    raise NotNifti(f"{label}: not a readable NIfTI file (no NIfTI-1 or NIfTI-2 header)")


def declared_size(header) -> tuple[int, int]:
    """(voxels, bytes of voxel data) a NIfTI header declares."""
    voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    return voxels, voxels * header.get_data_dtype().itemsize


@dataclasses.dataclass(frozen=True)
class Caps:
    """What an upload may unpack to: bytes, and voxels (None: no cap, as for the user's own files)."""

    bytes: int | None = None
    voxels: int | None = None

    def check_header(self, head: bytes, label: str, held: int | None = None) -> int | None:
        """The bytes the NIfTI whose file starts with `head` holds by its header (where its voxels start
        plus what its dimensions and type declare), refused over either cap before anything is read; None:
        a header too broken to size, which the read then names. Refuses what is no NIfTI header."""
        klass = _nifti_class(head, label)
        try:
            header = klass.header_class(head[: klass.header_class.sizeof_hdr], check=False)
            shape, (voxels, data_bytes) = header.get_data_shape(), declared_size(header)
            declared = int(header["vox_offset"]) + data_bytes
        except Exception:  # nibabel raises many types for a broken header
            return None
        if held is not None and declared > held:
            return declared  # a header that lies about the bytes sent: the read names it, before any voxel
        if self.voxels is not None and voxels > self.voxels:
            raise VolumeTooLarge(f"{label}: its header declares {'x'.join(map(str, shape))} = {voxels:,} "
                                 f"voxels, over the limit of {self.voxels:,}")
        if self.bytes is not None and declared > self.bytes:
            raise VolumeTooLarge(f"{label}: its header declares {declared:,} bytes, over the limit of "
                                 f"{self.bytes:,}")
        return declared


def inflate_nifti(data: bytes, caps: Caps, label: str) -> bytes:
    """A .nii.gz's payload, inflated a chunk at a time, never holding more than its header declares: the
    header (first chunk) is checked against the caps before anything else is kept (a 413 costs no memory),
    bytes past the declared voxels are inflated to reach the stream's end but not kept, and the whole
    stream counts against the byte cap as it grows (a gzip bomb stops at the cap). A stream that stops
    before its end is refused; a stream of several gzip members (bgzip, pigz) is read whole."""
    inflater, kept, size, wanted = zlib.decompressobj(16 + zlib.MAX_WBITS), bytearray(), 0, None
    pending = memoryview(data)

    def take(piece: bytes) -> None:
        nonlocal size, wanted
        size += len(piece)
        if caps.bytes is not None and size > caps.bytes:
            raise VolumeTooLarge(f"{label}: unpacks to over the limit of {caps.bytes:,} bytes")
        if wanted is None or len(kept) < wanted:
            kept.extend(piece if wanted is None else piece[: wanted - len(kept)])
        if wanted is None and len(kept) >= 540:
            declared = caps.check_header(bytes(kept[:540]), label)
            wanted = declared if declared is not None else 1 << 62
            del kept[max(wanted, 540):]

    try:
        while True:
            source = inflater.unconsumed_tail or pending[:CHUNK]
            if not inflater.unconsumed_tail:
                pending = pending[CHUNK:]
            take(inflater.decompress(source, CHUNK))
            if inflater.eof:
                rest = inflater.unused_data + bytes(pending)
                if not rest.strip(b"\0"):
                    break
                inflater, pending = zlib.decompressobj(16 + zlib.MAX_WBITS), memoryview(rest)
            elif not pending and not inflater.unconsumed_tail:
                break
    except zlib.error as exc:
        raise UserError(f"{label}: not a readable NIfTI file (corrupt gzip: {exc})") from None
    if not inflater.eof:
        raise UserError(f"{label}: not a readable NIfTI file (truncated: its gzip stream stops before its "
                        "end); copy it again")
    return bytes(kept)


class NiftiReader(Reader):
    """.nii and .nii.gz, NIfTI-1 or NIfTI-2, from a file or from an upload's bytes: one path for both, so
    the CLI and the service accept and refuse the same files."""

    name = "nifti"
    volume = True

    def claims(self, path: Path, head: bytes = b"") -> bool:
        return path.is_file() and is_nifti(path)

    def read(self, path: Path, dtype=np.float32) -> Volume:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return self.read_bytes(data, str(path), Caps(), nifti_id(path), dtype)

    def read_bytes(self, data: bytes, label: str, caps: Caps = Caps(), volume_id: str | None = None,
                   dtype=np.float32) -> Volume:
        """The checked Volume of a NIfTI's bytes (gzip or not); errors name `label`; over a cap raises
        VolumeTooLarge, from the header where it tells."""
        if data[:2] == GZIP_MAGIC:
            data = inflate_nifti(data, caps, label)
        else:
            if caps.bytes is not None and len(data) > caps.bytes:
                raise VolumeTooLarge(f"{label}: over the limit of {caps.bytes:,} bytes")
            caps.check_header(data[:540], label, held=len(data))
        klass = _nifti_class(data, label)
        volume_id = volume_id or Path(label).name.split(".")[0] or "upload"
        return checked_volume(lambda: klass.from_bytes(data), Path(label), volume_id, len(data), dtype)


def checked_volume(load, where: Path, volume_id: str, held: int, dtype=np.float32) -> Volume:
    """The checked Volume of the nibabel image `load()` gives (`held`: the bytes it came from); errors name
    `where`, and what nibabel or numpy would warn about is said in one line naming it."""
    import nibabel as nib

    with _said_once(where):
        try:
            image = load()
            _check_header(image, where, held)
            # dataobj applies scl_slope / scl_inter, as every viewer does
            array = np.asarray(image.dataobj, dtype=dtype)
        except (EOFError, zlib.error, OSError, ValueError, nib.filebasedimages.ImageFileError,
                nib.wrapstruct.WrapStructError, nib.spatialimages.HeaderDataError) as exc:
            text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"{where}: not a readable NIfTI file (truncated or corrupt: {text})") from None
        except MemoryError:
            raise UserError(f"{where}: its header declares {'x'.join(map(str, image.shape))} voxels, more "
                            "than this machine's memory holds") from None
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise UserError(f"{where}: {bad} voxel(s) are NaN or infinite; a volume needs finite intensities "
                        "(one such voxel would empty the whole segmentation)")
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise UserError(
            f"{where}: a {array.ndim}-D NIfTI (shape {'x'.join(map(str, array.shape))}) where a "
            "3-D volume is expected (one channel per file: split multi-channel images)"
        )
    affine = itk_affine(image.header, where)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise UserError(f"{where}: the NIfTI affine is singular or not finite")
    return Volume(volume_id, array, affine, where, header=image.header.copy())


@contextlib.contextmanager
def _said_once(where: Path):
    """nibabel's header log lines and Python warnings while reading `where`, each said once as one line
    naming the file instead of a raw message."""
    import logging
    import warnings

    from nibabel.imageglobals import logger

    heard: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    saved, collect = logger.handlers[:], Collect()
    logger.handlers[:] = [collect]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        heard += [str(w.message) for w in caught]
    finally:
        logger.handlers[:] = saved
        for text in dict.fromkeys(heard):
            print(f"{where}: {text.splitlines()[0][:160]}", file=sys.stderr, flush=True)


def _check_header(image, where: Path, held: int) -> None:
    """What the header alone refuses, before any voxel is read: voxels that are not one number (RGB), and
    fewer bytes than the voxels the header declares (a truncated file, or a header that lies)."""
    dtype = image.get_data_dtype()
    if dtype.names is not None or dtype.kind not in "biuf":
        raise UserError(f"{where}: voxels of type {dtype} (an RGB or complex NIfTI); a volume of one "
                        "intensity per voxel is expected")
    declared = declared_size(image.header)[1]
    present = held - int(image.header.get("vox_offset", 0))
    if present < declared:
        raise UserError(f"{where}: its header declares {'x'.join(map(str, image.shape))} voxels "
                        f"({declared:,} bytes) but the file holds {max(present, 0):,}: truncated, or a "
                        "wrong header")


def read_label_volume(path: str | Path, like: Volume) -> np.ndarray:
    """A label volume (integer values) on `like`'s grid; another shape or affine is refused."""
    path = Path(path)
    labels = NiftiReader().read(path)
    if labels.array.shape != like.array.shape:
        raise UserError(
            f"{path}: label volume of shape {'x'.join(map(str, labels.array.shape))} on another "
            f"grid than its image ({'x'.join(map(str, like.array.shape))})"
        )
    if not np.allclose(labels.affine, like.affine, atol=1e-3):
        raise UserError(f"{path}: label volume has another affine than its image (not on the same grid)")
    values = labels.array
    rounded = np.rint(values)
    if not np.allclose(values, rounded, atol=1e-3):
        raise UserError(f"{path}: label volume holds non-integer values")
    if rounded.min() < 0 or rounded.max() > 65535:
        raise UserError(f"{path}: label values outside 0–65535")
    return rounded.astype(np.uint16 if rounded.max() > 255 else np.uint8)


def nifti_label_image(labels: np.ndarray, like: Volume):
    """A nibabel image of `labels` (uint8) with `like`'s affine and header (a DICOM series gets a fresh
    header with its affine as both qform and sform)."""
    data = np.ascontiguousarray(labels.astype(np.uint8))
    image = nifti_image(data, like)
    image.header["descrip"] = b"lesionseg label map"
    image.header["cal_min"], image.header["cal_max"] = 0, float(data.max()) if data.size else 0
    return image


def nifti_image(data: np.ndarray, like: Volume):
    """A nibabel image of `data` (stored in its dtype, unscaled) on `like`'s grid: `like`'s header and its
    stored forms exactly, or for a DICOM series a fresh header with its affine as both qform and sform."""
    import nibabel as nib

    data = np.ascontiguousarray(data)
    if like.header is not None and isinstance(like.header, nib.Nifti1Header):
        header = like.header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
        # a NIfTI-2 input gets a NIfTI-2 output: the same header, not a converted one
        klass = nib.Nifti2Image if isinstance(like.header, nib.Nifti2Header) else nib.Nifti1Image
        image = klass(data, None, header=header)
        # the stored forms, exactly as in the input (nibabel would otherwise recompute them from the affine)
        image.set_qform(like.header.get_qform(), code=int(like.header["qform_code"]))
        image.set_sform(like.header.get_sform(), code=int(like.header["sform_code"]))
    else:
        image = nib.Nifti1Image(data, like.affine)
        image.set_qform(like.affine, code=1)
        image.set_sform(like.affine, code=1)
    return image


def write_nifti_labels(path: str | Path, labels: np.ndarray, like: Volume) -> None:
    """The label map as NIfTI (gzip when the name ends .gz), atomically."""
    image = nifti_label_image(labels, like)
    path = Path(path)
    with atomic_path(path) as tmp:
        data = image.to_bytes()
        tmp.write_bytes(gzip_bytes(data) if path.name.endswith(".gz") else data)


def gzip_bytes(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)


def nifti_bytes(labels: np.ndarray, like: Volume) -> bytes:
    """The label map as .nii.gz bytes (the service's answer)."""
    return gzip_bytes(nifti_label_image(labels, like).to_bytes())
