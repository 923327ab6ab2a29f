"""Where each dense architecture is cut into backbone / tree levels / leaf head.

``split_dense(dense, depth)`` returns a :class:`DenseSplit`: copies of the backbone stages, the
dense blocks each level narrows, and the dense head. ``build_tree(dense, spec)`` then builds a
:class:`~model.tree.SigmaBranchTree` from a spec (widths and the channel index sets of every
branch), copying weights with :mod:`model.narrow`. The same spec rebuilds a tree from a
checkpoint, and a spec with full index sets reproduces the dense model exactly (a test).

Default cuts (depth 2, the paper's Section IV-B):

=================  ======================  ==============================  ==============
model              backbone                level 1 / level 2 source        width factors
=================  ======================  ==============================  ==============
ResNet-50          stem, layer1, layer2    layer3 (6 blocks) / layer4 (3)  1/sqrt2, 1/2
ResNet-8/20        stem, layer1            layer2 / layer3                 1/sqrt2, 1/2
edge CNN           block1, block2          block3 / block4                 1/sqrt2, 1/2
PointNet++ SSG     SA1, SA2                SA3 / FC1                       1/2, 1/2
=================  ======================  ==============================  ==============

Bottleneck inner planes (and the inner layers of a conv pair or a PointNet MLP) shrink by the
level's width factor. Deeper trees cut earlier: ResNet-50 depth 3 splits layer3 in two halves;
the others take one more stage from the backbone. Each further level's factor is 1/sqrt2 of the
previous one unless ``width_factors`` is given.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn

from .edge_cnn import EdgeCNN
from .narrow import GlobalSetAbstraction, LinearBNReLU, full_index, narrow, narrow_input, out_channels
from .pointnet2 import PointNet2SSG
from .resnet import ResNet
from .tree import RouterNode, SigmaBranchTree


@dataclass
class DenseSplit:
    backbone: nn.Module           # copied dense stages run for every input
    level_blocks: list[list[nn.Module]]  # per level: the dense blocks its specialisers narrow (not copied)
    head: nn.Module               # dense head (its first Linear is narrowed per leaf)
    backbone_channels: int
    level_names: list[str]        # e.g. ["layer3", "layer4"], for reports
    default_factors: list[float]

    @property
    def dense_widths(self) -> list[int]:
        return [out_channels(blocks[-1]) for blocks in self.level_blocks]


class PointNetBackbone(nn.Module):
    """SA1 + SA2 of PointNet++: ``(B, N, C)`` points -> ``(xyz (B,3,S2), points (B,D,S2))``."""

    def __init__(self, dense: PointNet2SSG):
        super().__init__()
        self.in_chans = dense.in_chans
        self.sa1, self.sa2 = copy.deepcopy(dense.sa1), copy.deepcopy(dense.sa2)

    forward = PointNet2SSG.forward_backbone


_SLICE = re.compile(r"^(\w+)(?:\[(\d*):(\d*)\])?$")


def _blocks(dense: nn.Module, source: str) -> list[nn.Module]:
    """``"layer3"`` -> its blocks; ``"layer3[0:3]"`` -> the first three."""
    name, start, stop = _SLICE.match(source).groups()
    blocks = list(getattr(dense, name))
    return blocks[int(start) if start else None:int(stop) if stop else None]


_RESNET_BOTTLENECK_CUTS = {1: ["layer4"], 2: ["layer3", "layer4"], 3: ["layer3[0:3]", "layer3[3:]", "layer4"]}


def _cuts(stage_names: Sequence[str], depth: int, keep: int) -> list[str]:
    """The last ``depth`` stages, keeping at least ``keep`` stages in the backbone."""
    if depth > len(stage_names) - keep:
        raise ValueError(f"a depth-{depth} tree needs more than {len(stage_names)} stages to cut")
    return list(stage_names[-depth:])


def _factors(depth: int, first: float) -> list[float]:
    return [first * (2 ** -0.5) ** i for i in range(depth)]


def split_dense(dense: nn.Module, depth: int = 2) -> DenseSplit:
    """Cut a registered dense model into backbone, per-level source blocks and head."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if isinstance(dense, ResNet):
        stages = dense.stage_names[1:]
        bottleneck = out_channels(dense.layer1[0]) == 4 * dense.layer1[0].conv1.out_channels
        cuts = _RESNET_BOTTLENECK_CUTS.get(depth) if bottleneck and len(stages) == 4 else None
        cuts = cuts or _cuts(stages, depth, keep=0)  # the stem stays in the backbone
        first_cut = _SLICE.match(cuts[0]).group(1)
        before = stages[:stages.index(first_cut)]
        stem = [dense.conv1, dense.bn1, dense.relu, dense.maxpool]
        partial = [b for b in _blocks(dense, first_cut) if b not in sum((_blocks(dense, c) for c in cuts), [])]
        backbone = nn.Sequential(*[copy.deepcopy(m) for m in stem + [getattr(dense, s) for s in before] + partial])
        backbone_channels = out_channels(backbone[-1]) if len(backbone) > 4 else dense.conv1.out_channels
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), dense.fc)
        level_blocks = [_blocks(dense, c) for c in cuts]
        factors = [2 ** -0.5, 0.5] + _factors(depth, 0.5)[1:] if depth >= 2 else [0.5]
    elif isinstance(dense, EdgeCNN):
        cuts = _cuts(dense.stage_names, depth, keep=1)
        before = dense.stage_names[:dense.stage_names.index(cuts[0])]
        backbone = nn.Sequential(*[copy.deepcopy(getattr(dense, s)) for s in before])
        backbone_channels = out_channels(backbone[-1])
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), dense.fc)
        level_blocks = [[getattr(dense, c)] for c in cuts]
        factors = [2 ** -0.5, 0.5] + _factors(depth, 0.5)[1:] if depth >= 2 else [0.5]
    elif isinstance(dense, PointNet2SSG):
        units = [("sa3", GlobalSetAbstraction(dense.sa3)), ("fc1", LinearBNReLU(dense.fc1, dense.bn1, dense.drop1)),
                 ("fc2", LinearBNReLU(dense.fc2, dense.bn2, dense.drop2))]
        if depth > len(units):
            raise ValueError(f"PointNet++ supports trees of depth 1-{len(units)}, got {depth}")
        backbone = PointNetBackbone(dense)
        backbone_channels = dense.sa2.out_channels
        cuts = [name for name, _ in units[:depth]]
        level_blocks = [[unit] for _, unit in units[:depth]]
        head = nn.Sequential(*[unit for _, unit in units[depth:]], dense.fc3)
        factors = [0.5] * depth
    else:
        raise TypeError(f"no tree layout for {type(dense).__name__}; supported: ResNet, EdgeCNN, PointNet2SSG")
    return DenseSplit(backbone, level_blocks, head, backbone_channels, cuts, factors[:depth])


