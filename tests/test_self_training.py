"""Self-training and weight averaging: `lesionseg pseudo-label`, several --data folders, optim.ema_decay."""

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import SEED_RECIPE, make_dataset
from lesionseg.cli import app
from lesionseg.config import load_config
from lesionseg.data.datamodule import SegmentationDataModule
from lesionseg.errors import UserError
from lesionseg.io import read_mask
from lesionseg.labels import Labels
from lesionseg.models import load_model
from lesionseg.pseudo_label import confidence, pseudo_label

OVERRIDES = ["model.base_width=4", "model.depth=2", "data.image_size=32", "data.batch_size=4"]
TINY = [*SEED_RECIPE, *OVERRIDES]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def rows(path):
    return list(csv.DictReader(path.open()))


def test_confidence_is_the_jaccard_of_strict_and_lenient_masks():
    prob = np.zeros((10, 10), np.float32)
    assert confidence(prob) == 0.0  # nothing confidently foreground
    prob[2:6, 2:6] = 0.95
    assert confidence(prob) == 1.0
    prob[6:8, 2:6] = 0.5  # 8 uncertain pixels next to 16 sure ones
    assert confidence(prob) == pytest.approx(16 / 24)


class FixedSegmenter:
    """A stand-in teacher: a fixed probability map per image (by mean brightness), the real mask rule."""

    batch_size = 2
    labels = Labels.binary()

    def predict_batch(self, images):
        out = []
        for im in images:
            p = np.zeros(im.shape[:2], np.float32)
            h, w = p.shape
            p[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 0.99 if im.mean() > 100 else 0.6
            out.append(p)
        return out

    def to_mask(self, prob, image=None):
        return prob > 0.5


def test_pseudo_label_keeps_confident_masks_and_lists_every_image(tmp_path):
    src = tmp_path / "unlabelled"
    src.mkdir()
    for i, value in enumerate([200, 50, 180]):
        Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(src / f"img_{i}.png")
    summary = pseudo_label(FixedSegmenter(), src, tmp_path / "pl", min_confidence=0.85)
    assert (summary.total, summary.kept, summary.failed) == (3, 2, 0)
    out = tmp_path / "pl"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img_0.png", "img_2.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "img_0_segmentation.png",
        "img_2_segmentation.png",
    ]
    mask = read_mask(out / "masks" / "img_0_segmentation.png")
    assert mask.shape == (20, 30) and mask[5:15, 7:22].all() and mask.sum() == 10 * 15
    listed = {r["id"]: r for r in rows(out / "pseudo_labels.csv")}
    assert float(listed["img_1"]["confidence"]) == 0.0  # p = 0.6 everywhere it is foreground: nothing sure
    assert [listed[f"img_{i}"]["kept"] for i in range(3)] == ["1", "0", "1"]
    assert not (tmp_path / "pl.part").exists()
    # The output is a training folder as it stands.
    from lesionseg.pairs import discover

    assert [p.id for p in discover(out)] == ["img_0", "img_2"]


