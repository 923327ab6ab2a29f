"""A Brevitas version of a Sigma-Branch tree, for quantisation-aware fine-tuning.

Every Conv2d/Linear becomes a QuantConv2d/QuantLinear (signed narrow-range weights), every
ReLU a QuantReLU (unsigned), and the input passes an 8-bit QuantIdentity. BatchNorm and
max-pooling stay: FINN+'s streamlining folds BN into the thresholds of the next activation.

Routers: training keeps the float LayerNorm router (soft routing needs its probabilities); the
hard decision in eval mode is the integer rule of ``host/router_rule.py``, computed from the
quantised projection and the folded LayerNorm + router (``u``, ``c``, ``E`` as integers, see
:meth:`QuantRouterNode.integer_params`). The same integers go to the hardware and the numpy
reference, so their decisions equal this model's on every input. The float router's decision can
differ where rounding ``u``, ``c`` and the projection bias flips the sign of ``logit1 - logit0``:
``router_agreement`` measures how often it does not.

Supported: trees of the edge CNN (conv/BN/ReLU/max-pool blocks), of ResNets, whose blocks
become :class:`QuantResidualBlock` (one signed quantizer shared by both inputs of the residual
addition, so the sum is an integer sum), and of PointNet++, whose backbone stays float on the
processor and whose routed part is quantised from the fabric's input on
(:mod:`quant.qpointnet`).
"""
from __future__ import annotations

import copy
from typing import Any

import brevitas.nn as qnn
import numpy as np
import torch
import torch.nn as nn

from host.router_rule import projection_int, router_decision
from model.resnet import BasicBlock, Bottleneck
from model.tree import RouterNode, SigmaBranchTree, route_groups

from .presets import (IntInputPerTensorFloat, NarrowIntWeightPerTensorFloat, QuantPreset, ResidualActPerTensorFloat,
                      UintActPerTensorFloat)

ROUTER_PARAM_BITS = 16  # folded LayerNorm + router vector u and offset c


class QuantizationError(ValueError):
    pass


def _quant_conv(conv: nn.Conv2d, preset: QuantPreset) -> qnn.QuantConv2d:
    new = qnn.QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                          bias=conv.bias is not None, weight_quant=NarrowIntWeightPerTensorFloat,
                          weight_bit_width=preset.weight_bits)
    new.load_state_dict(conv.state_dict(), strict=False)
    return new


def _quant_linear(fc: nn.Linear, preset: QuantPreset) -> qnn.QuantLinear:
    new = qnn.QuantLinear(fc.in_features, fc.out_features, bias=fc.bias is not None,
                          weight_quant=NarrowIntWeightPerTensorFloat, weight_bit_width=preset.weight_bits)
    new.load_state_dict(fc.state_dict(), strict=False)
    return new


