"""ModelNet40 in either standard layout, detected from what ``root`` holds.

(a) modelnet40_normal_resampled/ (PointNet++): text index files plus one comma-separated
    ``x,y,z,nx,ny,nz`` file per sample, read lazily (there are 12,311 of them).
(b) modelnet40_ply_hdf5_2048/ (PointNet): a few HDF5 files, read eagerly.
Each cloud keeps its first ``num_points`` points, as the reference loaders do, and is
normalised to the unit sphere.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from host.pointcloud import PointCloudError
from host.pointcloud import read_point_file as host_read_point_file

from .common import (ArrayDataset, DatasetError, DatasetSplits, augment_point_cloud, check_labels,
                     normalize_to_unit_sphere, read_lines, require_root)

RESAMPLED_DIR, HDF5_DIR = "modelnet40_normal_resampled", "modelnet40_ply_hdf5_2048"


# --- (a) modelnet40_normal_resampled ----------------------------------------------------------

def _read_index(index_file: Path, directory: Path, class_to_label: dict[str, int]) -> list[tuple[Path, int]]:
    """Validate an index file eagerly: every id names a known class and an existing txt file."""
    samples = []
    for line_no, sample_id in enumerate(read_lines(index_file, "a ModelNet40 index file"), 1):
        class_name = sample_id.rsplit("_", 1)[0]  # ids look like night_stand_0001
        if class_name not in class_to_label:
            raise DatasetError(f"{str(index_file)!r} line {line_no}: {sample_id!r} is not of a class "
                               f"listed in modelnet40_shape_names.txt")
        path = directory / class_name / f"{sample_id}.txt"
        if not path.is_file():
            raise DatasetError(f"{str(index_file)!r} line {line_no} names {sample_id!r}, "
                               f"but {str(path)!r} is missing")
        samples.append((path, class_to_label[class_name]))
    if not samples:
        raise DatasetError(f"{str(index_file)!r} lists no samples")
    return samples


def read_point_file(path: Path, num_points: int, columns: int) -> np.ndarray:
    """The first ``num_points`` rows of a ``x,y,z,nx,ny,nz`` file, keeping ``columns`` columns
    (``host.pointcloud``'s parser, the one the board uses, with its errors as DatasetError)."""
    try:
        return host_read_point_file(path, num_points, columns)
    except PointCloudError as err:
        raise DatasetError(str(err)) from err


class PointFileDataset(Dataset):
    """One txt file per item, parsed on access."""

    def __init__(self, samples: list[tuple[Path, int]], num_points: int, columns: int, augment: bool):
        self.samples = samples
        self.num_points = num_points
        self.columns = columns
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        points = read_point_file(path, self.num_points, self.columns)
        points = torch.from_numpy(normalize_to_unit_sphere(points))
        if self.augment:
            points = augment_point_cloud(points)
        return points, torch.tensor(label, dtype=torch.int64)


def _build_resampled(directory: Path, num_points: int, use_normals: bool, augment: bool) -> DatasetSplits:
    class_names = read_lines(directory / "modelnet40_shape_names.txt", "the class list")
    class_to_label = {name: label for label, name in enumerate(class_names)}
    columns = 6 if use_normals else 3
    train = _read_index(directory / "modelnet40_train.txt", directory, class_to_label)
    test = _read_index(directory / "modelnet40_test.txt", directory, class_to_label)
    return DatasetSplits(
        train=PointFileDataset(train, num_points, columns, augment),
        test=PointFileDataset(test, num_points, columns, augment=False),
        num_classes=len(class_names),
        input_shape=(num_points, columns),
        class_names=class_names,
    )


# --- (b) modelnet40_ply_hdf5_2048 -------------------------------------------------------------

def _read_h5(path: Path, num_points: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in ("data", "label") if key not in f]
            if missing:
                raise DatasetError(f"{str(path)!r} has no dataset {missing[0]!r} "
                                   f"(has: {', '.join(f.keys())})")
            shape = f["data"].shape
            if len(shape) != 3 or shape[2] != 3 or shape[1] < num_points:
                raise DatasetError(f"{str(path)!r}: 'data' has shape {shape}, "
                                   f"expected (B, >= num_points={num_points}, 3)")
            data = f["data"][:, :num_points].astype(np.float32)
            labels = f["label"][:]
    except DatasetError:
        raise
    except Exception as err:  # h5py reports truncation/corruption as OSError, KeyError, ...
        raise DatasetError(f"cannot read HDF5 file {str(path)!r} (truncated or corrupt?): {err}") from err
    if labels.size != len(data):
        raise DatasetError(f"{str(path)!r}: {len(data)} clouds but 'label' has shape {labels.shape}")
    return normalize_to_unit_sphere(data), check_labels(labels, num_classes, path)


def _load_h5_split(directory: Path, split: str, num_points: int, num_classes: int):
    files = sorted(directory.glob(f"ply_data_{split}*.h5"))
    if not files:
        raise DatasetError(f"expected {str(directory / f'ply_data_{split}*.h5')!r}, found no such file")
    parts = [_read_h5(path, num_points, num_classes) for path in files]
    return (torch.from_numpy(np.concatenate([x for x, _ in parts])),
            torch.from_numpy(np.concatenate([y for _, y in parts])))


def _build_hdf5(directory: Path, num_points: int, use_normals: bool, augment: bool) -> DatasetSplits:
    if use_normals:
        raise DatasetError(f"{str(directory)!r} (ply_hdf5_2048) has no normals; "
                           f"use modelnet40_normal_resampled for use_normals=True")
    class_names = read_lines(directory / "shape_names.txt", "the class list")
    x_train, y_train = _load_h5_split(directory, "train", num_points, len(class_names))
    x_test, y_test = _load_h5_split(directory, "test", num_points, len(class_names))
    return DatasetSplits(
        train=ArrayDataset(x_train, y_train, transform=augment_point_cloud if augment else None),
        test=ArrayDataset(x_test, y_test),
        num_classes=len(class_names),
        input_shape=(num_points, 3),
        class_names=class_names,
    )


def build_modelnet40(root: str | os.PathLike | None, *, seed: int = 0, augment: bool = False,
                     num_points: int = 1024, use_normals: bool = False) -> DatasetSplits:
    """``root`` is either layout's directory or its parent; x is (num_points, 3 or 6) float32."""
    del seed  # the index files fix the split
    if not isinstance(num_points, int) or num_points < 1:
        raise DatasetError(f"modelnet40: num_points must be a positive integer, got {num_points!r}")
    root = require_root(root, "modelnet40")
    for directory in (root / RESAMPLED_DIR, root):
        if (directory / "modelnet40_shape_names.txt").is_file():
            return _build_resampled(directory, num_points, use_normals, augment)
    for directory in (root / HDF5_DIR, root):
        if directory.is_dir() and any(directory.glob("ply_data_*.h5")):
            return _build_hdf5(directory, num_points, use_normals, augment)
    raise DatasetError(f"{str(root)!r} holds neither {RESAMPLED_DIR}/ (with modelnet40_shape_names.txt) "
                       f"nor {HDF5_DIR}/ (with ply_data_*.h5)")
