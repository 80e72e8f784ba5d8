"""The U-Net: encoder of DoubleConv + Down, decoder of Up with skip concatenation, 1×1 head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .parts import DoubleConv, Down, Up, tracing


class UNet(nn.Module):
    """Classic U-Net. `base_width=64, depth=4` gives the seed's widths 64→128→256→512→1024.

    Any input height/width works: inputs are padded up to a multiple of 2**depth (replicate) and the
    output is cropped back, so the logits always match the input's size.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_width: int = 64, depth: int = 4,
                 upsample: str = "bilinear"):
        super().__init__()
        self.depth = depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], mode=upsample) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw or tracing():
            x = F.pad(x, [0, pw, 0, ph], mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]
