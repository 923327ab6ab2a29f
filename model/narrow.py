"""Channel-sliced copies of dense modules: the weight copy behind Phases 0-5 of the conversion.

``narrow(module, in_idx, out_idx, inner_ratio)`` returns a new module of the same kind whose
input channels are ``in_idx`` of the dense module's, whose output channels are ``out_idx``,
and whose inner planes (bottleneck planes, the first conv of a conv pair, the hidden layers of a
PointNet MLP) are the top ``inner_ratio`` fraction by filter L1 norm. Every weight, bias and BN
statistic is copied from the dense module, so with full index sets the copy computes exactly
what the dense module computes.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .edge_cnn import ConvBNReLU
from .pointnet2 import PointNetSetAbstraction
from .resnet import BasicBlock, Bottleneck


class LinearBNReLU(nn.Module):
    """``fc -> bn -> relu -> drop``: the FC layers of PointNet++ as one unit."""

    def __init__(self, fc: nn.Linear, bn: nn.BatchNorm1d, drop: nn.Dropout):
        super().__init__()
        self.fc, self.bn, self.drop = fc, bn, drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.bn(self.fc(x))))


def full_index(n: int) -> torch.Tensor:
    return torch.arange(n)


def top_l1(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of the ``k`` output filters with the largest L1 norm."""
    norms = weight.detach().flatten(1).abs().sum(1)
    return norms.topk(k).indices.sort().values


def inner_count(n: int, ratio: float) -> int:
    return max(1, min(n, round(n * ratio)))


def _conv(conv: nn.Conv2d, out_idx: torch.Tensor, in_idx: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(len(in_idx), len(out_idx), conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight[out_idx][:, in_idx])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[out_idx])
    return new


def _linear(fc: nn.Linear, out_idx: torch.Tensor, in_idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(in_idx), len(out_idx), bias=fc.bias is not None)
    with torch.no_grad():
        new.weight.copy_(fc.weight[out_idx][:, in_idx])
        if fc.bias is not None:
            new.bias.copy_(fc.bias[out_idx])
    return new


