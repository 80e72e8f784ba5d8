"""The models shipped inside the package, by name (torch-free: the ONNX path resolves names too)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# Short name → recipe name. The recipe name is also the model's file (assets/<recipe>.pt) and its config
# (configs/<recipe>.yaml); `--weights` takes either name. Each card (docs/model_cards.md, `lesionseg info
# NAME`) gives the command that trains it. `default` is the model used when no --weights is given.
BUNDLED = {"default": "lite0_256_gpu", "cpu": "lite0_160_ema_cpu", "polyp": "lite0_192_polyp_cpu",
           "chest": "lite0_384_chest_cpu", "hippocampus": "lite0_96_hippocampus_cpu",
           "heart": "lite0_256_heart_cpu", "polyp_clicks": "lite0_192_polyp_clicks_cpu",
           "chest_clicks": "lite0_384_chest_clicks_cpu"}
WHEN_NO_WEIGHTS = "default"


def bundled_names() -> set[str]:
    return set(BUNDLED) | set(BUNDLED.values())


def bundled_model_path(name: str) -> Path:
    """The file of a bundled model, by short name (`default`, `cpu`) or recipe name (`lite0_256_gpu`, ...)."""
    return Path(str(resources.files("lesionseg") / "assets" / f"{BUNDLED.get(name, name)}.pt"))


def resolve_weights(weights: str | Path | None) -> Path:
    """A model file path, or a bundled model's name when no such file exists; None: the bundled `default`."""
    if weights is None:
        return bundled_model_path(WHEN_NO_WEIGHTS)
    if str(weights) in bundled_names() and not Path(weights).exists():
        return bundled_model_path(str(weights))
    return Path(weights)
