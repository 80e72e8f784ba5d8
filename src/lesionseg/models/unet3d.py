"""The 3-D U-Net, built as nnU-Net builds its `3d_fullres` network: each stage two (conv → instance norm →
leaky ReLU), the first conv of a stage strided to go down, transposed convolutions to come up, and a kernel
and a stride per stage and axis, so a coarse axis is not pooled (nor convolved across) until its spacing is
comparable to the others' (`pooling_plan`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .parts import ClickLevels, PromptedInput, tracing, with_prompt_room

MAX_WIDTH = 320  # nnU-Net's cap on 3-D feature maps


class ConvNormAct(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel, stride=1):
        super().__init__(nn.Conv3d(in_channels, out_channels, kernel, stride, [k // 2 for k in kernel]),
                         nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


class UNet3D(nn.Module):
    """`kernels`: one (z, y, x) kernel per stage; `strides`: one per stage, the first (1, 1, 1).

    Any input size works: the input is padded (replicate) up to a multiple of each axis's total stride and
    the logits cropped back. `deep_supervision=True`: in training mode `forward` returns the full-resolution
    logits, then one head per coarser decoder stage, each upsampled (trilinear) to the input size."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, base_width: int = 32,
                 kernels=((3, 3, 3),) * 4, strides=((1, 1, 1),) + ((2, 2, 2),) * 3,
                 deep_supervision: bool = False, prompt_channels: int = 0):
        super().__init__()
        if len(kernels) != len(strides) or tuple(strides[0]) != (1, 1, 1):
            raise ValueError("one kernel and one stride per stage, the first stage's stride (1, 1, 1)")
        self.input_channels = in_channels + prompt_channels
        widths = [min(base_width * 2**i, MAX_WIDTH) for i in range(len(kernels))]
        self.multiple = [math.prod(s[axis] for s in strides) for axis in range(3)]
        self.encoder = nn.ModuleList(
            nn.Sequential(ConvNormAct(c_in, w, k, s), ConvNormAct(w, w, k))
            for c_in, w, k, s in zip([in_channels, *widths], widths, kernels, strides))
        self.image_channels = in_channels
        self.clicks = None
        if prompt_channels:
            self.encoder[0][0][0] = PromptedInput(self.encoder[0][0][0], prompt_channels)
            total = [tuple(math.prod(s[a] for s in strides[:i + 1]) for a in range(3))
                     for i in range(1, len(strides))]
            self.clicks = ClickLevels(prompt_channels, widths[1:], total)
        levels = list(reversed(range(len(widths) - 1)))  # decoder levels, coarse to fine
        self.ups = nn.ModuleList(nn.ConvTranspose3d(widths[i + 1], widths[i], strides[i + 1], strides[i + 1])
                                 for i in levels)
        self.decoder = nn.ModuleList(
            nn.Sequential(ConvNormAct(2 * widths[i], widths[i], kernels[i]),
                          ConvNormAct(widths[i], widths[i], kernels[i])) for i in levels)
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        self.aux_heads = nn.ModuleList(nn.Conv3d(widths[i], out_channels, 1) for i in levels[:-1]) \
            if deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = with_prompt_room(x, self.input_channels)
        size = x.shape[-3:]
        pad = [(-n) % m for n, m in zip(size, self.multiple)]
        if not tracing() and all(n + p == m for n, p, m in zip(size, pad, self.multiple)):
            pad[2] += self.multiple[2]  # instance norm needs more than one voxel at the bottom
        if any(pad) or tracing():
            x = F.pad(x, [0, pad[2], 0, pad[1], 0, pad[0]], mode="replicate")
        click_maps = x[:, self.image_channels:] if self.clicks is not None else None
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if click_maps is not None and i > 0:
                x = self.clicks(i - 1, x, click_maps)
            skips.append(x)
        y = skips.pop()
        stages = []
        for up, decode in zip(self.ups, self.decoder):
            y = decode(torch.cat([skips.pop(), up(y)], dim=1))
            stages.append(y)
        d, h, w = size
        main = self.head(y)[..., :d, :h, :w]
        if self.aux_heads is None or not self.training:
            return main
        full = y.shape[-3:]
        aux = [F.interpolate(head(stage), size=full, mode="trilinear", align_corners=False)[..., :d, :h, :w]
               for head, stage in zip(self.aux_heads, stages[:-1])]
        return [main, *reversed(aux)]  # full resolution, then each coarser stage


def pooling_plan(spacing, patch, min_size: int = 4, max_stages: int = 7):
    """(kernels, strides) per stage by nnU-Net's rule (`get_pool_and_conv_props`): each step pools the axes
    whose feature map is still at least `2 * min_size` and whose spacing is within twice the finest of
    those (a lone axis only while it is `3 * min_size`); an axis is convolved across (kernel 3, else 1) once
    its spacing is within twice the finest, and stays so; the last stage has 3×3×3. Spacing doubles on a
    pooled axis."""
    spacing, size = [float(s) for s in spacing], [int(n) for n in patch]
    kernel, kernels, strides = [1, 1, 1], [], [(1, 1, 1)]
    while len(strides) < max_stages:
        pool = [a for a in range(3) if size[a] >= 2 * min_size]
        if pool:
            finest = min(spacing[a] for a in pool)
            pool = [a for a in pool if spacing[a] / finest < 2]
        if not pool or (len(pool) == 1 and size[pool[0]] < 3 * min_size):
            break
        kernel = [3 if k == 3 or s / min(spacing) < 2 else 1 for k, s in zip(kernel, spacing)]
        kernels.append(tuple(kernel))
        strides.append(tuple(2 if a in pool else 1 for a in range(3)))
        spacing = [s * 2 if a in pool else s for a, s in enumerate(spacing)]
        size = [n // 2 if a in pool else n for a, n in enumerate(size)]
    return kernels + [(3, 3, 3)], strides
