"""The U-Net: encoder of DoubleConv + Down, decoder of Up with skip concatenation, 1×1 head.

Options: CBAM attention on the skip features, deep supervision heads on every decoder stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .attention import CBAM
from .encoders import EfficientNetLiteEncoder
from .parts import ClickLevels, DoubleConv, Down, PromptedInput, Up, tracing, with_prompt_room


class UNet(nn.Module):
    """Classic U-Net. `base_width=64, depth=4` gives the original widths 64→128→256→512→1024.

    Any input height/width works: inputs are padded up to a multiple of 2**depth (replicate) and the
    output is cropped back, so the logits always match the input's size.

    `deep_supervision=True`: in training mode `forward` returns a list, full-resolution logits first, then
    one auxiliary head per coarser decoder stage, each upsampled (bilinear) to the input size. In eval mode
    (and in ONNX exports) only the full-resolution logits are returned.

    `encoder="efficientnet-lite0"` (lite1, lite2) replaces the DoubleConv/Down encoder by an ImageNet-
    pretrained EfficientNet-Lite (`pretrained=False` skips reading its weights, e.g. before loading a saved
    model); the decoder stays the same Up stages, its widths `base_width * 2**level`, and the input image
    itself is the full-resolution skip. `full_resolution_decoder=False` (encoders only) drops that stage: the
    decoder ends at 1/2 resolution and its logits are upsampled ×2 to the input size.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_width: int = 64, depth: int = 4,
                 upsample: str = "bilinear", attention: str = "none", deep_supervision: bool = False,
                 encoder: str = "plain", pretrained: bool = True, full_resolution_decoder: bool = True,
                 prompt_channels: int = 0):
        super().__init__()
        if not full_resolution_decoder and (encoder == "plain" or depth < 2):
            raise UserError("full_resolution_decoder=False needs an EfficientNet encoder and depth ≥ 2")
        self.depth = depth
        self.image_channels, self.input_channels = in_channels, in_channels + prompt_channels
        self.top = 0 if full_resolution_decoder else 1  # the finest decoder level
        widths = [base_width * 2**i for i in range(depth + 1)]  # decoder width per level
        if encoder == "plain":
            self.inc = DoubleConv(in_channels, widths[0])
            if prompt_channels:
                self.inc[0] = PromptedInput(self.inc[0], prompt_channels)
            self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
            skip_channels = widths
        else:
            if in_channels != 3:
                raise UserError(f"model.encoder={encoder} is pretrained on RGB: model.in_channels must be 3")
            self.encoder = EfficientNetLiteEncoder(encoder, depth, pretrained, prompt_channels)
            skip_channels = self.encoder.channels
        self.clicks = ClickLevels(prompt_channels, skip_channels[1:], [(2**i, 2**i)
                                                                             for i in range(1, depth + 1)]) \
            if prompt_channels else None
        below = [skip_channels[depth]] + widths[depth - 1:0:-1]  # what comes up into each Up, coarse first
        self.ups = nn.ModuleList(
            Up(below[j], skip_channels[i], widths[i], mode=upsample)
            for j, i in enumerate(reversed(range(self.top, depth)))
        )
        # Skip i (full resolution first) gets its own attention block; Identity keeps the plain U-Net.
        self.skip_attention = nn.ModuleList(
            CBAM(skip_channels[i]) if attention == "cbam" and i >= self.top else nn.Identity()
            for i in range(depth)
        )
        self.head = nn.Conv2d(widths[self.top], out_channels, kernel_size=1)
        # Auxiliary heads for the coarser decoder stages, down to 1/2**depth-1 (coarse to fine).
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(widths[i], out_channels, kernel_size=1) for i in reversed(range(self.top + 1, depth))
        ) if deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = with_prompt_room(x, self.input_channels)
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw or tracing():
            x = F.pad(x, [0, pw, 0, ph], mode="replicate")
        click_maps = x[:, self.image_channels:] if self.clicks is not None else None
        add_clicks = (lambda i, f: self.clicks(i, f, click_maps)) if click_maps is not None else None
        if hasattr(self, "encoder"):
            skips = self.encoder(x, add_clicks)
        else:
            skips = [self.inc(x)]
            for i, down in enumerate(self.downs):
                y = down(skips[-1])
                skips.append(y if add_clicks is None else add_clicks(i, y))
        y = skips.pop()
        skips = skips[self.top:]
        stages = []
        for up in self.ups:
            skip = skips.pop()
            y = up(y, self.skip_attention[self.top + len(skips)](skip))
            stages.append(y)
        size = x.shape[-2:]
        main = self.head(y)
        if self.top:
            main = F.interpolate(main, size=size, mode="bilinear", align_corners=False)
        main = main[..., :h, :w]
        if self.aux_heads is None or not self.training:
            return main
        aux = [F.interpolate(head(stage), size=size, mode="bilinear", align_corners=False)[..., :h, :w]
               for head, stage in zip(self.aux_heads, stages[:-1])]
        return [main, *reversed(aux)]  # full resolution, then 1/2, 1/4, ...
