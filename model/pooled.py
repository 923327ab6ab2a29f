"""The head shared by the CNNs: global average pool -> flatten -> ``fc`` (timm's split)."""
from __future__ import annotations

import torch
import torch.nn as nn


class PooledClassifier(nn.Module):
    """Base for CNNs that define ``forward_features`` and own an ``avgpool`` + ``fc`` head."""

    avgpool: nn.Module
    fc: nn.Linear

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
