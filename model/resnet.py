"""ResNet family with torchvision/timm parameter names.

Parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``) match torchvision and
timm exactly, so their published state dicts load with ``strict=True``.

Variants:
- ``resnet50_imagenet``: the standard 7x7/2 stem + max-pool (25.56M params at 1000 classes).
- ``resnet50_cifar``: 3x3 stride-1 stem, no max-pool (23.71M params at 100 classes).
- ``resnet8`` / ``resnet20``: the CIFAR-style basic-block nets (16/32/64 channels) used as the
  small residual net for the embedded digits data.
"""
from __future__ import annotations

from typing import Sequence, Type

import torch
import torch.nn as nn

from .pooled import PooledClassifier
from .registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def downsample_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut ``downsample.0`` (conv) / ``downsample.1`` (BN), or None."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut.

    Args:
        in_planes: input channels.
        planes: channels of both convolutions (the block's output width).
        stride: stride of the first convolution.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample_shortcut(in_planes, planes, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as torchvision's v1.5), 1x1 expand.

    Args:
        in_planes: input channels.
        planes: inner (bottleneck) channels.
        stride: stride of the 3x3 convolution.
        out_planes: output channels; ``planes * 4`` unless given (the tree narrows it).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, out_planes: int | None = None):
        super().__init__()
        out_planes = planes * self.expansion if out_planes is None else out_planes
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample_shortcut(in_planes, out_planes, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(PooledClassifier):
    """A ResNet whose stages are named ``stem`` (conv1/bn1/relu/maxpool), ``layer1``.. and ``fc``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage.
        widths: inner planes per stage (output = planes * block.expansion).
        num_classes: classifier outputs.
        in_chans: input image channels.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, no pool).
        stem_width: channels of the stem convolution.
    """

    def __init__(
        self,
        block: Type[BasicBlock] | Type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        stem_width: int = 64,
    ):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.num_classes = num_classes
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        in_planes = stem_width
        self.stage_names = ["stem"]
        for i, (num_blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(num_blocks):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
        self.num_features = in_planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names[1:]:
            x = getattr(self, name)(x)
        return x


def _resnet(block, layers, widths=(64, 128, 256, 512), input_size: int = 224, **kwargs) -> ResNet:
    model = ResNet(block, layers, widths, **kwargs)
    model.default_input_shape = (kwargs.get("in_chans", 3), input_size, input_size)
    return model


@register_model
def resnet50_imagenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50 with the ImageNet stem (torchvision ``resnet50`` / timm ``resnet50``)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_chans=in_chans, stem="imagenet", **kwargs)


@register_model
def resnet50_cifar(num_classes: int = 100, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_chans=in_chans, stem="cifar", input_size=32, **kwargs)


@register_model
def resnet20(num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels."""
    return _resnet(BasicBlock, [3, 3, 3], (16, 32, 64), num_classes=num_classes, in_chans=in_chans,
                   stem="cifar", stem_width=16, input_size=32, **kwargs)


@register_model
def resnet8(num_classes: int = 10, in_chans: int = 1, input_size: int = 8, **kwargs) -> ResNet:
    """The smallest CIFAR-style ResNet (one basic block a stage); the small residual net for digits
    (``input_size=32``: the same net for CIFAR-10)."""
    return _resnet(BasicBlock, [1, 1, 1], (16, 32, 64), num_classes=num_classes, in_chans=in_chans,
                   stem="cifar", stem_width=16, input_size=input_size, **kwargs)