class QuantResidualBlock(nn.Module):
    """A ResNet block (basic or bottleneck) for FINN+: ``out_relu(q(body(x)) + q(shortcut(x)))``.

    ``add_quant`` is one signed quantizer used on *both* inputs of the addition, so they share a
    scale and the sum is an integer sum (FINN+ streamlines the shared scale past the add). Its
    width is ``preset.residual_bits`` (8 by default: the identity shortcut carries the block
    input, and 4 signed bits would lose most of it). Parameter names keep the dense block's
    (``conv1``, ``bn1``, ..., ``downsample``) so a float tree's weights load as they are.
    """

    def __init__(self, block: nn.Module, preset: QuantPreset):
        super().__init__()
        self.bottleneck = hasattr(block, "conv3")
        layers = ["conv1", "bn1", "conv2", "bn2"] + (["conv3", "bn3"] if self.bottleneck else [])
        for name in layers:
            setattr(self, name, getattr(block, name))
        inner = 2 if self.bottleneck else 1
        self.inner_relus = nn.ModuleList(
            qnn.QuantReLU(act_quant=UintActPerTensorFloat, bit_width=preset.act_bits) for _ in range(inner))
        self.downsample = block.downsample
        self.add_quant = qnn.QuantIdentity(act_quant=ResidualActPerTensorFloat, bit_width=preset.residual_bits)
        self.out_relu = qnn.QuantReLU(act_quant=UintActPerTensorFloat, bit_width=preset.act_bits)
        self.stride = block.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.inner_relus[0](self.bn1(self.conv1(x)))
        if self.bottleneck:
            out = self.inner_relus[1](self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        return self.out_relu(self.add_quant(out) + self.add_quant(shortcut))


def quantize_layers(module: nn.Module, preset: QuantPreset) -> nn.Module:
    """Replace Conv2d/Linear/ReLU below ``module`` in place (RouterNodes are handled apart)."""
    for name, child in module.named_children():
        if isinstance(child, RouterNode):
            continue
        if isinstance(child, (BasicBlock, Bottleneck)):
            quantize_layers(child, preset)  # its convs (and downsample conv) first
            setattr(module, name, QuantResidualBlock(child, preset))
        elif isinstance(child, nn.Conv2d):
            setattr(module, name, _quant_conv(child, preset))
        elif isinstance(child, nn.Linear):
            setattr(module, name, _quant_linear(child, preset))
        elif isinstance(child, nn.ReLU):
            setattr(module, name, qnn.QuantReLU(act_quant=UintActPerTensorFloat, bit_width=preset.act_bits))
        else:
            quantize_layers(child, preset)
    return module


def last_quant_act(module: nn.Module) -> qnn.QuantReLU | qnn.QuantIdentity:
    """The quantizer whose integers leave ``module``: its last QuantReLU, or the input quantizer
    of a backbone that only quantises (PointNet++'s, whose layers run on the processor)."""
    acts = [m for m in module.modules() if isinstance(m, (qnn.QuantReLU, qnn.QuantIdentity))]
    if not acts:
        raise QuantizationError(f"{type(module).__name__} ends without a quantised activation to feed a router")
    return acts[-1]


def split_at_input_quant(backbone: nn.Sequential) -> tuple[nn.Sequential, qnn.QuantIdentity, nn.Sequential]:
    """A quantised backbone as ``(host part, input quantizer, fabric part)``. CNN trees quantise the
    image first (empty host part); a PointNet++ tree runs SA1 + SA2 on the processor and quantises
    their output (empty fabric part: its routers and branches read the input stream)."""
    layers = list(backbone) if isinstance(backbone, nn.Sequential) else []
    first = next((i for i, m in enumerate(layers) if isinstance(m, qnn.QuantIdentity)), None)
    if first is None:
        raise QuantizationError("the tree is not quantised (its backbone has no input quantizer): "
                                "run `sigmabranch quantize` first")
    return nn.Sequential(*layers[:first]), layers[first], nn.Sequential(*layers[first + 1:])


class QuantRouterNode(RouterNode):
    """A router whose projection is quantised and whose eval-mode decision is integer-exact."""

    def __init__(self, node: RouterNode, preset: QuantPreset, input_act: qnn.QuantReLU):
        super().__init__(node.proj.in_features, node.proj.out_features, node.drop.p)
        self.load_state_dict(node.state_dict())
        self.proj = _quant_linear(node.proj, preset)
        # The activation whose integers this router pools; not a submodule (it belongs to the
        # backbone or the parent specialiser).
        object.__setattr__(self, "input_act", input_act)

    @torch.no_grad()
    def integer_params(self, pool_size: int) -> dict[str, Any]:
        """The integers of the hardware decision for an input map of ``pool_size`` positions."""
        act_scale = float(self.input_act.act_quant.scale())
        weight = self.proj.quant_weight()
        weight_scale = float(weight.scale)
        weight_int = weight.int().numpy().astype(np.int64)
        k = weight_scale * act_scale / pool_size  # z = K * z_int
        bias_int = np.round(self.proj.bias.double().numpy() / k).astype(np.int64)
        w = (self.router.weight[1] - self.router.weight[0]).double()
        u = w * self.norm.weight.double()
        c = float(w @ self.norm.bias.double() + self.router.bias[1] - self.router.bias[0])
        scale = max(float(u.abs().max()), abs(c), 1e-30) / (2 ** (ROUTER_PARAM_BITS - 1) - 1)
        n = self.proj.out_features
        return {"act_scale": act_scale, "pool_size": pool_size, "weight_int": weight_int, "bias_int": bias_int,
                "u_int": np.round(u.numpy() / scale).astype(np.int64), "c_int": int(round(c / scale)),
                "e_int": int(round(n * n * self.norm.eps / (k * k)))}

    @torch.no_grad()
    def pooled_sum_int(self, h: torch.Tensor) -> np.ndarray:
        """Integer sum over positions of the quantised input map (what the pooling block adds up)."""
        if h.dim() not in (2, 4):
            raise QuantizationError(f"integer routing needs (B, C, H, W) maps or (B, C) vectors, got {tuple(h.shape)}")
        scale = float(self.input_act.act_quant.scale())
        return torch.round((h.double().sum((2, 3)) if h.dim() == 4 else h.double()) / scale).long().numpy()

    def decide(self, h: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().decide(h)
        ints = self.integer_params(h.shape[2] * h.shape[3] if h.dim() == 4 else 1)
        z_int = projection_int(self.pooled_sum_int(h), ints["weight_int"], ints["bias_int"])
        return torch.from_numpy(router_decision(z_int, ints["u_int"], ints["c_int"], ints["e_int"])).to(h.device)

    def float_decide(self, h: torch.Tensor) -> torch.Tensor:
        """The float LayerNorm router's choice (for the agreement statistic)."""
        return super().decide(h)


def quantize_tree(tree: SigmaBranchTree, preset: QuantPreset) -> SigmaBranchTree:
    """A Brevitas copy of a float tree (weights copied; scales start from Brevitas' defaults)."""
    if str(tree.spec.get("dense_model", "")).startswith("pointnet"):
        from .qpointnet import quantize_pointnet_tree
        qtree = quantize_pointnet_tree(tree, preset)
    else:
        qtree = copy.deepcopy(tree)
        quantize_layers(qtree, preset)
        qtree.backbone = nn.Sequential(qnn.QuantIdentity(act_quant=IntInputPerTensorFloat, bit_width=preset.input_bits),
                                       *qtree.backbone)
        for level, nodes in enumerate(qtree.routers):
            for node in range(len(nodes)):
                source = qtree.backbone if level == 0 else qtree.specialisers[level - 1][node]
                nodes[node] = QuantRouterNode(nodes[node], preset, last_quant_act(source))
    qtree.spec = {**tree.spec, "quant": {"name": preset.name, "weight_bits": preset.weight_bits,
                                         "act_bits": preset.act_bits, "input_bits": preset.input_bits}}
    return qtree


@torch.no_grad()
def router_agreement(qtree: SigmaBranchTree, x: torch.Tensor) -> float:
    """Fraction of routing decisions (every node on every input's hard path) where the float
    LayerNorm router and the integer rule agree."""
    qtree.eval()
    counts = [0, 0]  # agreeing, total

    def compare(level: int, node: int, h: torch.Tensor) -> None:
        router = qtree.routers[level][node]
        counts[0] += int((router.decide(h) == router.float_decide(h)).sum())
        counts[1] += len(h)

    route_groups(qtree.backbone, qtree.routers, qtree.specialisers, x, qtree.depth, visit=compare)
    return counts[0] / max(counts[1], 1)
