"""A dataset over validated pairs: reads (or takes from the cache), transforms, returns tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..intensity import color_constancy_fn
from ..pairs import Pair, load_pair


def to_tensors(image: np.ndarray, mask: np.ndarray | None = None):
    """HWC float image → CHW tensor; bool/uint8 HW mask → 1HW float tensor, HWC channel masks → CHW (0/1,
    labels.IGNORED kept)."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    if mask is None:
        return x
    if mask.ndim == 3:
        return x, torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1), dtype=np.float32))
    return x, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


class SegmentationDataset(Dataset):
    def __init__(self, pairs: list[Pair], transform, cache: list[tuple[np.ndarray, np.ndarray]] | None = None,
                 mask_threshold: int | None = None, color_constancy: str = "none"):
        """`color_constancy` is applied to the whole decoded image, before the (training) transform crops it;
        evaluation transforms apply it themselves instead."""
        if cache is not None and len(cache) != len(pairs):
            raise ValueError("cache and pairs differ in length")
        self.pairs, self.transform, self.cache, self.mask_threshold = pairs, transform, cache, mask_threshold
        self.color_constancy = color_constancy_fn(color_constancy)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_random_seed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = (
            self.cache[i] if self.cache is not None else load_pair(self.pairs[i], self.mask_threshold)
        )
        if self.color_constancy is not None:
            image = self.color_constancy(image)
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(i)
        out = self.transform(image=image, mask=mask.view(np.uint8))
        return to_tensors(out["image"], out["mask"])

