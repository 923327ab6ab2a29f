"""CIFAR-10/100 from the official "python version" pickle directories, or from class folders.

``root`` may also be a class-folder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) or a
``.tar.gz`` of one, such as ``../shared/data/cifar10-jpeg.tar.gz``; it is decoded once and cached
(:mod:`model.data.image_folder`, ``cache_dir``).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .common import (ArrayDataset, Compose, DatasetError, DatasetSplits, as_text, check_labels,
                     load_pickle_dict, normalize_channels, pickle_entry, random_crop, random_hflip,
                     require_file, require_root)
from .image_folder import is_class_folder_tree, load_class_folders

# Per-channel statistics of each training set, as used throughout the CIFAR literature.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_LAYOUTS = {
    # name: (directory, train files, test file, meta file, label key, class-name key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names", 100),
}


def _find_dir(root: Path, dirname: str, marker: str) -> Path:
    """``root`` may be the batches directory itself or its parent."""
    if (root / dirname).is_dir():
        return root / dirname
    if (root / marker).exists():
        return root
    raise DatasetError(f"{str(root)!r} holds neither {dirname}/ nor the file {marker!r}")


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (N, 3, 32, 32) uint8 images and int64 labels."""
    batch = load_pickle_dict(require_file(path, "a CIFAR batch"))
    data = np.asarray(pickle_entry(batch, "data", path))
    labels = np.asarray(pickle_entry(batch, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{str(path)!r}: 'data' is {data.dtype} of shape {data.shape}, "
                           f"expected uint8 rows of 3072 bytes (3x32x32)")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DatasetError(f"{str(path)!r}: {len(data)} images but {label_key!r} has shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), check_labels(labels, num_classes, path)


def _read_class_names(path: Path, key: str, num_classes: int) -> list[str] | None:
    if not path.exists():  # the names are a nicety; the batches alone are enough to train
        return None
    names = [as_text(n) for n in pickle_entry(load_pickle_dict(path), key, path)]
    if len(names) != num_classes:
        raise DatasetError(f"{str(path)!r}: {key!r} lists {len(names)} names, expected {num_classes}")
    return names


def _read_class_folders(source: Path, num_classes: int, cache_dir: str | None):
    arrays, classes = load_class_folders(source, (32, 32), cache_dir)
    if len(classes) != num_classes:
        raise DatasetError(f"{str(source)!r} has {len(classes)} class folders, expected {num_classes}")
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    return x_train, y_train, x_test, y_test, classes


def build_cifar(name: str, root: str | os.PathLike | None, *, seed: int = 0,
                augment: bool = False, cache_dir: str | None = None) -> DatasetSplits:
    """x is (3, 32, 32) float32 normalised per channel; augment = pad-4 random crop + flip.

    ``cache_dir`` holds the decoded arrays of a class-folder source (default
    ``~/.cache/sigmabranch``, or ``$SIGMABRANCH_CACHE``); the pickles need no cache.
    """
    del seed  # the files fix the split
    dirname, train_files, test_file, meta_file, label_key, names_key, num_classes = _LAYOUTS[name]
    if root is not None and is_class_folder_tree(Path(root).expanduser()):
        x_train, y_train, x_test, y_test, class_names = _read_class_folders(
            Path(root).expanduser(), num_classes, cache_dir)
    else:
        directory = _find_dir(require_root(root, name), dirname, test_file)
        train = [_read_batch(directory / f, label_key, num_classes) for f in train_files]
        x_train = np.concatenate([x for x, _ in train])
        y_train = np.concatenate([y for _, y in train])
        x_test, y_test = _read_batch(directory / test_file, label_key, num_classes)
        class_names = _read_class_names(directory / meta_file, names_key, num_classes)

    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    normalise = partial(normalize_channels, mean=mean, std=std)
    # Images stay uint8 in memory (4x smaller) and are normalised per item; cropping happens
    # first, so the padding is black as in the usual torchvision pipeline.
    crop_flip = Compose(partial(random_crop, size=32, padding=4), random_hflip) if augment else None
    return DatasetSplits(
        train=ArrayDataset(torch.from_numpy(x_train), torch.from_numpy(y_train),
                           Compose(crop_flip, normalise)),
        test=ArrayDataset(torch.from_numpy(x_test), torch.from_numpy(y_test), Compose(normalise)),
        num_classes=num_classes,
        input_shape=(3, 32, 32),
        class_names=class_names,
    )
