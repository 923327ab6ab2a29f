"""The AXI4-Lite master of the testbenches and of the ``pynq`` stand-in (``sim/pynq_sim.py``)."""
from __future__ import annotations

import random

from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb.axis import Pin


class AxiLiteMaster:
    """AXI4-Lite master on ``<prefix>_aw*/w*/b*/ar*/r*``: each channel's VALID after a random 0-2
    cycle delay, BREADY/RREADY high with probability ``p`` each cycle; protocol errors of the
    slave (BVALID before address and data were taken, RVALID before the address) raise. Its
    outputs are written only when they change (:class:`sim.tb.axis.Pin`)."""

    def __init__(self, dut, prefix: str = "s_axi", clk=None, seed: int = 0, p: float = 0.6):
        self.clk, self.rng, self.p = clk if clk is not None else dut.ap_clk, random.Random(seed), p
        sig = lambda name: getattr(dut, f"{prefix}_{name}")
        self.pin = {name: Pin(sig(name), 0) for name in ("awvalid", "wvalid", "bready", "arvalid", "rready",
                                                         "awaddr", "wdata", "araddr")}
        self.pin["wstrb"] = Pin(sig("wstrb"), 0xF)
        for name in ("awprot", "arprot"):
            if hasattr(dut, f"{prefix}_{name}"):
                Pin(sig(name), 0)
        self.awready, self.wready, self.bvalid = sig("awready"), sig("wready"), sig("bvalid")
        self.arready, self.rvalid, self.rdata = sig("arready"), sig("rvalid"), sig("rdata")

    async def write(self, addr: int, data: int, strb: int = 0xF, timeout: int = 2000) -> None:
        pin, rng = self.pin, self.rng
        pin["awaddr"].set(addr)
        pin["wdata"].set(data & 0xFFFFFFFF)
        pin["wstrb"].set(strb)
        aw_wait, w_wait = rng.randint(0, 2), rng.randint(0, 2)
        aw_done = w_done = False
        edge, settled = RisingEdge(self.clk), ReadOnly()
        for _ in range(timeout):
            await edge
            awvalid, wvalid = not aw_done and aw_wait <= 0, not w_done and w_wait <= 0
            br = rng.random() < self.p
            pin["awvalid"].set(int(awvalid))
            pin["wvalid"].set(int(wvalid))
            pin["bready"].set(int(br))
            aw_wait, w_wait = aw_wait - 1, w_wait - 1
            await settled
            aw_done = aw_done or (awvalid and self.awready.value == 1)
            w_done = w_done or (wvalid and self.wready.value == 1)
            if br and self.bvalid.value == 1:
                if not (aw_done and w_done):
                    raise AssertionError(f"write 0x{addr:x}: BVALID before both address and data were taken")
                await edge
                for name in ("awvalid", "wvalid", "bready"):
                    pin[name].set(0)
                return
        raise AssertionError(f"AXI-Lite write to 0x{addr:x} not answered within {timeout} cycles")

    async def read(self, addr: int, timeout: int = 2000) -> int:
        pin, rng = self.pin, self.rng
        pin["araddr"].set(addr)
        ar_wait, ar_done = rng.randint(0, 2), False
        edge, settled = RisingEdge(self.clk), ReadOnly()
        for _ in range(timeout):
            await edge
            arvalid = not ar_done and ar_wait <= 0
            rr = rng.random() < self.p
            pin["arvalid"].set(int(arvalid))
            pin["rready"].set(int(rr))
            ar_wait -= 1
            await settled
            ar_done = ar_done or (arvalid and self.arready.value == 1)
            if rr and self.rvalid.value == 1:
                if not ar_done:
                    raise AssertionError(f"read 0x{addr:x}: RVALID before the address was taken")
                value = self.rdata.value.to_unsigned()
                await edge
                pin["arvalid"].set(0)
                pin["rready"].set(0)
                return value
        raise AssertionError(f"AXI-Lite read of 0x{addr:x} not answered within {timeout} cycles")
