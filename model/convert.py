"""``sigmabranch convert``: a dense checkpoint -> an initialised Sigma-Branch tree (Section III-C).

- Phase 0: the backbone is copied verbatim.
- Phase 1 (per tree node, level by level): training samples reaching the node are forwarded
  through the backbone (and the branches already initialised above it) and the node's router
  projection; spherical k-means (k=2, faiss) on those latents gives two centroids, which become
  the router's weights, so the router's decision boundary is the k-means partition. The pooled
  per-channel mean activation of the level's source block *in the dense model* is accumulated
  per cluster.
- Phase 2: shared channels = top ``alpha * width`` of the per-channel minimum over the two
  clusters; branch-specific channels = the rest of the width, from the remaining channels, by
  the contrast score ``m_c - m_other``. Inner planes by filter L1 norm (shared by both branches).
  With ``tree.channel_score: agf`` the per-cluster means are of each sample's AGF utility
  ``|sum_hw a * dL/da|`` at the source block's output (the dense model's loss on the true
  labels) instead of its mean activation: a channel is kept where it matters to the loss, not
  where it is large.
  The chosen dense channels' weights (every layer of the block, BN included) are copied.
- Phases 3-4: the same for every node of the next level, on the samples its branch receives.
- Phase 5: each leaf head takes the dense classifier's columns of its channels; biases shared.
- Beyond the paper (``tree.recalibrate_bn``, on by default): after each level is built, the BN
  running statistics of its specialisers (and finally of the heads) are re-estimated on the
  samples routed to them, because narrowing removes input channels and shifts the pre-BN
  statistics the dense model recorded. Weights are untouched.

Degenerate cases: a node that receives fewer than 2 samples, or NaN/inf latents or activations,
is an error naming the node. If k-means leaves a cluster empty (e.g. duplicated latents), the
node falls back to splitting its samples at the median of their first principal component,
and the recovery is recorded in ``conversion.json``; if even that cannot split them, it is an error.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .agf import agf_sample_utilities
from .checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, save_checkpoint
from .config import TreeConfig
from .narrow import full_index
from .registry import create_model
from .tree import RouterNode, SigmaBranchTree, pool_features, route_groups
from .tree_layout import build_tree, dense_chain, level_widths, narrow_unit, split_dense


class ConversionError(ValueError):
    pass


def spherical_kmeans(latents: np.ndarray, iters: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means with k=2 on L2-normalised rows: ``(unit centroids (2, d), assignment (n,))``."""
    x = np.ascontiguousarray(latents / np.linalg.norm(latents, axis=1, keepdims=True).clip(1e-12), dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], 2, niter=iters, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(1, len(x)))
    km.train(x)
    centroids = km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True).clip(1e-12)
    return centroids, (x @ centroids.T).argmax(1)


