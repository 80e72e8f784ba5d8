from ..model_file import LoadedModel, load_model, save_model
from .build import build_model, count_parameters, drop_full_resolution_stage
from .bundled import bundled_model_path
from .unet import UNet
from .unet3d import UNet3D

__all__ = ["UNet", "UNet3D", "build_model", "load_model", "save_model", "LoadedModel", "count_parameters",
           "bundled_model_path", "drop_full_resolution_stage"]
