"""End to end through the CLI: train (and resume), evaluate, predict, info, and the error contract."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SEED_RECIPE, make_dataset, synthetic_case
from lesionseg.cli import app
from lesionseg.io import read_mask
from lesionseg.metrics import aggregate, confusion

runner = CliRunner()
TINY = [*SEED_RECIPE, "model.base_width=4", "model.depth=2", "data.image_size=32", "data.batch_size=4",
        "data.val_fraction=0.25", "optim.lr=0.01"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def crash_after_first_epoch(monkeypatch, args):
    """Run `lesionseg train ARGS` until it dies after its first epoch (checkpoint written), as a kill
    would."""
    from lesionseg.training import fit

    original = fit.RunRecorder.on_train_epoch_end

    def crash(self, trainer, pl_module):
        original(self, trainer, pl_module)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(fit.RunRecorder, "on_train_epoch_end", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        invoke(*args)
    monkeypatch.setattr(fit.RunRecorder, "on_train_epoch_end", original)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs on synthetic data; the run directory is shared by the tests below."""
    root = tmp_path_factory.mktemp("e2e")
    data = make_dataset(root / "data", n=16)
    run = root / "run"
    result = invoke("train", "--data", data, "--out", run, *TINY, "trainer.max_epochs=2")
    assert result.exit_code == 0, result.output
    return data, run


def test_train_writes_a_complete_run_dir(trained):
    _, run = trained
    assert {"config.yaml", "metrics.csv", "model.pt", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for r in rows:
        assert 0 <= float(r["val_mean_jaccard"]) <= 1 and float(r["train_img_per_s"]) > 0
        assert math.isfinite(float(r["train_loss"])) and float(r["lr"]) > 0
    assert "base_width: 4" in (run / "config.yaml").read_text()


def test_info_shows_the_card(trained):
    _, run = trained
    result = invoke("info", run / "model.pt")
    assert result.exit_code == 0
    card = json.loads(result.stdout)
    assert card["architecture"]["base_width"] == 4 and card["input_size"] == 32
    assert card["training_data"]["n_train"] == 12 and card["training_data"]["n_val"] == 4
    assert card["selection_metric"] == "val_mean_jaccard"


def test_resume_after_a_crash(tmp_path, monkeypatch):
    """A run that dies after epoch 1 resumes at epoch 2 with its optimizer and schedule restored."""
    data = make_dataset(tmp_path / "data", n=12)
    run = tmp_path / "run"
    args = ["train", "--data", data, "--out", run, *TINY, "trainer.max_epochs=3"]
    crash_after_first_epoch(monkeypatch, args)
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 1

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    # Cosine schedule continued, not restarted:
    # lr after epoch k is eta_min + (lr0-eta_min)(1+cos(pi(k+1)/3))/2.
    for k, r in enumerate(rows):
        expected = 1e-6 + (0.01 - 1e-6) * (1 + math.cos(math.pi * (k + 1) / 3)) / 2
        assert float(r["lr"]) == pytest.approx(expected, rel=1e-3)
    assert float(rows[1]["elapsed_min"]) >= float(rows[0]["elapsed_min"])


def test_resume_refuses_a_different_config(trained):
    data, run = trained
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), *TINY, "model.base_width=8",
                                 "trainer.max_epochs=2"])
    assert result.exit_code == 2
    assert "different config (model.base_width)" in result.stderr


def test_evaluate_matches_predict(trained, tmp_path):
    """evaluate's figures equal those computed from the mask files predict writes: one inference path."""
    data, run = trained
    out = tmp_path / "eval"
    result = invoke("evaluate", "--data", data, "--weights", run / "model.pt", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"mean_jaccard", "mean_dice", "thresholded_jaccard", "pooled_iou", "miou_fg_bg", "pixel_accuracy",
            "sensitivity", "specificity", "n_images"}
    assert keys <= metrics.keys() and metrics["n_images"] == 16
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    jac = [float(r["jaccard"]) for r in rows]
    assert jac == sorted(jac) and len(rows) == 16
    assert "mean_jaccard" in result.stdout

    pred_dir = tmp_path / "pred"
    assert invoke("predict", data / "images", "--out", pred_dir, "--weights", run / "model.pt").exit_code == 0
    counts = [confusion(read_mask(pred_dir / f"case_{i:03d}_mask.png"),
                        read_mask(data / "masks" / f"case_{i:03d}_segmentation.png")) for i in range(16)]
    again = aggregate(counts)
    for k in keys:
        assert again[k] == pytest.approx(metrics[k], abs=1e-9)


