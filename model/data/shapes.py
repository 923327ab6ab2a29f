"""Procedural point clouds of 10 primitives, so PointNet++ runs without any download.

Points lie on each primitive's surface (area-uniform except the ellipsoid, a stretched
sphere). Every sample gets a random uniform scale, a random 3D rotation and a little
Gaussian jitter, then is normalised to the unit sphere like ModelNet40 clouds.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .common import ArrayDataset, DatasetError, DatasetSplits, augment_point_cloud, normalize_to_unit_sphere

Sampler = Callable[[np.random.Generator, int], np.ndarray]  # (rng, n) -> (n, 3) points


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _disk_xy(rng: np.random.Generator, n: int, radius: float = 1.0) -> np.ndarray:
    # sqrt makes the density uniform in area rather than in radius
    r = radius * np.sqrt(rng.random(n))
    theta = rng.uniform(0.0, 2 * math.pi, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _mesh(vertices, faces) -> Sampler:
    """Area-weighted uniform sampler over a triangle mesh."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    a, ab, ac = v[f[:, 0]], v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    areas = 0.5 * np.linalg.norm(np.cross(ab, ac), axis=1)

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        tri = rng.choice(len(f), size=n, p=areas / areas.sum())
        u, w = rng.random((2, n))
        outside = u + w > 1  # fold points of the parallelogram back into the triangle
        u[outside], w[outside] = 1 - u[outside], 1 - w[outside]
        return a[tri] + u[:, None] * ab[tri] + w[:, None] * ac[tri]

    return sample


def _sphere(rng, n):
    return _unit_vectors(rng, n)


def _ellipsoid(rng, n):
    return _unit_vectors(rng, n) * np.array([1.0, 0.6, 0.35])


def _hemisphere(rng, n):
    dome = rng.random(n) < 2 / 3  # dome area 2*pi vs base disk pi
    points = _unit_vectors(rng, n)
    points[:, 2] = np.abs(points[:, 2])
    points[~dome, :2] = _disk_xy(rng, int((~dome).sum()))
    points[~dome, 2] = 0.0
    return points


def _cube(rng, n):
    points = rng.uniform(-1.0, 1.0, size=(n, 3))
    face_axis = rng.integers(0, 3, n)
    points[np.arange(n), face_axis] = rng.choice([-1.0, 1.0], n)
    return points


def _cylinder(rng, n, radius=1.0, height=2.0):
    side, cap = 2 * math.pi * radius * height, math.pi * radius ** 2
    part = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
    points = np.empty((n, 3))
    theta = rng.uniform(0.0, 2 * math.pi, n)
    points[:, 0], points[:, 1] = radius * np.cos(theta), radius * np.sin(theta)
    points[:, 2] = rng.uniform(-height / 2, height / 2, n)
    for which, z in ((1, height / 2), (2, -height / 2)):
        on_cap = part == which
        points[on_cap, :2] = _disk_xy(rng, int(on_cap.sum()), radius)
        points[on_cap, 2] = z
    return points


def _cone(rng, n, radius=1.0, height=2.0):
    lateral, base = math.pi * radius * math.hypot(radius, height), math.pi * radius ** 2
    on_base = rng.random(n) < base / (lateral + base)
    # lateral area grows linearly with distance from the apex, hence the sqrt
    t = np.sqrt(rng.random(n))
    theta = rng.uniform(0.0, 2 * math.pi, n)
    points = np.stack([radius * t * np.cos(theta), radius * t * np.sin(theta), height * (1 - t)], axis=1)
    points[on_base, :2] = _disk_xy(rng, int(on_base.sum()), radius)
    points[on_base, 2] = 0.0
    return points


def _torus(rng, n, major=1.0, minor=0.35):
    # Area density along the tube angle phi is proportional to (major + minor*cos(phi)):
    # draw phi by rejection against that.
    phis = np.empty(0)
    while len(phis) < n:
        phi = rng.uniform(0.0, 2 * math.pi, 2 * n)
        keep = rng.random(2 * n) < (major + minor * np.cos(phi)) / (major + minor)
        phis = np.concatenate([phis, phi[keep]])
    phi = phis[:n]
    theta = rng.uniform(0.0, 2 * math.pi, n)
    ring = major + minor * np.cos(phi)
    return np.stack([ring * np.cos(theta), ring * np.sin(theta), minor * np.sin(phi)], axis=1)


def _disk(rng, n):
    return np.concatenate([_disk_xy(rng, n), np.zeros((n, 1))], axis=1)


_pyramid = _mesh(  # square base 2x2, height 1.5
    [[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, 1.5]],
    [[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4], [0, 2, 1], [0, 3, 2]],
)
_tetrahedron = _mesh(  # regular: alternate corners of a cube
    [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
    [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]],
)

SHAPE_SAMPLERS: dict[str, Sampler] = {
    "sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
    "pyramid": _pyramid, "ellipsoid": _ellipsoid, "hemisphere": _hemisphere, "disk": _disk,
    "tetrahedron": _tetrahedron,
}
SHAPE_NAMES = list(SHAPE_SAMPLERS)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation: QR of a Gaussian matrix, signs fixed, det forced to +1."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _one_cloud(rng: np.random.Generator, sampler: Sampler, num_points: int) -> np.ndarray:
    points = sampler(rng, num_points) * rng.uniform(0.5, 1.5)
    points = points @ _random_rotation(rng).T
    points += rng.normal(scale=0.01, size=points.shape)
    return normalize_to_unit_sphere(points)


def _generate(seed: int, stream: int, per_class: int, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Train and test come from separate SeedSequence streams, so neither depends on the
    # other's size and they never share samples.
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    clouds, labels = [], []
    for label, sampler in enumerate(SHAPE_SAMPLERS.values()):
        for _ in range(per_class):
            clouds.append(_one_cloud(rng, sampler, num_points))
            labels.append(label)
    return torch.from_numpy(np.stack(clouds)), torch.tensor(labels, dtype=torch.int64)


def build_shapes(*, seed: int = 0, augment: bool = False, num_points: int = 1024,
                 train_per_class: int = 100, test_per_class: int = 30) -> DatasetSplits:
    """10-class point-cloud set; x is (num_points, 3) float32; deterministic given ``seed``."""
    for name, value in (("num_points", num_points), ("train_per_class", train_per_class),
                        ("test_per_class", test_per_class)):
        if not isinstance(value, int) or value < 1:
            raise DatasetError(f"shapes: {name} must be a positive integer, got {value!r}")
    if seed < 0:
        raise DatasetError(f"shapes: seed must be >= 0, got {seed}")
    x_train, y_train = _generate(seed, 0, train_per_class, num_points)
    x_test, y_test = _generate(seed, 1, test_per_class, num_points)
    return DatasetSplits(
        train=ArrayDataset(x_train, y_train, transform=augment_point_cloud if augment else None),
        test=ArrayDataset(x_test, y_test),
        num_classes=len(SHAPE_NAMES),
        input_shape=(num_points, 3),
        class_names=list(SHAPE_NAMES),
    )
