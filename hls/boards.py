"""The boards the hardware flow targets: every per-board fact in one record (numbers from
../shared/notes/hardware-targets.md and FINN's ``platforms.py``). ``sigmabranch build`` writes
the record whole into ``driver.json`` (``board_facts``) so the host needs no copy of it."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    platform: str            # FINN+'s platform name (finn.util.basic.pynq_part_map key, the shell's BOARD)
    zynq_us: bool            # Zynq UltraScale+ (zynq_ultra_ps_e) rather than Zynq-7000 (processing_system7)
    lut: int
    dsp: int
    bram18: int
    uram: int
    clk_ns: float            # the fabric clock the build targets
    ddr_bytes_per_s: float   # PS-PL port bandwidth a weight fetch can use (peak)
    ddr_first_word_ns: float  # first-word latency of a DDR read burst through that port (assumption)
    axi_port_bits: int       # the PS-PL data port FINN uses
    addr_bits: int           # the PS's physical address width: the AXI DMAs' c_addr_width
    board_files: str | None  # board part whose files Vivado does not ship (None: Vivado has them)
    target_cycles: int       # default folding target (cycles per frame) that fits the part

    def as_dict(self) -> dict:
        return asdict(self)

    def weight_port(self) -> dict[str, float]:
        """The DDR read port the fetchers see per fabric cycle (``host.backends.ref.weight_port``):
        what the simulated memory models (sim/tb/axi_ram.py) and the ref timing assumes."""
        from host.backends.ref import weight_port
        return weight_port(self.as_dict(), self.clk_ns)

    def budget(self) -> dict[str, int]:
        """The on-chip budget in FINN+'s resource names."""
        return {"BRAM_18K": self.bram18, "URAM": self.uram, "LUT": self.lut, "DSP": self.dsp}


# Routers and leaf heads fold to target_cycles // ROUTER_FOLD (hls/build.py): their cycles are serial
# with the levels' (a level waits for its decision), so they get more parallelism.
ROUTER_FOLD = 8

BOARDS = {
    # Zynq-7020: 53,200 LUT, 220 DSP, 280 BRAM18; one HP port at 1,200 MB/s (Zynq-7000 TRM), 64-bit;
    # 32-bit PS addresses. FINN's deps/board_files has the PYNQ-Z2 board files, Vivado does not.
    "pynq-z2": Board("pynq-z2", "xc7z020clg400-1", platform="Pynq-Z2", zynq_us=False, lut=53_200, dsp=220,
                     bram18=280, uram=0, clk_ns=10.0, ddr_bytes_per_s=1.2e9, ddr_first_word_ns=150.0,
                     axi_port_bits=64, addr_bits=32, board_files="tul.com.tw:pynq-z2:part0:1.0",
                     target_cycles=20_000),
    # XCZU7EV as FINN's ZU7EV_Platform budgets it: 230,000 LUT, 1,728 DSP, 610 BRAM18, 92 URAM;
    # 128-bit HP port; 64-bit DDR4-2133 on the PS: ~17 GB/s peak, ~4.8 GB/s through one HP port;
    # 64-bit PS addresses (DDR above 4 GiB).
    "zcu104": Board("zcu104", "xczu7ev-ffvc1156-2-e", platform="ZCU104", zynq_us=True, lut=230_000, dsp=1_728,
                    bram18=610, uram=92, clk_ns=5.0, ddr_bytes_per_s=4.8e9, ddr_first_word_ns=150.0,
                    axi_port_bits=128, addr_bits=64, board_files=None, target_cycles=2_000),
}


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise ValueError(f"unknown board {name!r}; supported: {', '.join(BOARDS)}")
    return BOARDS[name]
