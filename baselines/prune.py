"""Dependency-aware structured pruning of a dense checkpoint, then fine-tuning.

Torch-Pruning's ``DependencyGraph`` finds the channel groups that must shrink together (a
convolution's filters, its BatchNorm, the next layer's inputs, and every convolution that feeds
the same residual sum), and its ``BasePruner`` removes the lowest-scoring channels of each group
at a uniform per-layer ``ratio`` (local pruning, as L1/FPGM/HRank report their rates). The
classifier's outputs (the classes) are never pruned.

- ``l1``, ``fpgm``, ``hrank``: one-shot pruning, then fine-tuning with the tree's budget (the
  same epochs, optimiser and schedule as the tree's soft-routing fine-tuning).
- ``agf``: iterative, as AGF's Fig. 1 (B): ``steps`` rounds that each re-measure the AGF utility
  on the current, already partly pruned network and prune to the next fraction of ``ratio``;
  then the same fine-tuning budget. No training happens between rounds, so the budget matches.

A pruned checkpoint (kind ``pruned``) stores the registered model name and a state dict with
narrower tensors; :func:`pruned_from_checkpoint` builds the dense model, shrinks every layer to
the stored shapes and loads the weights (strict).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch_pruning as tp

from model.accounting import count_params, model_macs
from model.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked
from model.config import TrainConfig
from model.registry import create_model

from .criteria import PruningError, calibrated_importance, check_criterion


def check_ratio(ratio: float) -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 < float(ratio) < 1.0:
        raise PruningError(f"pruning ratio must lie strictly between 0 and 1 (fraction of channels removed "
                           f"per layer), got {ratio!r}")
    return float(ratio)


def classifier_of(model: nn.Module) -> nn.Module:
    """The layer whose outputs are the classes (kept whole)."""
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise PruningError(f"{type(model).__name__} has no Linear 'fc' classifier; the pruning baselines support "
                           "the CNNs with a pooled classifier (edge_cnn, resnet*)")
    return fc


def channel_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by name (what pruning changed)."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_model(model: nn.Module, criterion: str, ratio: float, input_shape: tuple[int, ...],
                calibration: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, steps: int = 1,
                progress: bool = True) -> nn.Module:
    """Prune ``model`` in place: each channel group loses ``ratio`` of its channels, chosen by
    ``criterion``, in ``steps`` rounds (importance re-measured before every round).

    ``calibration`` (a re-iterable of ``(x, y)`` batches) is required by ``hrank`` and ``agf``.
    """
    check_criterion(criterion)
    ratio = check_ratio(ratio)
    if steps < 1:
        raise PruningError(f"pruning steps must be >= 1, got {steps}")
    batches = list(calibration) if calibration is not None else None
    if criterion in ("hrank", "agf") and not batches:
        raise PruningError(f"criterion {criterion!r} needs calibration batches (data)")
    model.eval()
    example = torch.zeros(1, *input_shape)
    pruner = tp.pruner.BasePruner(model, example, importance=calibrated_importance(criterion, model, batches, progress),
                                  pruning_ratio=ratio, iterative_steps=steps, ignored_layers=[classifier_of(model)])
    for step in range(steps):
        if step > 0:  # the network changed: measure the utility again on what is left
            pruner.importance = calibrated_importance(criterion, model, batches, progress)
        pruner.step()
    return model


def _resize_parameter(module: nn.Module, name: str, shape: torch.Size) -> None:
    old = getattr(module, name)
    if old is None or old.shape == shape:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(torch.empty(shape, dtype=old.dtype), requires_grad=old.requires_grad))
    else:
        setattr(module, name, torch.empty(shape, dtype=old.dtype))


def shrink_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Give every conv / BN / linear layer of ``model`` the tensor shapes of ``state_dict``
    (the layout of a pruned copy of the same architecture), so the state dict loads strictly."""
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Conv2d) and prefix + "weight" in state_dict:
            w = state_dict[prefix + "weight"]
            if m.groups != 1:
                raise CheckpointError(f"{name}: grouped convolutions are not supported by pruned checkpoints")
            m.out_channels, m.in_channels = w.shape[0], w.shape[1]
            _resize_parameter(m, "weight", w.shape)
            if m.bias is not None:
                _resize_parameter(m, "bias", torch.Size([w.shape[0]]))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and prefix + "running_mean" in state_dict:
            n = state_dict[prefix + "running_mean"].shape
            m.num_features = n[0]
            for attr in ("weight", "bias", "running_mean", "running_var"):
                _resize_parameter(m, attr, n)
        elif isinstance(m, nn.Linear) and prefix + "weight" in state_dict:
            w = state_dict[prefix + "weight"]
            m.out_features, m.in_features = w.shape[0], w.shape[1]
            _resize_parameter(m, "weight", w.shape)
            if m.bias is not None:
                _resize_parameter(m, "bias", torch.Size([w.shape[0]]))
    return model


