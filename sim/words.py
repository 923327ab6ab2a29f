"""Stream words <-> elements, FINN's packing: element i of a word at bits [i*width +: width],
two's complement for signed values. Shared by the testbenches and the Python side of the sims."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pack_words(values, width: int, pe: int) -> list[int]:
    """Flat element sequence -> words of ``pe`` elements (two's complement for negatives)."""
    flat = [int(v) for v in np.asarray(values).ravel().tolist()]
    if len(flat) % pe:
        raise ValueError("element count not divisible by PE")
    mask = (1 << width) - 1
    words = []
    for k in range(0, len(flat), pe):
        w = 0
        for i, v in enumerate(flat[k:k + pe]):
            w |= (v & mask) << (i * width)
        words.append(w)
    return words


def unpack_words(words: Sequence[int], width: int, pe: int, signed: bool) -> np.ndarray:
    """Words -> flat elements (int64 up to 63 bits, Python ints beyond)."""
    mask = (1 << width) - 1
    out = []
    for w in words:
        for i in range(pe):
            v = (int(w) >> (i * width)) & mask
            if signed and v >> (width - 1):
                v -= 1 << width
            out.append(v)
    return np.array(out, dtype=np.int64 if width <= 63 else object)
