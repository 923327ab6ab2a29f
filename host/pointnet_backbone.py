"""The PointNet++ backbone (SA1 + SA2) on the processor, in numpy: the Zynq's ARM side of a point
cloud tree (the fabric runs the routed part, SA3 and the head, as for the CNN trees).

Sampling and grouping are :mod:`model.pointnet2`'s, operation for operation in float32, so the
indices (farthest-point sampling, ball query) are identical to PyTorch's on the same points:
``tests/test_pointnet_host.py`` checks it. The shared MLPs run with each BN folded into its 1x1
conv (one matmul + bias + ReLU per layer), so their features equal PyTorch's to float32 rounding
(torch rounds after the conv and again in the BN; the folded layer rounds once).

    bb = PointNetBackbone.load("backbone.npz")        # written by model.pointnet2.export_backbone
    xyz, feats = bb(points)                           # (B, N, C) -> (B, S2, 3), (B, S2, D2)
    x = bb.fabric_input(points)                       # (B, 3 + D2, S2, 1): what the fabric quantises

``backbone.npz`` holds, per set abstraction ``sa1``/``sa2``: ``<sa>.npoint``, ``<sa>.radius``,
``<sa>.nsample`` and per layer ``<sa>.w<i>`` (out, in) and ``<sa>.b<i>`` (out,), float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from host.errors import InputError, ManifestError

SET_ABSTRACTIONS = ("sa1", "sa2")


def square_distance(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``(B, N, C)``, ``(B, M, C)`` -> ``(B, N, M)`` squared distances, as ``|s|^2 + |d|^2 - 2 s.d``."""
    dist = np.float32(-2.0) * np.matmul(src, dst.transpose(0, 2, 1))
    dist = dist + (src ** 2).sum(-1)[:, :, None]
    dist = dist + (dst ** 2).sum(-1)[:, None, :]
    return np.maximum(dist, np.float32(0.0))


def farthest_point_sample(xyz: np.ndarray, npoint: int) -> np.ndarray:
    """``(B, N, 3)`` -> ``(B, npoint)`` indices, starting from point 0, ties to the lowest index."""
    b, n, _ = xyz.shape
    centroids = np.zeros((b, npoint), dtype=np.int64)
    distance = np.full((b, n), np.inf, dtype=xyz.dtype)
    farthest = np.zeros(b, dtype=np.int64)
    batch = np.arange(b)
    for i in range(npoint):
        centroids[:, i] = farthest
        dist = ((xyz - xyz[batch, farthest][:, None, :]) ** 2).sum(-1)
        distance = np.minimum(distance, dist)
        farthest = distance.argmax(-1)
    return centroids


