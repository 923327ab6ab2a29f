"""PointNet++ classification with single-scale grouping (SSG), in plain torch.

Qi, Yi, Su, Guibas, "PointNet++: Deep Hierarchical Feature Learning on Point Sets
in a Metric Space", NeurIPS 2017.

The sampling/grouping helpers and the module layout follow the widely used reference
implementation (yanx27/Pointnet_Pointnet2_pytorch, ``pointnet2_utils.py`` and
``pointnet2_cls_ssg.py``) closely enough that its checkpoints load with ``strict=True``:
the submodules are named ``sa1``/``sa2``/``sa3`` (each with ``mlp_convs`` and
``mlp_bns``), ``fc1``/``bn1``/``drop1``, ``fc2``/``bn2``/``drop2`` and ``fc3``.
(The reference saves ``{"model_state_dict": ...}``; pass that inner dict.)

Differences from the reference, all deliberate:

* :meth:`PointNet2SSG.forward` takes points-major input ``(B, N, C)`` as the project's
  datasets produce it (the reference takes ``(B, C, N)``), and returns raw logits (the
  reference returns ``log_softmax``; the argmax and ``log_softmax(logits)`` agree).
* :func:`farthest_point_sample` starts from point 0 by default so that results are
  reproducible (the reference starts from a random point).
* :func:`query_ball_point` never returns an out-of-range index: a centroid with no
  point within ``radius`` (impossible when centroids are drawn from ``xyz``, as in
  the model) is grouped with its nearest point; and ``nsample > N`` is padded to
  ``nsample`` instead of returning only ``N`` columns.

Shape letters used below: ``B`` batch, ``N`` input points, ``S`` sampled centroids,
``K`` ``nsample`` (points per group), ``C`` coordinate channels (3), ``D`` feature
channels.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

__all__ = [
    "square_distance",
    "farthest_point_sample",
    "index_points",
    "query_ball_point",
    "sample_and_group",
    "sample_and_group_all",
    "PointNetSetAbstraction",
    "PointNet2SSG",
    "pointnet2_ssg",
    "pointnet2_ssg_small",
]


# --------------------------------------------------------------------------- helpers


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances.

    Args:
        src: ``(B, N, C)``.
        dst: ``(B, M, C)``.

    Returns:
        ``(B, N, M)`` with ``out[b, n, m] = ||src[b, n] - dst[b, m]||^2``, computed as
        ``|s|^2 + |d|^2 - 2 s.d`` (one batched matmul) and clamped at 0 against
        round-off.
    """
    dist = -2.0 * torch.matmul(src, dst.transpose(1, 2))
    dist = dist + src.pow(2).sum(-1).unsqueeze(-1)
    dist = dist + dst.pow(2).sum(-1).unsqueeze(-2)
    return dist.clamp_min_(0.0)


