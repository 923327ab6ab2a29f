"""The FINN+ hardware build: HW layers per node, placement, the DDR weight image, the budget."""
import dataclasses
import json
import zlib

import pytest
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

from hls import boards
from hls.build import BuildError, build, dense_weight_bytes, tree_weight_bytes
from hls.vivado import vivado_step
from hls.weight_image import REGION_ALIGN, fetch_len
from model.registry import create_model

from fixtures_quant import tiny_qtree

# Its module fixture is costly: the module runs on one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("build")


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_builds):
    """The tiny tree's pynq-z2 build (shared, tests/fixtures_build.py), then its HDL and Vivado side
    here, as `build` does after the placement."""
    qtree, _ = tiny_qtree()
    root = shared_builds.copy(tmp_path_factory.mktemp("build"), "pynq-z2")
    vivado_step(root / "pynq-z2", run=False)
    report = json.loads((root / "pynq-z2" / "placement.json").read_text())
    return root, report, qtree


def test_every_node_becomes_finn_hw_layers(built):
    root, _, _ = built
    backbone = ModelWrapper(str(root / "pynq-z2" / "nodes" / "backbone.hw.onnx"))
    ops = [n.op_type for n in backbone.graph.node]
    assert all(n.domain.startswith("finn.custom_op.fpgadataflow") for n in backbone.graph.node)
    assert "MVAU_rtl" in ops and "Thresholding_rtl" in ops and "ConvolutionInputGenerator_rtl" in ops
    # The streams between nodes are NHWC integers: no layout transposes are left at the edges.
    assert backbone.get_tensor_shape(backbone.graph.input[0].name) == [1, 8, 8, 1]
    assert str(backbone.get_tensor_datatype(backbone.graph.input[0].name)) == "INT8"
    for node in backbone.graph.node:
        if node.op_type == "MVAU_rtl":
            assert getCustomOp(node).get_nodeattr("mem_mode") == "internal_decoupled"
    branch = ModelWrapper(str(root / "pynq-z2" / "nodes" / "branch_1_3.hw.onnx"))
    for node in branch.graph.node:
        if node.op_type == "MVAU_rtl":
            assert getCustomOp(node).get_nodeattr("mem_mode") == "external_mem"  # from DDR, fetched once
    src = root / "pynq-z2" / "vivado" / "src"
    assert list(src.rglob("*MVAU_rtl_0_wrapper.v")) and list(src.rglob("*fetch_weights_wrapper.v")), "no HDL written"


def test_branches_of_a_level_share_one_datapath(built):
    root, _, _ = built
    models = [ModelWrapper(str(root / "pynq-z2" / "nodes" / f"branch_1_{b}.hw.onnx")) for b in range(4)]
    for attrs in zip(*[[getCustomOp(n).onnx_node.attribute for n in m.graph.node] for m in models]):
        keep = lambda a: {x.name: x for x in a if x.name in ("PE", "SIMD", "weightDataType", "accDataType",
                                                              "outputDataType", "inputDataType")}
        assert all(keep(a) == keep(attrs[0]) for a in attrs)


def test_fetched_layers_fill_their_buffer_at_the_port_rate(built):
    """The fetched MVAUs' SIMD words carry the port's bits a cycle where that costs no more buffer
    BRAM (hls.finn_steps.PortRateFill), so the level's fetch runs at the port's rate."""
    root, _, _ = built
    port_bits = 8 * boards.get_board("pynq-z2").weight_port()["port_bytes"]
    widths = []
    for b in range(4):
        for node in ModelWrapper(str(root / "pynq-z2" / "nodes" / f"branch_1_{b}.hw.onnx")).graph.node:
            if node.op_type.startswith("MVAU"):
                inst = getCustomOp(node)
                assert inst.get_nodeattr("MW") % inst.get_nodeattr("SIMD") == 0
                widths.append(inst.get_nodeattr("SIMD") * inst.get_input_datatype(1).bitwidth())
    assert widths and max(widths) >= port_bits, widths


