"""A tiny quantised tree (narrow edge CNN or ResNet-8, calibrated on random data) for the
export, build and simulation tests: every node exports in well under a second."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from model.config import TreeConfig
from model.convert import convert
from model.registry import create_model
from quant.presets import get_preset
from quant.qtree import quantize_tree

WIDTHS = [8, 8, 16, 16]  # a narrow edge CNN


def tiny_qtree(bits="w4a4", seed=0, model="edge_cnn"):
    torch.manual_seed(seed)
    args = {"num_classes": 4, "widths": WIDTHS} if model == "edge_cnn" else {"num_classes": 4}
    dense = create_model(model, **args).eval()
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(96) % 4
    x = torch.randn(96, 1, 8, 8, generator=g)
    x[y < 2, :, :4] += 1.5
    tree, _ = convert(dense, model, args, TensorDataset(x, y), TreeConfig(max_samples=96, proj_dim=16))
    qtree = quantize_tree(tree, get_preset(bits))
    qtree.train()
    with torch.no_grad():  # calibrate BN statistics and activation scales on the data
        for _ in range(3):
            qtree(x, mode="leaves")
    return qtree.eval(), x
