"""Losses on logits: Dice + BCE (+ optionally the Lovász hinge) per sigmoid channel (one structure, or
overlapping structures), Dice + cross-entropy over a softmax (exclusive classes). Dice is per image and per
structure, then averaged, so a small structure weighs as much as a large one; or, with `batch_dice`, per
structure over the whole batch (nnU-Net's `2d`): an image without a structure then adds no penalty of its own
for a little probability on it, which on slices where most images hold none of several small structures is
what keeps the network from learning to predict none. Targets are (N, C, H, W)
with labels.IGNORED where nothing is scored."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                   batch: bool = False) -> torch.Tensor:
    """1 - soft Dice per image of one channel (N, 1, ...), averaged over the batch (`batch`: over the batch as
    one). Computed in fp32: bf16 sums over 65k pixels lose precision (and fp16 ones overflow)."""
    return _dice_per_channel(torch.sigmoid(logits.float()), target.float(), None, smooth, batch)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Lovász hinge (Berman et al., CVPR 2018), per image, averaged over the batch: the convex surrogate
    of 1 − Jaccard that our headline metric averages per image. It weighs each pixel's hinge error by how
    much it moves that image's Jaccard, so a spurious region or a missed part of a large lesion costs in
    proportion to the Jaccard it loses. At logits of exactly ±1 it equals 2 × (1 − Jaccard). fp32."""
    logits, target = logits.float().flatten(1), target.float().flatten(1)
    losses = []
    for x, y in zip(logits, target):
        errors = 1.0 - x * (2.0 * y - 1.0)
        errors_sorted, order = torch.sort(errors, descending=True)
        y_sorted = y[order]
        positives = y_sorted.sum()
        intersection = positives - y_sorted.cumsum(0)
        union = positives + (1.0 - y_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(F.relu(errors_sorted), grad))
    return torch.stack(losses).mean()


IGNORED = 255.0  # labels.IGNORED, as a float target


def _dice_per_channel(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                      smooth: float, batch: bool = False) -> torch.Tensor:
    """1 - soft Dice per (image, channel), averaged (`batch`: per channel over the whole batch): prob and
    target (N, C, ...) fp32."""
    if valid is not None:
        prob, target = prob * valid, target * valid
    if batch:  # (1, C, N·pixels): the batch as one image
        prob, target = prob.transpose(0, 1).flatten(1)[None], target.transpose(0, 1).flatten(1)[None]
    inter = (prob * target).flatten(2).sum(2)
    denom = prob.flatten(2).sum(2) + target.flatten(2).sum(2)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


class OverlappingDiceBCELoss(nn.Module):
    """Dice + BCE per sigmoid channel, with ignored pixels left out (nnU-Net's region-based training)."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0,
                 batch_dice: bool = False):
        super().__init__()
        self.dice_weight, self.bce_weight, self.smooth = dice_weight, bce_weight, smooth
        self.batch_dice = batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        valid = (target != IGNORED).float() if (target == IGNORED).any() else None
        target = target.clamp(max=1.0)
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum")
        bce = bce / (valid.sum().clamp(min=1.0) if valid is not None else target.numel())
        dice = _dice_per_channel(torch.sigmoid(logits), target, valid, self.smooth, self.batch_dice)
        return self.bce_weight * bce + self.dice_weight * dice


class ExclusiveDiceCELoss(nn.Module):
    """Dice (on the softmax's structure channels) + cross-entropy over background + the structures."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1.0,
                 batch_dice: bool = False):
        super().__init__()
        self.dice_weight, self.ce_weight, self.smooth = dice_weight, ce_weight, smooth
        self.batch_dice = batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        ignored = target[:, 0] == IGNORED
        onehot = (target == 1.0).float()
        shape = (1, -1, *[1] * (target.ndim - 2))
        classes = torch.arange(1, target.shape[1] + 1, device=target.device).view(shape)
        index = (onehot.long() * classes).sum(1).masked_fill(ignored, -100)
        ce = F.cross_entropy(logits, index, ignore_index=-100) if (~ignored).any() else logits.sum() * 0
        valid = (~ignored).float()[:, None] if ignored.any() else None
        dice = _dice_per_channel(torch.softmax(logits, 1)[:, 1:], onehot, valid, self.smooth, self.batch_dice)
        return self.ce_weight * ce + self.dice_weight * dice


def loss_for(mode: str, dice_weight: float, bce_weight: float, lovasz_weight: float,
             batch_dice: bool = False) -> nn.Module:
    """The loss of a label mode (labels.MODES); `bce_weight` weighs the cross-entropy term of each."""
    if mode == "exclusive":
        return ExclusiveDiceCELoss(dice_weight, bce_weight, batch_dice=batch_dice)
    if mode == "overlapping":
        return OverlappingDiceBCELoss(dice_weight, bce_weight, batch_dice=batch_dice)
    return DiceBCELoss(dice_weight, bce_weight, lovasz_weight=lovasz_weight, batch_dice=batch_dice)


class DiceBCELoss(nn.Module):
    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0,
                 lovasz_weight: float = 0.0, batch_dice: bool = False):
        super().__init__()
        self.dice_weight, self.bce_weight, self.smooth = dice_weight, bce_weight, smooth
        self.lovasz_weight, self.batch_dice = lovasz_weight, batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        loss = self.bce_weight * bce + self.dice_weight * soft_dice_loss(logits, target, self.smooth,
                                                                         self.batch_dice)
        if self.lovasz_weight:
            loss = loss + self.lovasz_weight * lovasz_hinge(logits, target)
        return loss


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weighting: halve per level (full resolution first), normalised to sum to 1."""
    raw = [0.5**i for i in range(n)]
    return [r / sum(raw) for r in raw]


class DeepSupervisionLoss(nn.Module):
    """Applies `loss` to each output of a deep-supervision model (all at the target's size) and weights
    them."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = deep_supervision_weights(len(outputs))
        return sum(w * self.loss(o, target) for w, o in zip(weights, outputs))
