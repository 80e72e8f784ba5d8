"""`train --folds`: the splits, training every fold, the out-of-fold choice, and the ensemble model file
that every path loads like one model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import SEED_RECIPE, make_dataset
from lesionseg.cli import app
from lesionseg.crossval import choose, pooled_table, read_rows
from lesionseg.errors import UserError
from lesionseg.inference import Segmenter
from lesionseg.labels import Labels
from lesionseg.model_file import ModelFile
from lesionseg.models.ensemble import Ensemble
from lesionseg.splits import make_splits, read_splits
from test_volumes import make_volume_dataset

runner = CliRunner()

TINY = [*SEED_RECIPE,
    "model.encoder=plain",
    "model.base_width=4",
    "model.depth=2",
    "data.image_size=32",
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "trainer.precision=fp32",
    "optim.lr=3e-3",
]


def test_splits_are_seeded_disjoint_and_cover_every_case():
    ids = [f"c{i:02d}" for i in range(12)]
    splits, note = make_splits(ids, 5)
    assert note is None and len(splits) == 5
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == ids  # each case validated exactly once
    assert all(
        set(s["train"]) | set(s["val"]) == set(ids) and not set(s["train"]) & set(s["val"]) for s in splits
    )
    assert make_splits(ids, 5)[0] == splits  # seeded
    few, note = make_splits(ids[:3], 5)
    assert len(few) == 3 and all(len(s["val"]) == 1 for s in few) and "leave-one-out" in note
    with pytest.raises(UserError, match="at least 2"):
        make_splits(ids[:1], 5)


def test_user_splits_are_checked_against_the_data(tmp_path):
    ids = ["a", "b", "c", "d"]
    path = tmp_path / "splits.json"
    path.write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}, {"train": ["c", "d"], "val": ["a"]}]))
    assert read_splits(path, ids)[1] == {"train": ["c", "d"], "val": ["a"]}
    for bad, message in (
        ([{"train": ["a", "b"], "val": ["x"]}] * 2, "not in the data"),
        ([{"train": ["a", "b"], "val": ["a"]}] * 2, "in both train and val"),
        ([{"train": ["a"]}] * 2, "expected a list"),
        ([{"train": ["a", "b"], "val": ["c"]}], "expected a list"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=message):
            read_splits(path, ids)
    path.write_text("{")
    with pytest.raises(UserError, match="not a readable splits file"):
        read_splits(path, ids)


def _rows(scores: dict[tuple, list[float]], names=("foreground",), metric="jaccard"):
    rows = []
    for (tta, t, lcc), values in scores.items():
        for i, v in enumerate(values):
            row = {
                "fold": i % 2,
                "id": f"c{i}",
                "tta": int(tta),
                "threshold": t,
                "largest_component": int(lcc),
            }
            for n in names:
                row[f"{n}_{metric}"] = v[n] if isinstance(v, dict) else v
            rows.append(row)
    return rows


def test_choice_follows_nnunet_order_and_keeps_a_component_step_only_if_no_structure_loses():
    base = {
        (tta, t, lcc): [0.5, 0.5]
        for tta in (False, True)
        for t in (0.3, 0.4, 0.5, 0.6, 0.7)
        for lcc in (False, True)
    }
    scores = {
        **base,
        (True, 0.5, False): [0.6, 0.6],
        (True, 0.4, False): [0.7, 0.7],
        (True, 0.4, True): [0.72, 0.72],
    }
    choice, why = choose(pooled_table(_rows(scores), ("foreground",), "jaccard"), "binary")
    assert choice == {"tta": True, "threshold": 0.4, "largest_component": True}
    assert why[0].startswith("TTA on") and len(why) == 3
    # a tie keeps TTA off (the cheaper) and the threshold nearest 0.5
    choice, _ = choose(pooled_table(_rows(base), ("foreground",), "jaccard"), "binary")
    assert choice == {"tta": False, "threshold": 0.5, "largest_component": False}
    # exclusive classes: no threshold; the component step helps the mean but hurts one class: refused
    names = ("a", "b")
    cells = {(tta, None, lcc): [{"a": 0.5, "b": 0.5}] * 2 for tta in (False, True) for lcc in (False, True)}
    cells[(False, None, True)] = [{"a": 0.8, "b": 0.45}] * 2
    choice, why = choose(pooled_table(_rows(cells, names, "dice"), names, "dice"), "exclusive")
    assert choice == {"tta": False, "threshold": None, "largest_component": False}
    assert "worse for b" in why[-1]


@pytest.mark.parametrize("mode", ["binary", "exclusive", "overlapping"])
def test_ensemble_returns_the_logits_of_the_members_mean_probability(mode):
    torch.manual_seed(0)
    members = [torch.nn.Conv2d(3, 2, 1) for _ in range(3)]
    x = torch.randn(2, 3, 8, 8)
    out = Ensemble(members, exclusive=mode == "exclusive")(x)
    if mode == "exclusive":
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        assert torch.allclose(out.softmax(1), expected, atol=1e-5)
    else:
        expected = torch.stack([m(x).sigmoid() for m in members]).mean(0)
        assert torch.allclose(out.sigmoid(), expected, atol=1e-5)


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds")
    data = make_dataset(root / "data", n=9, size=(40, 48))
    out = root / "cv"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--folds", "3", *TINY])
    assert result.exit_code == 0, result.output
    return data, out, result.output


def test_folds_train_choose_out_of_fold_and_write_one_ensemble(folds_run):
    data, out, output = folds_run
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits) == 3 and sorted(c for s in splits for c in s["val"]) == [
        f"case_{i:03d}" for i in range(9)
    ]
    for i, s in enumerate(splits):  # each fold trained on its own cases and validated on the rest
        card = ModelFile.read(out / f"fold_{i}" / "model.pt").card
        assert card["training_data"]["n_train"] == len(s["train"]) and card["training_data"]["n_val"] == len(
            s["val"]
        )
        assert card["recipe"]["trainer"]["selection"] == "last"
    rows = read_rows(out / "crossval" / "oof.csv")
    assert len(rows) == 9 * 20 and {r["id"] for r in rows} == {f"case_{i:03d}" for i in range(9)}
    evidence = json.loads((out / "crossval.json").read_text())
    assert evidence["folds"] == 3 and len(evidence["out_of_fold"]["per_fold"]) == 3
    file = ModelFile.read(out / "model.pt")
    assert file.members == 3 and file.format_version == 5
    assert file.card["crossval"]["chosen"] == evidence["chosen"]
    assert file.card["inference"]["largest_component"] == evidence["chosen"]["largest_component"]
    assert "crossval: TTA" in output
    seg = Segmenter.load(out / "model.pt")
    assert seg.threshold == evidence["chosen"]["threshold"] and seg.tta == evidence["chosen"]["tta"]
    assert seg.options.largest_component == evidence["chosen"]["largest_component"]
    shown = json.loads(runner.invoke(app, ["info", str(out / "model.pt")]).output)
    assert shown["ensemble_members"] == 3 and shown["crossval"]["folds"] == 3
    assert "out of fold" in shown["training_data"]["val"]


def test_the_ensemble_is_the_mean_of_its_folds(folds_run, rng):
    _, out, _ = folds_run
    image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    folds = [Segmenter.load(out / f"fold_{i}" / "model.pt", tta=False) for i in range(3)]
    ensemble = Segmenter.load(out / "model.pt", tta=False)
    expected = np.mean([f.predict(image) for f in folds], axis=0)
    assert np.allclose(ensemble.predict(image), expected, atol=1e-4)


def test_the_ensemble_exports_to_onnx_and_evaluates(folds_run, tmp_path):
    data, out, _ = folds_run
    result = runner.invoke(
        app, ["export", "--weights", str(out / "model.pt"), "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(data),
            "--weights",
            str(tmp_path / "m.onnx"),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert result.exit_code == 0, result.output
    onnx_metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    result = runner.invoke(
        app,
        ["evaluate", "--data", str(data), "--weights", str(out / "model.pt"), "--out", str(tmp_path / "t")],
    )
    torch_metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert onnx_metrics["mean_jaccard"] == pytest.approx(torch_metrics["mean_jaccard"], abs=2e-3)


def test_rerunning_resumes_without_training_again(folds_run):
    data, out, _ = folds_run
    before = (out / "fold_0" / "model.pt").stat().st_mtime
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--folds", "3", *TINY])
    assert result.exit_code == 0, result.output
    assert "fold 1/3: training" not in result.output
    assert (out / "fold_0" / "model.pt").stat().st_mtime == before


def test_folds_leave_the_datasets_own_list_out_and_work_on_volumes(tmp_path):
    data = make_volume_dataset(tmp_path / "v", n=6)  # writes val_ids.txt naming two volumes
    held = (data / "val_ids.txt").read_text().split()
    out = tmp_path / "cv"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--folds",
        "2",
        *TINY,
        "data.slice_context=3",
        "model.in_channels=3",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    splits = json.loads((out / "splits.json").read_text())
    assert not {c for s in splits for c in s["train"] + s["val"]} & set(held)
    file = ModelFile.read(out / "model.pt")
    assert file.members == 2 and file.labels.mode == "exclusive" and "threshold" not in file.card["inference"]


def test_bad_folds_input_is_one_line(tmp_path):
    data = make_dataset(tmp_path / "d", n=4, size=(32, 32))
    bad = tmp_path / "splits.json"
    bad.write_text(json.dumps([{"train": ["case_000", "case_001"], "val": ["nope"]}] * 2))
    result = runner.invoke(app, ["train", "--data", str(data), "--splits", str(bad), *TINY])
    assert result.exit_code == 2 and "not in the data" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["train", "--data", str(data), "--folds", "1", *TINY])
    assert result.exit_code == 2 and "at least 2 folds" in result.output


def test_members_must_agree_to_be_one_ensemble(tiny_model_file):
    a = ModelFile.read(tiny_model_file)
    b = ModelFile.read(tiny_model_file)
    b.labels = Labels.of("overlapping", [("x", 1), ("y", 2)])
    with pytest.raises(UserError, match="not one ensemble"):
        ModelFile.ensemble([a, b], {})


def test_auto_with_user_splits_shares_the_budget_and_keeps_unlisted_cases_out(tmp_path):
    data = make_dataset(tmp_path / "d", n=7, size=(40, 48))
    splits = tmp_path / "splits.json"
    folds = [
        {"train": ["case_000", "case_001", "case_002"], "val": ["case_003", "case_004"]},
        {"train": ["case_003", "case_004", "case_002"], "val": ["case_000", "case_001"]},
    ]
    splits.write_text(json.dumps(folds))  # case_005 and case_006 are in no fold
    out = tmp_path / "cv"
    args = ["train", "--data", str(data), "--out", str(out), "--auto", "--minutes", "0.4",
            "--splits", str(splits), "trainer.max_epochs=1", "model.base_width=4", "model.depth=2",
            "data.image_size=32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for i in range(len(folds)):
        card = ModelFile.read(out / f"fold_{i}" / "model.pt").card
        assert card["recipe"]["trainer"]["max_minutes"] == pytest.approx(0.2)  # 0.4 min shared by 2 folds
        assert card["training_data"]["n_train"] == 3 and card["training_data"]["n_val"] == 2
    rows = read_rows(out / "crossval" / "oof.csv")
    assert {r["id"] for r in rows} == {"case_000", "case_001", "case_003", "case_004"}
    card = ModelFile.read(out / "model.pt").card
    assert card["fingerprint"]["n_cases"] == 7 and card["plan"]  # the plan's evidence on the ensemble's card


def test_folds_run_in_separate_processes_and_the_last_writes_the_ensemble(tmp_path):
    data = make_dataset(tmp_path / "d", n=6, size=(40, 48))
    out = tmp_path / "cv"
    base = ["train", "--data", str(data), "--out", str(out), "--folds", "2", *TINY]
    first = runner.invoke(app, [*base, "--fold", "1"])
    assert first.exit_code == 0, first.output
    assert "1 of 2 folds scored" in first.output and not (out / "model.pt").exists()
    assert not (out / "fold_0").exists()
    second = runner.invoke(app, [*base, "--fold", "0"])
    assert second.exit_code == 0, second.output
    assert ModelFile.read(out / "model.pt").members == 2
    wrong = runner.invoke(app, [*base, "--fold", "2"])
    assert wrong.exit_code == 2 and "folds 0 to 1" in wrong.output