def pruned_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a pruned model from its checkpoint (kind ``pruned``)."""
    ckpt = load_checkpoint(path, kind="pruned")
    model = create_model(ckpt["model_name"], **ckpt.get("model_args", {}))
    shrink_to_state_dict(model, ckpt["state_dict"])
    load_state_dict_checked(model, ckpt["state_dict"], source=str(path))
    return model, ckpt


def _calibration_batches(train_set, batch_size: int, batches: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, seeded sample of training batches (the same for every criterion)."""
    if batches < 1:
        raise PruningError(f"calibration_batches must be >= 1, got {batches}")
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    return list(itertools.islice(iter(loader), batches))


def run_prune(dense_checkpoint: str | Path, criterion: str, ratio: float, cfg: TrainConfig, out_dir: str | Path,
              calibration_batches: int = 8, steps: int = 1, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Prune a dense checkpoint with ``criterion`` at ``ratio`` and fine-tune it with ``cfg``'s
    budget (the tree's epochs/optimiser). Writes ``checkpoint.pt`` (kind ``pruned``), ``metrics.json``."""
    from model.checkpoint import model_from_checkpoint
    from model.dense import dataset_for
    from model.distributed import local_device
    from model.train import evaluate_classifier, fit, make_loader, seed_everything, write_json

    check_criterion(criterion)
    check_ratio(ratio)
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    model, ckpt = model_from_checkpoint(dense_checkpoint)
    data = dataset_for(cfg, augment=False)
    input_shape = tuple(data.input_shape)
    dense_params, dense_macs = count_params(model), model_macs(model, input_shape)
    batches = _calibration_batches(data.train, cfg.batch_size, calibration_batches, cfg.seed) \
        if criterion in ("hrank", "agf") else None
    prune_model(model, criterion, ratio, input_shape, batches, steps=steps, progress=progress)
    dev = local_device(device)
    test_loader = make_loader(data.test, cfg.eval_batch_size, False, cfg.seed)
    before = evaluate_classifier(model.to(dev), test_loader, dev)
    model.cpu()
    train = dataset_for(cfg)  # the training split with the config's augmentation
    result = fit(model, cfg, train.train, train.test, out_dir, kind="pruned", model_name=ckpt["model_name"],
                 model_args=ckpt["model_args"], device=device, progress=progress,
                 extra_checkpoint={"input_shape": list(input_shape), "criterion": criterion, "ratio": ratio,
                                   "steps": steps, "dense_checkpoint": str(dense_checkpoint)})
    model.cpu()
    params = count_params(model)
    metrics = {"criterion": criterion, "ratio": ratio, "steps": steps, **result.final,
               "top1_before_finetune": before["top1"], "params": params, "macs": model_macs(model, input_shape),
               "dense_params": dense_params, "dense_macs": dense_macs, "channels": channel_widths(model),
               "epochs": cfg.epochs, "train_seconds": sum(h["seconds"] for h in result.history)}
    write_json(out_dir / "metrics.json", metrics)
    return metrics
