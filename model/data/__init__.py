"""Dataset loaders: embedded defaults (digits, procedural shapes) and real on-disk formats.

``build_dataset(name, root, seed=..., augment=..., **options)`` returns train/test splits plus
what a model needs to know (number of classes, input shape). Bad or missing files raise
:class:`DatasetError` naming the file and the fault.

=========== ====================================== ==========================================
name        root                                   options
=========== ====================================== ==========================================
digits      ignored (scikit-learn, embedded)       split_seed
shapes      ignored (generated from ``seed``)      num_points, train_per_class, test_per_class
cifar10     cifar-10-batches-py/ or its parent, or a   cache_dir (class folders only)
            train/,test/ class-folder tree or .tar.gz
cifar100    cifar-100-python/ or its parent, or    cache_dir (class folders only)
            class folders as cifar10
imagenet    dir with train/<wnid>/, val/<wnid>/    image_size, resize
modelnet40  modelnet40_normal_resampled/ or        num_points, use_normals (resampled only)
            modelnet40_ply_hdf5_2048/ or parent
=========== ====================================== ==========================================
"""
from __future__ import annotations

import inspect
import os
from functools import partial

from .cifar import build_cifar
from .common import DatasetError, DatasetSplits
from .digits import build_digits
from .imagenet import build_imagenet
from .modelnet import build_modelnet40
from .shapes import build_shapes

_EMBEDDED = {"digits": build_digits, "shapes": build_shapes}  # take no root
_ON_DISK = {
    "cifar10": partial(build_cifar, "cifar10"),
    "cifar100": partial(build_cifar, "cifar100"),
    "imagenet": build_imagenet,
    "modelnet40": build_modelnet40,
}
DATASETS: tuple[str, ...] = (*_EMBEDDED, *_ON_DISK)

__all__ = ["DATASETS", "DatasetError", "DatasetSplits", "build_dataset"]


def build_dataset(name: str, root: str | os.PathLike | None = None, *, seed: int = 0,
                  augment: bool = False, **options) -> DatasetSplits:
    """Build dataset ``name``; ``augment`` affects the train split only."""
    key = name.lower()
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    builder = _EMBEDDED.get(key) or _ON_DISK[key]
    # Options usually come from a config file: reject a misspelt one by name, not with a TypeError.
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("root", "seed", "augment")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"dataset {key!r} does not take option(s) {', '.join(unknown)}; "
                           f"it takes: {', '.join(accepted) or 'none'}")
    if key in _EMBEDDED:
        return builder(seed=seed, augment=augment, **options)
    return builder(root, seed=seed, augment=augment, **options)
