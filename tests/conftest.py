"""Shared fixtures: small synthetic lesion data sets the tests make themselves."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest
from PIL import Image


def child_processes() -> list[str]:
    """The processes this one started that still run (Linux /proc; a zombie has ended)."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        name, fields = rest.rsplit(") ", 1)
        state, parent = fields.split()[:2]
        if parent == me and state != "Z":
            found.append(f"{pid} {name}")
    return found


@pytest.fixture(autouse=True, scope="session")
def no_process_left_behind():
    """Every process a test starts is stopped, whatever the outcome: checked once the session ends."""
    yield
    left = child_processes()
    assert not left, f"processes left running by the tests: {', '.join(left)}"


# The seed's recipe, named as a user would name it: the tiny training runs override it key by key, while
# `train` without --config plans the run, as it does for users.
SEED_RECIPE = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "seed_unet.yaml")]


SHARED_ISIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017"


def synthetic_case(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured image with one dark elliptical 'lesion'; returns (RGB uint8, bool mask)."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    skin = np.array([210, 160, 140], np.float32) + rng.normal(0, 8, 3)
    lesion = np.array([90, 50, 40], np.float32) + rng.normal(0, 8, 3)
    img = np.where(mask[..., None], lesion, skin) + rng.normal(0, 6, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_dataset(root: Path, n: int = 12, size: tuple[int, int] = (48, 64), seed: int = 0,
                 image_ext: str = ".png", mask_suffix: str = "_segmentation", prefix: str = "case") -> Path:
    """root/images/<prefix>_XXX<ext> + root/masks/<prefix>_XXX<suffix>.png (0/255)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, mask = synthetic_case(rng, *size)
        Image.fromarray(img).save(root / "images" / f"{prefix}_{i:03d}{image_ext}")
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(
            root / "masks" / f"{prefix}_{i:03d}{mask_suffix}.png"
        )
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A small, untrained but valid model file (fast to build, exercises the real load path)."""
    import torch

    from lesionseg.config import ModelConfig
    from lesionseg.models import build_model, save_model

    torch.manual_seed(0)
    cfg = ModelConfig(base_width=4, depth=3)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_model(path, build_model(cfg), cfg, image_size=32, card={"note": "test model"})
    return path


def isic_or_skip() -> Path:
    return shared_or_skip("isic2017")


def shared_or_skip(name: str) -> Path:
    root = SHARED_ISIC.parent / name
    if not (root / "train" / "images").is_dir():
        pytest.skip(f"{name} data not found at {root} (only present on the project's machines)")
    return root


def cli_in_child(args: list, then: str = "", imports: str = ""):
    """`lesionseg ARGS` in a fresh Python process (what it imports, its own peak memory); `then` runs after a
    clean exit, its prints on stdout. Returns the CompletedProcess."""
    import subprocess
    import sys

    code = (f"import sys\nfrom lesionseg.cli import app\n{imports}try:\n    app(sys.argv[1:])\n"
            f"except SystemExit as e:\n    assert e.code == 0, e.code\n{then}")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)



def train_ok(data: Path, run: Path, *args: str) -> Path:
    """`lesionseg train --data DATA --out RUN ARGS`, which must succeed; returns RUN."""
    from typer.testing import CliRunner

    from lesionseg.cli import app

    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(run), *args])
    assert result.exit_code == 0, result.output
    return run
