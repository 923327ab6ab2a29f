"""cocotb test of hls/rtl/stream_maxpool.sv against a numpy K x K / stride K max pool (NHWC, floor)."""
from __future__ import annotations

import cocotb
import numpy as np
from cocotb.triggers import gather

from sim.tb.axis import reset, start_clock, StreamSink, StreamSource, pack_words, unpack_words
from sim.verilator import tb_config


def reference(x: np.ndarray, k: int) -> np.ndarray:
    """(frames, D, D, C) -> (frames, D//k, D//k, C); trailing rows/columns that do not fill a window dropped."""
    f, d, _, c = x.shape
    o = d // k
    x = x[:, :o * k, :o * k, :].reshape(f, o, k, o, k, c)
    return x.max(axis=(2, 4))


async def _run(dut, cfg, p_valid, p_ready, seed):
    d, k, c, pe, w, signed = cfg["IFM_DIM"], cfg["K"], cfg["C"], cfg["PE"], cfg["W"], bool(cfg.get("SIGNED", 0))
    frames = cfg.get("frames", 3)
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (w - 1)), 1 << (w - 1)) if signed else (0, 1 << w)
    x = rng.integers(lo, hi, size=(frames, d, d, c), dtype=np.int64)
    x[0, :, :, 0] = lo         # ties at the minimum: a window of equal values
    src = StreamSource(dut, "in0_V", p_valid, seed + 1)
    snk = StreamSink(dut, "out0_V", p_ready, seed + 2)
    await reset(dut)
    o = d // k
    n_out = frames * o * o * c // pe
    ts, tr = cocotb.start_soon(src.send(pack_words(x, w, pe))), cocotb.start_soon(snk.recv(n_out))
    await gather(ts, tr)
    got = unpack_words(tr.result(), w, pe, signed).reshape(frames, o, o, c)
    exp = reference(x, k)
    assert (got == exp).all(), f"max pool differs: {int((got != exp).sum())} of {got.size} elements"
    await snk.expect_idle()


@cocotb.test()
async def full_throughput(dut):
    cfg = tb_config()
    start_clock(dut)
    await _run(dut, cfg, 1.0, 1.0, cfg.get("seed", 0))


@cocotb.test()
async def random_backpressure(dut):
    cfg = tb_config()
    start_clock(dut)
    for k, (pv, pr) in enumerate([(0.5, 0.5), (0.9, 0.2), (0.2, 0.9)]):
        await _run(dut, cfg, pv, pr, cfg.get("seed", 0) + 10 * (k + 1))
