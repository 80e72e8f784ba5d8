"""Inference options are declared once (`InferenceOptions`): the CLI's flags, the API's keywords and the
service's query parameters come from it, and so does every refusal."""

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from lesionseg.cli import app
from lesionseg.inference import InferenceOptions, OptionError

runner = CliRunner()


def command_flags(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]
    return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_every_option_is_a_flag_of_predict_and_evaluate(command):
    flags = command_flags(command)
    for name in InferenceOptions.names():
        assert "--" + name.replace("_", "-") in flags, name
    assert "--no-tta" in flags and "--no-largest-component" in flags


def test_the_model_defaults_fill_only_what_is_unset():
    unset = InferenceOptions()
    assert unset.resolved({}).tta is False and unset.resolved({}).tta_scales == (0.75, 1.0, 1.25)
    assert unset.resolved({}).threshold == 0.5 and unset.resolved({}).largest_component is False
    with_scales = unset.resolved({"tta_scales": [1.0, 1.5]})
    assert with_scales == dataclasses.replace(unset, tta=True, tta_scales=(1.0, 1.5), threshold=0.5,
                                              largest_component=False)
    # a model whose card names a threshold and the largest component (chosen out of fold)
    chosen = {"threshold": 0.4, "largest_component": True}
    assert unset.resolved(chosen).threshold == 0.4 and unset.resolved(chosen).largest_component is True
    given = InferenceOptions(threshold=0.6, largest_component=False).resolved(chosen)
    assert given.threshold == 0.6 and given.largest_component is False
    assert InferenceOptions(tta=False).resolved({"tta_scales": [1.0]}).tta is False
    assert InferenceOptions(tta_scales=[0.5]).resolved({"tta_scales": [1.0]}).tta_scales == (0.5,)


def test_one_validation_named_the_way_each_caller_names_it():
    with pytest.raises(OptionError) as caught:
        InferenceOptions(threshold=1.5)
    assert str(caught.value) == "threshold must be between 0 and 1, got 1.5"
    assert caught.value.named(lambda n: "--" + n) == "--threshold must be between 0 and 1, got 1.5"
    with pytest.raises(OptionError) as caught:
        InferenceOptions.from_text({"min_area": "-5", "fill_holes": "maybe", "threshold": "x"})
    assert [name for name, _ in caught.value.problems] == ["min_area", "fill_holes", "threshold"]
    assert InferenceOptions.from_text({"tta": "", "min_area": "3"}) == InferenceOptions(tta=True, min_area=3)


@pytest.mark.parametrize("args, message", [
    (["--min-area", "-3"], "--min-area must be ≥ 0, got -3"),
    (["--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["--tta-scales", "9"], "--tta-scales must be between 0.1 and 4, got [9.0]"),
])
def test_the_cli_names_the_flag(tmp_path, args, message):
    result = runner.invoke(app, ["predict", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_the_api_names_the_keyword(tiny_model_file):
    from lesionseg.api import segmenter

    with pytest.raises(OptionError, match="min_area must be ≥ 0, got -1"):
        segmenter(tiny_model_file, min_area=-1)
    with pytest.raises(Exception, match="unknown option.*min_areaa"):
        segmenter(tiny_model_file, min_areaa=1)


def test_the_service_takes_the_query_options_from_the_declaration():
    from starlette.requests import Request

    from lesionseg.serve.http import parse_options

    names = InferenceOptions.names(query_only=True)
    assert set(names) == {"threshold", "tta", "largest_component", "fill_holes", "min_area"}
    request = Request({"type": "http", "query_string": b"threshold=0.3&fill_holes=1", "headers": []})
    model = InferenceOptions().resolved({"threshold": 0.4, "largest_component": True})
    opts = parse_options(request, model)
    assert opts.inference == dataclasses.replace(model, threshold=0.3, fill_holes=True)
    assert opts.format == "mask"
    # what the request leaves unset is the model's own
    bare = Request({"type": "http", "query_string": b"", "headers": []})
    assert parse_options(bare, model).inference.largest_component is True
