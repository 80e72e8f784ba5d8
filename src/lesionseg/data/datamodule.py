"""Lightning DataModule: discover + validate once, split, cache decoded images, build loaders."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import AugmentConfig, DataConfig
from ..errors import UserError
from ..pairs import discover, validate
from .dataset import SegmentationDataset, split_pairs
from .transforms import eval_transform, train_transform


def _sources(folder: Path, cfg: DataConfig):
    pairs = discover(folder)
    cache = validate(pairs, cfg.mask_threshold, keep=cfg.cache, keep_limit_bytes=int(cfg.cache_limit_gb * 2**30))
    return pairs, cache


def _reseed_worker(worker_id: int) -> None:
    # Each worker holds a copy of the same Compose RNG; without this they would all augment alike.
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


class SegmentationDataModule(L.LightningDataModule):
    def __init__(self, data: str | Path, val_data: str | Path | None, cfg: DataConfig, aug: AugmentConfig,
                 seed: int = 0):
        super().__init__()
        self.cfg, self.aug, self.seed = cfg, aug, seed
        pairs, cache = _sources(Path(data), cfg)
        if val_data is not None:
            val_pairs, val_cache = _sources(Path(val_data), cfg)
            train_idx = list(range(len(pairs)))
        else:
            if len(pairs) < 2:
                raise UserError(f"{data}: need at least 2 image/mask pairs to split off validation data")
            train_idx, val_idx = split_pairs(pairs, cfg.val_fraction, cfg.split_seed)
            val_pairs = [pairs[i] for i in val_idx]
            val_cache = [cache[i] for i in val_idx] if cache is not None else None
        size = cfg.image_size
        self.train_set = SegmentationDataset(
            [pairs[i] for i in train_idx], train_transform(size, aug, seed),
            [cache[i] for i in train_idx] if cache is not None else None, cfg.mask_threshold)
        self.val_set = SegmentationDataset(val_pairs, eval_transform(size), val_cache, cfg.mask_threshold)

    def reseed(self, epoch: int) -> None:
        """Augmentations become a function of (seed, epoch): reproducible, and a resumed run does not
        replay epoch 1's augmentations. Worker processes reseed from torch's per-worker seed instead."""
        self.train_set.transform.set_random_seed(self.seed * 100_003 + epoch)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle,
                          num_workers=self.cfg.num_workers, drop_last=shuffle and len(dataset) > self.cfg.batch_size,
                          worker_init_fn=_reseed_worker if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
