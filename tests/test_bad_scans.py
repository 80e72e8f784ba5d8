"""Every row of the bad-scan table (bad_scans.py) through the CLI and the service: the same refusal from both,
in one line, with nothing written. Then what scans must not lose: outputs a source cannot carry, SEGs from
anonymised sources checked by dciodvfy, a case written whole or not at all, scanner exports without file
extensions, and the queue under concurrent volumes."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from bad_scans import BAD_SCANS, BadScan
from lesionseg.cli import app
from lesionseg.serve.app import ServeConfig, create_app
from test_dicom import build_dicom
from test_volumes import affine_for, make_series, save_nifti, synthetic_volume

runner = CliRunner()
MODEL = "hippocampus"  # the bundled volume model: no training needed
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(ServeConfig(weights=MODEL, max_unpacked_mb=64))) as c:
        yield c


def upload_bytes(scan: Path) -> bytes:
    """What a client sends for `scan`: a file's bytes, a series folder as a zip."""
    if scan.is_file():
        return scan.read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(scan.iterdir()):
            z.write(f, f.name)
    return buf.getvalue()


@pytest.mark.parametrize("bad", BAD_SCANS, ids=[b.name for b in BAD_SCANS])
def test_a_bad_scan_is_refused_alike_by_predict_and_the_service(bad: BadScan, tmp_path, client):
    scan = bad.build(tmp_path / "in")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(scan), "--weights", MODEL, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and bad.says in lines[0] and str(scan) in lines[0], result.stderr
    assert "Traceback" not in result.output and not out.exists()
    r = client.post("/v1/segment", files={"file": (scan.name, upload_bytes(scan))})
    assert r.status_code == 400, (r.status_code, r.text)
    assert bad.says in r.json()["error"] and "\n" not in r.json()["error"]


def test_the_docs_list_every_bad_scan():
    table = (Path(__file__).parents[1] / "docs" / "robustness.md").read_text()
    missing = [b.name for b in BAD_SCANS if f"| {b.name} |" not in table]
    assert not missing, f"docs/robustness.md lacks rows for: {missing}"
    assert {b.kind for b in BAD_SCANS} == {"dtype", "dimensions", "header", "compression", "series"}


# scans that are fine, however they arrive


def _image() -> np.ndarray:
    return synthetic_volume(np.random.default_rng(5))[0]


def test_nifti2_and_a_series_without_extensions_read_alike_in_the_cli_and_the_service(tmp_path, client):
    image = _image()
    folder = tmp_path / "in"
    folder.mkdir()
    nifti2 = folder / "scan2.nii.gz"
    nib.save(nib.Nifti2Image(image, affine_for()), str(nifti2))
    series = make_series(tmp_path / "export" / "IMAGES", np.round(image).astype(np.int16))
    for k, f in enumerate(sorted(series.iterdir())):  # as scanners and PACS export them
        f.rename(series / f"image_{k}")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(nifti2), str(series), "--weights", MODEL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no leaked nibabel or numpy warning
    written = nib.load(str(out / "scan2_labels.nii.gz"))
    assert isinstance(written, nib.Nifti2Image)
    r = client.post("/v1/segment?format=nifti", files={"file": ("scan2.nii.gz", nifti2.read_bytes())})
    assert r.status_code == 200, r.text
    served = nib.Nifti2Image.from_bytes(gzip.decompress(r.content))
    np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(written.dataobj))
    r = client.post("/v1/segment?format=nifti", files={"file": ("IMAGES.zip", upload_bytes(series))})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj),
        np.asarray(nib.load(str(out / "IMAGES_labels.nii.gz")).dataobj))
    assert (out / "IMAGES_seg.dcm").is_file()


# DICOM SEG from any source