def principal_split(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Fallback for an empty k-means cluster: split at the median along the first principal axis."""
    x = latents / np.linalg.norm(latents, axis=1, keepdims=True).clip(1e-12)
    centred = x - x.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    score = centred @ axis
    assign = (score > np.median(score)).astype(np.int64)
    if assign.min() == assign.max():
        return None
    centroids = np.stack([x[assign == c].mean(0) for c in (0, 1)])
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12), assign


def cosine_silhouette(latents: np.ndarray, assign: np.ndarray) -> float:
    """Mean silhouette of a two-cluster partition under cosine distance (``1 - cos``), exact in
    O(n d): on unit rows, the mean distance to a cluster is ``1 - x . (its mean)``, the point itself
    left out of its own. A point alone in its cluster scores 0 (the usual convention)."""
    x = latents / np.linalg.norm(latents, axis=1, keepdims=True).clip(1e-12)
    sizes = np.bincount(assign, minlength=2)
    sums = np.stack([x[assign == c].sum(0) for c in (0, 1)])
    own, other = sizes[assign], sizes[1 - assign]
    a = 1 - ((x * sums[assign]).sum(1) - 1) / np.maximum(own - 1, 1)
    b = 1 - (x * sums[1 - assign]).sum(1) / np.maximum(other, 1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def null_silhouette(latents: np.ndarray, iters: int, seed: int, draws: int = 3) -> float:
    """The silhouette k-means reaches on a structureless reference of the same shape: as many
    samples of one Gaussian with the latents' (unit rows') mean and covariance, averaged over
    ``draws``. k-means splits even a single anisotropic blob with a silhouette of ~0.1-0.2, so a
    split is judged against this reference (the gap statistic's idea), not against zero."""
    x = latents / np.linalg.norm(latents, axis=1, keepdims=True).clip(1e-12)
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    scale = sv / np.sqrt(max(len(x) - 1, 1))
    rng = np.random.default_rng(seed)
    scores = []
    for draw in range(draws):
        reference = mean + (rng.standard_normal((len(x), len(sv))) * scale) @ vt
        scores.append(cosine_silhouette(reference, spherical_kmeans(reference, iters, seed + draw)[1]))
    return float(np.mean(scores))


def select_channels(mean0: torch.Tensor, mean1: torch.Tensor, width: int, alpha: float,
                    generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Phase 2: ``([channels of branch 0, channels of branch 1], shared)``, each sorted.

    With a ``generator`` the partition is random (the Section V-E ablation) with the same sizes.
    """
    n = len(mean0)
    n_shared = int(round(alpha * width))
    n_own = width - n_shared
    if generator is not None:
        order = torch.randperm(n, generator=generator)
        shared, rest = order[:n_shared], order[n_shared:]
        own = [rest[torch.randperm(len(rest), generator=generator)[:n_own]] for _ in (0, 1)]
    else:
        shared = torch.minimum(mean0, mean1).topk(n_shared).indices
        rest = torch.ones(n, dtype=torch.bool)
        rest[shared] = False
        rest_idx = rest.nonzero().flatten()
        contrast = [mean0 - mean1, mean1 - mean0]
        own = [rest_idx[contrast[c][rest_idx].topk(n_own).indices] for c in (0, 1)]
    branches = [torch.cat([shared, own[c]]).sort().values for c in (0, 1)]
    return branches, shared.sort().values


def _loader(dataset: Dataset, max_samples: int, batch_size: int) -> DataLoader:
    n = min(len(dataset), max_samples)
    subset = torch.utils.data.Subset(dataset, range(n)) if n < len(dataset) else dataset
    return DataLoader(subset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def dense_source_activations(dense: nn.Module, depth: int, loader: DataLoader) -> list[torch.Tensor]:
    """Per level: the pooled output of the level's source block in the dense model, (N, dense width)."""
    chain = dense_chain(dense, depth).eval()
    acts: list[list[torch.Tensor]] = [[] for _ in range(depth)]
    for x, _ in tqdm(loader, desc="dense activations", leave=False, disable=None):
        h = chain[0](x)
        for level in range(depth):
            h = chain[1 + level](h)
            acts[level].append(pool_features(h).float())
    return [torch.cat(a) for a in acts]


def dense_source_utilities(dense: nn.Module, depth: int, loader: DataLoader) -> list[torch.Tensor]:
    """Per level: each sample's AGF utility ``|sum_spatial a * dL/da|`` of every channel of the level's
    source block output in the dense model, (N, dense width). The loss is the summed cross-entropy
    on the true labels, so every row is that sample's own first-order loss change."""
    chain = dense_chain(dense, depth).eval()
    utils: list[list[torch.Tensor]] = [[] for _ in range(depth)]
    for x, y in tqdm(loader, desc="dense AGF utilities", leave=False, disable=None):
        outputs = []
        h = chain[0](x)
        for level in range(depth):
            h = chain[1 + level](h)
            outputs.append(h[-1] if isinstance(h, tuple) else h)
        loss = F.cross_entropy(chain[-1](h), y, reduction="sum")
        grads = torch.autograd.grad(loss, outputs)
        for level, (a, g) in enumerate(zip(outputs, grads)):
            utils[level].append(agf_sample_utilities(a, g).float())
    return [torch.cat(u) for u in utils]


@torch.no_grad()
def latents_at_level(tree_parts: dict[str, Any], level: int, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Route every sample hard through the already-initialised levels; return its node at ``level``
    and that node's projection latent: ``(node (N,), latent (N, proj_dim))``."""
    routers = tree_parts["routers"]
    nodes, latents = [], []
    for x, _ in loader:
        node_of = torch.empty(len(x), dtype=torch.long)
        latent = torch.empty(len(x), routers[level][0].proj.out_features)
        for rows, h, node in route_groups(tree_parts["backbone"], routers, tree_parts["specialisers"], x, level):
            node_of[rows] = node
            latent[rows] = routers[level][node].latent(h)
        nodes.append(node_of)
        latents.append(latent)
    return torch.cat(nodes), torch.cat(latents)


@torch.no_grad()
def recalibrate_batchnorm(modules: list[nn.Module], run_batch, loader: DataLoader) -> None:
    """Re-estimate the running statistics of the BN layers in ``modules`` on the samples that
    reach them (``run_batch(x)`` routes a batch hard). Narrowing drops input channels, so the
    dense model's running statistics no longer describe the pre-BN activations. Only BN
    statistics change, never weights; a BN that no sample reaches keeps the dense statistics."""
    bns = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {m: copy.deepcopy(m.state_dict()) for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches

    def train_if_batch(m, inputs):  # a batch of one value per channel cannot give statistics
        m.train(inputs[0].numel() > inputs[0].shape[1])

    handles = [m.register_forward_pre_hook(train_if_batch) for m in bns]
    try:
        for x, _ in loader:
            run_batch(x)
    finally:
        for h in handles:
            h.remove()
        for m in bns:
            m.momentum = 0.1
            m.eval()
            if int(m.num_batches_tracked) == 0:
                m.load_state_dict(saved[m])


def convert(dense: nn.Module, dense_name: str, dense_args: dict[str, Any], train_set: Dataset, cfg: TreeConfig,
            seed: int = 0, batch_size: int = 256) -> tuple[SigmaBranchTree, dict[str, Any]]:
    """Phases 0-5. Returns the initialised tree and a report (per node: samples, clusters, channels).
    ``cfg.depth == "auto"``: the depth :func:`choose_depth` picks (its reasons in ``report["depth_auto"]``)."""
    if cfg.depth == "auto":
        return choose_depth(dense, dense_name, dense_args, train_set, cfg, seed, batch_size)
    if not isinstance(cfg.depth, int) or cfg.depth < 1:
        raise ConversionError(f"tree.depth must be a positive integer or 'auto', got {cfg.depth!r}")
    if cfg.init not in ("activation", "random"):
        raise ConversionError(f"tree.init must be 'activation' or 'random', got {cfg.init!r}")
    if cfg.channel_score not in ("activation", "agf"):
        raise ConversionError(f"tree.channel_score must be 'activation' or 'agf', got {cfg.channel_score!r}")
    torch.manual_seed(seed)
    dense = dense.eval()
    split = split_dense(dense, cfg.depth)
    widths = level_widths(split, cfg.width_factors)
    loader = _loader(train_set, cfg.max_samples, batch_size)
    acts = dense_source_activations(dense, cfg.depth, loader)
    for level, a in enumerate(acts):
        if not torch.isfinite(a).all():
            raise ConversionError(f"dense activations of {split.level_names[level]} contain NaN/inf: "
                                  "check the dense checkpoint and the input normalisation")
    # Phase 2's per-channel scores: the activations themselves, or their AGF utilities.
    with torch.random.fork_rng():  # an extra pass draws loader seeds; keep the routers' initial weights
        scores = dense_source_utilities(dense, cfg.depth, loader) if cfg.channel_score == "agf" else acts
    for level, s in enumerate(scores):
        if not torch.isfinite(s).all():
            raise ConversionError(f"AGF utilities of {split.level_names[level]} contain NaN/inf")
    generator = torch.Generator().manual_seed(seed) if cfg.init == "random" else None

    backbone = copy.deepcopy(split.backbone).eval()
    routers: list[list[RouterNode]] = []
    specialisers: list[list[nn.Module]] = []
    out_indices: list[list[list[int]]] = []
    parent_out = [full_index(split.backbone_channels)]
    report: dict[str, Any] = {"widths": widths, "level_names": split.level_names, "init": cfg.init,
                              "alpha": cfg.alpha, "channel_score": cfg.channel_score, "samples": len(acts[0]),
                              "nodes": []}
    partitions = []

    for level in range(cfg.depth):
        in_features = split.backbone_channels if level == 0 else widths[level - 1]
        routers.append([RouterNode(in_features, cfg.proj_dim, cfg.dropout).eval() for _ in range(2 ** level)])
        node_of, latents = latents_at_level({"backbone": backbone, "routers": routers, "specialisers": specialisers},
                                            level, loader)
        level_out: list[torch.Tensor] = []
        for node in range(2 ** level):
            where = f"level {level + 1} node {node}"
            rows = (node_of == node).nonzero().flatten()
            if len(rows) < 2:
                raise ConversionError(f"{where} received {len(rows)} training sample(s); k-means needs at least 2. "
                                      "Use more samples (tree.max_samples) or a shallower tree (tree.depth).")
            z = latents[rows].numpy()
            if not np.isfinite(z).all():
                raise ConversionError(f"{where}: router-projection latents contain NaN/inf")
            centroids, assign = spherical_kmeans(z, cfg.kmeans_iters, seed + 7919 * level + node)
            recovery = None
            if np.bincount(assign, minlength=2).min() == 0:
                fallback = principal_split(z)
                if fallback is None:
                    raise ConversionError(f"{where}: all {len(rows)} latents are identical; k-means cannot split them")
                centroids, assign = fallback
                recovery = "empty k-means cluster: split at the median of the first principal component"
            router = routers[level][node]
            with torch.no_grad():  # centroids as router weights: the decision boundary is the k-means partition
                router.router.weight.copy_(torch.from_numpy(centroids))
                router.router.bias.zero_()
            assign_t = torch.from_numpy(assign)
            means = [scores[level][rows[assign_t == c]].mean(0) for c in (0, 1)]
            branches, shared = select_channels(means[0], means[1], widths[level], cfg.alpha, generator)
            level_out += branches
            partitions.append({"level": level, "node": node, "means": means, "branches": branches, "shared": shared,
                               "score": "mean AGF utility" if cfg.channel_score == "agf" else "mean activation"})
            report["nodes"].append({"level": level + 1, "node": node, "samples": len(rows),
                                    "cluster_sizes": np.bincount(assign, minlength=2).tolist(),
                                    "silhouette": cosine_silhouette(z, assign),
                                    "silhouette_null": null_silhouette(z, cfg.kmeans_iters, seed + 7919 * level + node),
                                    "shared_channels": len(shared), "branch_channels": widths[level],
                                    "recovery": recovery})
        ratio = widths[level] / split.dense_widths[level]
        specialisers.append([narrow_unit(split.level_blocks[level], parent_out[b // 2], level_out[b], ratio).eval()
                             for b in range(2 ** (level + 1))])
        if cfg.recalibrate_bn:
            recalibrate_batchnorm(specialisers[level], lambda x, n=level + 1: route_groups(
                backbone, routers, specialisers, x, n), loader)
        out_indices.append([idx.tolist() for idx in level_out])
        parent_out = level_out

    spec = {"dense_model": dense_name, "dense_args": dict(dense_args), "depth": cfg.depth, "widths": widths,
            "dense_widths": split.dense_widths, "level_names": split.level_names,
            "backbone_channels": split.backbone_channels, "proj_dim": cfg.proj_dim, "dropout": cfg.dropout,
            "out_indices": out_indices, "init": cfg.init, "alpha": cfg.alpha, "channel_score": cfg.channel_score}
    tree = build_tree(dense, spec)  # Phases 0, 2 (copies) and 5 (heads), from the spec alone
    with torch.no_grad():
        for level, nodes in enumerate(routers):
            for node, router in enumerate(nodes):
                tree.routers[level][node].load_state_dict(router.state_dict())
            for branch, module in enumerate(specialisers[level]):
                tree.specialisers[level][branch].load_state_dict(module.state_dict())
    if cfg.recalibrate_bn:
        tree.eval()
        recalibrate_batchnorm(list(tree.heads), tree.forward_hard, loader)
    report["partitions"] = partitions
    return tree, report


def split_is_clustered(node: dict[str, Any], cfg: TreeConfig) -> bool:
    """A node's k-means split counts as structure in its data: its silhouette exceeds the
    structureless reference's (:func:`null_silhouette`) by ``tree.auto_min_gap`` and the smaller
    cluster holds at least ``tree.auto_min_cluster`` of the node's samples."""
    return (node["silhouette"] - node["silhouette_null"] >= cfg.auto_min_gap
            and min(node["cluster_sizes"]) >= cfg.auto_min_cluster * node["samples"])


def choose_depth(dense: nn.Module, dense_name: str, dense_args: dict[str, Any], train_set: Dataset, cfg: TreeConfig,
                 seed: int = 0, batch_size: int = 256) -> tuple[SigmaBranchTree, dict[str, Any]]:
    """``tree.depth: auto`` (the paper's future work: a data-sized tree). Converts at depths 1 to
    ``tree.max_depth`` (each depth cuts the dense model elsewhere) and keeps the deepest whose every
    node split is clustered (:func:`split_is_clustered`): a level is added only while every branch's
    inputs still fall into two groups. Depth 1 if even the root's split is not; the conversion of
    the chosen depth is returned, every candidate's per-node silhouettes in ``report["depth_auto"]``."""
    if not isinstance(cfg.max_depth, int) or cfg.max_depth < 1:
        raise ConversionError(f"tree.max_depth must be a positive integer, got {cfg.max_depth!r}")
    candidates, chosen = [], None
    for depth in range(1, cfg.max_depth + 1):
        try:
            tree, report = convert(dense, dense_name, dense_args, train_set, dataclasses.replace(cfg, depth=depth),
                                   seed, batch_size)
        except ConversionError as err:  # e.g. a node with too few samples: not deeper than this
            candidates.append({"depth": depth, "clustered": False, "error": str(err)})
            break
        nodes = report["nodes"]
        clustered = all(split_is_clustered(n, cfg) for n in nodes)
        candidates.append({"depth": depth, "clustered": clustered,
                           "min_gap": min(n["silhouette"] - n["silhouette_null"] for n in nodes),
                           "min_cluster_fraction": min(min(n["cluster_sizes"]) / n["samples"] for n in nodes),
                           "silhouettes": [round(n["silhouette"], 4) for n in nodes],
                           "null_silhouettes": [round(n["silhouette_null"], 4) for n in nodes]})
        if clustered or chosen is None:
            chosen = (tree, report)
        if not clustered:
            break
    tree, report = chosen
    report["depth_auto"] = {"chosen": tree.spec["depth"], "max_depth": cfg.max_depth,
                            "criterion": f"every node's k-means split: cosine silhouette >= a one-Gaussian "
                                         f"reference's + {cfg.auto_min_gap:g}, smaller cluster >= "
                                         f"{cfg.auto_min_cluster:g} of the node's samples",
                            "candidates": candidates}
    return tree, report


def plot_partitions(partitions: list[dict[str, Any]], level_names: list[str], path: Path) -> None:
    """The paper's Fig. 2: per-channel mean activation in cluster 0 vs cluster 1, one panel per node."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(partitions), figsize=(4.2 * len(partitions), 4), squeeze=False)
    for ax, part in zip(axes[0], partitions):
        m0, m1 = part["means"][0].numpy(), part["means"][1].numpy()
        shared = set(part["shared"].tolist())
        only0 = set(part["branches"][0].tolist()) - shared
        only1 = set(part["branches"][1].tolist()) - shared
        both = only0 & only1
        colours = ["tab:purple" if c in both else "tab:green" if c in shared else "tab:blue" if c in only0
                   else "tab:orange" if c in only1 else "lightgrey" for c in range(len(m0))]
        ax.scatter(m0, m1, s=8, c=colours)
        top = max(m0.max(), m1.max()) * 1.05
        ax.plot([0, top], [0, top], "k--", lw=0.6)
        score = part.get("score", "mean activation")
        ax.set_xlabel(f"{score}, cluster 0")
        ax.set_ylabel(f"{score}, cluster 1")
        ax.set_title(f"{level_names[part['level']]} (level {part['level'] + 1}, node {part['node']})", fontsize=9)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=l) for c, l in
               [("tab:green", "shared"), ("tab:blue", "branch 0 only"), ("tab:orange", "branch 1 only"),
                ("tab:purple", "both branches (own)"), ("lightgrey", "dropped")]]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_tree(path: str | Path, tree: SigmaBranchTree, **fields: Any) -> Path:
    return save_checkpoint(path, kind="tree", model_name=tree.spec["dense_model"], spec=tree.spec,
                           state_dict=tree.state_dict(), **fields)


def tree_from_checkpoint(path: str | Path) -> tuple[SigmaBranchTree, dict[str, Any]]:
    """Rebuild a tree from ``tree.pt`` (its spec) and load its weights (strict, keys checked)."""
    ckpt = load_checkpoint(path, kind="tree")
    spec = ckpt.get("spec")
    if not isinstance(spec, dict) or "dense_model" not in spec:
        raise CheckpointError(f"{path}: tree checkpoint has no usable 'spec'")
    tree = build_tree(create_model(spec["dense_model"], **spec["dense_args"]), spec)
    load_state_dict_checked(tree, ckpt["state_dict"], source=str(path))
    return tree, ckpt


def run_convert(dense_checkpoint: str | Path, cfg, out_dir: str | Path) -> dict[str, Any]:
    """CLI entry: writes ``tree.pt``, ``conversion.json`` and ``partition.png`` to ``out_dir``."""
    from .checkpoint import model_from_checkpoint
    from .dense import dataset_for

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dense, ckpt = model_from_checkpoint(dense_checkpoint)
    data = dataset_for(cfg, augment=False)
    tree, report = convert(dense, ckpt["model_name"], ckpt["model_args"], data.train, cfg.tree, seed=cfg.seed)
    partitions = report.pop("partitions")
    plot_partitions(partitions, report["level_names"], out_dir / "partition.png")
    report.update(total_params=sum(p.numel() for p in tree.parameters()), active_params=tree.active_params(),
                  dense_checkpoint=str(dense_checkpoint))
    save_tree(out_dir / "tree.pt", tree, config=cfg.to_dict(), input_shape=list(data.input_shape), report=report)
    (out_dir / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
