"""Channel (filter) importance criteria of the static-pruning baselines and of AGF.

Each criterion is first a plain function of tensors (hand-checkable in tests), then a
Torch-Pruning ``Importance`` that scores a dependency group (all layers whose channels must be
removed together, e.g. every convolution feeding one residual sum):

- ``l1``: Li et al., "Pruning Filters for Efficient ConvNets": the L1 norm of each filter.
- ``fpgm``: He et al., FPGM: the sum of Euclidean distances from a filter to every other filter
  of its layer. A small sum means the filter lies near the layer's geometric median, so the
  others can represent it; those are pruned first.
- ``hrank``: Lin et al., HRank: the average matrix rank of a channel's feature map (after BN and
  ReLU) over calibration images; low-rank maps carry little information and are pruned first.
- ``agf``: the AGF utility (``../shared/papers/agf-utility.txt``, abstract only): an absolute
  feature-space Taylor expansion. Removing channel ``c`` of sample ``n`` changes the loss by
  ``-sum_hw a * dL/da`` to first order; the utility is the magnitude of that change, averaged
  over calibration samples, ``E_n |sum_hw a_nchw g_nchw|``. Taking the magnitude per sample
  before averaging is our reading of "absolute" (the classic Taylor criterion averages first,
  so opposite-signed samples cancel).

Why not Torch-Pruning's own ``MagnitudeImportance``/``FPGMImportance``: both also fold in the next
layer's input weights of the group, and its FPGM measures distances between squared weight
magnitudes rather than between filters. The papers score the filters themselves, so the
criteria here do; Torch-Pruning does the grouping, index selection and surgery.

In a group with several scored layers (a residual sum) a channel's score is the mean of its
layers' scores. Data criteria (HRank, AGF) are measured at each BatchNorm's output: every
convolution of the registered CNNs is followed by one, and the BN is a member of the group.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from tqdm.auto import tqdm

from model.agf import agf_sample_utilities  # the one definition of the utility, shared with the tree
from model.config import ConfigError

CRITERIA = ("l1", "fpgm", "hrank", "agf")
WEIGHT_CRITERIA = ("l1", "fpgm")
DATA_CRITERIA = ("hrank", "agf")


class PruningError(ConfigError):
    """Bad pruning input (unknown criterion, ratio outside (0, 1), a group no criterion can score).
    A ConfigError, so the CLI reports it as one line."""


def check_criterion(name: str) -> str:
    if name not in CRITERIA:
        raise PruningError(f"unknown pruning criterion {name!r}; choose from {', '.join(CRITERIA)}")
    return name


# ---------------------------------------------------------------------------- per-layer scores
def l1_filter_scores(weight: torch.Tensor) -> torch.Tensor:
    """``(out, ...)`` filter weights -> ``(out,)`` L1 norms (higher = keep)."""
    return weight.detach().flatten(1).abs().sum(1)


def fpgm_filter_scores(weight: torch.Tensor) -> torch.Tensor:
    """``(out, ...)`` filter weights -> ``(out,)`` summed Euclidean distance to the other filters
    (higher = keep; the filters nearest the geometric median score lowest)."""
    w = weight.detach().flatten(1).double()
    return torch.cdist(w[None], w[None])[0].sum(1).float()


def feature_map_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` feature maps -> ``(N, C)`` matrix rank of every ``H x W`` map."""
    return torch.linalg.matrix_rank(maps.detach().double()).float()


