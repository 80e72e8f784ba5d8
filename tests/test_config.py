import subprocess
from pathlib import Path

import pytest

from lesionseg.config import Config, diff_configs, dump_config, load_config, parse_overrides
from lesionseg.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_seed_recipe():
    cfg = load_config()
    assert (cfg.model.base_width, cfg.model.depth, cfg.model.upsample) == (64, 4, "bilinear")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.eta_min) == (1e-4, 1e-5, 1e-6)
    assert cfg.trainer.patience == 15 and cfg.data.image_size == 256 and cfg.data.batch_size == 8


def test_shipped_configs_load():
    original = load_config(ROOT / "configs" / "seed_unet.yaml")
    assert original.model.base_width == 64 and original.data.image_size == 256
    fast = load_config(ROOT / "configs" / "cpu_fast.yaml")
    assert fast.model.base_width == 16 and fast.data.image_size == 128


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_loads_and_recipes_name_their_command(path):
    """Every config validates; a recipe trained by scripts/train_model.sh names itself in that command."""
    cfg = load_config(path)
    assert cfg.data.image_size % 2**cfg.model.depth == 0
    text = path.read_text()
    if "train_model.sh" in text:
        assert f"train_model.sh {path.stem}" in text
    if "gpu_run.sh" in text:
        assert f"gpu_run.sh {path.stem}" in text or path.stem == "lite0_256_gpu"  # the script's default


def test_gpu_run_refuses_an_unknown_recipe_before_touching_anything(tmp_path):
    """Checked before .gpu/ is cleared or filled (the script cds to the project root, so it runs from
    anywhere)."""
    gpu = ROOT / ".gpu"

    def listing():
        return sorted(str(p.relative_to(gpu)) for p in gpu.rglob("*")) if gpu.exists() else None

    before = listing()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "prepare", "no_such_recipe"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "configs/no_such_recipe.yaml: no such recipe"
    assert listing() == before


def test_overrides_parse_types_and_nest():
    cfg = load_config(overrides=["model.base_width=32", "trainer.max_epochs=5", "optim.lr=3e-4",
                                 "trainer.max_minutes=null", "model.upsample=transposed", "data.cache=false"])
    assert cfg.model.base_width == 32 and cfg.trainer.max_epochs == 5 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.upsample == "transposed" and cfg.data.cache is False and cfg.trainer.max_minutes is None


@pytest.mark.parametrize("override, message", [
    (["model.base_widht=32"], "unknown config key 'model.base_widht'"),
    (["modle.base_width=32"], "unknown config key 'modle'"),
    (["model.base_width=abc"], "config key 'model.base_width': expected int"),
    (["model.base_width=3.5"], "config key 'model.base_width': expected int"),
    (["data.cache=3"], "config key 'data.cache': expected bool"),
    (["model.upsample=nearest"], "config key 'model.upsample'"),
    (["model=3"], "config key 'model': expected a section"),
    (["base_width"], "expected KEY=VALUE"),
    (["data.image_size=100"], "multiple of 2**model.depth"),
    (["augment.hflip=1.5"], "augment.hflip"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("*", r"\*").replace("(", r"\(")):
        load_config(overrides=override)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_epoch: 3\n")
    with pytest.raises(UserError, match="'trainer.max_epoch'"):
        load_config(typo)


def test_dump_round_trip_and_diff(tmp_path):
    cfg = load_config(overrides=["model.base_width=8"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert diff_configs(Config(), again) == ["model.base_width"]
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}
