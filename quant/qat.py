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

from model.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, save_checkpoint
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
def router_targets(qtree: SigmaBranchTree, teacher: SigmaBranchTree, dataset, samples: int, batch_size: int):
    """Per router node (level-major): the quantised tree's latents of the inputs the float tree
    routes through that node, and the float tree's decision there."""
    qtree.eval(), teacher.eval()
    depth, nodes = qtree.depth, 2 ** qtree.depth - 1
    latents: list[list[torch.Tensor]] = [[] for _ in range(nodes)]
    targets: list[list[torch.Tensor]] = [[] for _ in range(nodes)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    seen = 0
    for x, _ in loader:
        x = x[:samples - seen]
        leaf = teacher(x, mode="hard")[1]
        node_latents: list[torch.Tensor] = []
        qtree(x, mode="leaves", latents=node_latents)  # level-major, as the router nodes
        for level in range(depth):
            for node in range(2 ** level):
                k = 2 ** level - 1 + node
                mask = (leaf >> (depth - level)) == node
                latents[k].append(node_latents[k][mask])
                targets[k].append(((leaf[mask] >> (depth - 1 - level)) & 1).float())
        seen += len(x)
        if seen >= samples:
            break
    return [(torch.cat(z), torch.cat(t)) for z, t in zip(latents, targets)]


def refit_routers(qtree: SigmaBranchTree, teacher: SigmaBranchTree, dataset, samples: int,
                  batch_size: int) -> list[dict[str, float]]:
    """Refit every router's final linear to the float tree's decisions on the quantised latents.

    QAT moves the features under the frozen routers, and a decision on a small margin flips. The
    router's final linear only matters through ``logit1 - logit0 = w.z + b`` (it folds into the
    integer ``u`` and ``c``), so a logistic regression of the float decisions on the quantised
    latents, started from the router's own ``w`` and ``b``, restores them where a hyperplane can;
    it is kept only where it agrees more on these inputs. Returns per node the agreement before
    and after."""
    report = []
    for k, (z, t) in enumerate(router_targets(qtree, teacher, dataset, samples, batch_size)):
        level = (k + 1).bit_length() - 1
        router = qtree.routers[level][k + 1 - 2 ** level].router
        with torch.no_grad():
            w0 = (router.weight[1] - router.weight[0]).detach().clone()
            b0 = (router.bias[1] - router.bias[0]).detach().clone()
        before = float(((z @ w0 + b0 > 0).float() == t).float().mean()) if len(t) else 1.0
        if len(t) < 2 or t.min() == t.max():
            report.append({"inputs": len(t), "agreement_before": before, "agreement_after": before})
            continue
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = F.binary_cross_entropy_with_logits(z @ w + b, t)
            loss.backward()
            return loss
        optimiser.step(closure)
        with torch.no_grad():
            after = float(((z @ w + b > 0).float() == t).float().mean())
            if after > before:
                router.weight[1] = router.weight[0] + w
                router.bias[1] = router.bias[0] + b
        report.append({"inputs": len(t), "agreement_before": before, "agreement_after": max(before, after)})
    return report


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
    refit = None
    if cfg.quant.route_distill > 0 and cfg.quant.router_refit_samples > 0:
        before = 100 * (hard_leaves(qtree, x_test) == float_leaves).double().mean().item()
        refit = {"nodes": refit_routers(qtree, tree.cpu(), dataset_for(cfg, augment=False).train,
                                        cfg.quant.router_refit_samples, cfg.eval_batch_size),
                 "leaf_agreement_before": before}
        if is_main_process():  # the checkpoint holds the refit routers (what export reads)
            ckpt = load_checkpoint(Path(out_dir) / "checkpoint.pt", kind="qtree")
            save_checkpoint(Path(out_dir) / "checkpoint.pt", **{**{k: v for k, v in ckpt.items() if k != "format"},
                                                               "state_dict": qtree.state_dict()})
        result.final.update(evaluate_tree(qtree, torch.utils.data.DataLoader(data.test, batch_size=cfg.eval_batch_size),
                                          torch.device("cpu")))
    metrics = {**result.final, "bits": preset.name, "weight_bits": preset.weight_bits, "act_bits": preset.act_bits,
               "router_agreement": router_agreement(qtree, x_test),
               "leaf_agreement": 100 * (hard_leaves(qtree, x_test) == float_leaves).double().mean().item(),
               "route_distill": cfg.quant.route_distill, "router_refit": refit,
               "active_weight_bytes": active_weight_bytes(qtree, preset.weight_bits),
               "epochs": cfg.epochs, "train_seconds": sum(h["seconds"] for h in result.history)}
    if is_main_process():
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
