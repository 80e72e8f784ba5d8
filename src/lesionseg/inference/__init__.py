from .options import InferenceOptions, OptionError
from .segmenter import Segmenter

__all__ = ["InferenceOptions", "OptionError", "Segmenter"]
