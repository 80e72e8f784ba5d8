"""CBAM (Woo et al., 2018) as the original design describes it, on U-Net skips before concatenation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """Global average pool → 1×1 conv (reduce by `reduction`) → ReLU → 1×1 conv → sigmoid, as a channel
    gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # Narrow widths (base 16 → 16 channels) would keep a single hidden unit: keep at least 4, as the
        # original U-Net's narrowest skip (64 channels) has.
        hidden = max(4, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)))


class SpatialAttention(nn.Module):
    """7×7 conv over the channel-wise max and mean → sigmoid, as a spatial gate."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Sequential):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__(ChannelAttention(channels, reduction), SpatialAttention())
