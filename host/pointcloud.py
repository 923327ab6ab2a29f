"""Point clouds on the board: ModelNet40 text files and ``.npy`` arrays, normalised as in training.

numpy only (this runs on the PYNQ's ARM). The training loaders (``model/data/modelnet.py``,
``model/data/shapes.py``) use these same functions, so the board sees a cloud exactly as the
model did.

    pts = load_point_cloud("airplane_0627.txt", num_points=1024, channels=3)   # (1024, 3) float32
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from host.errors import InputError


class PointCloudError(InputError):
    """A point file that cannot be read or has the wrong layout (names the file and line)."""


def read_point_file(path: str | Path, num_points: int, columns: int) -> np.ndarray:
    """The first ``num_points`` rows of a ``x,y,z,nx,ny,nz`` text file (ModelNet40's
    ``modelnet40_normal_resampled``), keeping ``columns`` columns."""
    rows = []
    try:
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if len(rows) == num_points:
                    break
                if not line.strip():
                    continue
                try:
                    values = [float(v) for v in line.split(",")]
                except ValueError as err:
                    raise PointCloudError(f"{str(path)!r} line {line_no}: cannot parse {line.strip()!r} "
                                          f"as comma-separated numbers") from err
                if len(values) != 6:
                    raise PointCloudError(f"{str(path)!r} line {line_no}: {len(values)} values, "
                                          f"expected 6 (x,y,z,nx,ny,nz)")
                rows.append(values[:columns])
    except (OSError, UnicodeDecodeError) as err:
        raise PointCloudError(f"cannot read {str(path)!r}: {err}") from err
    if len(rows) < num_points:
        raise PointCloudError(f"{str(path)!r} has {len(rows)} points, fewer than num_points={num_points}")
    return np.asarray(rows, dtype=np.float32)


def normalize_to_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre xyz on its mean and scale so the farthest point has norm 1 (PointNet++ loaders).

    Columns past the third (normals) are left alone: they are directions, not positions.
    """
    points = np.array(points, dtype=np.float32, copy=True)
    xyz = points[..., :3]
    xyz -= xyz.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(xyz, axis=-1).max(axis=-1, keepdims=True)[..., None]
    xyz /= np.maximum(radius, 1e-12)
    return points


def load_point_cloud(path: str | Path, num_points: int, channels: int = 3) -> np.ndarray:
    """One cloud, ``(num_points, channels)`` float32, normalised to the unit sphere: a ModelNet40
    ``.txt`` file (its first ``num_points`` rows) or a ``.npy`` array ``(N >= num_points, >= channels)``."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            points = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise PointCloudError(f"cannot read {str(path)!r}: {err}") from err
        if points.ndim != 2 or points.shape[0] < num_points or points.shape[1] < channels:
            raise PointCloudError(f"{str(path)!r}: shape {points.shape}, expected (N >= {num_points}, "
                                  f"C >= {channels}) points x channels")
        if not np.isfinite(points[:num_points, :channels]).all():
            raise PointCloudError(f"{str(path)!r}: NaN or infinite coordinates in the first {num_points} points")
        points = points[:num_points, :channels].astype(np.float32)
    elif path.suffix == ".txt":
        points = read_point_file(path, num_points, channels)
    else:
        raise PointCloudError(f"{str(path)!r}: a point cloud is a .txt (x,y,z,nx,ny,nz rows) or .npy file")
    return normalize_to_unit_sphere(points)