def _strip_type2(path: Path) -> None:
    ds = pydicom.dcmread(path)
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(path)


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_a_seg_from_sources_without_type2_attributes_passes_dciodvfy(tmp_path):
    (tmp_path / "in").mkdir()
    radiograph = build_dicom(tmp_path / "in" / "cxr.dcm",
                             (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8),
                             "MONOCHROME2", sop_class=DX_IMAGE)
    _strip_type2(radiograph)
    series = make_series(tmp_path / "series_in" / "mr", np.round(_image()).astype(np.int16))
    for f in series.iterdir():
        _strip_type2(f)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(radiograph), "--weights", "chest", "--out", str(out)])
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert "segmented 1 of 1 inputs" in result.stdout
    result = runner.invoke(app, ["predict", str(series), "--weights", MODEL, "--out", str(out)])
    assert result.exit_code == 0 and result.stderr == "", result.output
    for seg in (out / "cxr_seg.dcm", out / "mr_seg.dcm"):
        assert pydicom.dcmread(seg).Modality == "SEG"
        assert dciodvfy_errors(seg) == [], seg.name


def test_a_seg_the_source_cannot_carry_leaves_the_other_outputs(tmp_path, client):
    series = make_series(tmp_path / "in" / "nofor", np.round(_image()).astype(np.int16))
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(series), "--weights", MODEL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    line, = result.stderr.strip().splitlines()
    assert "Frame Of Reference" in line and "no DICOM SEG written" in line and str(series) in line
    assert sorted(p.name for p in out.iterdir()) == ["nofor_labels.nii.gz", "nofor_views.png", "volumes.json"]
    # the service's default answer for a series is its SEG: the label map instead, saying why; asked for by
    # name, the SEG that cannot be made is a 400
    r = client.post("/v1/segment", files={"file": ("nofor.zip", upload_bytes(series))})
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert "Frame Of Reference" in r.headers["x-lesionseg-note"]
    np.testing.assert_array_equal(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj),
                                  np.asarray(nib.load(str(out / "nofor_labels.nii.gz")).dataobj))
    r = client.post("/v1/segment?format=seg", files={"file": ("nofor.zip", upload_bytes(series))})
    assert r.status_code == 400 and "Frame Of Reference" in r.json()["error"]


# a case's outputs appear together or not at all


def test_a_folder_in_the_way_leaves_none_of_a_volumes_files(tmp_path):
    nifti = save_nifti(tmp_path / "scan.nii.gz", _image(), affine_for())
    out = tmp_path / "out"
    (out / "scan_views.png").mkdir(parents=True)
    result = runner.invoke(app, ["predict", str(nifti), "--weights", MODEL, "--out", str(out)])
    assert result.exit_code == 2 and "scan_views.png: a folder is in the way" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["scan_views.png"]


def test_a_full_disk_leaves_none_of_a_cases_files(tmp_path, monkeypatch, rng):
    import errno
    import os

    from conftest import synthetic_case
    from lesionseg.io import atomic

    nifti = save_nifti(tmp_path / "scan.nii.gz", _image(), affine_for())
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(synthetic_case(rng, 48, 64)[0]).save(photo)
    real_fdopen, opened = os.fdopen, []

    def full_disk(fd, *args, **kwargs):
        opened.append(fd)
        if len(opened) % 2 == 0:  # every case's second file finds the disk full
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "fdopen", full_disk)
    for case, weights in ((nifti, MODEL), (photo, "cpu")):
        out = tmp_path / f"out_{case.stem}"
        result = runner.invoke(app, ["predict", str(case), "--weights", weights, "--out", str(out)])
        assert result.exit_code == 2 and "No space left on device" in result.stderr, result.output
        assert "nothing of this case written" in result.stderr
        assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_a_refused_run_creates_no_output_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for given in (tmp_path / "empty", tmp_path / "missing.png"):
        out = tmp_path / "never"
        result = runner.invoke(app, ["predict", str(given), "--weights", "cpu", "--out", str(out)])
        assert result.exit_code == 2 and not out.exists(), result.output
    assert "an empty folder" in runner.invoke(
        app, ["predict", str(tmp_path / "empty"), "--weights", MODEL, "--out", str(out)]).stderr


# concurrency: volumes on different grids share the model's one queue


