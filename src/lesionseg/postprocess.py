"""Post-processing of probability maps into masks."""

from __future__ import annotations

import numpy as np


def threshold(prob: np.ndarray, level: float = 0.5) -> np.ndarray:
    return np.asarray(prob) > level