def test_predict_other_sizes_formats_and_report(trained, tmp_path, rng):
    _, run = trained
    src = tmp_path / "in"
    src.mkdir()
    sizes = {"wide.jpg": (37, 120), "tall.bmp": (150, 41), "tiny.png": (5, 7), "gray.tif": (64, 64)}
    for name, (h, w) in sizes.items():
        img, _ = synthetic_case(rng, h, w)
        pil = Image.fromarray(img)
        (pil.convert("L") if name.startswith("gray") else pil).save(src / name)
    out = tmp_path / "out"
    result = invoke("predict", src, "--out", out, "--weights", run / "model.pt", "--report")
    assert result.exit_code == 0, result.output
    for name, (h, w) in sizes.items():
        stem = name.split(".")[0]
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (h, w, 3)
    html = (out / "report.html").read_text()
    assert html.count("<img ") == 4 and 'src="wide_overlay.png"' in html

    again = runner.invoke(app, ["predict", str(src), "--out", str(out), "--weights", str(run / "model.pt")])
    assert again.exit_code == 2 and "already holds results" in again.stderr and "--overwrite" in again.stderr


def test_predict_partial_failure_exit_1(trained, tmp_path, rng):
    _, run = trained
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(synthetic_case(rng, 30, 30)[0]).save(src / "good.png")
    (src / "broken.jpg").write_text("not really a jpeg")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(src), "--out", str(out), "--weights", str(run / "model.pt")])
    assert result.exit_code == 1
    assert "broken.jpg: not a readable image" in result.stderr and "1 of 2 inputs failed" in result.stderr
    assert (out / "good_mask.png").is_file() and not (out / "broken_mask.png").exists()

    strict_out = tmp_path / "strict"
    result = runner.invoke(
        app, ["predict", str(src), "--out", str(strict_out), "--weights", str(run / "model.pt"), "--strict"]
    )
    assert result.exit_code == 2 and "nothing written" in result.stderr
    assert not any(strict_out.glob("*.png"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "{tmp}/missing"], "data folder not found"),
        (["evaluate", "--data", "{tmp}/missing"], "data folder not found"),
        (["predict", "{tmp}/missing.png", "--out", "{tmp}/o"], "no such file or folder"),
        (["train", "--data", "{tmp}", "model.widht=3"], "unknown config key 'model.widht'"),
        (["info", "{tmp}/nope.pt"], "model file not found"),
        (["train", "--data", "{tmp}/d", "--strategy", "warp_drive"], "training setup:"),
        (["export", "--weights", "{tmp}/nope.pt", "--out", "{tmp}/m.onnx"], "model file not found"),
        (["export", "--opset", "13", "--out", "{tmp}/m.onnx"], "opset ≥ 17"),
        (["predict", "{tmp}/x.png", "--out", "{tmp}/o", "--weights", "{tmp}/nope.onnx"],
         "ONNX model file not found"),
        (["predict", "{tmp}/x.png", "--out", "{tmp}/o", "--tta-scales", "a,b"], "--tta-scales"),
        (["predict", "{tmp}/x.png", "--out", "{tmp}/o", "--threshold", "1.5"],
         "--threshold must be between 0 and 1"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, args, message):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    make_dataset(tmp_path / "d", n=4)
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("lesionseg: error:")


