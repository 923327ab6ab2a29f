"""The boards the hardware flow targets (numbers from ../shared/notes/hardware-targets.md and
FINN's ``platforms.py``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    lut: int
    dsp: int
    bram18: int
    uram: int
    clk_ns: float            # the fabric clock the build targets
    ddr_bytes_per_s: float   # PS-PL port bandwidth a weight fetch can use (peak)
    axi_port_bits: int       # the PS-PL data port FINN uses
    target_cycles: int       # default folding target (cycles per frame) that fits the part

    def as_dict(self) -> dict:
        return asdict(self)


BOARDS = {
    # Zynq-7020: 53,200 LUT, 220 DSP, 280 BRAM18; one HP port at 1,200 MB/s (Zynq-7000 TRM), 64-bit.
    "pynq-z2": Board("pynq-z2", "xc7z020clg400-1", lut=53_200, dsp=220, bram18=280, uram=0, clk_ns=10.0,
                     ddr_bytes_per_s=1.2e9, axi_port_bits=64, target_cycles=20_000),
    # XCZU7EV as FINN's ZU7EV_Platform budgets it: 230,000 LUT, 1,728 DSP, 610 BRAM18, 92 URAM;
    # 128-bit HP port; 64-bit DDR4-2133 on the PS: ~17 GB/s peak, ~4.8 GB/s through one HP port.
    "zcu104": Board("zcu104", "xczu7ev-ffvc1156-2-e", lut=230_000, dsp=1_728, bram18=610, uram=92, clk_ns=5.0,
                    ddr_bytes_per_s=4.8e9, axi_port_bits=128, target_cycles=2_000),
}


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise ValueError(f"unknown board {name!r}; supported: {', '.join(BOARDS)}")
    return BOARDS[name]
