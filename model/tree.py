"""The Sigma-Branch tree: a shared backbone, binary routers, specialisers and leaf heads.

Layout (state-dict names):
- ``backbone``: copies of the dense model's early stages, run for every input.
- ``routers[l][n]``: node ``n`` of level ``l`` (``2**l`` nodes): router projection (average
  pool -> linear -> LayerNorm -> dropout) and a binary router (linear; softmax outside).
- ``specialisers[l][b]``: branch ``b`` of level ``l`` (``2**(l+1)`` branches); the children of
  node ``n`` are branches ``2n`` and ``2n+1``, and branch ``b`` is node ``b`` of level ``l+1``.
- ``heads[leaf]``: one classifier per leaf (``2**depth`` leaves).

Training mode evaluates every leaf (soft routing, :meth:`forward_soft`); eval mode runs one
root-to-leaf path per input (hard top-1, :meth:`forward_hard`): inputs are grouped by branch
and each chosen branch runs once on its group; unchosen branches never run. A tie between the
two router logits goes to branch 0 (the first index, as ``argmax`` does).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .accounting import count_macs, count_params

Features = torch.Tensor | tuple[torch.Tensor, ...]


def pool_features(h: Features) -> torch.Tensor:
    """The router's average pool: (B,C,H,W) and (B,C,S) -> (B,C); PointNet's (xyz, points) pools points."""
    if isinstance(h, tuple):
        h = h[-1]
    if h.dim() == 4:
        return h.mean((2, 3))
    if h.dim() == 3:
        return h.mean(2)
    return h


def take_rows(h: Features, rows: torch.Tensor) -> Features:
    if isinstance(h, tuple):
        return tuple(t.index_select(0, rows) for t in h)
    return h.index_select(0, rows)


def batch_size(h: Features) -> int:
    return (h[0] if isinstance(h, tuple) else h).shape[0]


def route_groups(backbone: nn.Module, routers, specialisers, x: torch.Tensor, levels: int,
                 visit=None) -> list[tuple[torch.Tensor, Features, int]]:
    """Hard-route a batch through the first ``levels`` levels of a (possibly partly built) tree.

    Returns ``[(rows, features, node)]``: the batch rows that reached each node of level
    ``levels`` and their features there. ``visit(level, node, h)`` is called at every router
    before it decides (statistics, calibration).
    """
    h = backbone(x)
    groups = [(torch.arange(batch_size(h), device=(h[0] if isinstance(h, tuple) else h).device), h, 0)]
    for level in range(levels):
        next_groups = []
        for rows, h, node in groups:
            if visit is not None:
                visit(level, node, h)
            choice = routers[level][node].decide(h)
            for child in (0, 1):
                picked = (choice == child).nonzero().flatten()
                if len(picked):  # an unchosen branch never runs
                    branch = 2 * node + child
                    sub = h if len(picked) == len(rows) else take_rows(h, picked)
                    next_groups.append((rows[picked], specialisers[level][branch](sub), branch))
        groups = next_groups
    return groups


class RouterNode(nn.Module):
    """Router projection and binary router of one tree node.

    Args:
        in_features: channels of the feature the node routes.
        proj_dim: latent size of the projection (the paper's 128).
        dropout: dropout on the latent during training.
    """

    def __init__(self, in_features: int, proj_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_features, proj_dim)
        self.norm = nn.LayerNorm(proj_dim)
        self.drop = nn.Dropout(dropout)
        self.router = nn.Linear(proj_dim, 2)

    def latent(self, h: Features) -> torch.Tensor:
        return self.drop(self.norm(self.proj(pool_features(h))))

    def forward(self, h: Features) -> torch.Tensor:
        """Router logits (B, 2); the routing distribution is their softmax."""
        return self.router(self.latent(h))

    def decide(self, h: Features) -> torch.Tensor:
        """Hard top-1 branch per input (a tie goes to branch 0)."""
        return self(h).argmax(dim=1)


class SigmaBranchTree(nn.Module):
    """A hierarchical binary tree built from a dense model (see the module docstring).

    Args:
        backbone: the shared stages.
        routers: per level, its ``2**l`` router nodes.
        specialisers: per level, its ``2**(l+1)`` branch modules.
        heads: the ``2**depth`` leaf classifiers.
        spec: how the tree was cut from its dense model (stored in checkpoints, see convert.py).
    """

    def __init__(self, backbone: nn.Module, routers: list[list[RouterNode]], specialisers: list[list[nn.Module]],
                 heads: list[nn.Module], spec: dict[str, Any] | None = None):
        super().__init__()
        depth = len(routers)
        if len(specialisers) != depth or len(heads) != 2 ** depth:
            raise ValueError(f"a depth-{depth} tree needs {depth} specialiser levels and {2 ** depth} heads")
        for level in range(depth):
            if len(routers[level]) != 2 ** level or len(specialisers[level]) != 2 ** (level + 1):
                raise ValueError(f"level {level} needs {2 ** level} routers and {2 ** (level + 1)} specialisers")
        self.backbone = backbone
        self.routers = nn.ModuleList(nn.ModuleList(level) for level in routers)
        self.specialisers = nn.ModuleList(nn.ModuleList(level) for level in specialisers)
        self.heads = nn.ModuleList(heads)
        self.depth = depth
        self.spec = dict(spec or {})
        self.last_leaves: torch.Tensor | None = None

    @property
    def num_leaves(self) -> int:
        return 2 ** self.depth

    # ------------------------------------------------------------------ soft routing (training)
    def forward_soft(self, x: torch.Tensor, latents: list[torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every leaf: ``(leaf_logits (B, L, C), leaf_log_probs (B, L))``, leaves in branch order.

        The leaf probability is the product of the per-level router probabilities on its path.
        ``latents``, if given, receives every router's latent (before dropout), level by level
        (what QAT's routing distillation matches).
        """
        feats: list[Features] = [self.backbone(x)]
        log_probs = [torch.zeros(batch_size(feats[0]), device=x.device)]
        for level in range(self.depth):
            next_feats, next_log_probs = [], []
            for node, (h, lp) in enumerate(zip(feats, log_probs)):
                router = self.routers[level][node]
                latent = router.norm(router.proj(pool_features(h)))
                if latents is not None:
                    latents.append(latent)
                route = F.log_softmax(router.router(router.drop(latent)).float(), dim=1)
                for child in (0, 1):
                    next_feats.append(self.specialisers[level][2 * node + child](h))
                    next_log_probs.append(lp + route[:, child])
            feats, log_probs = next_feats, next_log_probs
        leaf_logits = torch.stack([head(h) for head, h in zip(self.heads, feats)], dim=1)
        return leaf_logits, torch.stack(log_probs, dim=1)

    def soft_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The routing-weighted combination of leaf logits."""
        leaf_logits, leaf_log_probs = self.forward_soft(x)
        return (leaf_log_probs.exp().unsqueeze(-1) * leaf_logits).sum(1)

    # ------------------------------------------------------------------ hard routing (inference)
    def forward_hard(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One root-to-leaf path per input: ``(logits (B, C), leaf index (B,))``."""
        h = self.backbone(x)
        n = batch_size(h)
        if n == 1:  # one input walks its path directly: no grouping bookkeeping (~4% at batch 1)
            node = 0
            for level in range(self.depth):
                node = 2 * node + int(self.routers[level][node].decide(h))
                h = self.specialisers[level][node](h)
            self.last_leaves = torch.full((1,), node, dtype=torch.long, device=x.device)
            return self.heads[node](h), self.last_leaves
        groups = route_groups(nn.Identity(), self.routers, self.specialisers, h, self.depth)
        out = leaves = None
        for rows, features, leaf in groups:
            group_logits = self.heads[leaf](features)
            if out is None:
                out = group_logits.new_empty(n, group_logits.shape[1])
                leaves = torch.empty(n, dtype=torch.long, device=group_logits.device)
            out[rows] = group_logits
            leaves[rows] = leaf
        self.last_leaves = leaves
        return out, leaves

    def forward(self, x: torch.Tensor, mode: str | None = None, latents: list[torch.Tensor] | None = None):
        """Training: soft routing (weighted leaf logits). Eval: hard top-1 single path.

        ``mode`` picks explicitly (and passes through a DistributedDataParallel wrapper):
        ``"leaves"`` -> :meth:`forward_soft`, ``"soft"`` -> :meth:`soft_logits`,
        ``"hard"`` -> :meth:`forward_hard`; ``latents`` goes to :meth:`forward_soft`.
        """
        if mode == "leaves":
            return self.forward_soft(x, latents)
        if mode == "hard":
            return self.forward_hard(x)
        if mode == "soft" or (mode is None and self.training):
            return self.soft_logits(x)
        if mode is None:
            return self.forward_hard(x)[0]
        raise ValueError(f"mode must be None, 'leaves', 'soft' or 'hard', got {mode!r}")

    # ------------------------------------------------------------------ accounting
    def path_modules(self, leaf: int = 0) -> list[nn.Module]:
        """The modules one input runs on its way to ``leaf`` (Eq. 4's active set)."""
        modules: list[nn.Module] = [self.backbone]
        for level in range(self.depth):
            branch = leaf >> (self.depth - level - 1)
            modules += [self.routers[level][branch >> 1], self.specialisers[level][branch]]
        return modules + [self.heads[leaf]]

    def active_params(self) -> int:
        """Parameters on one root-to-leaf path (backbone, routers, specialisers, head)."""
        counts = {sum(count_params(m) for m in self.path_modules(leaf)) for leaf in range(self.num_leaves)}
        if len(counts) != 1:  # all branches of a level have the same shape by construction
            raise AssertionError(f"paths differ in parameter count: {sorted(counts)}")
        return counts.pop()

    def path_macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of one hard-routed inference at batch 1 (fvcore convention, routers included)."""
        was_training = self.training
        self.eval()
        x = torch.zeros(1, *input_shape)
        try:
            return count_macs(lambda: self.forward_hard(x), self)
        finally:
            self.train(was_training)
