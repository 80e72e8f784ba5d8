"""Bad and unusual inputs end to end; each case is listed in docs/robustness.md."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SEED_RECIPE, cli_in_child, make_dataset, synthetic_case
from lesionseg.cli import app

runner = CliRunner()
TINY = [*SEED_RECIPE, "model.base_width=4", "model.depth=2", "data.image_size=32", "data.batch_size=4",
        "data.val_fraction=0.25"]


def test_unicode_and_spaces_in_paths(tmp_path, tiny_model_file, rng):
    src = tmp_path / "dossier patiënt ü" / "images ñ"
    src.mkdir(parents=True)
    Image.fromarray(synthetic_case(rng, 30, 40)[0]).save(src / "läsion 1.png")
    out = tmp_path / "résultats é"
    result = runner.invoke(app, ["predict", str(src), "--out", str(out), "--weights", str(tiny_model_file)])
    assert result.exit_code == 0, result.output
    assert (out / "läsion 1_mask.png").is_file()
    data = make_dataset(tmp_path / "données d'entraînement", n=8)
    run = tmp_path / "exécution 1"
    result = runner.invoke(app,
                           ["train", "--data", str(data), "--out", str(run), *TINY, "trainer.max_epochs=1"])
    assert result.exit_code == 0, result.output
    assert (run / "model.pt").is_file()


def test_output_path_is_a_file(tmp_path, tiny_model_file, rng):
    Image.fromarray(synthetic_case(rng, 20, 20)[0]).save(tmp_path / "x.png")
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    result = runner.invoke(app, ["predict", str(tmp_path / "x.png"), "--out", str(blocker / "sub"),
                                 "--weights", str(tiny_model_file)])
    assert result.exit_code == 2 and "cannot create output folder" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_folder(tmp_path, tiny_model_file, rng):
    Image.fromarray(synthetic_case(rng, 20, 20)[0]).save(tmp_path / "x.png")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    result = runner.invoke(app, ["predict", str(tmp_path / "x.png"), "--out", str(out), "--weights",
                                 str(tiny_model_file)])
    assert result.exit_code == 2 and "not writable" in result.stderr


def test_huge_image_refused_clearly(tmp_path, tiny_model_file):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 12000)).save(path)  # 240 megapixels, a small file
    result = runner.invoke(app, ["predict", str(path), "--out", str(tmp_path / "o"), "--weights",
                                 str(tiny_model_file)])
    assert result.exit_code == 2 and "image too large" in result.stderr  # nothing segmented: refused


def test_large_photo_predicts_under_2_gb(tmp_path, tiny_model_file):
    """A 4000x3000 photo: resized for the network, mask written at full size, peak RSS < 2 GB."""
    img = np.zeros((3000, 4000, 3), np.uint8)
    img[1000:2000, 1500:2500] = 120
    Image.fromarray(img).save(tmp_path / "big.jpg", quality=90)
    args = ["predict", tmp_path / "big.jpg", "--out", tmp_path / "o", "--weights", tiny_model_file]
    proc = cli_in_child(args, then="print(peak_rss_mb())",
                        imports="from lesionseg.memory import peak_rss_mb\n")
    assert proc.returncode == 0, proc.stderr
    # the child's own peak, not its parent's (memory.py)
    peak_mb = float(proc.stdout.strip().splitlines()[-1])
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"
    assert Image.open(tmp_path / "o" / "big_mask.png").size == (4000, 3000)


def test_jpeg_masks_are_binarised_and_reported(tmp_path, tiny_model_file):
    """JPEG masks as datasets ship them (grey levels from compression around 0 and 255) are binarised at 127
    with one line saying so; the same pixels as --mask-threshold 127. A soft JPEG mask is still refused."""
    data = make_dataset(tmp_path / "d", n=4)
    for m in (data / "masks").iterdir():
        Image.open(m).save(m.with_suffix(".jpg"), quality=70)
        m.unlink()
    auto = runner.invoke(app, ["evaluate", "--data", str(data), "--weights", str(tiny_model_file),
                               "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    assert "4 JPEG mask(s) with compression grey levels" in auto.stderr and "binarised at 127" in auto.stderr
    chosen = runner.invoke(app, ["evaluate", "--data", str(data), "--weights", str(tiny_model_file),
                                 "--out", str(tmp_path / "chosen"), "--mask-threshold", "127"])
    assert chosen.exit_code == 0 and "JPEG mask" not in chosen.stderr
    assert (tmp_path / "auto" / "per_case.csv").read_text() == (
        tmp_path / "chosen" / "per_case.csv"
    ).read_text()
    soft = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (48, 1))  # a probability map saved as JPEG
    mask = next((data / "masks").iterdir())
    Image.fromarray(soft).resize(Image.open(mask).size).save(mask, quality=90)
    refused = runner.invoke(app, ["evaluate", "--data", str(data), "--weights", str(tiny_model_file),
                                  "--out", str(tmp_path / "e")])
    assert refused.exit_code == 2 and "--mask-threshold" in refused.stderr


def test_checkpoint_given_as_weights(tmp_path):
    import torch

    torch.save({"state_dict": {}, "epoch": 3, "optimizer_states": []}, tmp_path / "last.ckpt")
    result = runner.invoke(app, ["info", str(tmp_path / "last.ckpt")])
    assert result.exit_code == 2 and "not a lesionseg model file (use the run's model.pt" in result.stderr


def test_run_dir_that_is_not_a_run(tmp_path):
    data = make_dataset(tmp_path / "d", n=4)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(other), *TINY])
    assert result.exit_code == 2 and "holds no lesionseg run" in result.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_nan_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    from lesionseg import losses

    data = make_dataset(tmp_path / "d", n=8)
    monkeypatch.setattr(losses.DiceBCELoss, "forward", lambda self, logits,
                        target: (logits * float("nan")).mean())
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY])
    assert result.exit_code == 2
    assert "training loss became nan" in result.stderr and "last good checkpoint" in result.stderr


def test_onnx_file_with_torch_backend(tmp_path, rng):
    Image.fromarray(synthetic_case(rng, 20, 20)[0]).save(tmp_path / "x.png")
    (tmp_path / "m.onnx").write_bytes(b"")
    result = runner.invoke(
        app,
        ["predict", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--weights",
         str(tmp_path / "m.onnx"), "--backend", "torch"],
    )
    assert result.exit_code == 2 and "needs --backend onnx" in result.stderr
    result = runner.invoke(
        app,
        ["predict", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--weights",
         str(tmp_path / "m.onnx")],
    )
    assert result.exit_code == 2 and "not a loadable ONNX model" in result.stderr


def test_non_image_files_in_folders_are_ignored(tmp_path, tiny_model_file, rng):
    Image.fromarray(synthetic_case(rng, 20, 20)[0]).save(tmp_path / "x.png")
    (tmp_path / "README.txt").write_text("notes")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    result = runner.invoke(app, ["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--weights",
                                 str(tiny_model_file)])
    assert result.exit_code == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x_mask.png",
                                                                                             "x_overlay.png"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """SIGKILL a real `lesionseg train` process right after its first epoch is recorded (so inside a later
    epoch); rerunning the same command resumes from the checkpoint and completes."""
    import csv

    import torch

    data = make_dataset(tmp_path / "d", n=96, size=(96, 96))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lesionseg.cli", "train", "--data", str(data), "--out", str(run),
           *SEED_RECIPE, "model.base_width=8", "model.depth=3", "data.image_size=96", "data.batch_size=4",
           "trainer.max_epochs=5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_path, last = run / "metrics.csv", run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and csv_path.exists() and len(csv_path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["epoch"] < 4 and saved["optimizer_states"] and saved["lr_schedulers"]
    first_row = next(csv.DictReader(csv_path.open()))

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    rows = list(csv.DictReader(csv_path.open()))
    epochs = [int(r["epoch"]) for r in rows]
    # Every epoch once, in order. (A kill in the milliseconds between a checkpoint and its CSV row would
    # leave that one row missing, so exact equality with 0..4 is not asserted.)
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4 and len(epochs) >= 4
    assert rows[0] == first_row  # the epoch finished before the kill is kept, not retrained
    assert not list(run.rglob(".*.part"))  # temp files of writes cut by the kill are cleared on resume
    from lesionseg.models import load_model

    assert load_model(run / "model.pt").card["best_epoch"] >= 1
