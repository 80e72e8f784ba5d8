"""One training loop, two ways to feed it: the bundled `default` model's own config runs end to end on the
CPU with the training set resident and batched augmentation; the wall-clock schedule; the Python API."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lesionseg
from conftest import SEED_RECIPE, make_dataset
from lesionseg.cli import app
from lesionseg.config import load_config
from lesionseg.errors import UserError
from lesionseg.models import load_model
from lesionseg.training.schedule import TimeCosine, time_cosine_lr

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = ROOT / "configs" / "lite0_256_gpu.yaml"
TINY = [*SEED_RECIPE, "model.base_width=4", "model.depth=2", "data.image_size=32", "data.batch_size=4"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def rows(run):
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_default_model_config_trains_on_cpu_with_the_device_path(tmp_path):
    """`lesionseg train --config <default's config> data.on_device=true`: the resident path end to end, with
    the config's own encoder, deep supervision, augmentation keys and time schedule (only sizes shrunk)."""
    data = make_dataset(tmp_path / "data", n=14, size=(40, 52))
    run = tmp_path / "run"
    result = invoke("train", "--data", data, "--out", run, "--config", GPU_CONFIG, "data.on_device=true",
                    "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=2",
                    "trainer.max_minutes=0.08", "trainer.max_epochs=3")
    assert result.exit_code == 0, result.output
    cfg = load_config(run / "config.yaml")
    assert cfg.data.on_device == "true" and cfg.optim.schedule == "cosine_time"
    assert cfg.augment.color_jitter == 1.0 and cfg.model.encoder == "efficientnet-lite0"
    table = rows(run)
    assert 1 <= len(table) <= 3 and all(0 <= float(r["val_mean_jaccard"]) <= 1 for r in table)
    # 13 training images, drop_last batches of 4
    assert all(float(r["train_images"]) == 12 for r in table[:-1])
    model = load_model(run / "model.pt")
    assert model.config.encoder == "efficientnet-lite0" and model.config.deep_supervision
    card = model.card
    assert card["training_data"]["feeding"].startswith("training set resident on cpu")
    assert "--config" in card["command"] and str(GPU_CONFIG) in card["command"]
    assert card["hardware"].startswith("1 × CPU")


def test_cpu_auto_keeps_albumentations(tmp_path):
    data = make_dataset(tmp_path / "data", n=8)
    run = tmp_path / "run"
    result = invoke("train", "--data", data, "--out", run, *TINY, "trainer.max_epochs=1")
    assert result.exit_code == 0, result.output
    assert (
        load_model(run / "model.pt").card["training_data"]["feeding"].startswith("albumentations per image")
    )


def test_resident_training_is_reproducible(tmp_path):
    data = make_dataset(tmp_path / "data", n=12)
    states = []
    for name in ("a", "b"):
        result = invoke("train", "--data", data, "--out", tmp_path / name, *TINY, "data.on_device=true",
                        "augment.elastic=0.5", "augment.color_jitter=0.5", "trainer.max_epochs=2")
        assert result.exit_code == 0, result.output
        states.append(load_model(tmp_path / name / "model.pt").model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_time_cosine_lr_shape():
    f = lambda step, t: time_cosine_lr(step, t, 100.0, 10, 1e-3, 1e-6)  # noqa: E731
    assert f(0, 0) == pytest.approx(1e-4)  # warm-up: 1/10 of the peak after the first step
    assert f(9, 0) == pytest.approx(1e-3)
    assert f(1000, 50) == pytest.approx(0.5e-3)
    assert f(1000, 100) == pytest.approx(1e-6) and f(1000, 500) == pytest.approx(1e-6)
    assert all(f(1000, t) >= f(1000, t + 1) for t in range(100))
    assert time_cosine_lr(0, 0, 100.0, 0, 1e-3, 1e-6) == pytest.approx(1e-3)  # no warm-up


def test_time_cosine_follows_its_clock():
    clock = {"t": 0.0}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = TimeCosine(opt, lambda: clock["t"], 10.0, 0, 0.0)
    for t, expected in ((2.5, 0.5 * (1 + math.cos(math.pi / 4))), (5.0, 0.5), (10.0, 0.0)):
        clock["t"] = t
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * expected, abs=1e-9)