def farthest_point_sample(
    xyz: torch.Tensor,
    npoint: int,
    *,
    deterministic_start: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Iterative farthest point sampling.

    Each step adds the point farthest (in Euclidean distance) from the points chosen
    so far; ties go to the lowest index.

    Args:
        xyz: ``(B, N, 3)`` coordinates.
        npoint: number of points ``S`` to pick. If ``S > N`` the later picks repeat
            already chosen points.
        deterministic_start: start every batch element from point 0 (reproducible).
            ``False`` starts from a random point per element, as the reference does.
        generator: optional RNG for the random start.

    Returns:
        ``(B, S)`` long indices into ``N``, in selection order.

    Note:
        With a fixed start the result depends on which point is at index 0, so it is
        *not* invariant to permutations of the input that move point 0.
    """
    B, N, _ = xyz.shape
    device = xyz.device
    centroids = torch.zeros(B, npoint, dtype=torch.long, device=device)
    distance = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=device)
    if deterministic_start:
        farthest = torch.zeros(B, dtype=torch.long, device=device)
    else:
        farthest = torch.randint(0, N, (B,), generator=generator, device="cpu").to(device)
    batch = torch.arange(B, device=device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch, farthest].unsqueeze(1)  # (B, 1, 3)
        dist = (xyz - centroid).pow(2).sum(-1)  # (B, N)
        distance = torch.minimum(distance, dist)
        farthest = distance.argmax(-1)  # first maximal index on ties
    return centroids


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather points per batch element.

    Args:
        points: ``(B, N, D)``.
        idx: ``(B, *I)`` long indices into ``N`` (e.g. ``(B, S)`` or ``(B, S, K)``).

    Returns:
        ``(B, *I, D)`` with ``out[b, i...] = points[b, idx[b, i...]]``.
    """
    B = points.shape[0]
    batch = torch.arange(B, device=points.device).view((B,) + (1,) * (idx.dim() - 1))
    return points[batch, idx]


def query_ball_point(
    radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor
) -> torch.Tensor:
    """Ball query: for each centroid, the first ``nsample`` points within ``radius``.

    "First" means lowest index in ``xyz``; a point at distance exactly ``radius``
    counts as inside. If fewer than ``nsample`` points are found, the remaining slots
    are filled with the first one found (the reference's padding). A centroid with no
    point inside (only possible when it is not itself one of ``xyz``) gets its nearest
    point in every slot.

    Args:
        radius: ball radius.
        nsample: ``K``, points per group.
        xyz: ``(B, N, 3)`` all points.
        new_xyz: ``(B, S, 3)`` centroids.

    Returns:
        ``(B, S, K)`` long indices into ``N``.
    """
    B, N, _ = xyz.shape
    S = new_xyz.shape[1]
    sqrdists = square_distance(new_xyz, xyz)  # (B, S, N)
    arange = torch.arange(N, device=xyz.device).expand(B, S, N)
    group_idx = torch.where(sqrdists > radius**2, torch.full_like(arange, N), arange)
    k = min(nsample, N)
    # The k smallest indices in ascending order == sort(...)[..., :k], but cheaper.
    group_idx = group_idx.topk(k, dim=-1, largest=False, sorted=True).values
    first = group_idx[..., :1]
    first = torch.where(first == N, sqrdists.argmin(-1, keepdim=True), first)
    group_idx = torch.where(group_idx == N, first.expand_as(group_idx), group_idx)
    if k < nsample:
        group_idx = torch.cat([group_idx, first.expand(B, S, nsample - k)], dim=-1)
    return group_idx


def sample_and_group(
    npoint: int,
    radius: float,
    nsample: int,
    xyz: torch.Tensor,
    points: Optional[torch.Tensor],
    *,
    deterministic_start: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS centroids + ball-query groups, with coordinates relative to the centroid.

    Args:
        npoint: ``S`` centroids (by :func:`farthest_point_sample`).
        radius, nsample: ball query parameters (see :func:`query_ball_point`).
        xyz: ``(B, N, 3)``.
        points: ``(B, N, D)`` features or ``None``.

    Returns:
        ``new_xyz`` ``(B, S, 3)`` centroids and ``new_points`` ``(B, S, K, 3 + D)``:
        the grouped ``xyz - centroid`` followed by the grouped features (just
        ``(B, S, K, 3)`` when ``points`` is ``None``).
    """
    B, _, C = xyz.shape
    fps_idx = farthest_point_sample(xyz, npoint, deterministic_start=deterministic_start)
    new_xyz = index_points(xyz, fps_idx)  # (B, S, C)
    idx = query_ball_point(radius, nsample, xyz, new_xyz)  # (B, S, K)
    grouped_xyz = index_points(xyz, idx) - new_xyz.view(B, npoint, 1, C)
    if points is None:
        return new_xyz, grouped_xyz
    return new_xyz, torch.cat([grouped_xyz, index_points(points, idx)], dim=-1)


def sample_and_group_all(
    xyz: torch.Tensor, points: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One group holding every point (the last set abstraction).

    As in the reference, the coordinates are *absolute* (the centroid is the origin).

    Args:
        xyz: ``(B, N, 3)``.
        points: ``(B, N, D)`` or ``None``.

    Returns:
        ``new_xyz`` ``(B, 1, 3)`` zeros and ``new_points`` ``(B, 1, N, 3 + D)``.
    """
    B, N, C = xyz.shape
    new_xyz = xyz.new_zeros(B, 1, C)
    grouped = xyz.view(B, 1, N, C)
    if points is None:
        return new_xyz, grouped
    return new_xyz, torch.cat([grouped, points.view(B, 1, N, -1)], dim=-1)


# --------------------------------------------------------------------------- modules


class PointNetSetAbstraction(nn.Module):
    """Set abstraction: sample + group, a shared MLP (1x1 Conv2d + BN + ReLU), max-pool.

    Args:
        npoint: centroids ``S`` (ignored when ``group_all``).
        radius, nsample: ball query (ignored when ``group_all``).
        in_channel: channels of a grouped point, i.e. ``3 + D`` (relative xyz plus
            the incoming features), or 3 when there are no features.
        mlp: output channels of the shared MLP layers.
        group_all: one group of all points (``S = 1``).
    """

    def __init__(
        self,
        npoint: Optional[int],
        radius: Optional[float],
        nsample: Optional[int],
        in_channel: int,
        mlp: Sequence[int],
        group_all: bool,
    ) -> None:
        super().__init__()
        self.npoint = npoint
        self.radius = radius
        self.nsample = nsample
        self.group_all = group_all
        self.deterministic_start = True
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for out in mlp:
            self.mlp_convs.append(nn.Conv2d(last, out, 1))
            self.mlp_bns.append(nn.BatchNorm2d(out))
            last = out
        self.out_channels = last

    def forward(
        self, xyz: torch.Tensor, points: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            xyz: ``(B, 3, N)`` coordinates (channels-first, as the reference).
            points: ``(B, D, N)`` features or ``None``.

        Returns:
            ``new_xyz`` ``(B, 3, S)`` and ``new_points`` ``(B, D', S)`` with
            ``D' = mlp[-1]``, max-pooled over each group.
        """
        xyz = xyz.transpose(1, 2)
        if points is not None:
            points = points.transpose(1, 2)
        if self.group_all:
            new_xyz, new_points = sample_and_group_all(xyz, points)
        else:
            new_xyz, new_points = sample_and_group(
                self.npoint, self.radius, self.nsample, xyz, points,
                deterministic_start=self.deterministic_start,
            )
        new_points = new_points.permute(0, 3, 2, 1)  # (B, 3 + D, K, S)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            new_points = F.relu(bn(conv(new_points)))
        new_points = new_points.max(dim=2).values  # (B, D', S)
        return new_xyz.transpose(1, 2), new_points

    def extra_repr(self) -> str:
        if self.group_all:
            return "group_all=True"
        return f"npoint={self.npoint}, radius={self.radius}, nsample={self.nsample}"


class PointNet2SSG(nn.Module):
    """PointNet++ SSG classifier: three set abstractions and a 3-layer FC head.

    Args:
        num_classes: logits.
        in_chans: channels per input point, xyz first: 3 (xyz only) or 6 (xyz +
            normals); any ``>= 3`` works, the channels after xyz are features.
        sa_npoints, sa_radii, sa_nsamples: ``S``, radius, ``K`` of SA1 and SA2.
        sa_mlps: shared-MLP widths of SA1, SA2, SA3 (SA3 groups all points).
        fc_dims: hidden widths of ``fc1`` and ``fc2``.
        dropout: after ``fc1`` and ``fc2``.

    Layout (reference names): ``sa1 -> sa2 -> sa3 -> fc1/bn1/drop1 -> fc2/bn2/drop2
    -> fc3``. Entry points, all taking/returning batch-first tensors:

    * :meth:`forward` ``(B, N, in_chans) -> (B, num_classes)`` logits,
      ``= forward_head(forward_features(x))``.
    * :meth:`forward_features` ``(B, N, in_chans) -> (B, num_features)`` global
      feature after ``sa3`` (``num_features = sa_mlps[2][-1]``, 1024 by default).
    * :meth:`forward_backbone` ``(B, N, in_chans) -> (xyz (B, 3, S2), points (B, D2,
      S2))``: the SA2 output (``D2 = sa_mlps[1][-1]``, 256 by default), so a tree can
      cut after SA2; continue with :meth:`forward_sa3` then :meth:`forward_head`.
    """

    stage_names = ("sa1", "sa2", "sa3", "fc1", "fc2", "fc3")

    def __init__(
        self,
        num_classes: int = 40,
        in_chans: int = 3,
        sa_npoints: Sequence[int] = (512, 128),
        sa_radii: Sequence[float] = (0.2, 0.4),
        sa_nsamples: Sequence[int] = (32, 64),
        sa_mlps: Sequence[Sequence[int]] = ((64, 64, 128), (128, 128, 256), (256, 512, 1024)),
        fc_dims: Sequence[int] = (512, 256),
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        if in_chans < 3:
            raise ValueError(f"in_chans must be >= 3 (xyz first), got {in_chans}")
        if not (len(sa_npoints) == len(sa_radii) == len(sa_nsamples) == 2):
            raise ValueError("sa_npoints, sa_radii and sa_nsamples need 2 entries (SA1, SA2)")
        if len(sa_mlps) != 3 or len(fc_dims) != 2:
            raise ValueError("sa_mlps needs 3 entries (SA1-3) and fc_dims 2 (fc1, fc2)")
        self.num_classes = num_classes
        self.in_chans = in_chans
        # SA1 sees relative xyz (3) + the input's extra channels (in_chans - 3).
        self.sa1 = PointNetSetAbstraction(
            sa_npoints[0], sa_radii[0], sa_nsamples[0], in_chans, sa_mlps[0], False)
        self.sa2 = PointNetSetAbstraction(
            sa_npoints[1], sa_radii[1], sa_nsamples[1], sa_mlps[0][-1] + 3, sa_mlps[1], False)
        self.sa3 = PointNetSetAbstraction(
            None, None, None, sa_mlps[1][-1] + 3, sa_mlps[2], True)
        self.num_features = sa_mlps[2][-1]
        self.fc1 = nn.Linear(self.num_features, fc_dims[0])
        self.bn1 = nn.BatchNorm1d(fc_dims[0])
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc_dims[0], fc_dims[1])
        self.bn2 = nn.BatchNorm1d(fc_dims[1])
        self.drop2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(fc_dims[1], num_classes)
        self.default_input_shape = (1024, in_chans)

    def forward_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, N, in_chans)`` -> SA2 output ``(xyz (B, 3, S2), points (B, D2, S2))``."""
        if x.dim() != 3 or x.shape[-1] != self.in_chans:
            raise ValueError(
                f"expected (B, N, {self.in_chans}) points-major input, got {tuple(x.shape)}")
        x = x.transpose(1, 2)  # (B, C, N)
        xyz = x[:, :3]
        feats = x[:, 3:] if self.in_chans > 3 else None
        xyz, points = self.sa1(xyz, feats)
        return self.sa2(xyz, points)

    def forward_sa3(self, xyz: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """SA2 output ``(B, 3, S2)``, ``(B, D2, S2)`` -> global feature ``(B, num_features)``."""
        _, feat = self.sa3(xyz, points)  # (B, num_features, 1)
        return feat.flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, N, in_chans)`` -> global feature ``(B, num_features)``."""
        return self.forward_sa3(*self.forward_backbone(x))

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global feature ``(B, num_features)`` -> logits ``(B, num_classes)``
        (or the ``(B, fc_dims[1])`` input of ``fc3`` when ``pre_logits``)."""
        x = self.drop1(F.relu(self.bn1(self.fc1(feat))))
        x = self.drop2(F.relu(self.bn2(self.fc2(x))))
        return x if pre_logits else self.fc3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, N, in_chans)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- variants


@register_model
def pointnet2_ssg(num_classes: int = 40, in_chans: int = 3, **kwargs) -> PointNet2SSG:
    """The paper's SSG classifier (1,475,688 parameters for 40 classes, xyz only; "1.47M")."""
    return PointNet2SSG(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def pointnet2_ssg_small(num_classes: int = 10, in_chans: int = 3, **kwargs) -> PointNet2SSG:
    """A CPU-friendly SSG for tests and demos on ~256-1024 points (same module layout)."""
    cfg = dict(
        sa_npoints=(64, 16),
        sa_radii=(0.3, 0.6),
        sa_nsamples=(16, 16),
        sa_mlps=((32, 32, 64), (64, 64, 128), (128, 128, 256)),
        fc_dims=(128, 64),
    )
    cfg.update(kwargs)
    model = PointNet2SSG(num_classes=num_classes, in_chans=in_chans, **cfg)
    model.default_input_shape = (256, in_chans)
    return model


# --------------------------------------------------------------------------- processor export


@torch.no_grad()
def export_backbone(model: nn.Module, path) -> dict:
    """Write SA1 + SA2 of ``model`` (a :class:`PointNet2SSG` or a tree's backbone) for the board's
    numpy backbone (``host/pointnet_backbone.py``): per layer the 1x1 conv with its eval-mode BN
    folded in, ``w`` (out, in) and ``b`` (out,), float32, and each set abstraction's sampling
    parameters. Returns the arrays written."""
    import numpy as np

    arrays = {}
    for name in ("sa1", "sa2"):
        sa = getattr(model, name)
        arrays.update({f"{name}.npoint": np.int64(sa.npoint), f"{name}.radius": np.float64(sa.radius),
                       f"{name}.nsample": np.int64(sa.nsample)})
        for i, (conv, bn) in enumerate(zip(sa.mlp_convs, sa.mlp_bns)):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            arrays[f"{name}.w{i}"] = (conv.weight.flatten(1) * scale[:, None]).float().numpy()
            arrays[f"{name}.b{i}"] = ((conv.bias - bn.running_mean) * scale + bn.bias).float().numpy()
    np.savez(path, **arrays)
    return arrays
