"""An AXI4 read-only memory model for the testbenches (the DDR holding ``weights.bin``).

Random ``arready``/``rvalid`` stalls, INCR bursts served beat by beat from a byte image at
``base`` (data on the byte lanes of the beat's address, AXI's narrow-transfer rule), a count of
the bytes served (``rvalid & rready``), the bursts seen, and protocol errors collected (never
raised inside the clocked loop: the test reports them).

A board's port (``port_bytes``, ``first_word_cycles``): the data bus is as wide as the design's
(32-byte beats) but the PS-PL port behind it is narrower, so a beat is shown only once the port has
moved its bytes (``port_bytes`` a cycle, e.g. 8 for PYNQ-Z2's 64-bit HP port at the fabric clock),
and a burst's first beat no earlier than ``first_word_cycles`` after its AR was taken (the DDR's
read latency; the bursts behind it overlap it). While a burst is outstanding and ``rready`` is low
the port keeps reading into its FIFO (``port_fifo_bytes``, Zynq-7000's HP read FIFO: 1 KiB), so
that many bytes can then follow a beat a cycle. Defaults: a beat a cycle, no latency.

With ``sleep_idle`` (default) the model does not wake every clock cycle while nothing is asked of
it: with ``arvalid`` low and no burst outstanding it holds ``arready``/``rvalid`` low and waits for
``arvalid`` to rise; with ``arvalid`` low and a beat shown that ``rready`` does not take, it holds
``arready`` low (the beat stays up) and waits for ``rready`` or ``arvalid`` to rise (one Python
wake-up instead of two a cycle); the handshakes are the same.
"""
from __future__ import annotations

import random

from cocotb.simtime import get_sim_time
from cocotb.triggers import First, ReadOnly, RisingEdge

from sim.tb.axis import Pin


class AxiReadRam:
    """Read slave on the ``<prefix>_ar*``/``<prefix>_r*`` ports of ``dut``.

    ``full_beats_only``: every beat must be a whole, aligned bus word (the fetchers' reads);
    ``check_4k``: a burst must not cross a 4 KiB boundary (AXI's rule, for the Vivado top).
    """

    def __init__(self, dut, prefix: str, image: bytes, base: int, p_arready: float, p_rvalid: float, seed: int,
                 data_bytes: int = 32, full_beats_only: bool = False, check_4k: bool = False,
                 sleep_idle: bool = True, port_bytes: float | None = None, first_word_cycles: int = 0,
                 port_fifo_bytes: int | None = None, period_ns: float = 10.0):
        self.dut, self.image, self.base, self.data_bytes = dut, image, base, data_bytes
        self.port_bytes = float(port_bytes or data_bytes)
        if not 0 < self.port_bytes <= data_bytes:
            raise ValueError(f"port_bytes {port_bytes} must be in (0, {data_bytes}]")
        self.first_word_cycles, self.period_ns = int(first_word_cycles), float(period_ns)
        self.fifo_bytes = float(max(port_fifo_bytes or data_bytes, data_bytes))
        self.credit = 0.0    # bytes the port moved and no beat has shown yet (at most fifo_bytes)
        self.p_ar, self.p_r = p_arready, p_rvalid
        self.full_beats_only, self.check_4k, self.sleep_idle = full_beats_only, check_4k, sleep_idle
        self.rng = random.Random(seed)
        self.bytes = 0
        self.bursts: list[tuple[int, int]] = []      # (address, beats)
        self.beat_log: list[tuple[int, int]] = []    # (cycle, address) of each beat taken, with a port model
        self.errors: list[str] = []
        self.pending: list[list[int]] = []
        self.port = lambda n: getattr(dut, f"{prefix}_{n}")
        self.has_id = hasattr(dut, f"{prefix}_arid")
        # what this model drives, each written only when it changes
        self.out = {n: Pin(self.port(n), 0)
                    for n in ("arready", "rvalid", "rlast", "rdata", "rresp") + (("rid",) if self.has_id else ())}

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
        port, out, beat, showing = self.port, self.out, None, False
        clk, arvalid, rready = self.dut.ap_clk, port("arvalid"), port("rready")
        araddr, arlen, arsize, arburst = port("araddr"), port("arlen"), port("arsize"), port("arburst")
        arid = port("arid") if self.has_id else None
        arready, rvalid, rlast, rdata = out["arready"], out["rvalid"], out["rlast"], out["rdata"]
        edge, settled, ar_rise, r_rise = RisingEdge(clk), ReadOnly(), RisingEdge(arvalid), RisingEdge(rready)
        rng = self.rng
        paced = self.port_bytes < self.data_bytes or self.first_word_cycles > 0
        cycle = last = 0
        while True:
            await edge
            if self.sleep_idle and arvalid.value != 1:
                if beat is None and not self.pending:
                    # nothing to serve, nothing asked: sleep until ARVALID rises (then go on in
                    # that time step as in any cycle)
                    arready.set(0)
                    rvalid.set(0)
                    showing = False
                    await ar_rise
                elif showing and rready.value != 1:
                    # a beat shown (RVALID stays up), RREADY low: until RREADY or ARVALID rises
                    arready.set(0)
                    await First(r_rise, ar_rise)
            if paced:   # cycles elapsed (the model may have slept through some)
                cycle = int(get_sim_time("ns") / self.period_ns)
                if beat is not None or (self.pending and self.pending[0][4] <= cycle):
                    # the port moves an outstanding burst's data into its read FIFO
                    self.credit = min(self.fifo_bytes, self.credit + (cycle - last) * self.port_bytes)
                last = cycle
            ar_ok = rng.random() < self.p_ar
            arready.set(int(ar_ok))
            if beat is None and self.pending and self.pending[0][4] <= cycle:
                beat = self.pending.pop(0)
            # AXI: once rvalid is up it stays up (same beat) until rready takes it; a new beat
            # waits for the port to have moved its bytes
            if beat is not None and (showing or (rng.random() < self.p_r
                                                 and (not paced or self.credit >= (1 << beat[1]) - 1e-9))):
                if not showing:
                    rdata.set(self._beat(beat[0], beat[1]))
                    rlast.set(int(beat[2] == 1))
                    if arid is not None:
                        out["rid"].set(beat[3])
                showing = True
                rvalid.set(1)
            else:
                showing = False
                rvalid.set(0)
            await settled
            if ar_ok and arvalid.value == 1:
                addr, ln, size = (araddr.value.to_unsigned(), arlen.value.to_unsigned(), arsize.value.to_unsigned())
                if arburst.value.to_unsigned() != 1:
                    self.errors.append(f"burst type {arburst.value.to_unsigned()} (only INCR expected)")
                if self.check_4k and (addr % 4096) + (ln + 1) * (1 << size) > 4096:
                    self.errors.append(f"burst at 0x{addr:x} crosses a 4 KiB boundary")
                self.pending.append([addr, size, ln + 1, arid.value.to_unsigned() if arid is not None else 0,
                                     cycle + self.first_word_cycles])
                self.bursts.append((addr, ln + 1))
            if showing and rready.value == 1:
                self.bytes += 1 << beat[1]
                if paced:
                    self.credit -= 1 << beat[1]
                    self.beat_log.append((cycle, beat[0]))
                beat[0] += 1 << beat[1]
                beat[2] -= 1
                showing = False
                if beat[2] == 0:
                    beat = None
