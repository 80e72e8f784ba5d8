"""Building networks from their config (the model file, `model_file.py`, calls `build_model`)."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..config import ModelConfig, can_drop_full_resolution_stage
from ..errors import UserError
from .unet import UNet
from .unet3d import UNet3D


def build_model(cfg: ModelConfig, pretrained: bool = True) -> nn.Module:
    """`pretrained=False`: do not read ImageNet encoder weights (a model file will supply every weight)."""
    if cfg.arch == "unet":
        return UNet(cfg.in_channels, cfg.out_channels, cfg.base_width, cfg.depth, cfg.upsample,
                    attention=cfg.attention, deep_supervision=cfg.deep_supervision, encoder=cfg.encoder,
                    full_resolution_decoder=cfg.full_resolution_stage != "none",
                    pretrained=pretrained, prompt_channels=cfg.prompt_channels)
    if cfg.arch == "unet3d":
        return UNet3D(cfg.in_channels, cfg.out_channels, cfg.base_width,
                      cfg.kernels or [[3, 3, 3]] * (cfg.depth + 1),
                      cfg.strides or [[1, 1, 1]] + [[2, 2, 2]] * cfg.depth, cfg.deep_supervision,
                      cfg.prompt_channels)
    raise UserError(f"config key 'model.arch': unknown architecture {cfg.arch!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def drop_full_resolution_stage(trained: nn.Module, cfg: ModelConfig) -> tuple[nn.Module, ModelConfig]:
    """The same trained model without its full-resolution decoder stage: the deep-supervision head of the
    half-resolution stage, trained alongside, becomes the output head (its logits upsampled ×2), and the
    remaining auxiliary heads move up one place. No retraining (`model.full_resolution_stage: train_only`
    does it to the selected model; docs/accuracy.md measures it)."""
    if not can_drop_full_resolution_stage(cfg):
        raise UserError("dropping the full-resolution stage needs an EfficientNet-encoder model with deep "
                        "supervision that still has that stage")
    new_cfg = dataclasses.replace(cfg, full_resolution_stage="none")
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
