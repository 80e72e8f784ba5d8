"""Several networks of one architecture applied as one: the fold ensemble of `train --folds`."""

from __future__ import annotations

import torch
from torch import nn

# probabilities are kept off 0 and 1 before the logits are taken, so every logit is finite
EPS = 1e-6


class Ensemble(nn.Module):
    """The members' probabilities averaged (nnU-Net's fold ensemble), returned as logits of that average,
    so every caller (the sigmoid or softmax after it, ONNX export, the batch path) treats the ensemble as
    one network. `exclusive`: one softmax over the channels; otherwise a sigmoid per channel."""

    def __init__(self, members: list[nn.Module], exclusive: bool):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.exclusive = exclusive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exclusive:
            mean = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
            return mean.clamp_min(EPS).log()
        mean = torch.stack([m(x).float().sigmoid() for m in self.members]).mean(0).clamp(EPS, 1 - EPS)
        return mean.log() - (-mean).log1p()
