"""NIfTI geometry as ITK reads it: for headers whose sform, qform and pixdim agree or disagree, the spacing,
direction and origin lesionseg reads are SimpleITK's."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionseg.errors import UserError
from lesionseg.io.volumes import NiftiReader

sitk = pytest.importorskip("SimpleITK")

SCALED = np.diag([2.0, 2.0, 3.0, 1.0])
SCALED[:3, 3] = [10, 20, 30]
UNIT = np.eye(4)
UNIT[:3, 3] = [10, 20, 30]
TURNED = np.array([[0, -1, 0, 5], [1, 0, 0, 6], [0, 0, 1, 7], [0, 0, 0, 1.0]]) @ np.diag([2, 2, 3, 1.0])
c, s = np.cos(0.3), np.sin(0.3)
OBLIQUE = np.array([[c, 0, s, -4], [0, 1, 0, 2], [-s, 0, c, 9], [0, 0, 0, 1.0]]) @ np.diag([0.8, 0.8, 2.5, 1])
SHEARED = SCALED.copy()
SHEARED[0, 1] = 0.8

# name: (sform, sform code, qform, qform code, pixdim)
HEADERS = {
    "consistent": (SCALED, 1, SCALED, 1, (2, 2, 3)),
    "unit_sform_voxel_size_in_pixdim": (UNIT, 1, None, 0, (2, 2, 3)),
    "scaled_sform_unit_pixdim": (SCALED, 1, None, 0, (1, 1, 1)),
    "sform_and_qform_disagree_scanner": (SCALED, 1, TURNED, 1, (2, 2, 3)),
    "sform_aligned_qform_scanner": (SCALED, 2, TURNED, 1, (2, 2, 3)),
    "qform_only": (None, 0, TURNED, 1, (2, 2, 3)),
    "oblique_both": (OBLIQUE, 1, OBLIQUE, 1, (0.8, 0.8, 2.5)),
    "sheared_sform_with_qform": (SHEARED, 1, TURNED, 1, (2, 2, 3)),
    "mni_sform_only": (SCALED, 4, None, 0, (2, 2, 3)),
    "no_forms": (None, 0, None, 0, (2, 2, 3)),
}


def write_header_case(path: Path, sform, scode, qform, qcode, pixdim, data=None) -> Path:
    data = np.zeros((4, 5, 6), np.int16) if data is None else data
    image = nib.Nifti1Image(data, None)
    header = image.header
    header.set_zooms(pixdim)
    if qform is not None:
        header.set_qform(qform, code=qcode)
    header["qform_code"] = qcode
    if sform is not None:
        header.set_sform(sform, code=scode)
    header["sform_code"] = scode
    header["pixdim"][1:4] = pixdim  # set_qform rewrites pixdim from the qform's scales: the header's own
    nib.save(image, str(path))
    return path


def itk_geometry(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return (np.array(reader.GetSpacing()), np.array(reader.GetDirection()).reshape(3, 3),
            np.array(reader.GetOrigin()))


def ours(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    affine = NiftiReader().read(path).affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])  # ITK's physical space is LPS, ours RAS
    return spacing, lps @ affine[:3, :3] / spacing, lps @ affine[:3, 3]


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_spacing_direction_and_origin_are_simpleitks(name, tmp_path):
    path = write_header_case(tmp_path / f"{name}.nii", *HEADERS[name])
    for mine, reference, what in zip(ours(path), itk_geometry(path), ("spacing", "direction", "origin")):
        np.testing.assert_allclose(mine, reference, atol=1e-4, err_msg=what)


def test_a_header_itk_refuses_is_refused_in_one_line(tmp_path):
    path = write_header_case(tmp_path / "sheared.nii", SHEARED, 1, None, 0, (2, 2, 3))
    with pytest.raises(RuntimeError):
        itk_geometry(path)
    with pytest.raises(UserError, match="sheared.nii: the NIfTI header has no rigid orientation"):
        NiftiReader().read(path)


def test_which_form_was_used_is_said_in_one_line(tmp_path, capsys):
    from lesionseg.io import nifti_geometry

    nifti_geometry._shown.clear()
    path = write_header_case(tmp_path / "unit.nii", UNIT, 1, None, 0, (2, 2, 3))
    NiftiReader().read(path)
    NiftiReader().read(path)  # said once, not per file
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "unit.nii: the sform's scales and pixdim disagree" in lines[0]
    assert "spacing from pixdim (2, 2, 3 mm)" in lines[0] and "from the sform" in lines[0]
    consistent = write_header_case(tmp_path / "fine.nii", SCALED, 1, SCALED, 1, (2, 2, 3))
    NiftiReader().read(consistent)
    assert capsys.readouterr().err == ""
