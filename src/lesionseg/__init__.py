"""lesionseg: skin-lesion segmentation with U-Net.

    >>> import lesionseg
    >>> seg = lesionseg.Segmenter.load()          # the bundled default model
    >>> prob = seg.predict(rgb_uint8_image)      # probability map at the image's size
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "Segmenter"]


def __getattr__(name):  # lazy: `import lesionseg` stays cheap; torch loads on first use
    if name == "load_model":
        from .models import load_model

        return load_model
    if name == "Segmenter":
        from .inference import Segmenter

        return Segmenter
    raise AttributeError(f"module 'lesionseg' has no attribute {name!r}")
