"""A small non-residual CNN in the style of FINN's CNV, sized for 8x8 digits and a PYNQ-Z2.

Conv-BN-ReLU pairs with max-pools, then global average pooling and one FC classifier.
Every conv is bias-free and followed by BN + ReLU so FINN's streamlining can absorb the
BN into thresholds.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .pooled import PooledClassifier
from .registry import register_model


class ConvBNReLU(nn.Sequential):
    """``conv`` (3x3, pad 1, no bias) -> ``bn`` -> ``relu``."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)


def conv_block(in_chans: int, out_chans: int, pool: bool) -> nn.Sequential:
    """Two ConvBNReLU layers (indices 0 and 1), then a 2x2 max-pool (index 2) if ``pool``."""
    layers: list[nn.Module] = [ConvBNReLU(in_chans, out_chans), ConvBNReLU(out_chans, out_chans)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class EdgeCNN(PooledClassifier):
    """Stages ``block1``..``blockN`` (conv pairs, max-pool after the first ``num_pools``), then ``fc``.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels (1 for digits).
        widths: output channels of each block.
        num_pools: how many leading blocks end in a 2x2 max-pool (8x8 input -> 2x2 after two).
        input_size: the side of the square input the model is made for (exports and reports).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1,
                 widths: Sequence[int] = (32, 64, 128, 256), num_pools: int = 2, input_size: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.stage_names = []
        prev = in_chans
        for i, width in enumerate(widths):
            self.add_module(f"block{i + 1}", conv_block(prev, width, pool=i < num_pools))
            self.stage_names.append(f"block{i + 1}")
            prev = width
        self.num_features = prev
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        self.default_input_shape = (in_chans, input_size, input_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


@register_model
def edge_cnn(num_classes: int = 10, in_chans: int = 1, **kwargs) -> EdgeCNN:
    """CNV-style edge model for 8x8 digits: 32-64-128-256 channels, ~1.2M params."""
    return EdgeCNN(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def edge_cnn32(num_classes: int = 10, in_chans: int = 3, **kwargs) -> EdgeCNN:
    """The same edge model for 32x32 images (CIFAR-10): three max-pools, so its last block runs at 4x4."""
    return EdgeCNN(num_classes=num_classes, in_chans=in_chans, num_pools=3, input_size=32, **kwargs)
