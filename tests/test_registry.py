"""Input formats are classes in one registry: a new format is one Reader, and every verb reads it."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from conftest import synthetic_case
from lesionseg.cli import app
from lesionseg.io import READERS, Input, Reader, read_input, read_mask, reader_for

runner = CliRunner()


class NumpyReader(Reader):
    """A format the package does not ship: RGB uint8 arrays saved with numpy."""

    name = "numpy"
    suffixes = (".npy",)

    def read(self, path: Path) -> Input:
        return Input(path, [(path.stem, np.load(path))])


def test_formats_are_chosen_by_suffix_and_content(tmp_path):
    from test_dicom import build_dicom

    rgb, _ = synthetic_case(np.random.default_rng(0), 20, 30)
    plain = build_dicom(tmp_path / "photo.dcm", rgb, "RGB")
    renamed = tmp_path / "no_suffix"
    renamed.write_bytes(plain.read_bytes())
    assert reader_for(plain).name == reader_for(renamed).name == "dicom"  # the DICM magic decides
    assert reader_for(tmp_path / "x.png").name == "photo"
    item = read_input(renamed)
    assert item.frames[0][0] == "no_suffix" and item.companion.name(item.id) == "no_suffix_seg.dcm"
    np.testing.assert_array_equal(item.frames[0][1], rgb)


def test_a_new_format_is_one_reader(tmp_path, tiny_model_file, monkeypatch):
    monkeypatch.setattr("lesionseg.io.registry.READERS", [NumpyReader(), *READERS])
    rgb, _ = synthetic_case(np.random.default_rng(1), 40, 56)
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "scan.npy", rgb)
    out = tmp_path / "out"
    args = ["predict", str(folder), "--out", str(out), "--weights", str(tiny_model_file)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_mask(out / "scan_mask.png").shape == (40, 56)