def index_points(points: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(B, N, D)`` gathered at ``(B, *I)`` -> ``(B, *I, D)``."""
    batch = np.arange(points.shape[0]).reshape((-1,) + (1,) * (idx.ndim - 1))
    return points[batch, idx]


def query_ball_point(radius: float, nsample: int, xyz: np.ndarray, new_xyz: np.ndarray) -> np.ndarray:
    """For each centroid the ``nsample`` lowest indices within ``radius`` (inclusive), padded with the
    first; a centroid with none gets its nearest point. ``(B, S, nsample)``."""
    b, n, _ = xyz.shape
    sqrdists = square_distance(new_xyz, xyz)
    # torch compares a float32 tensor with the Python float radius**2 rounded to float32
    group_idx = np.where(sqrdists > np.float32(radius ** 2), n, np.arange(n))
    k = min(nsample, n)
    group_idx = np.sort(group_idx, axis=-1)[..., :k]
    first = group_idx[..., :1]
    first = np.where(first == n, sqrdists.argmin(-1)[..., None], first)
    group_idx = np.where(group_idx == n, first, group_idx)
    if k < nsample:
        group_idx = np.concatenate([group_idx, np.repeat(first, nsample - k, axis=-1)], axis=-1)
    return group_idx


def sample_and_group(npoint: int, radius: float, nsample: int, xyz: np.ndarray,
                     points: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """FPS centroids ``(B, S, 3)`` and groups ``(B, S, K, 3 + D)`` (xyz relative to the centroid, then features)."""
    new_xyz = index_points(xyz, farthest_point_sample(xyz, npoint))
    idx = query_ball_point(radius, nsample, xyz, new_xyz)
    grouped = index_points(xyz, idx) - new_xyz[:, :, None, :]
    if points is None:
        return new_xyz, grouped
    return new_xyz, np.concatenate([grouped, index_points(points, idx)], axis=-1)


@dataclass
class SetAbstraction:
    npoint: int
    radius: float
    nsample: int
    weights: list[np.ndarray]   # per layer (out, in), BN folded in
    biases: list[np.ndarray]    # per layer (out,)

    def __call__(self, xyz: np.ndarray, points: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        new_xyz, x = sample_and_group(self.npoint, self.radius, self.nsample, xyz, points)
        for w, bias in zip(self.weights, self.biases):
            x = np.maximum(x @ w.T + bias, np.float32(0.0))
        return new_xyz, x.max(axis=2)          # max over each group's K points


def fabric_map(xyz: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """SA2's centroids ``(B, S, 3)`` and features ``(B, S, D)`` -> the fabric's input map
    ``(B, 3 + D, S, 1)``: per point its xyz then its features, channels first (as
    ``quant.qpointnet.FabricInput`` lays out SA3's group-all input)."""
    return np.ascontiguousarray(np.concatenate([xyz, feats], -1).transpose(0, 2, 1)[..., None])


class PointNetBackbone:
    """SA1 + SA2 of a PointNet++ SSG: ``(B, N, C)`` float32 points (xyz first) -> the SA2 centroids
    ``(B, S2, 3)`` and features ``(B, S2, D2)``, the input of the tree's routed part."""

    def __init__(self, layers: list[SetAbstraction], in_chans: int):
        self.layers, self.in_chans = layers, in_chans

    @classmethod
    def load(cls, path: str | Path) -> "PointNetBackbone":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as err:
            raise ManifestError(f"cannot read the PointNet++ backbone {str(path)!r}: {err}") from err
        layers = []
        for sa in SET_ABSTRACTIONS:
            missing = [f"{sa}.{k}" for k in ("npoint", "radius", "nsample", "w0", "b0") if f"{sa}.{k}" not in arrays]
            if missing:
                raise ManifestError(f"{str(path)!r}: no {', '.join(missing)} (written by model.pointnet2.export_backbone?)")
            count = sum(1 for k in arrays if k.startswith(f"{sa}.w"))
            ws = [arrays[f"{sa}.w{i}"].astype(np.float32) for i in range(count)]
            bs = [arrays[f"{sa}.b{i}"].astype(np.float32) for i in range(count)]
            for i in range(1, count):
                if ws[i].shape[1] != ws[i - 1].shape[0]:
                    raise ManifestError(f"{str(path)!r}: {sa}.w{i} takes {ws[i].shape[1]} channels, "
                                        f"{sa}.w{i - 1} gives {ws[i - 1].shape[0]}")
            layers.append(SetAbstraction(int(arrays[f"{sa}.npoint"]), float(arrays[f"{sa}.radius"]),
                                         int(arrays[f"{sa}.nsample"]), ws, bs))
        in_chans = layers[0].weights[0].shape[1]        # SA1 sees relative xyz + the extra channels
        return cls(layers, in_chans)

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(points)
        if points.ndim != 3 or points.shape[-1] != self.in_chans:
            raise InputError(f"PointNet++ backbone: expected (B, N, {self.in_chans}) points, got {points.shape}")
        if not np.isfinite(points).all():
            raise InputError("PointNet++ backbone: NaN or infinite coordinates in the input")
        points = points.astype(np.float32)
        xyz, feats = points[..., :3], (points[..., 3:] if self.in_chans > 3 else None)
        for sa in self.layers:
            xyz, feats = sa(xyz, feats)
        return xyz, feats

    def fabric_input(self, points: np.ndarray) -> np.ndarray:
        """``(B, N, C)`` points -> the float map the fabric's input quantizer takes (see :func:`fabric_map`)."""
        return fabric_map(*self(points))
