"""cocotb test of hls/rtl/router_decide.sv (through the wrapper hls/router_params.py generates).

Reference: host.router_rule.router_decision on z = z_acc + bias_int (the numpy model the host and
quant/ use). The router integers come from the wrapper's JSON sidecar (config["params_json"]).
Frames: random z_acc, constant z_acc (V = 0), all-max / all-min / alternating extremes of INT<ZW>,
and z_acc values near +-2^(ZW-1) mixed with small ones.
"""
from __future__ import annotations

import json

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge, gather

from host.router_rule import router_decision
from sim.tb.axis import StreamSink, StreamSource, pack_words, reset, start_clock
from sim.verilator import tb_config


def reference(z_acc: np.ndarray, p: dict) -> np.ndarray:
    """Branch per frame: router_rule.router_decision(z_acc + bias)."""
    z = np.asarray(z_acc, dtype=np.int64) + np.asarray(p["bias_int"], dtype=np.int64)
    return router_decision(z, np.asarray(p["u_int"], dtype=np.int64), p["c_int"], p["e_int"])


def frames(p: dict, n_random: int, seed: int) -> np.ndarray:
    n, zw = p["N"], p["ZW"]
    lo, hi = -(1 << (zw - 1)), (1 << (zw - 1)) - 1
    rng = np.random.default_rng(seed)
    small = max(2, 1 << min(zw - 1, 6))
    rows = [np.full(n, hi), np.full(n, lo), np.where(np.arange(n) % 2, hi, lo), np.where(np.arange(n) % 2, lo, hi),
            np.zeros(n, dtype=np.int64), np.full(n, 3), -np.asarray(p["bias_int"]).clip(lo, hi)]  # last: z == 0
    rows += [rng.integers(lo, hi + 1, n) for _ in range(n_random)]
    rows += [rng.integers(-small, small + 1, n) for _ in range(n_random)]
    for _ in range(n_random):                # extremes mixed with small values
        r = rng.integers(-small, small + 1, n)
        m = rng.random(n) < 0.3
        r[m] = rng.choice([lo, hi], size=int(m.sum()))
        rows.append(r)
    return np.stack(rows).astype(np.int64).clip(lo, hi)   # every value a valid INT<ZW>


async def _run(dut, p, z_acc, p_valid, p_ready, seed):
    exp = reference(z_acc, p)
    src = StreamSource(dut, "in0_V", p_valid, seed + 1)
    snk = StreamSink(dut, "out0_V", p_ready, seed + 2)
    await reset(dut)
    ts = cocotb.start_soon(src.send(pack_words(z_acc, p["ZW"], p["PE"])))
    tr = cocotb.start_soon(snk.recv(len(z_acc)))
    await gather(ts, tr)
    got = np.array(tr.result(), dtype=np.int64) - p["IDX_BASE"]
    bad = np.nonzero(got != exp)[0]
    assert len(bad) == 0, (f"{len(bad)} of {len(exp)} decisions differ; first frame {int(bad[0])}: "
                           f"z_acc={z_acc[bad[0]].tolist()} got {int(got[bad[0]])} exp {int(exp[bad[0]])}")
    await RisingEdge(dut.ap_clk)
    await ReadOnly()
    assert dut.decision_valid.value == 1
    assert int(dut.decision.value) == int(exp[-1])
    await snk.expect_idle()
    return exp


@cocotb.test()
async def decisions(dut):
    cfg = tb_config()
    p = json.loads(open(cfg["params_json"]).read())
    start_clock(dut)
    seed = cfg.get("seed", 0)
    z = frames(p, cfg.get("n_random", 20), seed)
    exp = await _run(dut, p, z, 1.0, 1.0, seed)
    dut._log.info("%d frames, %d routed to branch 1", len(exp), int(exp.sum()))
    if cfg.get("require_both", True):
        assert 0 < exp.sum() < len(exp), "test frames should reach both branches"


@cocotb.test()
async def decisions_backpressure(dut):
    cfg = tb_config()
    p = json.loads(open(cfg["params_json"]).read())
    start_clock(dut)
    for k, (pv, pr) in enumerate([(0.5, 0.5), (0.9, 0.1), (0.2, 0.9)]):
        seed = cfg.get("seed", 0) + 100 * (k + 1)
        await _run(dut, p, frames(p, 6, seed), pv, pr, seed)


@cocotb.test()
async def decision_before_first_frame(dut):
    start_clock(dut)
    await reset(dut)
    await RisingEdge(dut.ap_clk)
    await ReadOnly()
    assert dut.decision_valid.value == 0
    assert dut.out0_V_tvalid.value == 0
