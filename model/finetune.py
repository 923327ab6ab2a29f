"""``sigmabranch finetune``: soft-routing fine-tuning of a converted tree (Section III-D).

Loss = specialist loss + lambda * responsibility loss:
- specialist (Eq. 5): ``sum_l p_l * CE_l``, the routing-weighted sum of per-leaf cross-entropies;
- responsibility (Eqs. 6-7): cross-entropy between the routing distribution ``p`` and the
  stop-gradient soft-min of the leaf losses, ``r = softmax(-CE / tau)``.

Optionally (``tree.balance_lambda``, not in the paper) a load-balancing term: the KL divergence
of the batch's mean routing distribution from uniform, as in mixture-of-experts training, plus
half of each input's routing entropy: the leaves' shares of the batch are pulled together while
each input is pushed toward a confident route.
Without it CIFAR-10 fine-tuning starved two of ResNet-20's four leaves (usage 0.5 % and 1.7 %):
the responsibility loss sends each input to the leaf that already fits it best, and a leaf that
sees little data never becomes the best.

Optionally (``tree.margin_lambda``, not in the paper) a routing-margin term, :func:`margin_loss`,
so that the hard decisions survive quantisation.

Optionally (``tree.distill_lambda``, not in the paper) knowledge distillation from the dense
model, :func:`distill_loss`: with a short fine-tuning budget the branches, narrowed to ~0.7 of the
dense width, recover faster from the dense model's soft outputs than from the labels alone.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import TrainConfig
from .distributed import all_reduce_sum, is_main_process
from .train import fit, write_json
from .tree import SigmaBranchTree


def leaf_cross_entropy(leaf_logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """(B, L) cross-entropy of every leaf's logits ``(B, L, C)`` against ``target`` (B,)."""
    b, leaves, classes = leaf_logits.shape
    return F.cross_entropy(leaf_logits.reshape(b * leaves, classes).float(), target.repeat_interleave(leaves),
                           reduction="none", label_smoothing=label_smoothing).view(b, leaves)


def sigma_branch_loss(leaf_logits: torch.Tensor, leaf_log_probs: torch.Tensor, target: torch.Tensor,
                      resp_lambda: float = 0.3, resp_tau: float = 1.0, label_smoothing: float = 0.0,
                      balance_lambda: float = 0.0) -> torch.Tensor:
    """Eq. 8 for a batch: ``leaf_logits`` (B, L, C), ``leaf_log_probs`` (B, L), ``target`` (B,);
    plus ``balance_lambda`` x :func:`balance_loss`."""
    leaf_ce = leaf_cross_entropy(leaf_logits, target, label_smoothing)
    loss = (leaf_log_probs.exp() * leaf_ce).sum(1).mean()  # specialist
    if resp_lambda:
        responsibility = F.softmax(-leaf_ce.detach() / resp_tau, dim=1)  # soft-min target, no gradient
        loss = loss + resp_lambda * -(responsibility * leaf_log_probs).sum(1).mean()
    if balance_lambda:
        loss = loss + balance_lambda * balance_loss(leaf_log_probs)
    return loss


