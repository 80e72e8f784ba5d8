"""Clicks on a case, in 2-D (rows, cols) or 3-D (slices, rows, cols): where a simulated user clicks next, how
clicks become a network's prompt channels, and how many clicks a case needed to reach a Dice (NoC).

The simulated user follows the protocol that interactive-segmentation results are reported under (RITM,
SimpleClick, and the NoC@85 / NoC@90 tables of their papers): of the two error regions — truth missed
(a positive click fixes it) and prediction beyond truth (a negative click) — the one whose interior lies
deepest, measured by the distance to its border with the image's edge counting as border, gets the click,
at its deepest point (the first one in C order where several tie). A point clicked before is never clicked
again. Distances are in mm where a spacing is given (volumes with thick slices), else in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Click:
    position: tuple[int, ...]  # (row, col) or (slice, row, col)
    positive: bool  # on truth the prediction missed; negative: on a false prediction


def _depth(region: np.ndarray, spacing) -> np.ndarray:
    """Each pixel's distance to the nearest pixel outside `region`, the image's edge counting as outside."""
    padded = np.pad(region, 1)
    inner = tuple(slice(1, -1) for _ in range(region.ndim))
    return ndimage.distance_transform_edt(padded, sampling=spacing)[inner]


def next_click(pred: np.ndarray, truth: np.ndarray, clicked: list[Click] = (), spacing=None) -> Click | None:
    """The simulated user's next click on boolean `pred` against boolean `truth`; None when they agree
    everywhere no click has gone yet."""
    missed, extra = _depth(truth & ~pred, spacing), _depth(pred & ~truth, spacing)
    for click in clicked:
        missed[click.position] = extra[click.position] = 0
    if max(missed.max(), extra.max()) == 0:
        return None
    positive = bool(missed.max() > extra.max())
    depth = missed if positive else extra
    return Click(tuple(int(i) for i in np.unravel_index(int(np.argmax(depth)), depth.shape)), positive)


def click_radius(shape: tuple[int, ...]) -> float:
    """The disk radius, in pixels of the network's input, of a click on an input of `shape`: RITM's 5 pixels
    on its 320-pixel crops, scaled to the input's shorter in-plane side, at least 2."""
    return max(2.0, min(shape[-2:]) / 64)


def click_maps(shape: tuple[int, ...], clicks: list[Click], radius: float) -> np.ndarray:
    """(2, *shape) float32 prompt channels: positive clicks as disks (balls in 3-D) of `radius` pixels in the
    first, negative in the second."""
    maps = np.zeros((2, *shape), np.float32)
    if not clicks:
        return maps
    grid = np.indices(shape, sparse=True)
    for click in clicks:
        inside = sum((g - p) ** 2 for g, p in zip(grid, click.position)) <= radius**2
        maps[0 if click.positive else 1][inside] = 1.0
    return maps


def clicks_to_reach(dice_after: list[float], threshold: float, max_clicks: int) -> int:
    """NoC: how many clicks a case needed for Dice ≥ `threshold`, where `dice_after[k]` is the Dice after k
    clicks (k = 0: the model alone, so a case already good needs none); `max_clicks` when never reached."""
    for k, dice in enumerate(dice_after[: max_clicks + 1]):
        if dice >= threshold:
            return k
    return max_clicks


def click_curve(mask_after, truth: np.ndarray, max_clicks: int, spacing=None) -> list[float]:
    """One case and structure under the protocol: Dice of `mask_after(clicks)` (bool, truth's shape) with no
    click, then after each of up to `max_clicks` clicks, each placed by `next_click` on the mask so far; a
    case the user can no longer improve keeps its last Dice."""
    from .metrics import overlap_scores

    placed: list[Click] = []
    dice: list[float] = []
    while True:
        mask = mask_after(placed)
        dice.append(overlap_scores(mask, truth)["dice"])
        click = next_click(mask, truth, placed, spacing) if len(placed) < max_clicks else None
        if click is None:
            return dice + [dice[-1]] * (max_clicks + 1 - len(dice))
        placed.append(click)