def test_port_rate_fill_picks_the_narrowest_simd_that_keeps_up_without_more_bram():
    from hls.finn_steps import PortRateFill
    from hls.placement import lwb_bram18
    pick = PortRateFill.simd_for
    # demo level 1 at INT4, 64-bit port (16 weights a cycle): MW 1152 -> 18 (a 2,048-word buffer:
    # no more BRAM than SIMD 9's), not 16 (2,304 words round up to 4,096: twice the BRAM)
    assert pick(128, 1152, 4, 9, 4, 64) == 18
    assert lwb_bram18(128, 1152, 4, 18, 4) == lwb_bram18(128, 1152, 4, 9, 4) < lwb_bram18(128, 1152, 4, 16, 4)
    assert pick(91, 576, 1, 12, 4, 64) == 16
    assert pick(128, 91, 1, 7, 4, 64) == 13          # 91 = 7 * 13: nothing from 16 to 64, the widest below
    assert pick(128, 1152, 4, 32, 4, 64) == 32       # already wide enough: never narrowed
    assert pick(128, 1152, 4, 9, 4, 128) == 36       # ZCU104's 128-bit port: 32 weights a cycle
    assert pick(10, 128, 1, 1, 4, 64) == 16          # a small head: one more BRAM36 is allowed
    # many PE lanes: a wider word costs a BRAM per lane, so the folding's SIMD stays
    wide = pick(64, 576, 32, 2, 4, 128)
    assert wide < 32 and lwb_bram18(64, 576, 32, wide, 4) <= lwb_bram18(64, 576, 32, 2, 4) + 2
    assert lwb_bram18(64, 576, 32, 32, 4) > lwb_bram18(64, 576, 32, 2, 4) + 2


def test_weight_image_has_one_contiguous_checked_region_per_branch(built):
    root, report, qtree = built
    meta = json.loads((root / "pynq-z2" / "weights.json").read_text())
    image = (root / "pynq-z2" / "weights.bin").read_bytes()
    assert len(image) == meta["bytes"] and zlib.crc32(image) == meta["crc32"]
    assert [len(level["regions"]) for level in meta["levels"]] == [2, 4]
    for level in meta["levels"]:
        sizes = {r["bytes"] for r in level["regions"]}
        assert len(sizes) == 1  # same shape for every branch of a level
        for region in level["regions"]:
            assert region["offset"] % REGION_ALIGN == 0
            assert region["offset"] == level["base"] + region["branch"] * level["region_stride"]
            data = image[region["offset"]:region["offset"] + region["bytes"]]
            assert zlib.crc32(data) == region["crc32"]
            # Its layers, back to back in datapath order, each one fetch_weights set.
            assert [layer["node"] for layer in region["layers"]][0].startswith("branch_")
            offset = 0
            for layer in region["layers"]:
                assert layer["offset"] == offset
                assert layer["bytes"] == fetch_len(layer["MH"] * layer["MW"], int(layer["weight_datatype"][3:]))
                offset += layer["bytes"]
            assert offset == region["bytes"]
    # Different branches hold different weights (siblings share their first conv's inner
    # filters by construction, but not their output channels).
    assert len({r["crc32"] for r in meta["levels"][1]["regions"]}) == 4
    ddr = report["ddr"]
    assert ddr["tree_weight_bytes"] == sum(level["regions"][0]["bytes"] for level in meta["levels"])
    # The model-side count (`sigmabranch compare` uses it) agrees with the image byte for byte.
    assert tree_weight_bytes(qtree, 4) == ddr["tree_weight_bytes"]
    assert ddr["tree_weight_bytes"] < ddr["dense_weight_bytes"]
    # The dense bytes come from tree.json's layer sizes (no torch in the build): the same count.
    dense = create_model(qtree.spec["dense_model"], **qtree.spec["dense_args"])
    assert ddr["dense_weight_bytes"] == dense_weight_bytes(dense, qtree.depth, 4)