def post_together(server, requests: list[tuple[str, bytes]], timeout: float = 120) -> list:
    """Every (path, body) posted at once to the app `server` in this process; its answers, in order."""
    import asyncio

    import httpx

    async def scenario():
        service = server.state.service
        await asyncio.to_thread(service.load)
        try:
            transport = httpx.ASGITransport(app=server)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=timeout) as http:
                return await asyncio.gather(*[http.post(path, content=body) for path, body in requests])
        finally:
            service.close()

    return asyncio.run(scenario())


def test_a_full_queue_is_503_with_retry_after_on_the_volume_route(tmp_path):
    """Volume uploads share the model's queue with images: when it is full they get 503 with Retry-After,
    never a 500; the ones let in are answered as predict writes them."""
    from test_case_contract import volume_kind

    kind = volume_kind(tmp_path / "k")
    source = next(kind.inputs.iterdir())
    server = create_app(ServeConfig(weights=str(kind.model), max_queue=1, max_batch=1))
    answers = post_together(server, [("/v1/segment", source.read_bytes())] * 8, timeout=60)
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    out = tmp_path / "pred"
    assert runner.invoke(app, ["predict", str(source), "--weights", str(kind.model), "--out", str(out)]) \
        .exit_code == 0
    written = np.asarray(nib.load(next(out.glob("*_labels.nii.gz"))).dataobj)
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        else:
            served = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
            np.testing.assert_array_equal(np.asarray(served.dataobj), written)


def test_concurrent_volumes_on_different_grids_are_answered_200_or_503(tmp_path):
    """Slices of a NIfTI and of a DICOM series on another grid wait in one queue; the batcher must never put
    slices of two sizes in one network call (that was a 500 under load)."""
    image = np.round(_image()).astype(np.int16)
    nifti = save_nifti(tmp_path / "scan.nii.gz", image, affine_for((1.0, 1.0, 1.0)))
    series = make_series(tmp_path / "series", image)  # 0.8 mm in plane: another grid once resampled
    bodies = {"nifti": nifti.read_bytes(), "series": upload_bytes(series)}
    out = tmp_path / "pred"
    assert runner.invoke(app, ["predict", str(nifti), str(series.parent), "--weights", MODEL, "--out",
                               str(out)]).exit_code == 0
    expected = {"nifti": np.asarray(nib.load(str(out / "scan_labels.nii.gz")).dataobj),
                "series": np.asarray(nib.load(str(out / "series_labels.nii.gz")).dataobj)}
    kinds = ["nifti", "series"] * 4
    answers = post_together(create_app(ServeConfig(weights=MODEL, max_queue=48, max_batch=16)),
                            [("/v1/segment?format=nifti", bodies[k]) for k in kinds])
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 200 in codes, codes
    for kind, r in zip(kinds, answers):
        if r.status_code == 200:
            served = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
            np.testing.assert_array_equal(np.asarray(served.dataobj), expected[kind])
        else:
            assert r.headers["retry-after"] == "1"


# memory: caps hold before memory is taken


def test_a_bomb_or_a_huge_header_is_refused_without_taking_its_memory():
    """A gzip bomb behind a valid small header stops at the cap holding no more than the header declares;
    a header declaring 600³ voxels is refused from its first chunk. Measured with tracemalloc: the peak of
    what Python allocated while refusing each stays a few MB, not the cap."""
    import tracemalloc

    from lesionseg.errors import UserError
    from lesionseg.io.registry import read_volume_bytes
    from lesionseg.io.volumes import Caps, VolumeTooLarge

    small = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), affine_for()).to_bytes()
    bomb = gzip.compress(small + b"\0" * (96 << 20), compresslevel=1)
    huge = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), affine_for())
    huge.header.set_data_shape((600, 600, 600))
    header_only = gzip.compress(huge.header.binaryblock + b"\0" * 4096)
    caps = Caps(bytes=64 << 20, voxels=50_000_000)
    for body, says in ((bomb, "unpacks to over the limit"), (header_only, "600x600x600")):
        tracemalloc.start()
        try:
            with pytest.raises(VolumeTooLarge, match=says):
                read_volume_bytes(body, "upload 'x.nii.gz'", caps)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, f"{says}: {peak / 2**20:.1f} MB taken while refusing"
    assert issubclass(VolumeTooLarge, UserError)  # the CLI says it in one line too
