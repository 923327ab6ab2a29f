"""Accounting and routing reports of a tree: ``sigmabranch evaluate`` (tree) and ``summary``.

Balance score: the normalised entropy of leaf usage (1 = uniform, 0 = one leaf takes all).
Params count every parameter (BN affine included); active params are Eq. 4's: backbone, the
router projection + router and the specialiser of every level on one path, and one leaf head.
MACs follow fvcore's convention (see accounting.py), batch 1, hard routing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .accounting import count_params, model_macs
from .registry import create_model
from .tree import SigmaBranchTree
from .tree_layout import build_tree, default_spec


def plot_leaf_heatmap(class_leaf_counts: Sequence[Sequence[int]], path: Path, class_names: Sequence[str] | None = None,
                      title: str = "per-class leaf usage (hard top-1)") -> None:
    """The paper's Fig. 3: for each class, the fraction of its test samples routed to each leaf."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(class_leaf_counts, dtype=np.float64)
    frac = counts / counts.sum(1, keepdims=True).clip(1)
    classes, leaves = frac.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * leaves, 1.2 + min(0.28 * classes, 14)))
    image = ax.imshow(frac, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(leaves), [f"leaf {i}" for i in range(leaves)])
    if classes <= 40:
        ax.set_yticks(range(classes), class_names if class_names else [str(c) for c in range(classes)])
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="fraction of the class's samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tree_accounting(tree: SigmaBranchTree, input_shape: Sequence[int]) -> dict[str, Any]:
    return {"total_params": count_params(tree), "active_params": tree.active_params(),
            "path_macs": tree.path_macs(tuple(input_shape))}


def summarize(model_name: str, num_classes: int, depth: int = 2, input_shape: Sequence[int] | None = None,
              width_factors: Sequence[float] | None = None, **model_args) -> dict[str, Any]:
    """Dense model and its default tree, no data: params, active params, MACs (dense and path)."""
    args = {"num_classes": num_classes, **model_args}
    dense = create_model(model_name, **args).eval()
    shape = tuple(input_shape or dense.default_input_shape)
    spec = default_spec(model_name, args, dense, depth=depth, width_factors=width_factors)
    tree = build_tree(dense, spec).eval()
    dense_params = count_params(dense)
    acc = tree_accounting(tree, shape)
    dense_macs = model_macs(dense, shape)
    return {"model": model_name, "num_classes": num_classes, "input_shape": list(shape), "depth": depth,
            "level_names": spec["level_names"], "widths": spec["widths"], "dense_params": dense_params,
            **acc, "dense_macs": dense_macs,
            "active_reduction_pct": 100 * (1 - acc["active_params"] / dense_params),
            "mac_ratio": acc["path_macs"] / dense_macs}


def evaluate_tree_checkpoint(checkpoint: str | Path, cfg=None, device: str = "auto", out_dir: str | Path | None = None,
                             dense_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Hard/soft Top-1/Top-5, accounting, leaf usage, balance and the heatmap PNG of a tree checkpoint."""
    from .config import config_from_dict
    from .convert import tree_from_checkpoint
    from .dense import dataset_for, evaluate_dense
    from .distributed import local_device
    from .finetune import evaluate_tree
    from .train import make_loader

    tree, ckpt = tree_from_checkpoint(checkpoint)
    cfg = cfg or config_from_dict(ckpt["config"])
    data = dataset_for(cfg, augment=False)
    dev = local_device(device)
    stats = evaluate_tree(tree.to(dev), make_loader(data.test, cfg.eval_batch_size, False, cfg.seed), dev,
                          num_classes=data.num_classes)
    tree.cpu()
    counts = stats.pop("class_leaf_counts")
    leaf_usage = [stats.pop(f"leaf{i}") for i in range(tree.num_leaves)]
    out_dir = Path(out_dir) if out_dir else Path(checkpoint).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmap = out_dir / "leaf_heatmap.png"
    plot_leaf_heatmap(counts, heatmap, data.class_names)
    result = {"top1_hard": stats["top1"], "top5_hard": stats["top5"], "top1_soft": stats["top1_soft"],
              "balance": stats["balance"], "leaf_usage": leaf_usage, "class_leaf_counts": counts,
              **tree_accounting(tree, data.input_shape), "heatmap": str(heatmap)}
    if dense_checkpoint:
        dense = evaluate_dense(dense_checkpoint, cfg, device=device)
        result["dense"] = dense
        result["active_reduction_pct"] = 100 * (1 - result["active_params"] / dense["params"])
    return result
