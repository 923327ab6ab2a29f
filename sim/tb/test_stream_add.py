"""cocotb test of hls/rtl/stream_add.sv against a Python elementwise A + B (FINN+'s ElementwiseAdd of
two streams), each input with its own random valid pattern (long gaps on one input only, one input
starting long before the other), random output back-pressure, extremes of both types.

Config (``tb_config()``): ``PE``, ``A_W``, ``B_W``, ``A_SIGNED``, ``B_SIGNED`` (the RTL's parameters),
``OUT_W`` (optional: the RTL's default, :func:`default_out_w`), ``frames``, ``words`` (per frame), ``seed``.
"""
from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, gather

from sim.tb.axis import reset, start_clock, StreamSink, StreamSource, pack_words, unpack_words
from sim.verilator import tb_config

# 1 ms = 100k cycles, some 40x what a test needs: a block that stops handshaking fails the test
TIMEOUT = dict(timeout_time=1, timeout_unit="ms")


def default_out_w(a_w: int, b_w: int, a_signed: bool, b_signed: bool) -> int:
    """The RTL's default OUT_W: max(A_W, B_W) + 1, one more if exactly one operand is signed."""
    return max(a_w, b_w) + 1 + int(bool(a_signed) != bool(b_signed))


def reference(a, b, out_w: int, signed: bool) -> np.ndarray:
    """Elementwise a + b in exact integers, truncated to ``out_w`` bits (two's complement if ``signed``)."""
    s = (np.asarray(a, dtype=object) + np.asarray(b, dtype=object)) % (1 << out_w)
    if signed:
        s = np.where(s >= 1 << (out_w - 1), s - (1 << out_w), s)
    return s.astype(np.int64)


def _range(w: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (w - 1)), (1 << (w - 1)) - 1) if signed else (0, (1 << w) - 1)


def _operand(rng, shape, w, signed):
    """Random elements over the full range; frame 0 all max, frame 1 all min, frame 2 min or max at random."""
    lo, hi = _range(w, signed)
    x = rng.integers(lo, hi + 1, size=shape, dtype=np.int64)
    x[0], x[1] = hi, lo
    x[2] = rng.choice([lo, hi], size=x[2].shape)
    return x


class Watch:
    """Every cycle (after reset): a word leaves in0 exactly when one leaves in1, a stalled out0 word
    stays valid and unchanged; counts the pairs taken and notes the cycles of out0's handshakes."""

    def __init__(self, dut):
        self.dut, self.cycle = dut, 0
        self.errors: list[str] = []
        self.pairs, self.out_cycles = 0, []
        self.task = cocotb.start_soon(self._watch())

    async def _watch(self):
        d, stalled = self.dut, None
        while True:
            await RisingEdge(d.ap_clk)
            self.cycle += 1
            await ReadOnly()
            f0 = d.in0_V_tvalid.value == 1 and d.in0_V_tready.value == 1
            f1 = d.in1_V_tvalid.value == 1 and d.in1_V_tready.value == 1
            if f0 != f1:
                self.errors.append(f"cycle {self.cycle}: a word taken from in{0 if f0 else 1} alone")
            self.pairs += f0 and f1
            ov = d.out0_V_tvalid.value == 1
            data = d.out0_V_tdata.value.to_unsigned() if ov else None
            if stalled is not None and (not ov or data != stalled):
                self.errors.append(f"cycle {self.cycle}: out0 word dropped or changed while stalled")
            if ov and d.out0_V_tready.value == 1:
                self.out_cycles.append(self.cycle)
            stalled = data if ov and d.out0_V_tready.value != 1 else None

    def stop(self):
        self.task.cancel()


async def _bursts(src: StreamSource, clk, words, rng: random.Random, gap: tuple[int, int]):
    """Send ``words`` in bursts of 1-8, each followed by ``gap`` (min, max) idle cycles."""
    i = 0
    while i < len(words):
        n = rng.randint(1, 8)
        await src.send(words[i:i + n])
        i += n
        await ClockCycles(clk, rng.randint(*gap))


