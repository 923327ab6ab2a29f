"""The AGF utility of a channel (``../shared/papers/agf-utility.txt``, abstract only): an absolute
feature-space Taylor expansion. Removing channel ``c`` of sample ``n`` changes the loss by
``-sum_hw a * dL/da`` to first order; its utility for that sample is the magnitude of that change.

It lives with the tree because the tree's Phase 2 can score channels by it
(``tree.channel_score: agf``, :mod:`model.convert`); the AGF pruning baseline
(``baselines/criteria.py``) averages the same per-sample utilities over calibration samples.
"""
from __future__ import annotations

import torch


def agf_sample_utilities(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``(N, C, ...)`` activations and loss gradients -> ``(N, C)`` utilities ``|sum_spatial a * g|``:
    the magnitude of the first-order loss change when the channel is removed for that sample."""
    product = (activations.detach() * gradients.detach()).flatten(2) if activations.dim() > 2 else \
        (activations.detach() * gradients.detach())[..., None]
    return product.sum(2).abs()
