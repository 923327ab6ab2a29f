"""scikit-learn's 8x8 handwritten digits (1,797 real images, 10 classes), embedded."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .common import ArrayDataset, DatasetSplits, random_crop

# The split has its own constant seed, not the run's ``seed``: every run (and every paper
# table) then scores on the same 360 test images, so numbers stay comparable.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def build_digits(*, seed: int = 0, augment: bool = False,
                 split_seed: int = DIGITS_SPLIT_SEED) -> DatasetSplits:
    """Stratified 1,437/360 split, standardised with the train split's scalar mean/std.

    ``seed`` is accepted for a uniform signature and ignored; pass ``split_seed`` to get a
    different split on purpose.
    """
    del seed
    bunch = load_digits()
    images = bunch.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=split_seed)

    mean, std = float(x_train.mean()), float(x_train.std())

    def standardise(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x - mean) / std).unsqueeze(1)  # add the channel axis

    # A shift must bring in blank paper, which after standardising is (0 - mean) / std, not 0.
    blank = (0.0 - mean) / std
    shift = partial(random_crop, size=8, padding=1, fill=blank) if augment else None

    return DatasetSplits(
        train=ArrayDataset(standardise(x_train), torch.from_numpy(y_train), transform=shift),
        test=ArrayDataset(standardise(x_test), torch.from_numpy(y_test)),
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=[str(d) for d in range(10)],
    )
