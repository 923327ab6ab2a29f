"""AGF's hybrid routing: a confidence-routed cascade of a pruned expert and the full model.

Our reading of the AGF abstract ("decouples AGF-guided offline structural search from online
execution via zero-cost physical priors"; Fig. 1 (C), "confidence-based dynamic routing"):

- the pruned expert (AGF-pruned offline) runs on every input; its own softmax confidence
  (max probability) is the routing signal, so the router adds no parameters or MACs;
- an input whose confidence is below a threshold ``t`` is sent to the full (dense) model, whose
  prediction replaces the expert's;
- the expected cost relative to the full model is ``(c_expert + f * c_full) / c_full``, with ``f``
  the fraction of inputs sent to the full model. The abstract's example fits this form:
  about 50% heavy-expert use at an overall cost of 0.92x means ``c_expert ~ 0.42 c_full``.

Cost is measured in MACs (compute) and in parameters (the expected active parameters per
input; both models must be stored). Sweeping ``t`` from 0 (never escalate) to above 1 (always)
gives the accuracy/cost curve.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .criteria import PruningError


@torch.no_grad()
def predict_proba(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax probabilities (N, C), labels (N,))`` of ``model`` on ``loader``."""
    model.eval().to(device)
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x.to(device)).float(), 1).cpu())
        labels.append(y)
    model.cpu()
    return torch.cat(probs), torch.cat(labels)


def default_thresholds(steps: int = 101) -> list[float]:
    """0, 1/(steps-1), ..., 1, and one above 1 (every input escalated)."""
    if steps < 2:
        raise PruningError(f"the threshold sweep needs at least 2 thresholds, got {steps}")
    return [round(float(t), 6) for t in np.linspace(0.0, 1.0, steps)] + [1.01]


def route_by_confidence(expert_probs: torch.Tensor, full_probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions (N,), escalated (N,) bool)``: the expert's class unless its max probability is
    below ``threshold``, then the full model's."""
    confidence, expert_pred = expert_probs.max(1)
    escalated = confidence < threshold
    return torch.where(escalated, full_probs.argmax(1), expert_pred), escalated


def expected_cost(expert_cost: float, full_cost: float, full_fraction: float) -> float:
    """Expected cost relative to the full model: the expert always runs, the full model on ``full_fraction``."""
    if full_cost <= 0:
        raise PruningError(f"full-model cost must be positive, got {full_cost}")
    return (expert_cost + full_fraction * full_cost) / full_cost


def confidence_sweep(expert_probs: torch.Tensor, full_probs: torch.Tensor, labels: torch.Tensor,
                     expert_macs: float, full_macs: float, expert_params: float, full_params: float,
                     thresholds: Sequence[float]) -> list[dict[str, float]]:
    """One row per threshold: Top-1 (%), fraction sent to the full model, expected MACs/params
    (absolute and relative to the full model)."""
    if expert_probs.shape != full_probs.shape or len(labels) != len(expert_probs):
        raise PruningError(f"expert {tuple(expert_probs.shape)} and full {tuple(full_probs.shape)} predictions "
                           f"and {len(labels)} labels do not match")
    rows = []
    for t in thresholds:
        pred, escalated = route_by_confidence(expert_probs, full_probs, t)
        f = escalated.float().mean().item()
        rows.append({"threshold": float(t), "full_fraction": f, "top1": 100 * (pred == labels).float().mean().item(),
                     "expected_cost": expected_cost(expert_macs, full_macs, f),
                     "expected_macs": expert_macs + f * full_macs,
                     "expected_params": expert_params + f * full_params,
                     "expected_params_rel": expected_cost(expert_params, full_params, f)})
    return rows


def operating_point(sweep: list[dict[str, float]], reference_top1: float, tolerance_pp: float) -> dict[str, float]:
    """The cheapest threshold whose Top-1 is within ``tolerance_pp`` of ``reference_top1`` (the full
    model's), as the abstract's "without sacrificing the full-model accuracy"; if none is, the most
    accurate one."""
    ok = [r for r in sweep if r["top1"] >= reference_top1 - tolerance_pp]
    if ok:
        return min(ok, key=lambda r: (r["expected_cost"], -r["top1"]))
    return max(sweep, key=lambda r: (r["top1"], -r["expected_cost"]))


def plot_sweep(sweep: list[dict[str, float]], path: Path, full_top1: float, expert_top1: float,
               chosen: dict[str, float] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["expected_cost"] for r in sweep], [r["top1"] for r in sweep], ".-", label="confidence routing")
    ax.axhline(full_top1, color="k", ls="--", lw=0.8, label=f"full model {full_top1:.2f}%")
    ax.axhline(expert_top1, color="tab:green", ls=":", lw=0.8, label=f"pruned expert alone {expert_top1:.2f}%")
    if chosen:
        ax.plot([chosen["expected_cost"]], [chosen["top1"]], "r*", ms=12,
                label=f"t={chosen['threshold']:.2f}: {100 * chosen['full_fraction']:.0f}% to full")
    ax.set_xlabel("expected cost (MACs, x full model)")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_routing(expert_checkpoint: str | Path, dense_checkpoint: str | Path, cfg, out_dir: str | Path,
                thresholds: Sequence[float] | None = None, tolerance_pp: float = 0.5,
                device: str = "auto") -> dict[str, Any]:
    """Sweep the confidence threshold of a pruned expert (``checkpoint.pt`` of kind ``pruned``) in
    front of the dense model on ``cfg``'s test split; writes ``sweep.csv``, ``sweep.png``, ``metrics.json``."""
    import csv

    from model.accounting import count_params, model_macs
    from model.checkpoint import model_from_checkpoint
    from model.dense import dataset_for
    from model.distributed import local_device
    from model.train import make_loader, write_json

    from .prune import pruned_from_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    expert, _ = pruned_from_checkpoint(expert_checkpoint)
    full, _ = model_from_checkpoint(dense_checkpoint)
    data = dataset_for(cfg, augment=False)
    shape = tuple(data.input_shape)
    dev = local_device(device)
    loader = make_loader(data.test, cfg.eval_batch_size, False, cfg.seed)
    expert_probs, labels = predict_proba(expert, loader, dev)
    full_probs, _ = predict_proba(full, loader, dev)
    costs = {"expert_macs": model_macs(expert, shape), "full_macs": model_macs(full, shape),
             "expert_params": count_params(expert), "full_params": count_params(full)}
    sweep = confidence_sweep(expert_probs, full_probs, labels, thresholds=thresholds or default_thresholds(), **costs)
    full_top1 = 100 * (full_probs.argmax(1) == labels).float().mean().item()
    expert_top1 = 100 * (expert_probs.argmax(1) == labels).float().mean().item()
    chosen = operating_point(sweep, full_top1, tolerance_pp)
    with open(out_dir / "sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(sweep[0]))
        writer.writeheader()
        writer.writerows(sweep)
    plot_sweep(sweep, out_dir / "sweep.png", full_top1, expert_top1, chosen)
    metrics = {"full_top1": full_top1, "expert_top1": expert_top1, "tolerance_pp": tolerance_pp,
               "chosen": chosen, **costs, "stored_params": costs["expert_params"] + costs["full_params"],
               "expert_checkpoint": str(expert_checkpoint), "dense_checkpoint": str(dense_checkpoint)}
    write_json(out_dir / "metrics.json", metrics)
    return metrics