def balance_loss(leaf_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(mean routing distribution of the batch || uniform) + half the mean per-input routing
    entropy: 0 when the batch is spread evenly over the leaves *and* each input is routed with
    certainty, log L / 2 when every input is a coin toss, log L when one leaf takes it all.

    The entropy half matters: the KL alone is met by routing every input 50/50, a balance on
    knife-edge margins that W4A4 quantisation then flips (with the KL alone the quantised CIFAR-10
    trees kept the float tree's leaf for only 33-68 % of the test set). At full weight the two
    would be log L - I(input; leaf), which is flat (log L) for a batch routed all alike, so a
    collapsed tree would get no push back; at half weight it does."""
    p = leaf_log_probs.exp()
    mean_p = p.mean(0)
    batch_kl = math.log(mean_p.numel()) + (mean_p * mean_p.clamp_min(1e-12).log()).sum()
    input_entropy = -(p * leaf_log_probs).sum(1).mean()
    return batch_kl + 0.5 * input_entropy


def margin_loss(tree: SigmaBranchTree, latents: list[torch.Tensor], leaf_log_probs: torch.Tensor,
                margin: float) -> torch.Tensor:
    """Per router node, over the inputs that reach it (weights ``reach``: the routing probability
    of getting there, no gradient), with ``s = (w.z + b) / ||w||`` the signed distance of the
    latent ``z`` from the decision hyperplane:

    - hinge: mean of ``reach * relu(margin - |s|)``: keep the hyperplane ``margin`` away from the
      inputs;
    - split: ``(sum reach * tanh(s / margin) / sum reach) ** 2``: ... with as many inputs on
      either side. Without it the hinge is met by moving the hyperplane away from every input
      (a large ``|b| / ||w||``), and a small ``||w||`` keeps the soft routing balanced while the
      hard routing sends everything one way (CIFAR-10: two of four leaves empty after 1 epoch).

    Why: W4A4 moves the latents a little, and a decision on a small margin flips. On the
    CIFAR-10 ResNet-20 tree (4 epochs, no margin term) the quantised tree took another leaf for
    45 % of the test inputs whose smallest margin on the path was below 0.05, 4 % of those
    between 0.2 and 0.4, and none above 0.8; half of the inputs were below 0.53. The distance is
    measured in the LayerNorm latent (unit variance per dimension), so scaling the router's
    weights, which sharpens the softmax without moving anything, does not meet it."""
    p = leaf_log_probs.exp().detach()
    leaves = leaf_log_probs.shape[1]
    loss = leaf_log_probs.new_zeros(())
    for k, z in enumerate(latents):  # level-major, as the router nodes
        level = (k + 1).bit_length() - 1
        node = k + 1 - 2 ** level
        span = leaves >> level  # leaves below this node
        reach = p[:, node * span:(node + 1) * span].sum(1)
        router = tree.routers[level][node].router
        w = router.weight[1] - router.weight[0]
        s = (z @ w + router.bias[1] - router.bias[0]) / w.norm().clamp_min(1e-12)
        hinge = (reach * F.relu(margin - s.abs())).mean()
        split = (reach * torch.tanh(s / margin)).sum() / reach.sum().clamp_min(1e-12)
        loss = loss + hinge + split ** 2
    return loss


def distill_loss(leaf_logits: torch.Tensor, leaf_log_probs: torch.Tensor, teacher_logits: torch.Tensor,
                 tau: float) -> torch.Tensor:
    """Routing-weighted distillation: ``sum_l p_l * tau^2 * KL(softmax(t/tau) || softmax(s_l/tau))``.

    Weighted like the specialist loss, so each leaf imitates the dense model on the inputs that
    reach it (what hard routing will run it on); the routing weights are detached: where inputs go
    stays the business of the paper's losses. ``tau^2`` keeps the gradient's scale independent of
    ``tau`` (Hinton et al.). ``leaf_logits`` (B, L, C), ``teacher_logits`` (B, C).
    """
    target = F.log_softmax(teacher_logits.detach() / tau, dim=-1).unsqueeze(1)
    student = F.log_softmax(leaf_logits / tau, dim=-1)
    kl = (target.exp() * (target - student)).sum(-1)  # (B, L)
    return tau * tau * (leaf_log_probs.detach().exp() * kl).sum(1).mean()


def load_teacher(path: str | Path, tree: SigmaBranchTree) -> nn.Module:
    """The dense checkpoint to distil from, frozen in eval mode; refused unless it classifies into
    the tree's classes (a teacher of another task would teach nonsense, silently)."""
    from .checkpoint import model_from_checkpoint
    from .config import ConfigError

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"tree.distill_teacher: no dense checkpoint at {path}")
    teacher, ckpt = model_from_checkpoint(path)
    spec_args = tree.spec.get("dense_args", {})
    if ckpt.get("model_args", {}).get("num_classes") != spec_args.get("num_classes"):
        raise ConfigError(f"tree.distill_teacher {path}: {ckpt['model_name']} with "
                          f"{ckpt.get('model_args', {}).get('num_classes')} classes cannot teach a tree of "
                          f"{spec_args.get('num_classes')} classes")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def tree_loss(cfg: TrainConfig, teacher: nn.Module | None = None):
    if cfg.tree.distill_lambda and teacher is None:
        raise ValueError("tree.distill_lambda > 0 needs a teacher (tree.distill_teacher)")

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        latents: list[torch.Tensor] | None = [] if cfg.tree.margin_lambda else None
        leaf_logits, leaf_log_probs = model(x, mode="leaves", latents=latents)
        loss = sigma_branch_loss(leaf_logits, leaf_log_probs, y, cfg.tree.resp_lambda, cfg.tree.resp_tau,
                                 cfg.optim.label_smoothing, cfg.tree.balance_lambda)
        if latents is not None:
            tree = getattr(model, "module", model)  # under DistributedDataParallel
            loss = loss + cfg.tree.margin_lambda * margin_loss(tree, latents, leaf_log_probs, cfg.tree.margin)
        if cfg.tree.distill_lambda:
            if next(teacher.parameters()).device != x.device:  # fit() picks the device: move once
                teacher.to(x.device)
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = loss + cfg.tree.distill_lambda * distill_loss(leaf_logits, leaf_log_probs, teacher_logits,
                                                                 cfg.tree.distill_tau)
        return loss
    return loss_fn


def balance_score(usage: np.ndarray) -> float:
    """Normalised entropy of the leaf-usage distribution: 1 = uniform, 0 = one leaf takes all.

    (The paper's values fit this: usage 16.6/30.8/17.6/35.1 % -> 0.96, 0.2/0/52.9/46.9 % -> 0.51.)
    """
    p = np.asarray(usage, dtype=np.float64)
    p = p / max(p.sum(), 1e-12)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(len(p))) if len(p) > 1 else 1.0


