from .dataset import SegmentationDataset, split_pairs
from .transforms import eval_transform, resize_to, to_tensors, train_transform

__all__ = ["SegmentationDataset", "split_pairs", "train_transform", "eval_transform", "to_tensors", "resize_to"]
