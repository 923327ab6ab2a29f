"""cocotb testbench for stitched tree tops (hls/stitch.py): frames in, words out, a DDR model.

config (from sim.tree_nodes):
  frames: [{"in": [hex words], "n_out": k, "region_base": int | null, "idx": bool}]
  memory: {"file": path to weights.bin, "base": address of its byte 0} | null
  p_valid, p_ready (stream back-pressure), p_rvalid / p_arready (DDR stalls), seed,
  max_cycles (per frame), pipelined (the whole tree only: every frame's input streamed back to back,
  the next image entering while earlier ones are still in the levels), ddr_port (the DDR's port
  model, sim/tb/axi_ram.py: port_bytes, first_word_cycles, port_fifo_bytes)
For each frame: region_base is set (it stays stable for the whole frame), one index token (0) is
sent if "idx", the input streamed and n_out words collected. The DDR model is an AXI4 read slave
(INCR bursts, 256-bit beats) serving weights.bin with random stalls; it counts the bytes it served
per frame and fails on any read outside the image. Results (words, bytes per frame, cycles per
frame) go to outputs.json. Every wait is bounded: a frame not done after max_cycles fails with
what was missing (output words, bytes served, index token taken).
"""
from __future__ import annotations

import json
from pathlib import Path

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb.axi_ram import AxiReadRam
from sim.tb.axis import StreamSink, StreamSource, count_cycles, reset, start_clock
from sim.verilator import tb_config, tb_dir


@cocotb.test()
async def tree_chain(dut):
    cfg = tb_config()
    start_clock(dut)
    has_fetch = hasattr(dut, "region_base")          # a part: the testbench drives base and index
    has_ddr = hasattr(dut, "axi_mm_araddr")
    seed = cfg.get("seed", 0)
    src = StreamSource(dut, "in0_V", cfg.get("p_valid", 1.0), seed + 1)
    sink = StreamSink(dut, "out0_V", cfg.get("p_ready", 1.0), seed + 2)
    ddr = None
    if has_fetch:
        dut.region_base.value = 0
        dut.in_idx0_V_tvalid.value = 0
        dut.in_idx0_V_tdata.value = 0
    if hasattr(dut, "weights_base"):                 # the whole tree: its controllers drive them
        dut.weights_base.value = int(cfg["memory"]["base"])
    if has_ddr:
        mem = cfg.get("memory")
        image = Path(mem["file"]).read_bytes() if mem else b""
        ddr = AxiReadRam(dut, "axi_mm", image, mem["base"] if mem else 0, cfg.get("p_arready", 1.0),
                         cfg.get("p_rvalid", 1.0), seed + 3, full_beats_only=True, **(cfg.get("ddr_port") or {}))
    if hasattr(dut, "branch_sel"):
        dut.branch_sel.value = int(cfg.get("branch_sel", 0))
    await reset(dut, 8)
    if ddr is not None:
        cocotb.start_soon(ddr.run())
    max_cycles = int(cfg.get("max_cycles", 200_000))
    cycle = count_cycles(dut)

    taps = {t: [] for t in cfg.get("taps", [])}

    async def watch(t):
        data, valid, ready = (getattr(dut, f"tap{t}_{s}") for s in ("tdata", "tvalid", "tready"))
        while True:
            await RisingEdge(dut.ap_clk)
            await ReadOnly()
            if valid.value == 1 and ready.value == 1:
                taps[t].append(data.value.to_unsigned())
    for t in taps:
        cocotb.start_soon(watch(t))

    if cfg.get("pipelined"):
        results = await _pipelined(dut, cfg, src, sink, ddr, cycle, max_cycles)
        (tb_dir() / "outputs.json").write_text(json.dumps(results))
        await sink.expect_idle(30)
        return
    results = []
    for f, frame in enumerate(cfg["frames"]):
        for t in taps:
            taps[t].clear()
        b0, t0 = (ddr.bytes if ddr else 0), cycle[0]
        bursts0 = len(ddr.bursts) if ddr else 0
        if has_fetch and frame.get("region_base") is not None:
            dut.region_base.value = int(frame["region_base"])
        idx_task = None
        if has_fetch and frame.get("idx", True):
            async def send_idx():
                await RisingEdge(dut.ap_clk)
                dut.in_idx0_V_tvalid.value = 1
                dut.in_idx0_V_tdata.value = 0
                while True:
                    await ReadOnly()
                    taken = dut.in_idx0_V_tready.value == 1
                    await RisingEdge(dut.ap_clk)
                    if taken:
                        dut.in_idx0_V_tvalid.value = 0
                        return
            idx_task = cocotb.start_soon(send_idx())
        if frame.get("prefetch") and ddr is not None:
            # weights first: wait (bounded) for the region's bytes, then for the buffer fill
            waited = 0
            while ddr.bytes - b0 < frame.get("expect_bytes", 0) and waited < max_cycles:
                await RisingEdge(dut.ap_clk)
                waited += 1
            if waited >= max_cycles:
                raise AssertionError(f"frame {f}: prefetch incomplete after {max_cycles} cycles: "
                                     f"{ddr.bytes - b0} bytes served")
            for _ in range(int(frame.get("prefetch_settle", 0))):
                await RisingEdge(dut.ap_clk)
            t0 = cycle[0]
        words = [int(w, 16) for w in frame["in"]]
        send = cocotb.start_soon(src.send(words))
        sink.words = []
        try:
            out = await sink.recv(frame["n_out"], timeout_cycles=max_cycles)
        except TimeoutError as e:
            got_bytes = (ddr.bytes - b0) if ddr else 0
            exp = frame.get("expect_bytes")
            raise AssertionError(
                f"frame {f}: timed out after {max_cycles} cycles: {e}; input words sent {src.sent}/{len(words)}; "
                f"DDR bytes served {got_bytes}" + (f" of {exp} expected" if exp is not None else "")
                + (f"; index token taken: {idx_task.done()}" if idx_task else "")
                + (f"; DDR model error: {ddr.errors[-1]}" if ddr and ddr.errors else "")) from None
        t_out = cycle[0]
        # the fetch of this frame must have completed (done before the output exists for MVAUs);
        # wait (bounded) until the expected bytes are in, then a few quiet cycles
        if ddr is not None and frame.get("expect_bytes") is not None:
            waited = 0
            while ddr.bytes - b0 < frame["expect_bytes"] and waited < max_cycles:
                await RisingEdge(dut.ap_clk)
                waited += 1
        if ddr is not None:
            for _ in range(int(cfg.get("settle_cycles", 64))):
                await RisingEdge(dut.ap_clk)
        if not send.done():
            raise AssertionError(f"frame {f}: output complete but only {src.sent}/{len(words)} input words taken")
        if idx_task is not None and not idx_task.done():
            raise AssertionError(f"frame {f}: the index token was never taken by the fetchers")
        if ddr is not None and ddr.errors:
            raise AssertionError(f"frame {f}: {ddr.errors[-1]}")
        leaf = int(dut.leaf.value) if hasattr(dut, "leaf") else None
        results.append({"out": [hex(w) for w in out], "cycles": t_out - t0, "leaf": leaf,
                        "bytes": (ddr.bytes - b0) if ddr else 0,
                        "bursts": (ddr.bursts[bursts0:] if ddr else []),
                        "taps": {str(t): [hex(w) for w in ws] for t, ws in taps.items()}})
    (tb_dir() / "outputs.json").write_text(json.dumps(results))
    await sink.expect_idle(30)


