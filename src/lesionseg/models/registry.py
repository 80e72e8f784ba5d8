"""Building models from config and saving/loading self-contained model files (weights + config)."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, can_drop_full_resolution_stage
from ..errors import UserError
from ..io import atomic_path
from .unet import UNet

MODEL_FORMAT = "lesionseg-model"
# 2: preprocess may name a colour constancy step (files without one are written as 1)
MODEL_FORMAT_VERSION = 2
# Models shipped inside the package: short name → recipe name. The recipe name is also the model's file
# (assets/<recipe>.pt) and its config (configs/<recipe>.yaml); `--weights` takes either name. Each card
# (docs/model_cards.md, `lesionseg info NAME`) gives the command that trains it.
BUNDLED = {"default": "lite0_256_gpu", "cpu": "lite0_160_ema_cpu", "polyp": "lite0_192_polyp_cpu"}


def build_model(cfg: ModelConfig, pretrained: bool = True) -> nn.Module:
    """`pretrained=False`: do not read ImageNet encoder weights (a model file will supply every weight)."""
    if cfg.arch == "unet":
        return UNet(cfg.in_channels, cfg.out_channels, cfg.base_width, cfg.depth, cfg.upsample,
                    attention=cfg.attention, deep_supervision=cfg.deep_supervision, encoder=cfg.encoder,
                    full_resolution_decoder=cfg.full_resolution_decoder,
                    pretrained=pretrained)
    raise UserError(f"config key 'model.arch': unknown architecture {cfg.arch!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference plus what it needs to be fed correctly."""

    model: nn.Module
    config: ModelConfig
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    card: dict[str, Any]
    path: Path | None
    color_constancy: str = "none"


def save_model(path: str | Path, model: nn.Module, cfg: ModelConfig, image_size: int,
               card: dict[str, Any] | None = None, half: bool = False, color_constancy: str = "none") -> None:
    """Write a self-contained model file atomically. `half` stores weights in fp16 (loaded as fp32).
    `color_constancy` names the step every input goes through before normalisation (preprocess.py)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    preprocess = {"image_size": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if color_constancy != "none":  # only then do older readers, which would skip the step, need refusing
        preprocess["color_constancy"] = color_constancy
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION if color_constancy != "none" else 1,
        "model": dataclasses.asdict(cfg),
        "preprocess": preprocess,
        "card": card or {},
        "state_dict": state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def bundled_names() -> set[str]:
    return set(BUNDLED) | set(BUNDLED.values())


def default_model_path(name: str = "default") -> Path:
    """The file of a bundled model, by short name (`default`, `cpu`) or recipe name (`lite0_256_gpu`, ...)."""
    return Path(str(resources.files("lesionseg") / "assets" / f"{BUNDLED.get(name, name)}.pt"))


def resolve_weights(weights: str | Path | None) -> Path:
    """A model file path, or a bundled model's name when no such file exists."""
    if weights is None:
        return default_model_path()
    if str(weights) in bundled_names() and not Path(weights).exists():
        return default_model_path(str(weights))
    return Path(weights)


def read_model_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / truncated / foreign files
        raise UserError(f"{path}: not a readable lesionseg model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: not a lesionseg model file (use the run's model.pt, not a checkpoint)")
    if payload.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise UserError(f"{path}: written by a newer lesionseg (format {payload['format_version']})")
    return payload


def load_model(weights: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """The bundled default model, or the model file `weights`, in eval mode."""
    path = resolve_weights(weights)
    payload = read_model_file(path)
    try:
        cfg = ModelConfig(**payload["model"])
    except TypeError as exc:
        raise UserError(f"{path}: model config not understood ({exc})") from None
    model = build_model(cfg, pretrained=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "shape mismatch"
        raise UserError(f"{path}: weights do not match the model config ({first})") from None
    model.eval().to(device)
    pre = payload.get("preprocess", {})
    return LoadedModel(
        model=model,
        config=cfg,
        image_size=int(pre.get("image_size", 256)),
        mean=tuple(pre.get("mean", IMAGENET_MEAN)),
        std=tuple(pre.get("std", IMAGENET_STD)),
        card=payload.get("card", {}),
        path=path,
        color_constancy=str(pre.get("color_constancy", "none")),
    )


def drop_full_resolution_stage(trained: nn.Module, cfg: ModelConfig) -> tuple[nn.Module, ModelConfig]:
    """The same trained model without its full-resolution decoder stage: the deep-supervision head of the
    half-resolution stage, trained alongside, becomes the output head (its logits upsampled ×2), and the
    remaining auxiliary heads move up one place. No retraining (`trainer.drop_full_resolution_stage` does it
    to the selected model; docs/accuracy.md measures it)."""
    if not can_drop_full_resolution_stage(cfg):
        raise UserError("dropping the full-resolution stage needs an EfficientNet-encoder model with deep "
                        "supervision that still has that stage")
    new_cfg = dataclasses.replace(cfg, full_resolution_decoder=False)
    model = build_model(new_cfg, pretrained=False)
    last_up, n_aux = f"ups.{cfg.depth - 1}.", cfg.depth - 1  # aux heads run coarse → fine: the last is 1/2
    state = {}
    for key, value in trained.state_dict().items():
        if key.startswith(last_up) or key.startswith("head.") or key.startswith("skip_attention.0."):
            continue
        if key.startswith("aux_heads."):
            index, rest = key.split(".", 2)[1:]
            key = "head." + rest if int(index) == n_aux - 1 else f"aux_heads.{index}.{rest}"
        state[key] = value
    model.load_state_dict(state)
    return model.eval(), new_cfg