def hrank_channel_scores(maps: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` feature maps -> ``(C,)`` mean rank over the samples (higher = keep)."""
    return feature_map_ranks(maps).mean(0)


def agf_channel_scores(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``(N, C, ...)`` -> ``(C,)`` AGF utility, the sample mean of :func:`agf_sample_utilities`."""
    return agf_sample_utilities(activations, gradients).mean(0)


# ---------------------------------------------------------------------------- calibration
def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def calibrate_hrank(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    progress: bool = True) -> dict[nn.Module, torch.Tensor]:
    """Per BatchNorm layer: ``(C,)`` mean rank of ReLU(BN output) over the calibration batches."""
    model.eval()
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def hook(module, _inputs, output):
        if output.dim() != 4:
            return
        ranks = feature_map_ranks(F.relu(output))
        sums[module] = sums.get(module, 0) + ranks.sum(0)
        counts[module] = counts.get(module, 0) + len(ranks)

    handles = [m.register_forward_hook(hook) for m in _batchnorms(model)]
    try:
        for x, _ in tqdm(batches, desc="HRank calibration", leave=False, disable=not progress or None):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {m: sums[m] / counts[m] for m in sums}


def calibrate_agf(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  progress: bool = True) -> dict[nn.Module, torch.Tensor]:
    """Per BatchNorm layer: ``(C,)`` AGF utility accumulated over the calibration batches.

    The loss is the summed cross-entropy, so each sample's gradient is its own ``dL_n/da``.
    BN running statistics and weights are not changed (eval mode, no optimiser step).
    """
    was_training = model.training
    model.eval()
    captured: dict[nn.Module, torch.Tensor] = {}

    def hook(module, _inputs, output):
        # Keep the BN output itself; hand the next (possibly in-place) ReLU a copy so the kept
        # tensor stays the pre-ReLU activation whose gradient autograd returns.
        captured[module] = output
        return output.clone()

    sums: dict[nn.Module, torch.Tensor] = {}
    count = 0
    handles = [m.register_forward_hook(hook) for m in _batchnorms(model)]
    try:
        for x, y in tqdm(batches, desc="AGF calibration", leave=False, disable=not progress or None):
            captured.clear()
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y, reduction="sum")
                modules = list(captured)
                grads = torch.autograd.grad(loss, [captured[m] for m in modules])
            for module, grad in zip(modules, grads):
                sums[module] = sums.get(module, 0) + agf_sample_utilities(captured[module], grad).sum(0)
            count += len(y)
    finally:
        for h in handles:
            h.remove()
        captured.clear()
        model.train(was_training)
    if count == 0:
        raise PruningError("AGF calibration needs at least one batch")
    return {m: s / count for m, s in sums.items()}


# ---------------------------------------------------------------------------- group importances
_OUT_CHANNEL_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


def _group_name(group) -> str:
    return str(group[0].dep.target.name) if hasattr(group[0].dep.target, "name") else str(group[0].dep)


class _MeanOverMembers(tp.importance.Importance):
    """Mean of per-layer channel scores over the scored members of a dependency group."""

    def member_scores(self, layer: nn.Module, pruning_fn, idxs: list[int]) -> torch.Tensor | None:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        total, scored = None, 0
        for item in group:
            scores = self.member_scores(item.dep.layer, item.dep.pruning_fn, list(item.idxs))
            if scores is None or any(r is None for r in item.root_idxs):
                continue
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float32)
            total.scatter_add_(0, torch.as_tensor(item.root_idxs, dtype=torch.long), scores.float().cpu())
            scored += 1
        if total is None:
            raise PruningError(f"{type(self).__name__}: no layer of the group rooted at {_group_name(group)} "
                               "can be scored (no convolution / calibrated BatchNorm in it)")
        return total / scored


class FilterWeightImportance(_MeanOverMembers):
    """L1 or FPGM: scores every convolution / linear layer whose output channels the group removes."""

    def __init__(self, criterion: str):
        if criterion not in WEIGHT_CRITERIA:
            raise PruningError(f"weight criteria are {WEIGHT_CRITERIA}, got {criterion!r}")
        self.criterion = criterion
        self.score_fn: Callable[[torch.Tensor], torch.Tensor] = \
            l1_filter_scores if criterion == "l1" else fpgm_filter_scores

    def member_scores(self, layer, pruning_fn, idxs):
        if pruning_fn not in _OUT_CHANNEL_FNS or not isinstance(layer, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            return None
        return self.score_fn(layer.weight)[idxs]  # FPGM distances are within the whole layer


class BatchNormScoreImportance(_MeanOverMembers):
    """HRank or AGF: per-channel scores measured at the group's BatchNorm outputs (``calibrate_*``)."""

    def __init__(self, scores: dict[nn.Module, torch.Tensor]):
        self.scores = scores

    def member_scores(self, layer, pruning_fn, idxs):
        if pruning_fn != tp.prune_batchnorm_out_channels:
            return None
        score = self.scores.get(layer)
        if score is None:
            return None
        if len(score) != layer.num_features:
            raise PruningError(f"stale calibration: {len(score)} scores for a BatchNorm of {layer.num_features} "
                               "channels (re-calibrate after every pruning step)")
        return score[idxs]


def calibrated_importance(criterion: str, model: nn.Module, batches, progress: bool = True) -> tp.importance.Importance:
    """The group importance of ``criterion`` for ``model`` as it is now (data criteria calibrate here)."""
    check_criterion(criterion)
    if criterion in WEIGHT_CRITERIA:
        return FilterWeightImportance(criterion)
    calibrate = calibrate_hrank if criterion == "hrank" else calibrate_agf
    return BatchNormScoreImportance(calibrate(model, batches, progress=progress))
