"""Named quantisation presets, composed from Brevitas quantizers the FINN+ RTL layers map.

Weights: signed, narrow range (e.g. 4-bit in [-7, 7]), one float scale per tensor
(``MVAU_rtl`` needs signed weights, and narrow range on DSP48E1 / PYNQ-Z2). Activations after
ReLU: unsigned, per-tensor scale, which FINN streamlines into standalone thresholds. The input
is quantised to signed 8 bits.
"""
from __future__ import annotations

from dataclasses import dataclass

from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Uint8ActPerTensorFloat


class NarrowIntWeightPerTensorFloat(Int8WeightPerTensorFloat):
    """Signed, narrow-range, per-tensor float scale; the bit width comes from the preset."""

    narrow_range = True


class UintActPerTensorFloat(Uint8ActPerTensorFloat):
    """Unsigned post-ReLU activations, per-tensor float scale."""


class IntInputPerTensorFloat(Int8ActPerTensorFloat):
    """Signed input quantizer (the host sends integers)."""


class ResidualActPerTensorFloat(Int8ActPerTensorFloat):
    """Signed quantizer shared by both inputs of a residual addition."""


@dataclass(frozen=True)
class QuantPreset:
    name: str
    weight_bits: int
    act_bits: int
    input_bits: int = 8
    residual_bits: int = 8

    def __post_init__(self):
        # FINN+ maps 2..8-bit signed weights and 1..8-bit unsigned activations to its RTL layers.
        if not 2 <= self.weight_bits <= 8:
            raise ValueError(f"weight bit width {self.weight_bits} cannot be mapped by FINN+ (use 2-8)")
        if not 1 <= self.act_bits <= 8:
            raise ValueError(f"activation bit width {self.act_bits} cannot be mapped by FINN+ (use 1-8)")


PRESETS = {p.name: p for p in (QuantPreset("w8a8", 8, 8), QuantPreset("w4a4", 4, 4), QuantPreset("w2a2", 2, 2))}


def get_preset(name: str) -> QuantPreset:
    """``w8a8``, ``w4a4`` (the hardware default), ``w2a2``, or ``wXaY`` for other widths."""
    if name in PRESETS:
        return PRESETS[name]
    import re

    match = re.fullmatch(r"w(\d+)a(\d+)", name)
    if not match:
        raise ValueError(f"unknown quantisation preset {name!r}; use one of {sorted(PRESETS)} or wXaY")
    return QuantPreset(name, int(match.group(1)), int(match.group(2)))
