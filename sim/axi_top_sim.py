"""The Vivado top ``sigmabranch_tree_axi`` (:mod:`hls.axi_top`) in cocotb + Verilator.

:func:`simulate` builds exactly the sources ``hdl.json`` lists (what the Vivado Tcl adds) and runs
``sim/tb/test_tree_axi.py`` on them, driving the top as the host driver drives the board::

    from hls.axi_top import write_axi_top
    from sim.axi_top_sim import simulate
    desc = write_axi_top("build/zcu104", "build/zcu104/vivado")
    r = simulate(desc, x_nhwc)          # per image: accumulators, TLAST, decisions, fetch counters
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sim.verilator import run_cocotb

WEIGHTS_BASE = 0x1_2000_0000   # where the testbench's DDR model places weights.bin (above 4 GiB)


def simulate(desc: dict[str, Any], x_nhwc, *, abort_first: bool = False, p_valid: float = 0.7,
             p_ready: float = 0.7, p_rvalid: float = 0.8, p_arready: float = 0.7, seed: int = 0,
             max_cycles: int = 400_000, host_frames: tuple[int, ...] = (),
             paths: list[list[int]] | None = None) -> dict[str, Any]:
    """Run ``sim/tb/test_tree_axi.py`` on the top :func:`hls.axi_top.write_axi_top` described (cocotb +
    Verilator), one image after another as the host drives it. ``x_nhwc``: (N, H, W, C) INT8.
    ``host_frames``: images run in host-driven fetch mode (the testbench streams each level's
    region; the first of them starts with a wrong level-0 prefetch, the branch not in ``paths``).
    Returns ``info`` (what the registers said outside inferences) and per image ``acc`` (INT32
    per class from the output stream), ``tlast``, ``decision``/``decision_valid``,
    ``fetch_addr``/``fetch_bytes`` (the control block's counters), ``ddr_bytes`` (the DDR
    model's), ``bursts``, ``cycles`` (start to STATUS done seen)."""
    g = desc["geometry"]
    din = g["dma_in_bytes"]
    frames = []
    for x in np.asarray(x_nhwc):
        raw = (np.asarray(x, dtype=np.int64).ravel() & 0xFF).astype(np.uint8).tobytes()
        if len(raw) != g["input_bytes"]:
            raise ValueError(f"image of {len(raw)} bytes, the top takes {g['input_bytes']}")
        frames.append({"in": [hex(int.from_bytes(raw[i:i + din], "little")) for i in range(0, len(raw), din)],
                       "n_out": g["num_classes"]})
    build = Path(g["build"])
    cfg = {"frames": frames, "levels": g["levels"], "abort_first": abort_first, "p_valid": p_valid,
           "p_ready": p_ready, "p_rvalid": p_rvalid, "p_arready": p_arready, "seed": seed, "max_cycles": max_cycles,
           "memory": {"file": str(build / "weights.bin"), "base": WEIGHTS_BASE}, "host_frames": list(host_frames),
           "path_hint": paths,
           "regions": [[[int(r["offset"]), int(r["bytes"])] for r in lv["regions"]]
                       for lv in json.loads((build / "weights.json").read_text())["levels"]]}
    res = run_cocotb(desc["sources"], desc["top"], "sim.tb.test_tree_axi", includes=desc["includes"],
                     defines={"FINN_SIMULATION": 1}, config=cfg)
    got = json.loads((res.test_dir / "outputs.json").read_text())
    for fr in got["frames"]:
        words = [int(w, 16) for w in fr["out"]]
        fr["acc"] = [w - (1 << 32) if w >> 31 else w for w in words]
    got.update(build_seconds=res.build.seconds, sim_seconds=res.sim_seconds, cached=res.build.cached,
               weights_base=WEIGHTS_BASE)
    return got
