"""cocotb test of hls/rtl/global_sum_pool.sv against a numpy sum over pixels (FINN GlobalAccPool
semantics), or with ``MAX=1`` a numpy maximum (PointNet's max-pool over points)."""
from __future__ import annotations

import cocotb
import numpy as np
from cocotb.triggers import gather

from sim.tb.axis import reset, start_clock, StreamSink, StreamSource, pack_words, unpack_words
from sim.verilator import tb_config


def reference(x: np.ndarray, use_max: bool = False) -> np.ndarray:
    """(frames, N_PIXELS, C) integers -> (frames, C) per-channel sums (maxima)."""
    return np.asarray(x, dtype=object).max(axis=1) if use_max else np.asarray(x, dtype=object).sum(axis=1)


def _inputs(rng, frames, npix, c, w, signed):
    lo, hi = (-(1 << (w - 1)), 1 << (w - 1)) if signed else (0, 1 << w)
    x = rng.integers(lo, hi, size=(frames, npix, c), dtype=np.int64)
    x[0] = hi - 1              # all-max frame: the sum reaches the top of OUT_W
    if frames > 1:
        x[1] = lo              # all-min frame (a maximum must not start from 0 or keep a stale value)
    if frames > 2:
        x[2, -1] = hi - 1      # the maximum in the last pixel only
    return x


async def _run(dut, cfg, p_valid, p_ready, seed):
    c, pe, npix, w, signed = cfg["C"], cfg["PE"], cfg["N_PIXELS"], cfg["IN_W"], bool(cfg["SIGNED"])
    use_max = bool(cfg.get("MAX", 0))
    out_w = w + (int(np.ceil(np.log2(npix))) if npix > 1 and not use_max else 0)
    frames = cfg.get("frames", 4)
    rng = np.random.default_rng(seed)
    x = _inputs(rng, frames, npix, c, w, signed)
    src = StreamSource(dut, "in0_V", p_valid, seed + 1)
    snk = StreamSink(dut, "out0_V", p_ready, seed + 2)
    await reset(dut)
    n_out = frames * c // pe
    ts, tr = cocotb.start_soon(src.send(pack_words(x, w, pe))), cocotb.start_soon(snk.recv(n_out))
    await gather(ts, tr)
    got = unpack_words(tr.result(), out_w, pe, signed).reshape(frames, c)
    exp = reference(x, use_max)
    assert (got == exp).all(), f"{'maxima' if use_max else 'sums'} differ\n got {got.tolist()}\n exp {exp.tolist()}"
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
