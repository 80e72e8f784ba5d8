"""A NIfTI header's geometry as ITK (SimpleITK, nnU-Net, 3D Slicer) reads it, as a voxel → RAS+ affine.

nibabel's `affine` takes the sform verbatim when its code is set. ITK does not: the voxel size always comes
from `pixdim`, and only the direction and the origin come from the sform or the qform, chosen by the rules of
ITK's `NiftiImageIO::SetImageIOOrientationFromNIfTI` (below). The two disagree on headers that public
datasets do ship: an sform of unit scale with the voxel size kept only in `pixdim`, an sform and a qform that
point different ways. Reading every header as ITK does keeps our millimetres equal to those of the tools
the field checks against (`tests/test_nifti_geometry.py` compares with SimpleITK).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import UserError

SCANNER_ANAT = 1
# ITK's tolerances (its checks run in float32).
SIMILAR_ELEMENTS = 1e-5
SIMILAR_OFFSETS = 1e-7
ORTHONORMAL = 1e-4
SCALE_AGREES = 1e-3

_shown: set[str] = set()


def itk_affine(header, where: Path) -> np.ndarray:
    """The voxel → RAS+ mm affine ITK reads from `header`; one line on stderr (once per kind of decision
    and process) when the header's sform, qform and pixdim disagree, saying which one was used."""
    spacing = _pixdim(header)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode == 0 and scode == 0:
        _say(where, "neither a qform nor an sform (both codes 0): orientation unknown, taken as ITK takes "
                    "it (voxel axes along L, P, S from the origin), spacing from pixdim")
        return np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    sform = np.asarray(header.get_sform(), float)
    qform = np.asarray(header.get_qform(), float) if qcode else np.diag([*spacing, 1.0])
    matrix, used = _choose(sform, qform, qcode, scode)
    if matrix is None:
        raise UserError(f"{where}: the NIfTI header has no rigid orientation (its sform is sheared and its "
                        "qform code is 0); ITK refuses it too")
    scaled = not np.allclose(np.linalg.norm(matrix[:3, :3], axis=0), spacing, atol=SCALE_AGREES)
    # where the chosen form's scales are pixdim's, it is taken verbatim (ITK's reading equals it to float
    # precision), so that a consistent header gives exactly the affine it always gave
    affine = _rigid(matrix, spacing) if scaled else matrix.copy()
    others = [f for f, code in (("sform", scode), ("qform", qcode)) if code and f != used]
    disagree = [f for f in others
                if not np.allclose(_rigid(_of(f, sform, qform), spacing), affine, atol=1e-3)]
    if disagree or scaled:
        what = ", ".join(([f"the {used}'s scales and pixdim disagree"] if scaled else [])
                         + [f"the {f} points elsewhere" for f in disagree])
        _say(where, f"{what}: geometry as ITK reads it, spacing from pixdim "
                    f"({', '.join(f'{v:g}' for v in spacing)} mm), direction and origin from the {used}")
    return affine


def _pixdim(header) -> np.ndarray:
    values = np.abs(np.asarray(header["pixdim"][1:4], float))
    return np.where((values > 0) & np.isfinite(values), values, 1.0)


def _of(name: str, sform: np.ndarray, qform: np.ndarray) -> np.ndarray:
    return sform if name == "sform" else qform


def _rigid(matrix: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0) * spacing
    out[:3, 3] = matrix[:3, 3]
    return out


def _choose(sform: np.ndarray, qform: np.ndarray, qcode: int, scode: int) -> tuple[np.ndarray | None, str]:
    """ITK's choice between the sform and the qform (None: neither is usable)."""
    prefer_sform = (np.allclose(sform[:3, :3], qform[:3, :3], rtol=0, atol=SIMILAR_ELEMENTS)
                    and np.abs(sform[:, 3] - qform[:, 3]).sum() <= SIMILAR_OFFSETS
                    and np.abs(sform[3] - qform[3]).sum() <= SIMILAR_OFFSETS)
    if (not prefer_sform or scode != 0) and _decomposable(sform):
        if qcode == 0 and scode != 0:
            prefer_sform = True
        elif scode == SCANNER_ANAT:
            prefer_sform = True
        elif qcode != 0 and scode != 0:
            prefer_sform = _very_similar(sform, qform)
    if prefer_sform:
        return sform, "sform"
    if qcode != 0:
        return qform, "qform"
    return None, ""


def _decomposable(matrix: np.ndarray) -> bool:
    """A rotation times per-axis scales (no shear), with an affine bottom row."""
    if not np.allclose(matrix[3], [0, 0, 0, 1]):
        return False
    norms = np.linalg.norm(matrix[:3, :3], axis=0)
    if np.any(norms == 0):
        return False
    rotation = matrix[:3, :3] / norms
    return bool(np.allclose(rotation @ rotation.T, np.eye(3), atol=ORTHONORMAL))


def _very_similar(sform: np.ndarray, qform: np.ndarray) -> bool:
    su, sw, _ = np.linalg.svd(sform[:3, :3])
    qu, qw, _ = np.linalg.svd(qform[:3, :3])
    return bool(np.allclose(su @ np.linalg.inv(qu), np.eye(3), atol=ORTHONORMAL)
                and np.allclose(sw, qw, atol=ORTHONORMAL)
                and np.allclose(sform[:3, 3], qform[:3, 3], atol=ORTHONORMAL)
                and np.allclose(sform[3], qform[3], atol=ORTHONORMAL))


def _say(where: Path, text: str) -> None:
    if text not in _shown:
        _shown.add(text)
        print(f"{where}: {text}", file=sys.stderr, flush=True)
