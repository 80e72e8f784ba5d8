"""lesionseg: 2-D medical image segmentation with U-Net — train, evaluate, predict, deploy.

>>> import lesionseg
>>> lesionseg.train("data/train", "runs/mine", config="configs/lite0_160_ema_cpu.yaml", trainer={"max_epochs":
5})
>>> lesionseg.evaluate("data/val", weights="runs/mine/model.pt")["mean_jaccard"]
>>> seg = lesionseg.Segmenter.load()          # the bundled default model
>>> prob = seg.predict(rgb_uint8_image)      # probability map at the image's size
"""

__version__ = "0.1.0"
__all__ = ["__version__", "train", "evaluate", "load_model", "Segmenter", "UserError"]

from .errors import UserError  # noqa: E402  (torch-free)


def __getattr__(name):  # lazy: `import lesionseg` stays cheap; torch loads on first use
    if name in ("train", "evaluate"):
        from . import api

        return getattr(api, name)
    if name == "load_model":
        from .models import load_model

        return load_model
    if name == "Segmenter":
        from .inference import Segmenter

        return Segmenter
    raise AttributeError(f"module 'lesionseg' has no attribute {name!r}")
