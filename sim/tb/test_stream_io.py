"""Generic cocotb stream driver: words in, words out (sim.verilator.run_streams, sim.finn_rtllib.simulate_finn_node).

config: {"inputs": {port: {"words": [hex...]}}, "outputs": {port: {"n_words": k}}, "p_valid", "p_ready", "seed",
"check_idle" (default true: fail if an output offers a word beyond n_words)}.
All input streams are driven and all outputs drained concurrently with random valid/ready; the
collected output words go to outputs.json in the test directory. The comparison with a reference
(FINN's Python execution, numpy) happens in the caller, so this test only checks the word count
and that no extra word follows. Ports may be spelled ``_tdata`` or ``_TDATA``.
"""
from __future__ import annotations

import json

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import gather

from sim.tb.axis import StreamSink, StreamSource, reset, start_clock
from sim.verilator import tb_config, tb_dir


@cocotb.test()
async def stream_io(dut):
    cfg = tb_config()
    start_clock(dut)
    if hasattr(dut, "ap_clk2x"):  # only used by pumped variants (not used here): same clock as ap_clk
        Clock(dut.ap_clk2x, 10, unit="ns").start()
    seed = cfg.get("seed", 0)
    srcs, sinks = [], []
    for k, (port, spec) in enumerate(sorted(cfg["inputs"].items())):
        if not spec["words"]:  # tied-off port: StreamSource holds tvalid low
            StreamSource(dut, port)
            continue
        src = StreamSource(dut, port, cfg.get("p_valid", 1.0), seed + 11 * k + 1)
        srcs.append((src, [int(w, 16) for w in spec["words"]]))
    for k, (port, spec) in enumerate(sorted(cfg["outputs"].items())):
        sinks.append((port, StreamSink(dut, port, cfg.get("p_ready", 1.0), seed + 13 * k + 2), spec["n_words"]))
    await reset(dut, 8)
    tasks = [cocotb.start_soon(s.send(w)) for s, w in srcs]
    rx = [cocotb.start_soon(s.recv(n, timeout_cycles=200_000)) for _, s, n in sinks]
    await gather(*tasks, *rx)
    out = {port: [hex(w) for w in t.result()] for (port, _, _), t in zip(sinks, rx)}
    (tb_dir() / "outputs.json").write_text(json.dumps(out))
    if cfg.get("check_idle", True):  # FINN's FMPadding emits the next frame's top padding unasked
        for _, s, _ in sinks:
            await s.expect_idle(50)