def test_pseudo_label_cli_end_to_end_with_errors(tmp_path, tiny_model_file):
    src = make_dataset(tmp_path / "u", n=4)
    (src / "images" / "broken.png").write_bytes(b"not an image")
    result = invoke("pseudo-label", "--data", src, "--out", tmp_path / "pl", "--weights", tiny_model_file,
                    "--min-confidence", "0")
    assert result.exit_code == 1
    assert "broken.png" in result.output and "Traceback" not in result.output
    listed = rows(tmp_path / "pl" / "pseudo_labels.csv")
    assert len(listed) == 4  # the unreadable image is reported, not listed
    assert "wrote" in result.output and "of 5 images" in result.output
    # Rerunning replaces the earlier output as a whole; a foreign non-empty folder is refused.
    (src / "images" / "broken.png").unlink()
    assert invoke("pseudo-label", "--data", src / "images", "--out", tmp_path / "pl", "--weights",
                  tiny_model_file, "--min-confidence", "1.0", "--no-tta").exit_code == 0
    assert all(r["kept"] in ("0", "1") for r in rows(tmp_path / "pl" / "pseudo_labels.csv"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = invoke("pseudo-label", "--data", src, "--out", tmp_path / "other", "--weights", tiny_model_file)
    assert result.exit_code == 2 and "holds no pseudo-labels" in result.output
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    result = invoke("pseudo-label", "--data", tmp_path / "nowhere", "--out", tmp_path / "x", "--weights",
                    tiny_model_file)
    assert result.exit_code == 2 and "folder not found" in result.output


def test_extra_data_folders_only_add_training_pairs(tmp_path):
    first = make_dataset(tmp_path / "a", n=10, seed=1)
    extra = make_dataset(tmp_path / "b", n=5, seed=2, prefix="extra")
    cfg = load_config(None, OVERRIDES)
    alone = SegmentationDataModule(first, None, cfg.data, cfg.augment)
    both = SegmentationDataModule([first, extra], None, cfg.data, cfg.augment)
    assert [p.id for p in both.val_set.pairs] == [p.id for p in alone.val_set.pairs]  # same carved split
    assert len(both.train_set) == len(alone.train_set) + 5
    assert {p.image_path.parent.parent for p in both.train_set.pairs} == {first, extra}
    leak = tmp_path / "leak"
    held = alone.val_set.pairs[0]
    for sub, src in (("images", held.image_path), ("masks", held.truth_path)):
        (leak / sub).mkdir(parents=True)
        shutil.copy(src, leak / sub / src.name)
    with pytest.raises(UserError, match=f"id '{held.id}' is also in the validation set"):
        SegmentationDataModule([first, leak], None, cfg.data, cfg.augment)
    with pytest.raises(UserError, match=f"also in {extra}"):
        SegmentationDataModule([first, extra, extra], None, cfg.data, cfg.augment)
    with pytest.raises(UserError, match=f"pairing in {extra}"):  # extra folders are checked like the first
        (extra / "masks" / "extra_000_segmentation.png").unlink()
        SegmentationDataModule([first, extra], None, cfg.data, cfg.augment)


def test_train_with_two_data_folders_records_both(tmp_path):
    first = make_dataset(tmp_path / "a", n=10, seed=1)
    extra = make_dataset(tmp_path / "b", n=6, seed=2, prefix="extra")
    run = tmp_path / "run"
    result = invoke("train", "--data", first, "--data", extra, "--out", run, *TINY, "trainer.max_epochs=1")
    assert result.exit_code == 0, result.output
    card = load_model(run / "model.pt").card
    assert card["training_data"]["train"] == [str(first), str(extra)]
    assert card["training_data"]["n_train"] == 9 + 6 and card["training_data"]["n_val"] == 1
    assert f"--data {first} --data {extra}" in card["command"]


def test_ema_weights_are_validated_selected_and_saved(tmp_path):
    data = make_dataset(tmp_path / "data", n=12)
    run = tmp_path / "run"
    result = invoke("train", "--data", data, "--out", run, *TINY, "trainer.max_epochs=2",
                    "optim.ema_decay=0.9", "optim.lr=0.01")
    assert result.exit_code == 0, result.output
    assert "raw weights" in result.output
    metrics = rows(run / "metrics.csv")
    assert all(r["val_mean_jaccard_raw"] != "" for r in metrics)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    saved = load_model(run / "model.pt").model.state_dict()
    for key, value in saved.items():
        assert torch.equal(value, best[f"ema.module.{key}"]), key
    # The averaged weights differ from the raw ones they follow.
    assert any(not torch.equal(value, best[f"model.{key}"]) for key, value in saved.items()
               if value.is_floating_point())
    shutil.rmtree(run / "checkpoints")


def test_ema_decay_is_validated():
    with pytest.raises(UserError, match="optim.ema_decay"):
        load_config(None, ["optim.ema_decay=1.0"])


def test_a_model_file_can_ask_for_tta_by_default(tmp_path, tiny_model_file):
    """The card's `inference` entry turns TTA on for predict, evaluate, the API and the service; flags win."""
    from lesionseg.api import segmenter
    from lesionseg.inference import InferenceOptions
    from lesionseg.models import save_model
    from lesionseg.serve.http import Options, ServeConfig, Service

    loaded = load_model(tiny_model_file)
    with_default = tmp_path / "tta_default.pt"
    save_model(with_default, loaded.model, loaded.config, loaded.image_size,
               {**loaded.card, "inference": {"tta_scales": [1.0]}})
    seg = segmenter(with_default)
    assert seg.tta and seg.tta_scales == (1.0,) and len(seg.whole.views(seg.tta, seg.tta_scales)) == 3
    assert not segmenter(with_default, tta=False).tta
    assert segmenter(with_default, tta_scales=[0.5, 1.0]).tta_scales == (0.5, 1.0)
    plain = segmenter(tiny_model_file)
    assert not plain.tta and segmenter(tiny_model_file, tta=True).tta_scales == (0.75, 1.0, 1.25)
    service = Service(ServeConfig(weights=str(with_default)))
    service.load()
    try:
        assert service.tta(Options()) is True and service.tta(Options(InferenceOptions(tta=False))) is False
        assert service.batcher.segmenter.tta_scales == (1.0,)
    finally:
        service.close()
    # The CLI reads the same default: --tta/--no-tta override it.
    data = make_dataset(tmp_path / "data", n=3)
    for flag, expected in ((None, True), ("--no-tta", False)):
        out = tmp_path / f"eval_{flag}"
        args = ["evaluate", "--data", data, "--weights", with_default, "--out", out] + (
            [flag] if flag else []
        )
        assert invoke(*args).exit_code == 0
        import json

        assert bool(json.loads((out / "metrics.json").read_text())["tta"]) is expected


def test_init_from_starts_from_a_model_file_and_refuses_another_architecture(tmp_path):
    data = make_dataset(tmp_path / "data", n=8)
    first = tmp_path / "first"
    assert invoke("train", "--data", data, "--out", first, *TINY, "trainer.max_epochs=1").exit_code == 0
    from lesionseg.config import load_config as config
    from lesionseg.training.module import SegmentationModule

    source = load_model(first / "model.pt").model.state_dict()
    module = SegmentationModule(config(None, [*OVERRIDES, f"trainer.init_from={first / 'model.pt'}"]))
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, source[key]), key
    result = invoke("train", "--data", data, "--out", tmp_path / "other", *TINY, "model.base_width=8",
                    f"trainer.init_from={first / 'model.pt'}")
    assert result.exit_code == 2
    assert "another architecture (model.base_width is 8 here); to fine-tune it, set model.base_width=4" in \
        result.output
    tuned = tmp_path / "tuned"
    result = invoke("train", "--data", data, "--out", tuned, *TINY, "trainer.max_epochs=1",
                    "loss.lovasz_weight=0.5", f"trainer.init_from={first / 'model.pt'}")
    assert result.exit_code == 0, result.output
    assert load_model(tuned / "model.pt").card["recipe"]["trainer"]["init_from"] == str(first / "model.pt")


@pytest.mark.parametrize("name", ["default", "cpu", "polyp", "chest", "hippocampus"])
def test_a_bundled_model_fine_tunes_with_its_own_config(name):
    """`--config configs/<its recipe>.yaml trainer.init_from=<its name>` needs no other override: the
    recipe trains its full-resolution stage only (train_only), the shipped file has none, so the run
    trains the shipped network, starting from every one of its weights."""
    from lesionseg.config import load_config as config
    from lesionseg.models.bundled import BUNDLED
    from lesionseg.training.module import SegmentationModule, fit_to_initial_model

    recipe = Path(__file__).resolve().parents[1] / "configs" / f"{BUNDLED[name]}.yaml"
    cfg = fit_to_initial_model(config(recipe, [f"trainer.init_from={name}"]))
    shipped = load_model(name)
    assert dataclasses.replace(cfg.model, deep_supervision=shipped.config.deep_supervision) == shipped.config
    module = SegmentationModule(cfg, shipped.labels)
    source = shipped.model.state_dict()
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, source[key].to(value.dtype)), key


