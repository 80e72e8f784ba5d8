"""U-Net building blocks, as the original design describes them (after milesial/Pytorch-UNet's unet_parts)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def tracing() -> bool:
    """True while torch.export / ONNX export / compile traces the model: size-dependent branches must then
    take the general path (pad by a possibly-zero amount), or the export specialises to the example's size."""
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def channels_last(dimensions: int) -> torch.memory_format:
    """The channels-last memory format of a network's inputs and weights: NHWC, or NDHWC for 3-D."""
    return torch.channels_last if dimensions == 2 else torch.channels_last_3d


class DoubleConv(nn.Sequential):
    """(3×3 conv → BatchNorm → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid = mid_channels or out_channels
        super().__init__(nn.Conv2d(in_channels, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid),
                         nn.ReLU(inplace=True), nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Down(nn.Sequential):
    """2×2 max-pool, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Up-sample ×2 (bilinear or transposed conv), pad to the skip's size, concatenate, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str = "bilinear"):
        super().__init__()
        if mode == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_channels = in_channels
        elif mode == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            up_channels = in_channels // 2
        else:
            raise ValueError(f"unknown upsample mode {mode!r}")
        self.conv = DoubleConv(up_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # Odd sizes: the pooled path lost a row/column; pad back to the skip's size.
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx or tracing():
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


def with_prompt_room(x: torch.Tensor, channels: int) -> torch.Tensor:
    """`x` with zero prompt channels appended up to `channels` when it holds only the image's: an input
    without clicks is one whose click channels are all zero."""
    missing = channels - x.shape[1]
    return x if missing <= 0 else torch.cat([x, x.new_zeros(x.shape[0], missing, *x.shape[2:])], dim=1)


class PromptedInput(nn.Module):
    """A network's first convolution `image` joined by a twin, `clicks`, that reads the click channels (they
    follow the image's in the input): the sum of both is one convolution over all channels, but the click
    weights are their own parameter, so they train at their own learning rate (optim.click_lr_scale). They
    start at 0: a model gaining click inputs starts segmenting exactly as before."""

    def __init__(self, image: nn.Module, click_channels: int):
        super().__init__()
        self.image_channels = image.in_channels
        self.image = image
        self.clicks = copy.deepcopy(image)
        self.clicks.in_channels = click_channels
        self.clicks.weight = nn.Parameter(image.weight.new_zeros(image.out_channels, click_channels,
                                                                 *image.kernel_size))
        self.clicks.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.image_channels
        return self.image(x[:, :c]) + self.clicks(x[:, c:])


class ClickLevels(nn.Module):
    """The click channels added to the encoder's features at each coarser level: max-pooled to the level's
    grid (`strides`: each level's total stride), through a 1×1 convolution whose weights start at 0. A
    coarse level sees a click as part of a whole region, so the network learns to follow clicks in a short
    fine-tune; through the input convolution alone its gradients are local and mostly noise."""

    def __init__(self, click_channels: int, channels: list[int], strides: list[tuple[int, ...]]):
        super().__init__()
        conv = nn.Conv2d if len(strides[0]) == 2 else nn.Conv3d
        self.strides = [tuple(s) for s in strides]
        self.levels = nn.ModuleList(conv(click_channels, c, 1, bias=False) for c in channels)
        for level in self.levels:
            nn.init.zeros_(level.weight)

    def forward(self, index: int, features: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
        """`features` of level `index` (0 = the first coarser level) with `clicks` (full resolution) added."""
        stride = self.strides[index]
        pool = F.max_pool2d if len(stride) == 2 else F.max_pool3d
        return features + self.levels[index](pool(clicks, stride, stride))


def is_click_weight(name: str) -> bool:
    """Whether a parameter reads the clicks (PromptedInput's twin, ClickLevels): they train at their own
    learning rate."""
    return "clicks" in name.split(".")


def with_prompted_input_weights(state: dict, target: dict) -> dict:
    """`state` fitted to `target` (both state dicts) where `target` has a PromptedInput and `state` one
    convolution in its place: a plain model's (its click weights become 0) or one that read image and
    clicks through one widened weight (split); click weights `state` lacks start at 0."""
    suffix = ".image.weight"
    for key in [k for k in target if k.endswith(suffix)]:
        base = key[:-len(suffix)]
        weight = state.pop(base + ".weight", None)
        if weight is None or key in state:
            continue
        c = target[key].shape[1]
        state[key] = weight[:, :c]
        zeros = target[base + ".clicks.weight"].new_zeros(target[base + ".clicks.weight"].shape)
        state[base + ".clicks.weight"] = weight[:, c:] if weight.shape[1] > c else zeros
        if base + ".bias" in state:
            state[base + ".image.bias"] = state.pop(base + ".bias")
    for key in target:  # click weights the source lacks (a plain model, an older promptable one) start at 0
        if is_click_weight(key) and key not in state:
            state[key] = target[key].new_zeros(target[key].shape)
    return state
