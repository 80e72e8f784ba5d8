"""Pictures: overlays of masks on images."""

from __future__ import annotations

import cv2
import numpy as np

RED = (230, 40, 40)
GREEN = (40, 200, 60)


def overlay(image: np.ndarray, pred: np.ndarray | None = None, truth: np.ndarray | None = None,
            alpha: float = 0.3) -> np.ndarray:
    """RGB uint8 picture: prediction tinted and outlined red, ground truth outlined green."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 256))
    if pred is not None and pred.any():
        tint = out.astype(np.float32)
        tint[pred] = (1 - alpha) * tint[pred] + alpha * np.array(RED, np.float32)
        out = tint.round().astype(np.uint8)
    for mask, colour in ((truth, GREEN), (pred, RED)):
        if mask is not None and mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, thickness)
    return out
