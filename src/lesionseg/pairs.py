"""Finding image/mask pairs by id, and checking a whole folder in one pass.

A data folder holds `images/` and `masks/`. A mask pairs with an image by id: `ID.<ext>` pairs with
`ID_segmentation.<ext>` or `ID.<ext>`. Never by sorted order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError, ValidationError
from .io import IMAGE_EXTENSIONS, JPEG_MASK_THRESHOLD, read_image, read_mask

MASK_SUFFIX = "_segmentation"


@dataclass(frozen=True)
class Pair:
    id: str
    image_path: Path
    mask_path: Path


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def mask_id(path: Path) -> str:
    stem = path.stem
    return stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem


def _by_id(files: list[Path], key, kind: str, problems: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        k = key(f)
        if k in out:
            problems.append(f"{f}: duplicate {kind} id '{k}' (also {out[k].name})")
        else:
            out[k] = f
    return out


def discover(folder: str | Path) -> list[Pair]:
    """Pairs in `folder/images` + `folder/masks`. Raises ValidationError listing every pairing problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found")
    images_dir, masks_dir = folder / "images", folder / "masks"
    missing = [d.name for d in (images_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise UserError(f"{folder}: expected sub-folders images/ and masks/ (missing: {', '.join(missing)})")
    problems: list[str] = []
    images = _by_id(_image_files(images_dir), lambda p: p.stem, "image", problems)
    masks = _by_id(_image_files(masks_dir), mask_id, "mask", problems)
    if not images and not masks:
        raise UserError(
            f"{folder}: no images found in images/ (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    for i in sorted(images.keys() - masks.keys()):
        problems.append(
            f"{images[i]}: no mask for this image (looked for {i}{MASK_SUFFIX}.* or {i}.* in masks/)"
        )
    for i in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[i]}: no image for this mask (looked for {i}.* in images/)")
    if problems:
        raise ValidationError(problems, what=f"pairing in {folder}")
    return [Pair(i, images[i], masks[i]) for i in sorted(images)]


def load_pair(pair: Pair, mask_threshold: int | None = None, on_auto=None) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(pair.image_path)
    mask = read_mask(pair.mask_path, threshold=mask_threshold, on_auto=on_auto)
    if image.shape[:2] != mask.shape:
        raise UserError(
            f"{pair.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    return image, mask


def validate(pairs: list[Pair], mask_threshold: int | None = None, keep: bool = False,
             keep_limit_bytes: int = 4 << 30) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Read every pair once and report *all* problems together.

    With `keep`, the decoded arrays are returned (a cache for training) as long as they stay under
    `keep_limit_bytes`; past that, None, and the dataset reads from disk.
    """
    problems: list[str] = []
    kept: list[tuple[np.ndarray, np.ndarray]] | None = [] if keep else None
    used = 0
    auto: list[Path] = []
    for pair in pairs:
        try:
            image, mask = load_pair(pair, mask_threshold, on_auto=auto.append)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if kept is not None:
            used += image.nbytes + mask.nbytes
            if used > keep_limit_bytes:
                kept = None
            else:
                kept.append((image, mask))
    if problems:
        raise ValidationError(problems, what="data check")
    if auto:
        print(
            f"data: {len(auto)} JPEG mask(s) with compression grey levels around 0 and 255 (e.g. "
            f"{auto[0].name}) "
            f"binarised at {JPEG_MASK_THRESHOLD}; pass --mask-threshold T to choose",
            file=sys.stderr,
            flush=True,
        )
    return kept


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of indices; the same seed and ids always give the same split."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, int(round(len(pairs) * val_fraction)))
    if n_val >= len(pairs):
        raise ValueError("need at least 2 pairs to split off a validation set")
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return train, val
