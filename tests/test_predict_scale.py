"""predict at scale: the read/infer/write pipeline, shards for many machines, manifests and their merge,
resuming with --skip-existing, and the progress output."""

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import synthetic_case
from lesionseg.cli import app
from lesionseg.input_selection import shard_of

runner = CliRunner()


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        Image.fromarray(synthetic_case(rng, 30 + i, 40)[0]).save(src / f"img_{i:02d}.png")
    return src


def predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)])


def read_manifest(path):
    return list(csv.DictReader(path.open()))


def test_pipeline_output_equals_one_worker_and_keeps_every_input(folder, tmp_path, tiny_model_file):
    a = predict(folder, "--out", tmp_path / "a", "--weights", tiny_model_file, "--workers", "1",
                "--batch-size", "1")
    b = predict(folder, "--out", tmp_path / "b", "--weights", tiny_model_file, "--workers", "3",
                "--batch-size", "5")
    assert a.exit_code == b.exit_code == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 24 and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_not_a_terminal_prints_one_summary_line_and_verbose_one_per_image(folder, tmp_path, tiny_model_file):
    quiet = predict(folder, "--out", tmp_path / "q", "--weights", tiny_model_file)
    lines = quiet.stdout.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("segmented 12 of 12 inputs into") and "images/s" in lines[0]
    )
    loud = predict(folder, "--out", tmp_path / "v", "--weights", tiny_model_file, "--verbose")
    assert sum(" -> " in line for line in loud.stdout.splitlines()) == 12


def test_progress_bar_on_a_terminal(folder, tmp_path, tiny_model_file, capsys):
    from lesionseg.api import segmenter
    from lesionseg.predict import run_predict

    failures = run_predict([folder], tmp_path / "p", lambda: segmenter(tiny_model_file), progress=True)
    assert failures == []
    err = capsys.readouterr().err
    assert "12/12" in err and "files/s" in err


def test_shards_partition_the_inputs_stably(folder, tmp_path, tiny_model_file):
    seen = []
    for k in (1, 2, 3):
        out = tmp_path / f"s{k}"
        result = predict(folder, "--out", out, "--weights", tiny_model_file, "--shard", f"{k}/3",
                         "--manifest", out / "manifest.csv")
        assert result.exit_code == 0 and f"(shard {k}/3)" in result.stdout
        ids = [r["id"] for r in read_manifest(out / "manifest.csv")]
        assert all(shard_of(i, 3) == k for i in ids)
        seen += ids
    assert sorted(seen) == [f"img_{i:02d}" for i in range(12)]  # every input once, in exactly one shard
    # A new file joins one shard; the others keep their inputs.
    assert shard_of("img_00", 3) == shard_of("img_00", 3) and {shard_of(f"x{i}", 3) for i in range(40)} == {
        1,
        2,
        3,
    }
    merged = runner.invoke(
        app,
        ["merge-manifests", *[str(tmp_path / f"s{k}" / "manifest.csv") for k in (1, 2, 3)], "--out",
         str(tmp_path / "all.csv")],
    )
    assert merged.exit_code == 0 and "12 ok" in merged.stdout
    rows = read_manifest(tmp_path / "all.csv")
    assert len(rows) == 12 and all(
        r["status"] == "ok" and 0 <= float(r["foreground_fraction"]) <= 1 for r in rows
    )
    clash = runner.invoke(app, ["merge-manifests", str(tmp_path / "s1" / "manifest.csv"),
                                str(tmp_path / "s1" / "manifest.csv"), "--out", str(tmp_path / "x.csv")])
    assert clash.exit_code == 2 and "overlapping shards" in clash.stderr


@pytest.mark.parametrize("shard, message",
                         [("0/3", "need 1 ≤ K ≤ N"), ("4/3", "need 1 ≤ K ≤ N"), ("a/b", "expected K/N")])
def test_bad_shards_are_one_line(folder, tmp_path, tiny_model_file, shard, message):
    result = predict(folder, "--out", tmp_path / "o", "--weights", tiny_model_file, "--shard", shard)
    assert result.exit_code == 2 and message in result.stderr


def test_skip_existing_resumes_and_the_manifest_says_so(folder, tmp_path, tiny_model_file):
    out = tmp_path / "out"
    first = list(folder.iterdir())[:5]
    assert predict(*first, "--out", out, "--weights", tiny_model_file).exit_code == 0
    refused = predict(folder, "--out", out, "--weights", tiny_model_file)
    assert refused.exit_code == 2 and "--skip-existing" in refused.stderr
    (folder / "broken.png").write_text("not an image")
    resumed = predict(folder, "--out", out, "--weights", tiny_model_file, "--skip-existing",
                      "--manifest", tmp_path / "m.csv")
    assert resumed.exit_code == 1 and "5 already done" in resumed.stdout
    status = {r["id"]: r["status"] for r in read_manifest(tmp_path / "m.csv")}
    assert list(status.values()).count("skipped") == 5 and list(status.values()).count("ok") == 7
    assert status["broken"] == "failed"
    assert len(list(out.glob("*_mask.png"))) == 12


def test_no_overlays_writes_the_same_masks_only(folder, tmp_path, tiny_model_file):
    assert predict(folder, "--out", tmp_path / "a", "--weights", tiny_model_file).exit_code == 0
    assert (
        predict(folder, "--out", tmp_path / "b", "--weights", tiny_model_file, "--no-overlays").exit_code == 0
    )
    masks = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(masks) == 12 and all(n.endswith("_mask.png") for n in masks)
    for name in masks:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    result = predict(folder, "--out", tmp_path / "c", "--weights", tiny_model_file, "--no-overlays",
                     "--report")
    assert result.exit_code == 2 and "--report shows the overlays" in result.output
    assert not (tmp_path / "c").exists()