def test_validation_problems_all_listed_then_exit_2(tmp_path):
    data = make_dataset(tmp_path / "d", n=4)
    (data / "masks" / "case_000_segmentation.png").unlink()
    (data / "images" / "case_003.png").write_bytes(b"")
    result = runner.invoke(app, ["evaluate", "--data", str(data)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert "case_000.png: no mask" in lines[0] and lines[-1].startswith("lesionseg: error:")


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lesionseg.cli", "evaluate", "--data", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().endswith("data folder not found")


def test_resume_with_fewer_epochs_reaims_the_schedule(tmp_path, monkeypatch):
    """Shortening an interrupted run: the cosine schedule continues from its lr and ends at eta_min."""
    data = make_dataset(tmp_path / "data", n=12)
    run = tmp_path / "run"
    crash_after_first_epoch(monkeypatch,
                            ["train", "--data", data, "--out", run, *TINY, "trainer.max_epochs=6"])
    result = invoke("train", "--data", data, "--out", run, *TINY, "trainer.max_epochs=3")
    assert result.exit_code == 0, result.output
    lrs = [float(r["lr"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert len(lrs) == 3 and lrs[0] > lrs[1] > lrs[2]
    assert lrs[2] == pytest.approx(1e-6, rel=1e-3)
    assert "max_epochs: 3" in (run / "config.yaml").read_text()


def test_evaluate_report_and_plot(trained, tmp_path):
    """The HTML report parses, and every image it references exists and is a PNG."""
    from html.parser import HTMLParser

    data, run = trained
    out = tmp_path / "eval"
    result = invoke("evaluate", "--data", data, "--weights", run / "model.pt", "--out", out, "--report")
    assert result.exit_code == 0, result.output

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sources = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    parser = Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.sources) == 1 + 10 + 5  # histogram, 10 worst, 5 best
    for src in parser.sources:
        assert not src.startswith(("http", "/")) and (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean_jaccard" in (out / "report.html").read_text()

    result = invoke("plot", run)
    assert result.exit_code == 0 and (run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(app, ["plot", str(tmp_path)])
    assert bad.exit_code == 2 and "no metrics.csv" in bad.stderr


def test_model_options_train_end_to_end(tmp_path):
    """CBAM + deep supervision + transposed up-sampling + elastic augmentation, through train and load."""
    from lesionseg.models import load_model

    data = make_dataset(tmp_path / "data", n=8)
    run = tmp_path / "run"
    result = invoke("train", "--data", data, "--out", run, *TINY, "trainer.max_epochs=1",
                    "model.attention=cbam", "model.deep_supervision=true", "model.upsample=transposed",
                    "augment.elastic=0.5")
    assert result.exit_code == 0, result.output
    loaded = load_model(run / "model.pt")
    assert loaded.config.attention == "cbam" and loaded.config.deep_supervision
    import torch

    with torch.no_grad():
        assert loaded.model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)  # eval: main head only


def test_result_names_map_back_to_their_input_ids():
    from lesionseg.case_results import ImageResults

    _result_id = ImageResults.names.result_id

    assert _result_id("a_mask.png") == "a" and _result_id("a b_overlay.png") == "a b"
    assert _result_id("study_frame002_mask.png") == "study" and _result_id("study_seg.dcm") == "study"
    assert _result_id("my_frame_mask.png") == "my_frame" and _result_id("notes.txt") is None


def test_evaluate_to_a_folder_it_cannot_write_is_refused_in_one_line(tmp_path, tiny_model_file):
    """A file where the folder should be: refused before scoring. A result that cannot be written (here a
    folder in its place; a full disk alike): one line, no traceback."""
    import os

    data = make_dataset(tmp_path / "d", n=4)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--weights", str(tiny_model_file),
                                 "--out", str(a_file)])
    assert result.exit_code == 2 and "exists and is not a folder" in result.stderr
    blocked = tmp_path / "ev"
    (blocked / "metrics.json").mkdir(parents=True)
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--weights", str(tiny_model_file),
                                 "--out", str(blocked)])
    assert result.exit_code == 2 and "cannot write the results" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            return  # root writes anywhere: a read-only folder is not one for this user
        result = runner.invoke(app, ["evaluate", "--data", str(data), "--weights", str(tiny_model_file),
                                     "--out", str(locked / "ev")])
        assert result.exit_code == 2 and "not writable" in result.stderr and not (locked / "ev").exists()
    finally:
        locked.chmod(0o700)
