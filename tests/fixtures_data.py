"""Tiny datasets written in exactly the real on-disk formats, for tests.

Each ``write_*`` function creates its layout under a directory and returns the dataset
directory (the one named as in the official downloads).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODELNET_CLASSES = ["airplane", "night_stand", "chair"]  # night_stand: an id with an underscore


def write_cifar_pickle(path: Path, obj: dict) -> None:
    # The official files were pickled by Python 2 with protocol 2 and name numpy.core, which
    # numpy 2 renamed to numpy._core; write them the same way so the loader meets the real thing.
    data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def _cifar_batch(rng: np.random.Generator, n: int, label_key: bytes, num_classes: int, name: bytes) -> dict:
    return {
        b"batch_label": name,
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(parent: Path, per_batch: int = 4, test: int = 4, seed: int = 0) -> Path:
    directory = parent / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        write_cifar_pickle(directory / f"data_batch_{i}",
                           _cifar_batch(rng, per_batch, b"labels", 10, f"training batch {i} of 5".encode()))
    write_cifar_pickle(directory / "test_batch",
                       _cifar_batch(rng, test, b"labels", 10, b"testing batch 1 of 1"))
    write_cifar_pickle(directory / "batches.meta", {
        b"label_names": [n.encode() for n in CIFAR10_NAMES],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    })
    return directory


def write_cifar100(parent: Path, train: int = 8, test: int = 4, seed: int = 0) -> Path:
    directory = parent / "cifar-100-python"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        batch = _cifar_batch(rng, n, b"fine_labels", 100, split.encode())
        batch[b"coarse_labels"] = [v // 5 for v in batch[b"fine_labels"]]
        write_cifar_pickle(directory / split, batch)
    write_cifar_pickle(directory / "meta", {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    })
    return directory


def write_imagenet(root: Path, classes=("n01440764", "n01443537", "n01484850"), per_class: int = 2,
                   size: tuple[int, int] = (40, 30)) -> Path:
    """root/{train,val}/<wnid>/*.JPEG of random noise; returns root."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{split}_{i}.JPEG", format="JPEG")
    return root


def write_modelnet_resampled(parent: Path, classes=MODELNET_CLASSES, train_per_class: int = 2,
                             test_per_class: int = 1, points: int = 64, seed: int = 0) -> Path:
    directory = parent / "modelnet40_normal_resampled"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (directory / "modelnet40_shape_names.txt").write_text("".join(f"{c}\n" for c in classes))
    ids = {"train": [], "test": []}
    number = 1
    for class_name in classes:
        (directory / class_name).mkdir()
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for _ in range(count):
                sample_id = f"{class_name}_{number:04d}"
                number += 1
                xyz = rng.normal(size=(points, 3)) * 3 + 5  # off-centre and large: normalising must fix it
                normals = rng.normal(size=(points, 3))
                normals /= np.linalg.norm(normals, axis=1, keepdims=True)
                rows = np.concatenate([xyz, normals], axis=1)
                (directory / class_name / f"{sample_id}.txt").write_text(
                    "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in rows))
                ids[split].append(sample_id)
    for split in ("train", "test"):
        (directory / f"modelnet40_{split}.txt").write_text("".join(f"{i}\n" for i in ids[split]))
    return directory


def write_modelnet_hdf5(parent: Path, classes=MODELNET_CLASSES, train_files: int = 2,
                        per_file: int = 3, test_files: int = 1, seed: int = 0) -> Path:
    directory = parent / "modelnet40_ply_hdf5_2048"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (directory / "shape_names.txt").write_text("".join(f"{c}\n" for c in classes))
    for split, count in (("train", train_files), ("test", test_files)):
        for i in range(count):
            with h5py.File(directory / f"ply_data_{split}{i}.h5", "w") as f:
                f.create_dataset("data", data=rng.normal(size=(per_file, 2048, 3)).astype(np.float32) * 2 + 1)
                f.create_dataset("label", data=rng.integers(0, len(classes), (per_file, 1)).astype(np.uint8))
                f.create_dataset("normal", data=np.zeros((per_file, 2048, 3), np.float32))
    return directory


def write_class_folders(root: Path, classes=CIFAR10_NAMES, train_per_class: int = 2, test_per_class: int = 1,
                        size: tuple[int, int] = (32, 32), fmt: str = "PNG", seed: int = 0) -> Path:
    """root/{train,test}/<class>/NNNN.<fmt> of random pixels (the CIFAR-10 JPEG archive's layout);
    PNG by default so tests can compare pixels exactly. Returns root."""
    rng = np.random.default_rng(seed)
    suffix = {"PNG": "png", "JPEG": "jpg"}[fmt]
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.{suffix}", format=fmt)
    return root


def tar_folder(root: Path, archive: Path) -> Path:
    """``archive`` (.tar.gz) holding root's train/ and test/ at its top, as the shared archive."""
    import tarfile
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(root / split, arcname=split)
    return archive
