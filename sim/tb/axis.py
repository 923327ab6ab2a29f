"""Small AXI-stream drivers for cocotb 2 testbenches, with random valid/ready back-pressure.

Words are Python ints of any width (FINN words can exceed 64 bits). A handshake is sampled in
the ReadOnly phase before a rising edge and takes effect at that edge, the same way the RTL sees it.
Also FINN-style packing helpers: element i of a word at bits [i*W +: W].
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from sim.words import pack_words, unpack_words  # noqa: F401  (re-exported for the testbenches)
import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, Timer


def start_clock(dut):
    """Start a 100 MHz ``ap_clk`` (once per cocotb test)."""
    return Clock(dut.ap_clk, 10, unit="ns").start()


async def reset(dut, cycles: int = 4):
    """Hold ``ap_rst_n`` low for ``cycles`` clock cycles."""
    dut.ap_rst_n.value = 0
    await ClockCycles(dut.ap_clk, cycles)
    dut.ap_rst_n.value = 1


def count_cycles(dut) -> list[int]:
    """Start counting ``ap_clk`` rising edges; the returned one-element list holds the count."""
    cycle = [0]

    async def count():
        while True:
            await RisingEdge(dut.ap_clk)
            cycle[0] += 1
    cocotb.start_soon(count())
    return cycle


class Pin:
    """A signal the testbench drives, written only when its value changes.

    Every write from cocotb makes Verilator evaluate the whole model once more in that time step
    (the write lands in the ReadWrite phase), so a driver that rewrites an unchanged value each
    cycle doubles the model's work; this keeps the last value written and skips repeats. All
    writes to the signal must go through it (a write behind its back makes the cache stale).
    """

    __slots__ = ("signal", "last")

    def __init__(self, signal, value: int | None = None):
        self.signal, self.last = signal, None
        if value is not None:
            self.set(value)

    def set(self, value: int) -> None:
        if value != self.last:
            self.signal.value = value
            self.last = value

    def __len__(self) -> int:
        return len(self.signal)


async def clock_cycles(clk, n: int, period_steps: int) -> None:
    """``await ClockCycles(clk, n)`` (returns just after the ``n``-th rising edge from now) with at
    most three Python wake-ups instead of ``n``: one edge, a timer over the whole cycles to the
    falling edge before the last one, that edge. ``period_steps``: the clock's period in simulator
    steps (a free-running clock with a 50 % duty cycle)."""
    if n <= 3:
        for _ in range(max(0, n)):
            await RisingEdge(clk)
        return
    await RisingEdge(clk)
    await Timer((n - 1) * period_steps - period_steps // 2, unit="step")
    await RisingEdge(clk)


def _handles(dut, prefix: str):
    """(tdata, tvalid, tready) of ``prefix``, spelled ``_tdata`` (ours) or ``_TDATA`` (FINN's MVU wrapper)."""
    for sfx in ("tdata", "TDATA"):
        if hasattr(dut, f"{prefix}_{sfx}"):
            up = sfx.isupper()
            name = (lambda s: f"{prefix}_{s.upper() if up else s}")
            return getattr(dut, name("tdata")), getattr(dut, name("tvalid")), getattr(dut, name("tready"))
    raise AttributeError(f"no stream {prefix}_tdata / {prefix}_TDATA on {dut._name}")


class StreamSource:
    """Drives ``<prefix>_tdata/tvalid``, reads ``<prefix>_tready``; tvalid high with probability ``p_valid``."""

    def __init__(self, dut, prefix: str, p_valid: float = 1.0, seed: int = 0):
        self.clk = dut.ap_clk
        self.data, self.valid, self.ready = _handles(dut, prefix)
        self.p = p_valid
        self.rng = random.Random(seed)
        self.sent = 0
        self.valid.value = 0

    async def send(self, words: Sequence[int]):
        i, fire = 0, False
        words = list(words)
        while True:
            await RisingEdge(self.clk)
            if fire:
                i += 1
                self.sent += 1
            if i == len(words):
                self.valid.value = 0
                return
            v = self.rng.random() < self.p
            self.valid.value = int(v)
            # idle cycles drive junk, so a block that latches data without valid is caught
            self.data.value = words[i] if v else self.rng.getrandbits(len(self.data))
            await ReadOnly()
            fire = v and bool(self.ready.value)


class StreamSink:
    """Drives ``<prefix>_tready`` high with probability ``p_ready``; collects accepted words."""

    def __init__(self, dut, prefix: str, p_ready: float = 1.0, seed: int = 1):
        self.clk = dut.ap_clk
        self.data, self.valid, self.ready = _handles(dut, prefix)
        self.p = p_ready
        self.rng = random.Random(seed)
        self.words: list[int] = []
        self.ready.value = 0

    async def recv(self, n: int, timeout_cycles: int = 1_000_000) -> list[int]:
        cycles = 0
        while len(self.words) < n:
            await RisingEdge(self.clk)
            r = self.rng.random() < self.p
            self.ready.value = int(r)
            await ReadOnly()
            if r and self.valid.value == 1:
                self.words.append(self.data.value.to_unsigned())
            cycles += 1
            if cycles > timeout_cycles:
                raise TimeoutError(f"{len(self.words)} of {n} words after {cycles} cycles")
        await RisingEdge(self.clk)
        self.ready.value = 0
        return self.words[:n]

    async def expect_idle(self, cycles: int = 20):
        """Hold tready high for ``cycles`` and fail if any extra word appears."""
        for _ in range(cycles):
            await RisingEdge(self.clk)
            self.ready.value = 1
            await ReadOnly()
            assert self.valid.value != 1, "unexpected extra output word"
        await RisingEdge(self.clk)
        self.ready.value = 0