def test_cosine_time_completes_within_the_budget_and_resume_continues_it(tmp_path):
    """The lr falls with elapsed time to eta_min by the end of trainer.max_minutes; a resumed run (here with a
    longer budget, an allowed change) carries on from the elapsed time its checkpoint holds, not from zero.
    Judged against the logged elapsed minutes, so a slow or busy machine does not change the verdict."""
    data = make_dataset(tmp_path / "data", n=12)
    run = tmp_path / "run"
    peak = 0.01
    common = [*TINY, "optim.schedule=cosine_time", f"optim.lr={peak}", "optim.eta_min=0.0",
              "trainer.max_epochs=100000", "trainer.patience=100000"]
    assert invoke("train", "--data", data, "--out", run, *common, "trainer.max_minutes=0.05").exit_code == 0
    first = rows(run)
    assert len(first) >= 2 and float(first[-1]["lr"]) < 0.1 * peak < float(first[0]["lr"])
    spent = float(first[-1]["elapsed_min"])
    assert invoke("train", "--data", data, "--out", run, *common, "trainer.max_minutes=0.1").exit_code == 0
    resumed = rows(run)[len(first):]
    assert resumed, "the longer budget should give more epochs"

    def expected(minutes):
        return time_cosine_lr(10**6, minutes * 60, 0.1 * 60, 0, peak, 0.0)

    for row in resumed:
        lr, total = float(row["lr"]), float(row["elapsed_min"])
        continued, restarted = abs(lr - expected(total)), abs(lr - expected(total - spent))
        assert continued < 0.15 * peak and continued < restarted, (row, spent)
    assert float(resumed[-1]["lr"]) < 0.1 * peak


@pytest.mark.parametrize("override, message", [
    (["optim.schedule=cosine_time"], "cosine_time needs a wall-clock budget, trainer.max_minutes"),
    (["data.on_device=gpu"], "config key 'data.on_device': 'gpu' is not one of"),
    (["augment.color_jitter=1.5"], "config key 'augment.color_jitter': a probability"),
    (["data.device_memory_fraction=0"], "config key 'data.device_memory_fraction'"),
    (["model.full_resolution_stage=none"], "'model.full_resolution_stage': none needs an EfficientNet"),
    (["model.full_resolution_stage=train_only"], "'model.full_resolution_stage': train_only needs"),
    (["model.full_resolution_stage=half"], "'model.full_resolution_stage': 'half' is not one of"),
    (["data.color_constancy=retinex"], "config key 'data.color_constancy': 'retinex' is not one of"),
])
def test_new_keys_are_validated(override, message):
    with pytest.raises(UserError, match=message):
        load_config(overrides=override)


def test_on_device_accepts_yaml_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  on_device: true\n")
    assert load_config(path).data.on_device == "true"
    assert load_config(overrides=["data.on_device=false"]).data.on_device == "false"


