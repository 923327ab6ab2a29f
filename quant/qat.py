"""``sigmabranch quantize``: quantisation-aware fine-tuning of a fine-tuned tree.

The deployed tree should be the specialised tree that was fine-tuned, so by default QAT keeps
its routing: the float tree (eval mode) is the teacher, its hard leaf the routers' target
(cross-entropy on the quantised tree's leaf log-probabilities), every router latent is matched to
the teacher's (both weighted by ``quant.route_distill``), its routing weights the specialist
loss's, so each leaf keeps training on the inputs it was specialised for, and the quantised
tree's routers stay frozen (:func:`freeze_routers`). ``quant.route_distill: 0`` re-learns the routing with the float fine-tuning's own
objective (specialist + responsibility loss). Evaluation uses hard routing with the integer
router decision; ``leaf_agreement`` is how often the quantised tree's leaf is the float tree's.
Writes ``checkpoint.pt`` (kind ``qtree``), ``metrics.json`` and ``train_curve.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked
from model.config import TrainConfig
from model.distributed import is_main_process
from model.finetune import evaluate_tree, leaf_cross_entropy, tree_loss
from model.registry import create_model
from model.train import fit, write_json
from model.tree import SigmaBranchTree
from model.tree_layout import build_tree

from .presets import get_preset
from .qtree import quantize_tree, router_agreement


def active_weight_bytes(tree: SigmaBranchTree, weight_bits: int) -> int:
    """Bytes of conv/linear weights on one hard path at ``weight_bits`` (biases and BN excluded:
    FINN folds them into thresholds)."""
    count = sum(m.weight.numel() for module in tree.path_modules(0) for m in module.modules()
                if isinstance(m, (nn.Conv2d, nn.Linear)))
    return (count * weight_bits + 7) // 8


@torch.no_grad()
def calibrate(qtree: SigmaBranchTree, dataset, batches: int, batch_size: int) -> None:
    """Forward a few training batches so the activation scales start from the data's range."""
    qtree.train()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        qtree(x, mode="leaves")


def routing_distillation_loss(teacher: SigmaBranchTree, cfg: TrainConfig):
    """Specialist loss under the teacher's routing + ``route_distill`` x (CE to the teacher's hard
    leaf + MSE of every router's latent to the teacher's).

    The latent term asks the quantised backbone and branches to present the (frozen) routers the
    features they had: the float routers' margins can be small (on the digits demo half the root
    decisions have |logit1 - logit0| < 0.01), and on the calibrated W4A4 features even a freshly
    fitted linear router reproduces only 81-91% of them.
    """
    teacher.eval()  # deterministic routing (no dropout); run under no_grad below

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        teacher_latents: list[torch.Tensor] = []
        with torch.no_grad():
            _, teacher_log_probs = teacher.to(x.device)(x, mode="leaves", latents=teacher_latents)
        latents: list[torch.Tensor] = []
        leaf_logits, leaf_log_probs = model(x, mode="leaves", latents=latents)
        leaf_ce = leaf_cross_entropy(leaf_logits, y, cfg.optim.label_smoothing)
        specialist = (teacher_log_probs.exp() * leaf_ce).sum(1).mean()
        match = sum(F.mse_loss(z, t) for z, t in zip(latents, teacher_latents)) / len(latents)
        routing = F.nll_loss(leaf_log_probs, teacher_log_probs.argmax(1)) + match
        return specialist + cfg.quant.route_distill * routing
    return loss_fn


def freeze_routers(tree: SigmaBranchTree) -> None:
    """Keep the routers as fine-tuned. Their margins are small (|logit1 - logit0| < 0.01 for half
    of the demo's root decisions), so an optimiser step on them (Adam moves every weight by ~lr)
    flips decisions faster than distillation restores them; the features learn to fit them."""
    for nodes in tree.routers:
        nodes.requires_grad_(False)


@torch.no_grad()
def hard_leaves(tree: SigmaBranchTree, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    tree.eval()
    return torch.cat([tree(x[i:i + batch_size], mode="hard")[1] for i in range(0, len(x), batch_size)])


def qtree_from_checkpoint(path: str | Path) -> tuple[SigmaBranchTree, dict[str, Any]]:
    ckpt = load_checkpoint(path, kind="qtree")
    spec = ckpt.get("spec") or {}
    if "quant" not in spec:
        raise CheckpointError(f"{path}: quantised tree checkpoint has no quantisation spec")
    qtree = quantize_tree(build_tree(create_model(spec["dense_model"], **spec["dense_args"]), spec),
                          get_preset(spec["quant"]["name"]))
    load_state_dict_checked(qtree, ckpt["state_dict"], source=str(path))
    return qtree, ckpt


def run_quantize(tree_checkpoint: str | Path, cfg: TrainConfig, out_dir: str | Path, device: str = "auto",
                 resume: str | Path | None = None) -> dict[str, Any]:
    from model.convert import tree_from_checkpoint
    from model.dense import dataset_for

    preset = get_preset(cfg.quant.bits)
    tree, _ = tree_from_checkpoint(tree_checkpoint)
    data = dataset_for(cfg)
    qtree = quantize_tree(tree, preset)  # a copy: `tree` stays the float teacher
    if cfg.quant.route_distill > 0:
        freeze_routers(qtree)
    calibrate(qtree, dataset_for(cfg, augment=False).train, cfg.quant.calibration_batches, cfg.batch_size)
    result = fit(qtree, cfg, data.train, data.test, out_dir, kind="qtree", model_name=tree.spec["dense_model"],
                 model_args=tree.spec["dense_args"], evaluate_fn=evaluate_tree,
                 loss_fn=routing_distillation_loss(tree, cfg) if cfg.quant.route_distill > 0 else tree_loss(cfg),
                 device=device, resume=resume, extra_checkpoint={"spec": qtree.spec, "input_shape": list(data.input_shape)})
    qtree.cpu().eval()
    x_test = torch.stack([data.test[i][0] for i in range(len(data.test))])
    float_leaves = hard_leaves(tree.cpu(), x_test)
    metrics = {**result.final, "bits": preset.name, "weight_bits": preset.weight_bits, "act_bits": preset.act_bits,
               "router_agreement": router_agreement(qtree, x_test),
               "leaf_agreement": 100 * (hard_leaves(qtree, x_test) == float_leaves).double().mean().item(),
               "route_distill": cfg.quant.route_distill,
               "active_weight_bytes": active_weight_bytes(qtree, preset.weight_bits),
               "epochs": cfg.epochs, "train_seconds": sum(h["seconds"] for h in result.history)}
    if is_main_process():
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
