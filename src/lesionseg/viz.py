"""Pictures: overlays, the original three-panel figure, training curves, a Jaccard histogram.

matplotlib is imported lazily (and with the Agg backend) so inference does not pay for it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io import atomic_path

RED = (230, 40, 40)
GREEN = (40, 200, 60)


def overlay(image: np.ndarray, pred: np.ndarray | None = None, truth: np.ndarray | None = None,
            alpha: float = 0.3) -> np.ndarray:
    """RGB uint8 picture: prediction tinted and outlined red, ground truth outlined green."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 256))
    if pred is not None and pred.any():
        # Blend only the prediction's bounding box: a small lesion on a 12 MP photo costs little.
        ys, xs = np.nonzero(pred.any(axis=1))[0], np.nonzero(pred.any(axis=0))[0]
        box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        region = out[box]
        red = np.empty_like(region)
        red[:] = RED
        np.copyto(region, cv2.addWeighted(region, 1 - alpha, red, alpha, 0), where=pred[box][..., None])
    for mask, colour in ((truth, GREEN), (pred, RED)):
        if mask is not None and mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def structures_overlay(image: np.ndarray, masks: np.ndarray, labels, alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 picture: each structure of bool (C, H, W) `masks` tinted and outlined in its colour (where
    structures overlap, the later one is on top), with a legend of the structures in the top-left corner."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 256))
    for mask, s in zip(masks, labels.structures):
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if not len(ys):
            continue
        # each structure's bounding box only: five structures on a 1024² radiograph cost little
        box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        region, inside = out[box], mask[box]
        tint = np.empty_like(region)
        tint[:] = s.color
        np.copyto(region, cv2.addWeighted(region, 1 - alpha, tint, alpha, 0), where=inside[..., None])
        contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                       offset=(int(xs[0]), int(ys[0])))
        cv2.drawContours(out, contours, -1, s.color, thickness)
    return draw_legend(out, labels)


def draw_legend(image: np.ndarray, labels) -> np.ndarray:
    scale = max(0.4, max(image.shape[:2]) / 1400)
    line = int(round(22 * scale / 0.6))
    pad = line // 3
    text = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in labels.names)
    width = int(text) + 3 * line
    height = line * len(labels.structures) + pad
    box = image[:height, : width + pad]
    box[:] = (box * 0.4).astype(np.uint8)
    for i, s in enumerate(labels.structures):
        y = pad + i * line
        cv2.rectangle(image, (pad, y), (pad + line - pad, y + line - pad), s.color, -1)
        cv2.putText(image, s.name, (pad + line + pad, y + line - 2 * pad // 1 - 1), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)


def three_panel(
    path: str | Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str = ""
) -> None:
    """The original figure: image / ground truth / prediction, plus both contours on the image."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    panels = [(image, "image"), (truth, "ground truth"), (pred, "prediction"),
              (overlay(image, pred=pred, truth=truth), "overlay (green truth, red prediction)")]
    for ax, (picture, label) in zip(axes, panels):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0,
                  vmax=1 if picture.ndim == 2 else None)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def training_curves(rows: list[dict], path: str | Path) -> None:
    """Loss, validation mean Jaccard / Dice and learning rate per epoch, from a run's metrics
    (`RunDir.metrics()`)."""
    plt = _pyplot()
    epochs = [r["epoch"] + 1 for r in rows]

    def col(name):
        return [np.nan if r.get(name) is None else r[name] for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(epochs, col("train_loss"), label="train")
    axes[0].plot(epochs, col("val_loss"), label="validation")
    axes[0].set_title("Dice + BCE loss")
    axes[0].legend()
    axes[1].plot(epochs, col("val_mean_jaccard"), label="mean Jaccard")
    axes[1].plot(epochs, col("val_dice"), label="Dice")
    axes[1].set_title("validation")
    axes[1].legend()
    axes[2].plot(epochs, col("lr"))
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _save(fig, path)


def jaccard_histogram(values: list[float], path: str | Path, threshold: float = 0.65) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=np.linspace(0, 1, 41), color="#4a7ab7")
    ax.axvline(threshold, color="red", linestyle="--", label=f"ISIC threshold {threshold}")
    ax.axvline(float(np.mean(values)), color="black", label=f"mean {np.mean(values):.3f}")
    ax.set_xlabel("per-image Jaccard")
    ax.set_ylabel("images")
    ax.legend()
    _save(fig, path)


def _display(plane: np.ndarray) -> np.ndarray:
    """A slice of (any) intensities as RGB uint8, windowed to its 1–99th percentiles."""
    lo, hi = np.percentile(plane, (1, 99)) if plane.size else (0.0, 1.0)
    grey = np.clip((plane - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _tile(image: np.ndarray, labels_plane: np.ndarray, labels, scale: int) -> np.ndarray:
    values = [s.value for s in labels.structures]
    masks = np.stack([labels_plane == v for v in values])
    big = cv2.resize(_display(image), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    masks = np.stack([cv2.resize(m.astype(np.uint8), None, fx=scale, fy=scale,
                                 interpolation=cv2.INTER_NEAREST) for m in masks]).astype(bool)
    out = big.copy()
    for mask, s in zip(masks, labels.structures):
        out[mask] = (0.6 * out[mask] + 0.4 * np.asarray(s.color)).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in s.color), 1)
    return out


def _row(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, h - t.shape[0]), (0, gap), (0, 0))) for t in tiles]
    return np.concatenate(padded, axis=1)


def volume_views(image: np.ndarray, label_volume: np.ndarray, labels, slice_axis: int,
                 montage: int = 8) -> np.ndarray:
    """RGB uint8 picture of a segmented volume: the three orthogonal planes through the structures' centre
    (the whole volume's when empty) on top, a montage of `montage` slices along the slice axis that show a
    structure below, each outlined in the structures' colours, with a legend."""
    on = np.argwhere(label_volume > 0)
    centre = on.mean(0).round().astype(int) if len(on) else np.asarray(label_volume.shape) // 2
    scale = max(1, int(round(192 / max(label_volume.shape))))
    def tile(index: int, axis: int) -> np.ndarray:
        return _tile(np.take(image, index, axis=axis), np.take(label_volume, index, axis=axis), labels, scale)

    planes = [tile(centre[a], a) for a in range(3)]
    stack = np.moveaxis(label_volume, slice_axis, 0)
    along = np.flatnonzero(stack.reshape(stack.shape[0], -1).any(1))
    picks = along if len(along) else np.arange(label_volume.shape[slice_axis])
    picks = picks[np.linspace(0, len(picks) - 1, min(montage, len(picks))).round().astype(int)]
    tiles = [tile(i, slice_axis) for i in picks]
    top, bottom = _row(planes), _row(tiles[: montage // 2]) if tiles else None
    rows = [top, bottom] + ([_row(tiles[montage // 2:])] if len(tiles) > montage // 2 else [])
    rows = [r for r in rows if r is not None]
    width = max(r.shape[1] for r in rows)
    picture = np.concatenate([np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    return draw_legend(np.ascontiguousarray(picture), labels)
