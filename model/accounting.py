"""Parameter and MAC counting.

MAC convention (fvcore's, which the paper used): convolutions and linear layers count their
multiply-accumulates (``torch.utils.flop_counter`` FLOPs / 2); BatchNorm, LayerNorm and
adaptive average pooling count one MAC per input element. ReLU, max-pool and additions are
not counted. Batch size 1.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

_PER_ELEMENT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(fn: Callable[[], object], module: nn.Module) -> int:
    """MACs of calling ``fn()`` (which runs ``module`` or parts of it), fvcore convention."""
    elementwise = 0

    def hook(mod, inputs, output):
        nonlocal elementwise
        elementwise += inputs[0].numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, _PER_ELEMENT)]
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for h in handles:
            h.remove()
    return counter.get_total_flops() // 2 + elementwise


def model_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of ``model`` on a single zero input of ``input_shape`` (no batch dim)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    try:
        return count_macs(lambda: model(x), model)
    finally:
        model.train(was_training)
