from .registry import (
    LoadedModel,
    build_model,
    count_parameters,
    default_model_path,
    drop_full_resolution_stage,
    load_model,
    save_model,
)
from .unet import UNet

__all__ = ["UNet", "build_model", "load_model", "save_model", "LoadedModel", "count_parameters",
           "default_model_path", "drop_full_resolution_stage"]
