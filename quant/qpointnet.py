"""The routed part of a PointNet++ tree in Brevitas: what the fabric runs on a Zynq.

The processor runs SA1 + SA2 (farthest-point sampling, ball query and grouping have no FINN+
mapping; ``host/pointnet_backbone.py`` is its numpy version) and hands the fabric one map per
cloud: every SA2 centroid's absolute xyz followed by its features, ``(B, 3 + D2, S2, 1)``, the
tensor SA3's group-all concatenates (:class:`FabricInput`). That map is quantised to signed
``input_bits`` integers (the fabric's input quantizer; xyz is signed), and from there on the tree
is integer as the CNN trees are:

- level 0, SA3 narrowed per branch (:class:`QuantGlobalSetAbstraction`): 1x1 convolutions over
  the points (QuantConv2d, BN, QuantReLU) and the max over all points (a ``MaxPool`` whose
  window is the whole map), ``(B, C, 1, 1)``;
- level 1 (and a depth-3 tree's level 2), FC1 (FC2) narrowed per branch
  (:class:`QuantLinearBNReLU`), ``(B, C')``;
- the heads: the remaining FC units and ``fc3`` (a QuantLinear: the head's accumulators).

The root router pools the fabric map over its points as the CNN routers pool a feature map. Its
float version pools the SA2 features only, so its projection gains zero columns for the three xyz
channels: the same latent, one integer rule over the whole input stream.
"""
from __future__ import annotations

import copy

import brevitas.nn as qnn
import torch
import torch.nn as nn

from model.narrow import GlobalSetAbstraction, LinearBNReLU
from model.tree import SigmaBranchTree
from model.tree_layout import PointNetBackbone

from .presets import IntInputPerTensorFloat, QuantPreset, UintActPerTensorFloat
from .qtree import QuantRouterNode, _quant_conv, _quant_linear, last_quant_act


class FabricInput(nn.Module):
    """SA2's ``(xyz (B, 3, S), features (B, D, S))`` -> the fabric's input map ``(B, 3 + D, S, 1)``:
    per point its absolute xyz, then its features (SA3's group-all input, channels first)."""

    def forward(self, h: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xyz, points = h
        return torch.cat([xyz, points], 1).unsqueeze(-1)


def _quant_relu(preset: QuantPreset) -> qnn.QuantReLU:
    return qnn.QuantReLU(act_quant=UintActPerTensorFloat, bit_width=preset.act_bits)


class QuantGlobalSetAbstraction(nn.Module):
    """SA3 on the fabric map: per layer ``QuantReLU(BN(QuantConv1x1(x)))``, then the max over the
    ``points`` positions: ``(B, 3 + D, S, 1) -> (B, C, 1, 1)``."""

    def __init__(self, unit: GlobalSetAbstraction, points: int, preset: QuantPreset):
        super().__init__()
        self.mlp_convs = nn.ModuleList(_quant_conv(conv, preset) for conv in unit.sa.mlp_convs)
        self.mlp_bns = unit.sa.mlp_bns
        self.relus = nn.ModuleList(_quant_relu(preset) for _ in unit.sa.mlp_convs)
        self.pool = nn.MaxPool2d((points, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn, relu in zip(self.mlp_convs, self.mlp_bns, self.relus):
            x = relu(bn(conv(x)))
        return self.pool(x)


class QuantLinearBNReLU(nn.Module):
    """An FC unit of the head (``fc -> bn -> relu -> drop``) on a flattened input."""

    def __init__(self, unit: LinearBNReLU, preset: QuantPreset):
        super().__init__()
        self.fc, self.bn, self.drop = _quant_linear(unit.fc, preset), unit.bn, unit.drop
        self.relu = _quant_relu(preset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.relu(self.bn(self.fc(x.flatten(1)))))


def quantize_pointnet_layers(module: nn.Module, points: int, preset: QuantPreset) -> nn.Module:
    """Replace the SA3 / FC units and the final Linear below ``module`` in place."""
    for name, child in module.named_children():
        if isinstance(child, GlobalSetAbstraction):
            setattr(module, name, QuantGlobalSetAbstraction(child, points, preset))
        elif isinstance(child, LinearBNReLU):
            setattr(module, name, QuantLinearBNReLU(child, preset))
        elif isinstance(child, nn.Linear):
            setattr(module, name, _quant_linear(child, preset))
        else:
            quantize_pointnet_layers(child, points, preset)
    return module


def widen_root_projection(proj: nn.Linear) -> nn.Linear:
    """The root router's projection over ``3 + D`` channels with zero weights on xyz: on the fabric
    map it computes what the float router computes on the features."""
    wide = nn.Linear(proj.in_features + 3, proj.out_features)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, 3:] = proj.weight
        wide.bias.copy_(proj.bias)
    return wide


def quantize_pointnet_tree(tree: SigmaBranchTree, preset: QuantPreset) -> SigmaBranchTree:
    """A copy of a PointNet++ tree whose backbone is ``[SA1+SA2 (float, the processor's),
    FabricInput, input quantizer]`` and whose routed part is Brevitas (routers: see quant/qtree.py)."""
    qtree = copy.deepcopy(tree)
    if not isinstance(qtree.backbone, PointNetBackbone):
        raise TypeError(f"not a PointNet++ tree backbone: {type(qtree.backbone).__name__}")
    points = qtree.backbone.sa2.npoint
    for level in qtree.specialisers:
        for branch in level:
            quantize_pointnet_layers(branch, points, preset)
    for head in qtree.heads:
        quantize_pointnet_layers(head, points, preset)
    qtree.backbone = nn.Sequential(qtree.backbone, FabricInput(),
                                   qnn.QuantIdentity(act_quant=IntInputPerTensorFloat, bit_width=preset.input_bits))
    root = qtree.routers[0][0]
    root.proj = widen_root_projection(root.proj)
    for level, nodes in enumerate(qtree.routers):
        for node in range(len(nodes)):
            source = qtree.backbone if level == 0 else qtree.specialisers[level - 1][node]
            nodes[node] = QuantRouterNode(nodes[node], preset, last_quant_act(source))
    return qtree
