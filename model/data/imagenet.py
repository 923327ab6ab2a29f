"""ImageNet in the ImageFolder layout (root/{train,val}/<wnid>/*.JPEG), without torchvision.

The few transforms needed (resize, centre crop, random-resized crop, flip) are written with
Pillow and numpy, matching torchvision's defaults closely enough for training and evaluation.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .common import DatasetError, DatasetSplits, normalize_channels, require_root

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")  # as ImageFolder


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetError(f"expected the directory {str(split_dir)!r} (one sub-folder per class)")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DatasetError(f"{str(split_dir)!r} has no class folders (the raw ILSVRC val images "
                           f"must first be sorted into one <wnid>/ folder per class)")
    return classes


def _scan(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(image path, label) for every image, in sorted order; every class must have one."""
    samples = []
    for label, name in enumerate(classes):
        files = sorted(entry.path for entry in os.scandir(split_dir / name)
                       if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DatasetError(f"class folder {str(split_dir / name)!r} holds no images "
                               f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((path, label) for path in files)
    return samples


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))  # pads with black if too small


def random_resized_crop(image: Image.Image, size: int, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop: a random area/aspect box, resized to size x size."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(()).uniform_(*scale))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, ()))
            top = int(torch.randint(0, height - h + 1, ()))
            return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    # No box fitted in 10 tries (extreme aspect): fall back to the evaluation crop.
    return center_crop(resize_shorter_side(image, size), size)


class ImageFolderDataset(Dataset):
    """Decodes one JPEG per item; a bad file raises DatasetError naming it."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int, resize: int, augment: bool):
        self.samples = samples
        self.image_size = image_size
        self.resize = resize
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as raw:
                image = raw.convert("RGB")
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
            raise DatasetError(f"cannot decode image {path!r}: {err}") from err
        if self.augment:
            image = random_resized_crop(image, self.image_size)
            if torch.rand(()) < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = center_crop(resize_shorter_side(image, self.resize), self.image_size)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
        return normalize_channels(pixels, IMAGENET_MEAN, IMAGENET_STD), label


def build_imagenet(root: str | os.PathLike | None, *, seed: int = 0, augment: bool = False,
                   image_size: int = 224, resize: int = 256) -> DatasetSplits:
    """train/ and val/ must have the same class folders; classes are sorted folder names."""
    del seed  # the folders fix the split
    root = require_root(root, "imagenet")
    classes = _class_folders(root / "train")
    val_classes = _class_folders(root / "val")
    if val_classes != classes:
        differ = sorted(set(classes) ^ set(val_classes))
        raise DatasetError(f"{str(root / 'val')!r} and {str(root / 'train')!r} have different class "
                           f"folders (e.g. {', '.join(differ[:5])}); labels would not line up")
    return DatasetSplits(
        train=ImageFolderDataset(_scan(root / "train", classes), image_size, resize, augment),
        test=ImageFolderDataset(_scan(root / "val", classes), image_size, resize, augment=False),
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        class_names=classes,
    )