@torch.no_grad()
def evaluate_tree(model: SigmaBranchTree, loader: DataLoader, device: torch.device,
                  num_classes: int | None = None) -> dict[str, Any]:
    """Hard top-1/top-5 (single path), soft top-1, leaf usage and balance; with ``num_classes``
    also the per-class leaf counts (``class_leaf_counts``, classes x leaves)."""
    model.eval()
    leaves = model.num_leaves
    totals = torch.zeros(4, dtype=torch.float64)  # hard top1, hard top5, soft top1, count
    usage = torch.zeros(leaves, dtype=torch.float64)
    per_class = torch.zeros(num_classes or 1, leaves, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits, leaf = model(x, mode="hard")
        soft = model(x, mode="soft")
        k = min(5, logits.shape[1])
        totals += torch.tensor([(logits.argmax(1) == y).sum().item(),
                                (logits.topk(k, 1).indices == y[:, None]).any(1).sum().item(),
                                (soft.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
        usage += torch.bincount(leaf.cpu(), minlength=leaves).double()
        if num_classes:
            per_class.index_put_((y.cpu(), leaf.cpu()), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    totals, usage, per_class = all_reduce_sum(totals), all_reduce_sum(usage), all_reduce_sum(per_class)
    n = max(1.0, totals[3].item())
    out: dict[str, Any] = {"top1": 100 * totals[0].item() / n, "top5": 100 * totals[1].item() / n,
                           "top1_soft": 100 * totals[2].item() / n, "balance": balance_score(usage.numpy())}
    out.update({f"leaf{i}": 100 * usage[i].item() / n for i in range(leaves)})
    if num_classes:
        out["class_leaf_counts"] = per_class.long().tolist()
    return out


def run_finetune(tree_checkpoint: str | Path, cfg: TrainConfig, out_dir: str | Path, device: str = "auto",
                 resume: str | Path | None = None) -> dict[str, Any]:
    """CLI entry: fine-tune ``tree.pt``; writes ``checkpoint.pt``, ``metrics.json``, ``train_curve.png``."""
    from .convert import tree_from_checkpoint
    from .dense import dataset_for

    tree, ckpt = tree_from_checkpoint(tree_checkpoint)
    teacher = load_teacher(cfg.tree.distill_teacher, tree) if cfg.tree.distill_lambda else None
    data = dataset_for(cfg)
    result = fit(tree, cfg, data.train, data.test, out_dir, kind="tree", model_name=ckpt["model_name"],
                 model_args=ckpt["spec"]["dense_args"], loss_fn=tree_loss(cfg, teacher),
                 evaluate_fn=evaluate_tree,
                 device=device, resume=resume, extra_checkpoint={"spec": tree.spec, "input_shape": list(data.input_shape)})
    metrics = {**result.final, "epochs": cfg.epochs, "resp_lambda": cfg.tree.resp_lambda,
               "balance_lambda": cfg.tree.balance_lambda, "margin_lambda": cfg.tree.margin_lambda,
               "distill_lambda": cfg.tree.distill_lambda,
               "train_seconds": sum(h["seconds"] for h in result.history)}
    if is_main_process():
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