def test_fine_tuning_a_bundled_model_runs_end_to_end(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 64))
    recipe = Path(__file__).resolve().parents[1] / "configs" / "lite0_160_ema_cpu.yaml"
    result = invoke("train", "--data", data, "--out", tmp_path / "tuned", "--config", recipe,
                    "trainer.init_from=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    assert result.exit_code == 0, result.output
    tuned = load_model(tmp_path / "tuned" / "model.pt")
    assert tuned.config == load_model("cpu").config


def test_rank_orders_unlabelled_images_the_least_confident_first(tiny_model_file, tmp_path):
    """`lesionseg rank`: every readable image once, by uncertainty = 1 − confidence of predict's own
    probabilities, highest first; an unreadable file is one line and left out."""
    import csv as csv_module

    from lesionseg.inference import Segmenter
    from lesionseg.io import read_image
    from lesionseg.pseudo_label import confidence

    data = make_dataset(tmp_path / "data", n=6)
    (data / "images" / "broken.png").write_bytes(b"not a png")
    result = invoke("rank", "--data", data, "--weights", tiny_model_file, "--out", tmp_path / "rank.csv")
    assert result.exit_code == 0, result.output
    assert sum("broken.png" in line for line in result.output.splitlines()) == 1
    rows = list(csv_module.DictReader((tmp_path / "rank.csv").open()))
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    seg = Segmenter.load(tiny_model_file)
    for row in rows:
        expected = 1.0 - confidence(seg.predict(read_image(row["source"])))
        assert float(row["uncertainty"]) == pytest.approx(expected, abs=1e-4)
    assert [float(r["uncertainty"]) for r in rows] == sorted((float(r["uncertainty"]) for r in rows),
                                                             reverse=True)
