"""An AXI4 read-only memory model for the testbenches (the DDR holding ``weights.bin``).

Random ``arready``/``rvalid`` stalls, INCR bursts served beat by beat from a byte image at
``base`` (data on the byte lanes of the beat's address, AXI's narrow-transfer rule), a count of
the bytes served (``rvalid & rready``), the bursts seen, and protocol errors collected (never
raised inside the clocked loop: the test reports them).
"""
from __future__ import annotations

import random

from cocotb.triggers import ReadOnly, RisingEdge


class AxiReadRam:
    """Read slave on the ``<prefix>_ar*``/``<prefix>_r*`` ports of ``dut``.

    ``full_beats_only``: every beat must be a whole, aligned bus word (the fetchers' reads);
    ``check_4k``: a burst must not cross a 4 KiB boundary (AXI's rule, for the Vivado top).
    """

    def __init__(self, dut, prefix: str, image: bytes, base: int, p_arready: float, p_rvalid: float, seed: int,
                 data_bytes: int = 32, full_beats_only: bool = False, check_4k: bool = False):
        self.dut, self.image, self.base, self.data_bytes = dut, image, base, data_bytes
        self.p_ar, self.p_r = p_arready, p_rvalid
        self.full_beats_only, self.check_4k = full_beats_only, check_4k
        self.rng = random.Random(seed)
        self.bytes = 0
        self.bursts: list[tuple[int, int]] = []      # (address, beats)
        self.errors: list[str] = []
        self.pending: list[list[int]] = []
        self.port = lambda n: getattr(dut, f"{prefix}_{n}")
        self.has_id = hasattr(dut, f"{prefix}_arid")
        for n in ("arready", "rvalid", "rlast", "rdata", "rresp") + (("rid",) if self.has_id else ()):
            self.port(n).value = 0

    def _beat(self, addr: int, size: int) -> int:
        off, nb = addr - self.base, 1 << size
        if self.full_beats_only and (nb != self.data_bytes or addr % self.data_bytes):
            self.errors.append(f"beat at 0x{addr:x} of size {nb}: only aligned {self.data_bytes}-byte beats expected")
            return 0
        if off < 0 or off + nb > len(self.image):
            self.errors.append(f"read at 0x{addr:x} outside the weight image [0x{self.base:x}, "
                               f"0x{self.base + len(self.image):x})")
            return 0
        return int.from_bytes(self.image[off:off + nb], "little") << (8 * (addr % self.data_bytes))

    async def run(self):
        port, beat, showing = self.port, None, False
        while True:
            await RisingEdge(self.dut.ap_clk)
            ar_ok = self.rng.random() < self.p_ar
            port("arready").value = int(ar_ok)
            if beat is None and self.pending:
                beat = self.pending.pop(0)
            # AXI: once rvalid is up it stays up (same beat) until rready takes it
            if beat is not None and (showing or self.rng.random() < self.p_r):
                showing = True
                port("rvalid").value = 1
                port("rdata").value = self._beat(beat[0], beat[1])
                port("rlast").value = int(beat[2] == 1)
                if self.has_id:
                    port("rid").value = beat[3]
            else:
                showing = False
                port("rvalid").value = 0
            await ReadOnly()
            if ar_ok and port("arvalid").value == 1:
                addr, ln, size = (port("araddr").value.to_unsigned(), port("arlen").value.to_unsigned(),
                                  port("arsize").value.to_unsigned())
                if port("arburst").value.to_unsigned() != 1:
                    self.errors.append(f"burst type {port('arburst').value.to_unsigned()} (only INCR expected)")
                if self.check_4k and (addr % 4096) + (ln + 1) * (1 << size) > 4096:
                    self.errors.append(f"burst at 0x{addr:x} crosses a 4 KiB boundary")
                arid = port("arid").value.to_unsigned() if self.has_id else 0
                self.pending.append([addr, size, ln + 1, arid])
                self.bursts.append((addr, ln + 1))
            if port("rvalid").value == 1 and port("rready").value == 1:
                self.bytes += 1 << beat[1]
                beat[0] += 1 << beat[1]
                beat[2] -= 1
                showing = False
                if beat[2] == 0:
                    beat = None
