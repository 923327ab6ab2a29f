"""Pieces shared by every loader: the error type, the result type, checks and transforms."""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from host.pointcloud import normalize_to_unit_sphere  # noqa: F401  (one normalisation for training and board)


class DatasetError(ValueError):
    """A dataset is missing, laid out wrongly or corrupt; the message names the file and the fault."""


@dataclass
class DatasetSplits:
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] | None = None


Transform = Callable[[torch.Tensor], torch.Tensor]


class ArrayDataset(Dataset):
    """(x[i], y[i]) from in-memory tensors; ``transform`` runs per item (normalising, augmenting)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Transform | None = None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x = x
        self.y = y.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        x = self.x[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y[index]


class Compose:
    """Run transforms in order, skipping Nones. A class, not a closure, so datasets pickle
    into DataLoader workers under the spawn/forkserver start methods."""

    def __init__(self, *transforms: Transform | None):
        self.steps = [t for t in transforms if t is not None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


# --- paths and checks -------------------------------------------------------------------------

def require_root(root: str | os.PathLike | None, dataset: str) -> Path:
    if root is None:
        raise DatasetError(f"dataset {dataset!r} needs root= (the directory holding its files)")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{dataset} root {str(path)!r} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{dataset} root {str(path)!r} is not a directory")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"expected {what} at {str(path)!r}, but it is missing")
    return path


def check_labels(labels: np.ndarray, num_classes: int, source: str | os.PathLike) -> np.ndarray:
    """Labels as int64, or DatasetError naming ``source`` and the first bad label and its index."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{str(source)!r}: label {int(labels[i])} at index {i} is outside [0, {num_classes})"
            f" ({bad.size} bad labels in all)"
        )
    return labels


def read_lines(path: Path, what: str) -> list[str]:
    """Non-blank stripped lines of a small text file (class lists, index files)."""
    require_file(path, what)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {what} {str(path)!r}: {err}") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


# --- pickles ----------------------------------------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    # Dataset pickles come from the internet and pickle can run arbitrary code, so only the
    # globals a pickled numpy array needs are let through. numpy>=2 moved numpy.core to
    # numpy._core; old files (CIFAR was written by Python 2) still name the old module.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays)")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def load_pickle_dict(path: Path) -> dict:
    """A dict pickled by Python 2 or 3 (keys come back as bytes), or DatasetError naming the file."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as err:  # pickle fails with many types (EOFError, UnpicklingError, ...)
        raise DatasetError(f"cannot unpickle {str(path)!r} (truncated or corrupt?): {err}") from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{str(path)!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def pickle_entry(obj: dict, key: str, path: Path):
    """``obj[key]`` whether the pickle stored the key as bytes (Python 2) or str."""
    for candidate in (key.encode(), key):
        if candidate in obj:
            return obj[candidate]
    found = ", ".join(k.decode() if isinstance(k, bytes) else str(k) for k in obj)
    raise DatasetError(f"{str(path)!r} has no key {key!r} (keys: {found})")


def as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- images -----------------------------------------------------------------------------------

def normalize_channels(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(C, H, W) uint8 or [0, 1] float -> float32 with per-channel mean/std removed."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - mean_t) / std_t


def random_crop(image: torch.Tensor, size: int, padding: int, fill: float = 0.0) -> torch.Tensor:
    """Pad (C, H, W) by ``padding`` on every side with ``fill``, then crop ``size`` at random."""
    padded = F.pad(image, (padding,) * 4, value=fill)
    top = int(torch.randint(0, padded.shape[-2] - size + 1, ()))
    left = int(torch.randint(0, padded.shape[-1] - size + 1, ()))
    return padded[..., top:top + size, left:left + size]


def random_hflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-1) if torch.rand(()) < 0.5 else image


# --- point clouds -----------------------------------------------------------------------------

def augment_point_cloud(points: torch.Tensor) -> torch.Tensor:
    """Random rotation about the up (y) axis, scale in [0.8, 1.25], Gaussian jitter.

    y is "up" in ModelNet40, hence the axis; normals (columns 3:6) are rotated too but neither
    scaled nor jittered. Uses torch's global RNG so DataLoader worker seeding applies.
    """
    angle = float(torch.rand(())) * 2 * math.pi
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=points.dtype)
    scale = 0.8 + float(torch.rand(())) * (1.25 - 0.8)
    jitter = (0.01 * torch.randn(points.shape[0], 3)).clamp_(-0.05, 0.05)
    xyz = points[:, :3] @ rotation.T * scale + jitter
    if points.shape[1] == 3:
        return xyz
    normals = points[:, 3:6] @ rotation.T
    return torch.cat([xyz, normals, points[:, 6:]], dim=1)
