"""cocotb test: the host driver, unchanged, on the whole stitched design behind AXI.

``sim/pynq_sim.py``'s :class:`Simulation` stands in for ``pynq`` on the ports ``hdl.json``
``"pynq"`` names; the driver (``SigmaBranchOverlay`` over ``sim/host_backend.py``'s
``SimHardware``, i.e. ``BoardHardware``) runs in a thread started with ``cocotb.task.bridge``,
each of its MMIO accesses and DMA polls a ``cocotb.task.resume`` call into the simulation.

config (``sim/host_backend.py`` :func:`run_sim`): bundle, hdl (path of hdl.json), strategy,
fetch_mode, timeout_s, seed, idle_cycles, sim (:class:`Simulation` keywords), fault (optional: one inference
of ``x[0]`` first, with a DMA channel that stops moving). Inputs: ``x.npy`` in the test folder.
Results: ``outputs.json`` (``result``: ``execute``'s dict as JSON, ``per_inference``: the DDR
model's and the DMAs' byte counts and the cycles of each inference, ``fault``, ``error``: what the
driver raised, if it did).
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import cocotb
from cocotb.task import bridge

from sim.pynq_sim import Simulation
from sim.verilator import tb_config, tb_dir


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"ddr_read_bytes": b["ddr_read_bytes"] - a["ddr_read_bytes"],
            "ddr_bursts": b["ddr_bursts"] - a["ddr_bursts"],
            "dma_bytes": {k: b["dma_bytes"][k] - a["dma_bytes"].get(k, 0) for k in b["dma_bytes"]},
            "cycles": b["cycles"] - a["cycles"]}


def _fault_run(sim: Simulation, overlay, x: np.ndarray, fault: dict[str, Any]) -> dict[str, Any]:
    """One inference of ``x[0]`` with a DMA channel that stops after ``stall_after`` bytes."""
    dma = getattr(overlay.hw.overlay, fault.get("dma", "idma0"))
    channel = dma.sendchannel if fault.get("channel", "send") == "send" else dma.recvchannel
    saved = overlay.timeout_s
    channel.stall_after = int(fault.get("stall_after", 0))
    overlay.timeout_s = float(fault.get("timeout_s", 2.0))
    c0, t0, b0 = sim.cycles, time.perf_counter(), channel.bytes
    record: dict[str, Any] = {"error": None}
    try:
        overlay.execute(x[:1])
    except Exception as err:  # the driver's DriverTimeout expected
        record.update(error=type(err).__name__, message=str(err))
    finally:
        channel.stall_after = None
        overlay.timeout_s = saved
    record.update(cycles=sim.cycles - c0, wall_s=time.perf_counter() - t0, bytes_moved=channel.bytes - b0)
    return record


def drive(sim: Simulation, cfg: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    """The driver as a PYNQ user runs it (in the bridge thread)."""
    from host.driver import SigmaBranchOverlay
    from sim.host_backend import SimHardware
    t0 = time.perf_counter()
    record: dict[str, Any] = {"per_inference": []}
    try:
        hw = SimHardware(sim, idle_cycles=int(cfg.get("idle_cycles", 16)))
        overlay = SigmaBranchOverlay(cfg["bundle"], backend=hw, strategy=cfg.get("strategy", "serial"),
                                     fetch_mode=cfg.get("fetch_mode"), timeout_s=float(cfg.get("timeout_s", 60.0)))
        if cfg.get("prior") is not None:  # the prefetch predictor's starting counts
            overlay.prior = [np.asarray(level) for level in cfg["prior"]]
        record["open"] = {"cycles": sim.cycles, "fetch_mode": overlay.fetch_mode,
                          "fetch_modes": list(overlay.design.fetch_modes),
                          "buffers": {b.name: b.physical_address for b in overlay._buffers}}
        if cfg.get("fault"):
            record["fault"] = _fault_run(sim, overlay, x, cfg["fault"])
        marks = [sim.counters()]
        # progress comes per inference, or per batch of inferences (``batch`` > 1: one record each)
        out = overlay.execute(x, progress=lambda n=1: marks.append(sim.counters()), batch=int(cfg.get("batch", 1)))
        record["result"] = _jsonable(out)
        record["per_inference"] = [_delta(a, b) for a, b in zip(marks, marks[1:])]
        if cfg.get("record_beats"):   # the DDR port's beats of each inference: (cycle, address)
            log = [b for r in sim.rams for b in r.beat_log]
            for rec, a, b in zip(record["per_inference"], marks, marks[1:]):
                rec["ddr_beats"] = log[a["ddr_beats_logged"]:b["ddr_beats_logged"]]
        overlay.close()
    except Exception as err:
        record["error"] = {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    record.update(counters=sim.counters(), driver_wall_s=time.perf_counter() - t0, stats=dict(sim.stats))
    return record


@cocotb.test()
async def host_driver(dut):
    cfg = tb_config()
    hdl = json.loads(Path(cfg["hdl"]).read_text())
    sim = Simulation(dut, hdl["pynq"], seed=int(cfg.get("seed", 0)), **cfg.get("sim", {}))
    await sim.start()
    x = np.load(tb_dir() / "x.npy")
    record = await bridge(drive)(sim, cfg, x)
    (tb_dir() / "outputs.json").write_text(json.dumps(_jsonable(record)))