def level_widths(split: DenseSplit, width_factors: Sequence[float] | None = None) -> list[int]:
    factors = list(width_factors) if width_factors is not None else split.default_factors
    if len(factors) != len(split.level_blocks):
        raise ValueError(f"width_factors needs {len(split.level_blocks)} entries, got {len(factors)}")
    return [max(1, int(math.floor(w * f + 0.5))) for w, f in zip(split.dense_widths, factors)]


def narrow_unit(blocks: list[nn.Module], in_idx: torch.Tensor, out_idx: torch.Tensor, inner_ratio: float) -> nn.Sequential:
    """A specialiser: the level's dense blocks, narrowed; block 0 maps ``in_idx`` -> ``out_idx``."""
    narrowed = [narrow(blocks[0], in_idx, out_idx, inner_ratio)]
    narrowed += [narrow(b, out_idx, out_idx, inner_ratio) for b in blocks[1:]]
    return nn.Sequential(*narrowed)


def first_k_indices(width: int, branches: int) -> list[list[int]]:
    """Index sets for a data-free tree (accounting only): the first ``width`` channels."""
    return [list(range(width))] * branches


def default_spec(dense_name: str, dense_args: dict[str, Any], dense: nn.Module, depth: int = 2,
                 width_factors: Sequence[float] | None = None, proj_dim: int = 128, dropout: float = 0.1) -> dict[str, Any]:
    """A tree spec whose branches keep the first ``width`` channels: the right shapes, no data needed
    (accounting and timing)."""
    split = split_dense(dense, depth)
    widths = level_widths(split, width_factors)
    return {"dense_model": dense_name, "dense_args": dict(dense_args), "depth": depth, "widths": widths,
            "dense_widths": split.dense_widths, "level_names": split.level_names,
            "backbone_channels": split.backbone_channels, "proj_dim": proj_dim, "dropout": dropout,
            "out_indices": [first_k_indices(w, 2 ** (l + 1)) for l, w in enumerate(widths)]}


def build_tree(dense: nn.Module, spec: dict[str, Any]) -> SigmaBranchTree:
    """Build the tree of ``spec`` from ``dense``: Phase 0 (backbone copy), specialiser and head copies.

    ``spec["out_indices"][l][b]`` lists the dense channels branch ``b`` of level ``l`` keeps;
    its input channels are its parent's output channels (the backbone's, at level 0).
    """
    depth = spec["depth"]
    split = split_dense(dense, depth)
    widths = spec["widths"]
    routers, specialisers = [], []
    parent_out = [full_index(split.backbone_channels)]
    for level in range(depth):
        in_features = split.backbone_channels if level == 0 else widths[level - 1]
        routers.append([RouterNode(in_features, spec["proj_dim"], spec["dropout"]) for _ in range(2 ** level)])
        ratio = widths[level] / split.dense_widths[level]
        outs = [torch.as_tensor(idx, dtype=torch.long) for idx in spec["out_indices"][level]]
        if any(len(o) != widths[level] for o in outs):
            raise ValueError(f"level {level}: every branch must keep {widths[level]} channels")
        specialisers.append([narrow_unit(split.level_blocks[level], parent_out[b // 2], outs[b], ratio)
                             for b in range(2 ** (level + 1))])
        parent_out = outs
    heads = [narrow_input(split.head, idx) for idx in parent_out]
    return SigmaBranchTree(copy.deepcopy(split.backbone), routers, specialisers, heads, spec)


def dense_chain(dense: nn.Module, depth: int = 2) -> nn.Sequential:
    """The dense model as backbone -> level blocks -> head, built through the narrowing code with
    full index sets. It computes what ``dense`` computes, which checks every cut and copy."""
    split = split_dense(dense, depth)
    chain: list[nn.Module] = [copy.deepcopy(split.backbone)]
    prev = full_index(split.backbone_channels)
    for blocks, width in zip(split.level_blocks, split.dense_widths):
        out = full_index(width)
        chain.append(narrow_unit(blocks, prev, out, 1.0))
        prev = out
    chain.append(narrow_input(split.head, prev))
    return nn.Sequential(*chain)
