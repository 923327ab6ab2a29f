"""``sigmabranch quantize``: quantisation-aware fine-tuning of a fine-tuned tree.

The soft-routing objective of the float fine-tuning is kept; evaluation uses hard routing with
the integer router decision. Writes ``checkpoint.pt`` (kind ``qtree``), ``metrics.json`` and
``train_curve.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked
from model.config import TrainConfig
from model.distributed import is_main_process
from model.finetune import evaluate_tree, tree_loss
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
    qtree = quantize_tree(tree, preset)
    calibrate(qtree, dataset_for(cfg, augment=False).train, cfg.quant.calibration_batches, cfg.batch_size)
    result = fit(qtree, cfg, data.train, data.test, out_dir, kind="qtree", model_name=tree.spec["dense_model"],
                 model_args=tree.spec["dense_args"], loss_fn=tree_loss(cfg), evaluate_fn=evaluate_tree,
                 device=device, resume=resume, extra_checkpoint={"spec": qtree.spec, "input_shape": list(data.input_shape)})
    qtree.cpu().eval()
    x_test = torch.stack([data.test[i][0] for i in range(len(data.test))])
    metrics = {**result.final, "bits": preset.name, "weight_bits": preset.weight_bits, "act_bits": preset.act_bits,
               "router_agreement": router_agreement(qtree, x_test),
               "active_weight_bytes": active_weight_bytes(qtree, preset.weight_bits),
               "epochs": cfg.epochs, "train_seconds": sum(h["seconds"] for h in result.history)}
    if is_main_process():
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