def test_python_api_trains_and_evaluates_like_the_cli(tmp_path):
    data = make_dataset(tmp_path / "data", n=12)
    model_path = lesionseg.train(data, tmp_path / "run", model={"base_width": 4, "depth": 2},
                                 data={"image_size": 32, "batch_size": 4}, **{"trainer.max_epochs": 1})
    assert model_path == tmp_path / "run" / "model.pt" and model_path.is_file()
    card = load_model(model_path).card
    assert card["command"].startswith("lesionseg.train(") and "'max_epochs': 1" in card["command"]
    metrics = lesionseg.evaluate(data, weights=model_path, out=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 12 and metrics["mean_jaccard"] == pytest.approx(written["mean_jaccard"])
    result = invoke("evaluate", "--data", data, "--weights", model_path, "--out", tmp_path / "cli")
    assert result.exit_code == 0
    assert (
        json.loads((tmp_path / "cli" / "metrics.json").read_text())["mean_jaccard"] == metrics["mean_jaccard"]
    )


def test_python_api_errors_are_the_cli_errors(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    with pytest.raises(UserError, match="unknown config key 'model.base_widht'"):
        lesionseg.train(data, tmp_path / "run", **{"model.base_widht": 4})
    result = invoke("train", "--data", data, "--out", tmp_path / "run", "model.base_widht=4")
    assert result.exit_code == 2 and "unknown config key 'model.base_widht'" in result.output
    with pytest.raises(UserError, match="data folder not found"):
        lesionseg.evaluate(tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown option"):
        lesionseg.evaluate(data, thresold=0.3)
    with pytest.raises(UserError, match="--strategy 'dpp'"):
        lesionseg.train(data, tmp_path / "run2", strategy="dpp")


def test_info_names_the_config_and_command_of_a_bundled_model():
    result = invoke("info", "default")
    assert result.exit_code == 0
    card = json.loads(result.output)
    assert card["config"] == "configs/lite0_256_gpu.yaml"
    assert "lesionseg train" in card["command"] and "configs/lite0_256_gpu.yaml" in card["command"]


def test_torch_free_helpers_stay_torch_free():
    """The seeded split, the carved split's defaults and ImageNet statistics are importable without torch."""
    import subprocess
    import sys

    code = ("import sys, lesionseg\n"
            "from lesionseg.splits import split_pairs\n"
            "from lesionseg.evaluation import carved_split\n"
            "from lesionseg.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig\n"
            "assert carved_split.__defaults__[:2] == (DataConfig.val_fraction, DataConfig.split_seed)\n"
            "print('torch' in sys.modules, 'albumentations' in sys.modules)")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def test_trainer_compile_runs_the_compiled_model_and_saves_plain_weights(tmp_path, monkeypatch):
    """trainer.compile wraps the model with torch.compile(mode=...) for training and validation, while
    checkpoints and model.pt keep the plain model's keys. (torch.compile itself is stood in for here: a real
    CPU compile costs a minute; `lesionseg train ... trainer.compile=true` was run by hand, see the docs.)"""
    calls = {"compile": [], "forward": 0}

    def fake_compile(model, mode="default"):
        calls["compile"].append(mode)

        def run(x):
            calls["forward"] += 1
            return model(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    data = make_dataset(tmp_path / "data", n=8)
    result = invoke("train", "--data", data, "--out", tmp_path / "run", *TINY, "trainer.max_epochs=1",
                    "trainer.compile=true", "trainer.compile_mode=max-autotune")
    assert result.exit_code == 0, result.output
    assert calls["compile"] == ["max-autotune"] and calls["forward"] > 0
    keys = list(load_model(tmp_path / "run" / "model.pt").model.state_dict())
    assert keys and not any("_orig_mod" in k for k in keys)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any("_orig_mod" in k or "_compiled" in k for k in ckpt["state_dict"])


def test_a_stage_trained_only_is_left_out_of_model_pt(tmp_path):
    """model.full_resolution_stage: train_only: training keeps the stage, model.pt is the 1/2-head model
    (that it equals the trained 1/2 head exactly is tests/test_models.py's)."""
    data = make_dataset(tmp_path / "data", n=8)
    run = tmp_path / "run"
    result = invoke("train", "--data", data, "--out", run, *SEED_RECIPE, "model.encoder=efficientnet-lite0",
                    "model.base_width=4", "model.depth=3", "model.deep_supervision=true",
                    "data.image_size=32", "data.batch_size=4", "trainer.max_epochs=1",
                    "model.full_resolution_stage=train_only")
    assert result.exit_code == 0, result.output
    loaded = load_model(run / "model.pt")
    assert loaded.config.full_resolution_stage == "none" and "derivation" in loaded.card
    assert load_config(run / "config.yaml").model.full_resolution_stage == "train_only"


def test_the_keys_of_earlier_versions_still_load():
    """Run directories and recipes written with the two keys this one replaced keep loading."""
    base = ["model.encoder=efficientnet-lite0", "model.deep_supervision=true"]
    def stage(*overrides):
        return load_config(overrides=list(overrides)).model.full_resolution_stage

    assert stage(*base, "trainer.drop_full_resolution_stage=true") == "train_only"
    assert stage(*base, "model.full_resolution_decoder=false") == "none"
    assert stage("model.full_resolution_decoder=true") == "kept"
