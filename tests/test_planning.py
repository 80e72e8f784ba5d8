"""`lesionseg plan`: the fingerprint of a dataset, the plan's fixed rules, the budget probe, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import make_dataset
from lesionseg.cli import app
from lesionseg.config import load_config
from lesionseg.errors import UserError
from lesionseg.planning import fingerprint, plan_photos, plan_volumes
from test_volumes import make_volume_dataset

runner = CliRunner()


def test_photo_fingerprint_counts_sizes_shares_and_foreground(tmp_path):
    data = make_dataset(tmp_path / "d", n=6, size=(48, 64))
    fp = fingerprint(data)
    assert fp["kind"] == "photos" and fp["n_cases"] == 6 and fp["channels"] == 3
    assert fp["height"]["median"] == 48 and fp["width"]["median"] == 64
    assert fp["aspect_ratio"]["median"] == pytest.approx(64 / 48, abs=1e-3)
    assert 0.05 < fp["structures"]["foreground"] < 0.5 and fp["empty_masks"] == 0
    # the synthetic lesions are dark (~60 of 255): the foreground statistics say so
    assert fp["foreground_intensity"]["mean"] < 100


def test_volume_fingerprint_reads_spacing_modality_and_structures(tmp_path):
    data = make_volume_dataset(tmp_path / "v", n=3)
    fp = fingerprint(data)
    assert fp["kind"] == "volumes" and fp["n_cases"] == 3 and fp["modality"] == "MRI"
    assert [s["median"] for s in fp["spacing_mm"]] == pytest.approx([0.8, 0.8, 2.5])
    assert set(fp["structures"]) == {"Anterior", "Posterior"} and fp["label_mode"] == "exclusive"


def test_photo_plan_takes_the_largest_size_the_budget_allows():
    fp = {
        "n_cases": 1000,
        "short_side": {"median": 600},
        "label_mode": "binary",
        "structures": {"lesion": 0.2},
    }
    speeds = {128: 40.0, 160: 26.0, 192: 18.0, 256: 10.0, 320: 6.0, 384: 4.0, 512: 2.0}

    def probe(size, channels, out_channels, batch):
        return speeds[size]

    # 900 training images, 25 epochs: 22,500 images; in 60 min that needs 6.25 img/s
    plan = plan_photos(fp, 60, probe)
    assert plan.config.data.image_size == 256 and plan.config.data.batch_size == 8
    assert plan.probe["320"] == 6.0 and "512" not in plan.probe  # stops at the first size that misses
    assert plan_photos(fp, 30, probe).config.data.image_size == 192  # needs 12.5 img/s
    small = {**fp, "short_side": {"median": 170}}
    assert plan_photos(small, 600, probe).config.data.image_size == 160  # never above the images' own size
    assert plan.config.augment.hflip == 0.5 and plan.config.trainer.max_minutes == 60
    sided = {**fp, "label_mode": "overlapping", "structures": {"left lung": 0.2, "right lung": 0.2}}
    assert plan_photos(sided, 60, probe).config.augment.hflip == 0.0
    assert plan_photos(fp, 60, probe).config == plan.config  # deterministic
    # two devices, data-parallel: twice the probed speed buys the next size
    assert plan_photos(fp, 60, probe, devices=2).config.data.image_size == 384


HIPPOCAMPUS = {  # its fingerprint, in short
    "spacing_mm": [{"median": 1.0}] * 3,
    "shape": [{"median": 36.0}, {"median": 50.0}, {"median": 35.0}],
    "plane_extent_mm": [{"max": 59.0, "median": 50.0}, {"max": 47.0, "median": 36.0}],
    "label_mode": "exclusive",
    "structures": {"Anterior": 0.027, "Posterior": 0.025},
}


def cpu_probe(patch, out_channels):  # 3-D patches/s as measured on the 2-core machine
    return 1.6


def test_volume_plan_is_3d_where_the_budget_trains_enough_patches():
    """3-D where the data are near-isotropic and the budget trains MIN_3D_PATCHES patches at the probed
    speed; else 2.5-D slices, the reason naming the count; thick slices are never probed."""
    from lesionseg.planning import MIN_3D_PATCHES

    probed = []

    def gpu_probe(patch, out_channels):
        probed.append((patch, out_channels))
        return 100.0

    plan = plan_volumes(HIPPOCAMPUS, 60, gpu_probe)
    assert probed == [((40, 56, 40), 3)]  # the median case, in multiples of 8; background and two classes
    cfg = plan.config
    assert cfg.model.arch == "unet3d" and cfg.model.deep_supervision and cfg.data.batch_size == 2
    assert cfg.data.patch_size is None and cfg.trainer.max_minutes == 60
    assert plan.probe["patches_per_s"] == 100
    assert "360,000 3-D patches of 40x56x40" in plan.reasons["network"]
    slices = plan_volumes(HIPPOCAMPUS, 60, cpu_probe)  # 1.6/s x 3600 s = 5,760 patches
    assert slices.config.model.arch == "unet" and slices.config.data.slice_context == 3
    assert "5,760 3-D patches" in slices.reasons["network"]
    assert f"3-D from {MIN_3D_PATCHES:,}" in slices.reasons["network"]
    thick = {**HIPPOCAMPUS, "spacing_mm": [{"median": 1.5}, {"median": 1.5}, {"median": 8.0}]}
    plan = plan_volumes(thick, 600, gpu_probe)
    assert plan.config.model.arch == "unet" and len(probed) == 1 and "5.3x thicker" in plan.reasons["network"]


def test_plan_command_on_volumes_probes_3d_speed_and_decides_by_it(tmp_path, monkeypatch):
    import test_volumes
    from lesionseg.planning import MIN_3D_PATCHES

    monkeypatch.setattr(test_volumes, "SPACING", (1.0, 1.0, 1.0))  # near-isotropic: a 3-D candidate
    monkeypatch.setattr(test_volumes.affine_for, "__defaults__", ((1.0, 1.0, 1.0), (-10.0, 5.0, 3.0)))
    data = test_volumes.make_volume_dataset(tmp_path / "d", n=4, layout="nnunet")
    out = tmp_path / "plan"
    result = runner.invoke(app, ["plan", "--data", str(data), "--out", str(out), "--minutes", "2"])
    assert result.exit_code == 0, result.output
    rate = json.loads((out / "fingerprint.json").read_text())["probe"]["patches_per_s"]
    cfg = load_config(out / "plan.yaml")
    assert rate > 0 and (cfg.model.arch == "unet3d") == (rate * 120 >= MIN_3D_PATCHES)
    assert "# network: " in (out / "plan.yaml").read_text()


def test_volume_plan_zooms_small_crops():
    fp = HIPPOCAMPUS
    plan = plan_volumes(fp, 60, cpu_probe)
    # the bundled hippocampus recipe: 0.5 mm, 96² patches of the median 100-pixel slice, batch 32
    assert plan.config.data.slice_spacing_mm == 0.5 and plan.config.data.image_size == 96
    assert plan.config.data.batch_size == 32
    ct = {
        **HIPPOCAMPUS,
        "spacing_mm": [{"median": 0.7}, {"median": 0.7}, {"median": 2.5}],
        "shape": [{"median": 512.0}, {"median": 512.0}, {"median": 120.0}],
        "plane_extent_mm": [{"max": 358.0, "median": 340.0}, {"max": 358.0, "median": 340.0}],
    }
    assert plan_volumes(ct, 60, cpu_probe).config.data.slice_spacing_mm == 0.7
    assert plan_volumes(ct, 60, cpu_probe).config.data.image_size == 480  # 340 mm / 0.7 mm = 486 px
    assert plan_volumes(ct, 60, cpu_probe).config.loss.batch_dice  # nnU-Net's 2d: Dice over the batch


def test_plan_command_writes_a_config_train_reads(tmp_path):
    data = make_dataset(tmp_path / "d", n=6, size=(48, 64))
    out = tmp_path / "plan"
    result = runner.invoke(app, ["plan", "--data", str(data), "--out", str(out), "--minutes", "5"])
    assert result.exit_code == 0, result.output
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["n_cases"] == 6 and fp["probe"]["128"] > 0
    cfg = load_config(out / "plan.yaml")
    assert cfg.data.image_size == 128 and cfg.trainer.max_minutes == 5
    assert "image_size" in (out / "plan.yaml").read_text().split("model:")[0]  # the reasons, as comments
    assert yaml.safe_load((out / "plan.yaml").read_text())["optim"]["schedule"] == "cosine_time"


@pytest.mark.parametrize("problem", ["empty", "one", "all_empty", "mixed_channels"])
def test_plan_bad_input_is_one_line_and_exit_2(tmp_path, problem):
    data = tmp_path / "d"
    if problem == "empty":
        data.mkdir()
    else:
        make_dataset(data, n=1 if problem == "one" else 4, size=(32, 32))
    if problem == "all_empty":
        for m in (data / "masks").iterdir():
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(m)
    if problem == "mixed_channels":
        first = sorted((data / "images").iterdir())[0]
        Image.open(first).convert("L").save(first)
    result = runner.invoke(app, ["plan", "--data", str(data), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    expected = {
        "empty": "",
        "one": "at least 2",
        "all_empty": "empty",
        "mixed_channels": "mixed channel counts",
    }
    assert expected[problem] in result.output
    with pytest.raises(UserError):
        fingerprint(data)


def test_train_auto_plans_then_trains_and_resumes_with_the_same_plan(tmp_path):
    from lesionseg.models import load_model

    data = make_dataset(tmp_path / "d", n=6, size=(48, 64))
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--auto",
        "--minutes",
        "0.3",
        "trainer.max_epochs=1",
        "model.base_width=4",
        "model.depth=2",
        "data.image_size=32",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (run / "plan" / "plan.yaml").is_file() and (run / "plan" / "fingerprint.json").is_file()
    plan_text = (run / "plan" / "plan.yaml").read_text()
    card = load_model(run / "model.pt").card
    assert card["recipe"]["trainer"]["max_minutes"] == 0.3 and card["recipe"]["optim"]["ema_selection"]
    assert card["selected_weights"] in ("ema", "raw")
    again = runner.invoke(app, args)  # the same command resumes: the plan is reused, not made again
    assert again.exit_code == 0, again.output
    assert (run / "plan" / "plan.yaml").read_text() == plan_text
    refused = runner.invoke(
        app, ["train", "--data", str(data), "--auto", "--config", str(run / "plan" / "plan.yaml")]
    )
    assert refused.exit_code == 2 and "--auto plans the config itself" in refused.output


def test_warmed_ema_follows_the_weights_early_and_settles_at_its_decay():
    import torch
    from torch.optim.swa_utils import AveragedModel

    from lesionseg.training.module import warmed_ema

    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = AveragedModel(net, multi_avg_fn=warmed_ema(0.999), use_buffers=True)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(5):
        ema.update_parameters(net)
    # a fixed 0.999 would still sit near the start (0.996 of the way there after 5 updates: 0.004)
    assert float(ema.module.weight) > 0.3
    assert warmed_ema(0.9) is not None and min(0.9, (1 + 1000) / (10 + 1000)) == 0.9


def test_train_without_a_config_plans_for_this_machine(tmp_path):
    data = make_dataset(tmp_path / "d", n=6, size=(48, 64))
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--minutes", "0.2", "trainer.max_epochs=1",
            "model.base_width=4", "model.depth=2", "data.image_size=32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no --config, so the run is planned" in result.output
    assert (run / "plan" / "plan.yaml").is_file()
    assert load_config(run / "config.yaml").model.encoder == "efficientnet-lite0"  # not the seed's