def test_placement_report_and_driver_metadata(built):
    root, report, qtree = built
    text = (root / "pynq-z2" / "placement.md").read_text()
    assert "backbone" in text and "level 1 datapath" in text and "/ 280" in text
    assert report["total"]["DSP"] <= 220 and report["total"]["BRAM_18K"] <= 280 and not report["problems"]
    driver = json.loads((root / "pynq-z2" / "driver.json").read_text())
    assert driver["input"]["shape_nhwc"] == [1, 8, 8, 1] and driver["input"]["datatype"] == "INT8"
    assert driver["board"] == "pynq-z2" and driver["board_facts"] == boards.get_board("pynq-z2").as_dict()
    assert (root / "pynq-z2" / "export" / "tree.json").is_file()


def test_mvau_dsp_count_is_the_lanes_the_rtl_packs():
    from hls.placement import mvau_rtl_dsp
    # DSP48E1 instances Yosys elaborated in the PYNQ-Z2 demo (W4, UINT4/INT8 inputs): on-chip
    # narrow layers pack 4 lanes, fetched layers FINN+ builds non-narrow pack 3
    assert mvau_rtl_dsp(4, 9, 4, 4, True, "xc7z020clg400-1") == 9
    assert mvau_rtl_dsp(1, 1, 4, 8, True, "xc7z020clg400-1") == 1
    assert mvau_rtl_dsp(7, 21, 4, 4, False, "xc7z020clg400-1") == 63
    assert mvau_rtl_dsp(4, 63, 4, 4, False, "xc7z020clg400-1") == 126
    assert mvau_rtl_dsp(7, 21, 4, 4, True, "xc7z020clg400-1") == 42
    # DSP48E2 (27-bit A port) packs 4 either way; 8-bit weights one lane group of 2
    assert mvau_rtl_dsp(4, 63, 4, 4, False, "xczu7ev-ffvc1156-2-e") == 63
    assert mvau_rtl_dsp(4, 8, 8, 8, True, "xczu7ev-ffvc1156-2-e") == 16


def test_fetched_layers_are_built_narrow_and_counted_so(built):
    """Every branch's weights are narrow (Brevitas' narrow range), so each fetched MVAU_rtl is
    built with NARROW_WEIGHTS = 1 (FINN+ writes 0 for weights it cannot see) and its DSPs counted
    with 4 lanes; each router's decision block is in the placement."""
    root, report, _ = built
    weights = json.loads((root / "pynq-z2" / "weights.json").read_text())
    assert all(all(level["narrow"]) for level in weights["levels"])
    wrappers = [w for w in (root / "pynq-z2" / "vivado" / "src").rglob("l*_MVAU_rtl_[0-9]_wrapper.v")]
    assert wrappers and all("NARROW_WEIGHTS = 1," in w.read_text() for w in wrappers)
    rows = [r for part in report["onchip"] for r in part["layers"]]
    decisions = [r for r in rows if r["op"].startswith("router_decide")]
    assert len(decisions) == 2 and all(r["DSP"] >= 2 for r in decisions)  # root, and one row x2 below level 0


def test_a_design_that_does_not_fit_is_refused_with_the_overflow(built, monkeypatch):
    root, _, _ = built
    tiny = dataclasses.replace(boards.get_board("pynq-z2"), name="tiny", lut=100, dsp=2, bram18=4, uram=0, clk_ns=10.0,
                               ddr_bytes_per_s=1e9, axi_port_bits=64, target_cycles=20_000)
    monkeypatch.setitem(boards.BOARDS, "tiny", tiny)
    with pytest.raises(BuildError, match=r"DSP: \d+ > 2 \(over by \d+\); largest: .*backbone"):
        build(root / "export", "tiny", root / "tiny", hdl=False)
    assert (root / "tiny" / "placement.md").is_file()  # the report is written before refusing


def test_vivado_side_is_written_and_the_bitstream_step_names_the_missing_tool(built, monkeypatch):
    root, _, _ = built
    board_dir = root / "pynq-z2"
    tcl = (board_dir / "vivado" / "make_project.tcl").read_text()
    assert "xc7z020clg400-1" in tcl and "sigmabranch_tree_axi" in tcl
    driver = json.loads((board_dir / "driver.json").read_text())
    assert driver["ips"]["ctrl"] == "sigmabranch_ctrl" and "registers" in driver
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match="`vivado` is not on PATH.*Everything else is in"):
        vivado_step(board_dir)