async def _pipelined(dut, cfg, src, sink, ddr, cycle, max_cycles) -> list[dict]:
    """All frames' input back to back; each frame's output words, its leaf (the last level's branch,
    held while the frame's accumulators leave) and the cycles from the first input word to its last
    output word. The DDR bytes are the whole run's (on the first frame's record)."""
    frames = cfg["frames"]
    words = [int(w, 16) for fr in frames for w in fr["in"]]
    b0, t0 = (ddr.bytes if ddr else 0), cycle[0]
    send = cocotb.start_soon(src.send(words))
    results = []
    for f, frame in enumerate(frames):
        sink.words = []
        first = await sink.recv(1, timeout_cycles=max_cycles)
        leaf = int(dut.leaf.value)              # the frame's last-level branch, stable until its last word
        sink.words = []
        try:
            rest = await sink.recv(frame["n_out"] - 1, timeout_cycles=max_cycles) if frame["n_out"] > 1 else []
        except TimeoutError as e:
            raise AssertionError(f"frame {f}: timed out after {max_cycles} cycles: {e}; input words sent "
                                 f"{src.sent}/{len(words)}; DDR bytes served {(ddr.bytes - b0) if ddr else 0}") from None
        results.append({"out": [hex(w) for w in first + rest], "cycles": cycle[0] - t0, "leaf": leaf,
                        "bytes": 0, "bursts": [], "taps": {}})
    if not send.done():
        raise AssertionError(f"outputs complete but only {src.sent}/{len(words)} input words taken")
    for _ in range(int(cfg.get("settle_cycles", 64))):
        await RisingEdge(dut.ap_clk)
    if ddr is not None:
        if ddr.errors:
            raise AssertionError(ddr.errors[-1])
        results[0]["bytes"] = ddr.bytes - b0
    return results