def _bn(bn: nn.modules.batchnorm._BatchNorm, idx: torch.Tensor):
    new = type(bn)(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def selection_shortcut(in_idx: torch.Tensor, out_idx: torch.Tensor) -> nn.Sequential:
    """A 1x1 conv + BN that starts as the dense identity shortcut restricted to the two index sets.

    Needed when a level starts at a block without a projection shortcut (deeper trees cut a
    stage in the middle) and its input and output channel subsets differ.
    """
    conv = nn.Conv2d(len(in_idx), len(out_idx), 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        position = {int(c): i for i, c in enumerate(in_idx)}
        for j, c in enumerate(out_idx.tolist()):
            if c in position:
                conv.weight[j, position[c], 0, 0] = 1.0
    return nn.Sequential(conv, nn.BatchNorm2d(len(out_idx)).eval())


def _shortcut(block, in_idx, out_idx):
    if block.downsample is not None:
        return nn.Sequential(_conv(block.downsample[0], out_idx, in_idx), _bn(block.downsample[1], out_idx))
    if torch.equal(in_idx, out_idx):
        return None
    return selection_shortcut(in_idx, out_idx)


def narrow_bottleneck(block: Bottleneck, in_idx, out_idx, inner_ratio: float) -> Bottleneck:
    k = inner_count(block.conv1.out_channels, inner_ratio)
    inner1, inner2 = top_l1(block.conv1.weight, k), top_l1(block.conv2.weight, k)
    new = Bottleneck(len(in_idx), k, block.stride, out_planes=len(out_idx))
    new.conv1, new.bn1 = _conv(block.conv1, inner1, in_idx), _bn(block.bn1, inner1)
    new.conv2, new.bn2 = _conv(block.conv2, inner2, inner1), _bn(block.bn2, inner2)
    new.conv3, new.bn3 = _conv(block.conv3, out_idx, inner2), _bn(block.bn3, out_idx)
    new.downsample = _shortcut(block, in_idx, out_idx)
    return new


def narrow_basic_block(block: BasicBlock, in_idx, out_idx, inner_ratio: float) -> BasicBlock:
    inner = top_l1(block.conv1.weight, inner_count(block.conv1.out_channels, inner_ratio))
    new = BasicBlock(len(in_idx), len(out_idx), block.stride)
    new.conv1, new.bn1 = _conv(block.conv1, inner, in_idx), _bn(block.bn1, inner)
    new.conv2, new.bn2 = _conv(block.conv2, out_idx, inner), _bn(block.bn2, out_idx)
    new.downsample = _shortcut(block, in_idx, out_idx)
    return new


def narrow_conv_block(block: nn.Sequential, in_idx, out_idx, inner_ratio: float) -> nn.Sequential:
    """An edge-CNN block: ConvBNReLU layers (inner ones by L1), then optional pooling."""
    convs = [m for m in block if isinstance(m, ConvBNReLU)]
    layers, prev = [], in_idx
    for i, m in enumerate(block):
        if isinstance(m, ConvBNReLU):
            last = m is convs[-1]
            out = out_idx if last else top_l1(m.conv.weight, inner_count(m.conv.out_channels, inner_ratio))
            new = ConvBNReLU(len(prev), len(out))
            new.conv, new.bn = _conv(m.conv, out, prev), _bn(m.bn, out)
            layers.append(new)
            prev = out
        else:
            layers.append(copy.deepcopy(m))
    return nn.Sequential(*layers)


def narrow_set_abstraction(sa: PointNetSetAbstraction, in_idx, out_idx, inner_ratio: float) -> PointNetSetAbstraction:
    # Grouped input = relative xyz (3 channels) then the incoming features.
    prev = torch.cat([torch.arange(3), 3 + in_idx])
    widths, picks = [], []
    for i, conv in enumerate(sa.mlp_convs):
        last = i == len(sa.mlp_convs) - 1
        out = out_idx if last else top_l1(conv.weight, inner_count(conv.out_channels, inner_ratio))
        picks.append((prev, out))
        widths.append(len(out))
        prev = out
    new = PointNetSetAbstraction(sa.npoint, sa.radius, sa.nsample, 3 + len(in_idx), widths, sa.group_all)
    new.deterministic_start = sa.deterministic_start
    for i, (inp, out) in enumerate(picks):
        new.mlp_convs[i] = _conv(sa.mlp_convs[i], out, inp)
        new.mlp_bns[i] = _bn(sa.mlp_bns[i], out)
    return new


def narrow_linear_block(block: LinearBNReLU, in_idx, out_idx, inner_ratio: float) -> LinearBNReLU:
    return LinearBNReLU(_linear(block.fc, out_idx, in_idx), _bn(block.bn, out_idx), copy.deepcopy(block.drop))


def narrow(module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor, inner_ratio: float = 1.0) -> nn.Module:
    """Channel-sliced copy of one dense block (see the module docstring)."""
    for kind, fn in _NARROWERS:
        if isinstance(module, kind):
            return fn(module, in_idx, out_idx, inner_ratio)
    raise TypeError(f"don't know how to narrow a {type(module).__name__}")


def narrow_input(module: nn.Module, in_idx: torch.Tensor) -> nn.Module:
    """Copy of a head whose first Linear keeps only the input columns ``in_idx`` (Phase 5)."""
    new = copy.deepcopy(module)
    for name, m in new.named_modules():
        if isinstance(m, nn.Linear):
            replacement = _linear(m, full_index(m.out_features), in_idx)
            parent = new.get_submodule(name.rpartition(".")[0]) if "." in name else new
            setattr(parent, name.rpartition(".")[2], replacement)
            return new
    raise TypeError(f"head {type(module).__name__} has no Linear layer to narrow")


_NARROWERS = [
    (Bottleneck, narrow_bottleneck),
    (BasicBlock, narrow_basic_block),
    (PointNetSetAbstraction, narrow_set_abstraction),
    (LinearBNReLU, narrow_linear_block),
    (nn.Sequential, narrow_conv_block),
]


class GlobalSetAbstraction(nn.Module):
    """A group-all set abstraction (PointNet++'s SA3) as a unit: ``(xyz, points) -> (B, C)``."""

    def __init__(self, sa: PointNetSetAbstraction):
        super().__init__()
        self.sa = sa

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.sa(*features)[1].flatten(1)


def narrow_global_sa(unit: GlobalSetAbstraction, in_idx, out_idx, inner_ratio: float) -> GlobalSetAbstraction:
    return GlobalSetAbstraction(narrow_set_abstraction(unit.sa, in_idx, out_idx, inner_ratio))


_NARROWERS.insert(0, (GlobalSetAbstraction, narrow_global_sa))


def out_channels(module: nn.Module) -> int:
    """Output channels of a block that :func:`narrow` understands (or a Sequential of them)."""
    if isinstance(module, Bottleneck):
        return module.conv3.out_channels
    if isinstance(module, BasicBlock):
        return module.conv2.out_channels
    if isinstance(module, GlobalSetAbstraction):
        return module.sa.mlp_convs[-1].out_channels
    if isinstance(module, LinearBNReLU):
        return module.fc.out_features
    if isinstance(module, nn.Sequential):
        convs = [m for m in module.modules() if isinstance(m, (ConvBNReLU, Bottleneck, BasicBlock, GlobalSetAbstraction, LinearBNReLU))]
        if convs:
            last = convs[-1]
            return last.conv.out_channels if isinstance(last, ConvBNReLU) else out_channels(last)
    raise TypeError(f"don't know the output channels of a {type(module).__name__}")