async def _run(dut, cfg, p0, p1, p_ready, seed, gap0=None, gap1=None, late0=0, late1=0) -> Watch:
    """Stream ``frames`` x ``words`` pairs through the block; ``gapN``: input N in bursts with idle gaps,
    ``lateN``: input N starts that many cycles after the other. Checks every element exactly."""
    pe, a_w, b_w = cfg["PE"], cfg["A_W"], cfg["B_W"]
    a_s, b_s = bool(cfg.get("A_SIGNED", 0)), bool(cfg.get("B_SIGNED", 0))
    out_w = cfg.get("OUT_W") or default_out_w(a_w, b_w, a_s, b_s)
    shape = (max(3, cfg.get("frames", 4)), cfg.get("words", 16) * pe)
    n = shape[0] * shape[1] // pe
    rng = np.random.default_rng(seed)
    a, b = _operand(rng, shape, a_w, a_s), _operand(rng, shape, b_w, b_s)
    srcs = (StreamSource(dut, "in0_V", p0, seed + 1), StreamSource(dut, "in1_V", p1, seed + 2))
    snk = StreamSink(dut, "out0_V", p_ready, seed + 3)
    await reset(dut)
    watch = Watch(dut)

    async def feed(k, words, gap, late):
        if late:
            await ClockCycles(dut.ap_clk, late)
        if gap:
            await _bursts(srcs[k], dut.ap_clk, words, random.Random(seed + 4 + k), gap)
        else:
            await srcs[k].send(words)

    *_, words = await gather(feed(0, pack_words(a, a_w, pe), gap0, late0), feed(1, pack_words(b, b_w, pe), gap1, late1),
                             snk.recv(n, timeout_cycles=200 * n + 1000))
    await snk.expect_idle()
    watch.stop()
    assert not watch.errors, "; ".join(watch.errors[:5])
    assert watch.pairs == n == len(watch.out_cycles), \
        f"{watch.pairs} pairs taken, {len(watch.out_cycles)} words out, {n} sent"
    assert all(w >> (pe * out_w) == 0 for w in words), "output padding bits not 0"
    got = unpack_words(words, out_w, pe, a_s or b_s).reshape(shape)
    exp = reference(a, b, out_w, a_s or b_s)
    bad = [tuple(i) for i in np.argwhere(got != exp)]
    assert not bad, (f"{len(bad)} of {got.size} sums differ, first (frame, element) {bad[0]}: "
                     f"{a[bad[0]]} + {b[bad[0]]} -> {got[bad[0]]}, expected {exp[bad[0]]}")
    return watch


@cocotb.test(**TIMEOUT)
async def full_throughput(dut):
    """Everything ready: one word per cycle, the output words on consecutive cycles."""
    cfg = tb_config()
    start_clock(dut)
    w = await _run(dut, cfg, 1.0, 1.0, 1.0, cfg.get("seed", 0))
    assert w.out_cycles[-1] - w.out_cycles[0] == len(w.out_cycles) - 1, \
        f"{len(w.out_cycles)} words took {w.out_cycles[-1] - w.out_cycles[0] + 1} cycles"


@cocotb.test(**TIMEOUT)
async def random_backpressure(dut):
    """Each input's valid and the output's ready random and independent."""
    cfg = tb_config()
    start_clock(dut)
    for k, (p0, p1, pr) in enumerate([(0.5, 0.5, 0.5), (0.9, 0.2, 0.9), (0.2, 0.9, 0.3), (1.0, 1.0, 0.1),
                                      (0.3, 0.3, 1.0)]):
        await _run(dut, cfg, p0, p1, pr, cfg.get("seed", 0) + 10 * (k + 1))


@cocotb.test(**TIMEOUT)
async def gaps_on_one_input(dut):
    """One input 150 cycles late (the other's first word waits, valid); one input in bursts with
    gaps of 20-60 cycles while the other is always valid; the output stalled meanwhile too."""
    cfg = tb_config()
    start_clock(dut)
    seed = cfg.get("seed", 0) + 100
    await _run(dut, cfg, 1.0, 0.8, 0.7, seed, late1=150)
    await _run(dut, cfg, 0.7, 1.0, 1.0, seed + 10, late0=150)
    await _run(dut, cfg, 0.9, 1.0, 0.6, seed + 20, gap0=(20, 60))
    await _run(dut, cfg, 1.0, 0.9, 0.3, seed + 30, gap1=(20, 60))