def test_an_unknown_board_is_refused_naming_the_supported_ones(built, tmp_path):
    root, _, _ = built
    with pytest.raises(ValueError, match="unknown board 'zc706'; supported: pynq-z2, zcu104"):
        build(root / "export", "zc706", tmp_path / "b", hdl=False)


def test_a_fork_without_its_add_is_refused_naming_the_fork(tmp_path, shared_builds):
    """Residual trees build (tests/test_residual_hw.py); what cannot be stitched is named: here the
    backbone's ElementwiseAdd removed, so its DuplicateStreams' two paths never join."""
    from hls.residual import stream_order
    root = shared_builds.copy(tmp_path, "zcu104", model="resnet8")
    model = ModelWrapper(str(root / "zcu104" / "nodes" / "backbone.hw.onnx"))
    add = next(n for n in model.graph.node if n.op_type.startswith("ElementwiseAdd"))
    for consumer in model.find_consumers(add.output[0]):
        consumer.input[0] = add.input[0]
    model.graph.node.remove(add)
    with pytest.raises(BuildError, match=r"DuplicateStreams_hls_0: its two streams are not joined by one ElementwiseAdd"):
        stream_order(model)


def test_shared_datapath_thresholds_hold_one_set_per_branch(built, tmp_path):
    root, _, _ = built
    multi_file = next((root / "pynq-z2" / "vivado" / "src").rglob("l1b_Thresholding_rtl_0_ms_threshs_0_0.dat"))
    multi = multi_file.read_text().split()
    segments = []
    for b in range(4):  # each branch's own thresholds, as FINN+ writes a single set
        model = ModelWrapper(str(root / "pynq-z2" / "nodes" / f"branch_1_{b}.hw.onnx"))
        node = next(n for n in model.graph.node if n.op_type.startswith("Thresholding"))
        (tmp_path / str(b)).mkdir()
        getCustomOp(node).generate_params(model, str(tmp_path / str(b)))
        segments.append((tmp_path / str(b) / f"{node.name}_threshs_0_0.dat").read_text().split())
    size = 1 << (len(segments[0]) - 1).bit_length()  # each set padded to a power of two
    assert len(multi) == 4 * size
    for b, segment in enumerate(segments):
        assert multi[b * size:b * size + len(segment)] == segment
    assert segments[0] != segments[1]


def test_threshold_memories_from_a_depth_on_go_to_bram(built, tmp_path):
    """SetThresholdMemory: FINN+'s estimate and the RTL parameter both follow depth_trigger_bram,
    and memories shallower than the trigger stay in LUTRAM."""
    from hls.finn_steps import SetThresholdMemory
    from hls.placement import node_resources
    root, _, _ = built
    model = ModelWrapper(str(root / "pynq-z2" / "nodes" / "backbone.hw.onnx"))
    thresholds = [n for n in model.graph.node if n.op_type == "Thresholding_rtl"]
    assert thresholds
    depths = {n.name: max(d for _, d in getCustomOp(n).get_pe_mem_geometries()) for n in thresholds}
    rows = {r["layer"]: r for r in node_resources(model, "xc7z020clg400-1", streamed=False)}
    assert all(rows[n]["BRAM_18K"] == 0 for n in depths)       # FINN+'s default: LUTRAM
    cut = max(depths.values())
    moved = model.transform(SetThresholdMemory(cut))
    after = {r["layer"]: r for r in node_resources(moved, "xc7z020clg400-1", streamed=False)}
    for n, depth in depths.items():
        inst = getCustomOp(next(m for m in moved.graph.node if m.name == n))
        assert inst.get_nodeattr("depth_trigger_bram") == cut
        assert (after[n]["BRAM_18K"] > 0) == (depth >= cut)      # not URAM: its trigger is out of reach
        assert after[n]["URAM"] == 0
    with pytest.raises(ValueError, match="threshold_bram_depth must be >= 0"):
        build(root / "export", "pynq-z2", tmp_path / "b", hdl=False, threshold_bram_depth=-1)
