"""cocotb test of hls/rtl/stream_fork.sv: both outputs carry the input sequence, under random back-pressure."""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import gather

from sim.tb.axis import reset, start_clock, StreamSink, StreamSource
from sim.verilator import tb_config


def reference(words: list[int]) -> tuple[list[int], list[int]]:
    """The fork's model: two copies of the input, in order."""
    return list(words), list(words)


async def _run(dut, n: int, p_valid: float, p0: float, p1: float, seed: int):
    width = len(dut.in0_V_tdata)
    rng = random.Random(seed)
    words = [rng.getrandbits(width) for _ in range(n)]
    src = StreamSource(dut, "in0_V", p_valid, seed + 1)
    s0 = StreamSink(dut, "out0_V", p0, seed + 2)
    s1 = StreamSink(dut, "out1_V", p1, seed + 3)
    await reset(dut)
    t_src = cocotb.start_soon(src.send(words))
    t0 = cocotb.start_soon(s0.recv(n))
    t1 = cocotb.start_soon(s1.recv(n))
    await gather(t_src, t0, t1)
    e0, e1 = reference(words)
    assert t0.result() == e0, "out0 differs from the input sequence"
    assert t1.result() == e1, "out1 differs from the input sequence"
    await gather(cocotb.start_soon(s0.expect_idle()), cocotb.start_soon(s1.expect_idle()))


@cocotb.test()
async def full_throughput(dut):
    cfg = tb_config()
    start_clock(dut)
    await _run(dut, cfg.get("n_words", 200), 1.0, 1.0, 1.0, cfg.get("seed", 0))


@cocotb.test()
async def random_backpressure(dut):
    cfg = tb_config()
    start_clock(dut)
    seed = cfg.get("seed", 0)
    for k, (pv, p0, p1) in enumerate([(0.5, 0.5, 0.5), (0.9, 0.2, 0.9), (0.9, 0.9, 0.1), (0.3, 1.0, 0.6)]):
        await _run(dut, cfg.get("n_words", 200), pv, p0, p1, seed + 10 * k)
