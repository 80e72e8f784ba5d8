"""One reader of run directories: config, metrics, model file, and the split the run carved."""

import pytest
from typer.testing import CliRunner

from conftest import SEED_RECIPE, make_dataset
from lesionseg.cli import app
from lesionseg.errors import UserError
from lesionseg.evaluation import carved_split
from lesionseg.run_dir import METRICS_FIELDS, RunDir
from lesionseg.splits import split_settings

runner = CliRunner()
TINY = [*SEED_RECIPE, "model.base_width=4", "model.depth=2", "data.image_size=32", "data.batch_size=4",
        "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_dir")
    data = make_dataset(root / "data", n=12)
    out = root / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY,
                                 "data.val_fraction=0.25", "data.split_seed=7"])
    assert result.exit_code == 0, result.output
    return RunDir(out), data


def test_config_and_typed_metrics(run):
    run_dir, _ = run
    assert run_dir.is_run() and run_dir.config().data.split_seed == 7
    rows = run_dir.metrics()
    assert [r["epoch"] for r in rows] == [0, 1] and set(rows[0]) == set(METRICS_FIELDS)
    assert isinstance(rows[0]["val_mean_jaccard"], float) and rows[0]["val_mean_jaccard_raw"] is None
    assert run_dir.metrics_text_rows()[0]["epoch"] == "0"  # as written, for rewriting unchanged


def test_the_carved_split_is_the_runs_own(run):
    run_dir, data = run
    def ids(labelled):
        return [p.id for p in labelled.pairs]

    assert ids(carved_split(data, of=run_dir.path)) == ids(carved_split(data, 0.25, 7)) \
        == ids(carved_split(data, of=run_dir.model_path))
    assert ids(carved_split(data, of=run_dir.path)) != ids(carved_split(data))  # the defaults: another set
    assert split_settings(run_dir.path) == split_settings(run_dir.model_path) == (0.25, 7)
    from lesionseg.models import load_model

    assert split_settings(load_model(run_dir.model_path).card) == (0.25, 7)
    assert split_settings(None) == (0.1, 42)


def test_a_folder_without_a_run_is_named(tmp_path):
    with pytest.raises(UserError, match="no metrics.csv here"):
        RunDir(tmp_path).metrics()
    result = runner.invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "no metrics.csv here" in result.stderr
