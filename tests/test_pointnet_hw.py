"""The routed part of a PointNet++ tree on the fabric: ``sigmabranch build`` with the backbone on the
processor, the host driver taking point clouds, and the whole design behind AXI (Verilator)
bit-exact against the integer reference. The tiny tree of tests/test_pointnet_quant.py; its
Verilator model takes ~1.5 min to build on a cold cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hls.build import build
from host.int_reference import IntegerTree
from host.pointcloud import PointCloudError
from host.pointnet_backbone import PointNetBackbone
from host.run import load_point_clouds, run_bundle
from quant.export import export_tree
from test_pointnet_quant import POINTS, pointnet_qtree

pytestmark = pytest.mark.xdist_group("tiny_pointnet")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    _, qtree, x, y = pointnet_qtree()
    root = tmp_path_factory.mktemp("pointnet_hw")
    export_tree(qtree, (POINTS, 3), root / "export", progress=False)
    report = build(root / "export", "pynq-z2", root / "build", target_cycles=50_000)
    return root, report, x.numpy(), y.numpy()


def test_build_keeps_the_backbone_on_the_processor_and_pools_over_the_points(built):
    root, report, _, _ = built
    bundle = root / "build"
    assert [p["part"] for p in report["onchip"]][0] == "root router"       # no backbone hardware
    assert (bundle / "export" / "host_backbone.npz").is_file()             # the processor's half travels along
    assert not (bundle / "nodes" / "backbone.hw.onnx").exists()
    top = (bundle / "vivado" / "src" / "nodes" / "tops" / "sigmabranch_tree.sv").read_text()
    assert "bb_out" not in top and "fork0 (.ap_clk(ap_clk), .ap_rst_n(ap_rst_n),\n\t\t.in0_V_tdata(in0_V_tdata)" in top
    assert ".MAX(1)" in top                                                # SA3's max over the points
    # the INT8 map (131 channels, 1 per word) and the 131-wide MVAU input meet through FINN+'s dwc_axi
    assert "dwc_axi #(.IBITS(8), .OBITS(1048)) l0_dwc_in" in top
    assert report["ddr"]["tree_vs_dense"] < 0.45


def test_the_driver_takes_point_clouds_and_runs_the_backbone_on_the_processor(built, tmp_path):
    root, _, x, y = built
    bundle = root / "build"
    np.save(tmp_path / "clouds.npy", x[:6])
    report = run_bundle(bundle, tmp_path / "clouds.npy", backend="ref")
    # what the driver did by hand: numpy SA1 + SA2, the fabric map, the integer tree
    clouds = load_point_clouds(tmp_path / "clouds.npy", bundle)
    fabric = PointNetBackbone.load(bundle / "export" / "host_backbone.npz").fabric_input(clouds)
    ref = IntegerTree.load(bundle / "export").infer(fabric)
    assert report["leaves"] == ref["leaves"].tolist() and report["predictions"] == ref["classes"].tolist()
    assert report["host_backbone_ms_per_inference"] > 0
    assert report["ddr_bytes_per_inference"]["input"] == 131 * 16             # the map, not the cloud
    # one ModelNet40-style text cloud (x,y,z,nx,ny,nz rows)
    np.savetxt(tmp_path / "cloud.txt", np.concatenate([x[0], np.zeros_like(x[0])], 1), delimiter=",")
    one = run_bundle(bundle, tmp_path / "cloud.txt", backend="ref")
    assert one["inputs"] == 1 and one["leaves"][0] == report["leaves"][0]


def test_bad_point_clouds_name_the_file(built, tmp_path):
    root, _, x, _ = built
    bundle = root / "build"
    np.save(tmp_path / "short.npy", x[0, :100])
    with pytest.raises(PointCloudError, match="short.npy"):
        load_point_clouds(tmp_path / "short.npy", bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .txt or .npy"):
        load_point_clouds(tmp_path / "empty", bundle)
    bad = x[:2].copy()
    bad[1, 5, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(PointCloudError, match="NaN"):
        load_point_clouds(tmp_path / "nan.npy", bundle)


@pytest.mark.slow
def test_whole_design_behind_axi_is_bit_exact_and_fetches_the_path(built, tmp_path):
    root, _, x, y = built
    bundle = root / "build"
    np.savez(tmp_path / "samples.npz", x=x[:4], y=y[:4])
    ref = run_bundle(bundle, tmp_path / "samples.npz", backend="ref")
    sim = run_bundle(bundle, tmp_path / "samples.npz", backend="sim", fetch_mode="onchip")
    assert sim["accumulators"] == ref["accumulators"] and sim["paths"] == ref["paths"]
    weights = json.loads((bundle / "weights.json").read_text())
    path_bytes = [sum(weights["levels"][level]["regions"][b]["bytes"] for level, b in enumerate(p)) for p in sim["paths"]]
    assert sim["simulation"]["ddr_read_bytes"] == path_bytes


def test_width_converter_between_nodes_only_where_the_words_differ():
    from hls.parts import Stage, joined, width_converter
    from hls.stitch import StitchError

    reader = Stage("mvau", "MVAU_rtl_0", in_w=1048, out_w=8, in_elem=(8, 131, True))
    assert joined((8, 131, True), [reader], "dwc") == [reader]               # same words: nothing between
    dwc, first = joined((8, 1, True), [reader], "dwc")
    assert first is reader and dwc.module == "dwc_axi" and dwc.params == {"IBITS": 8, "OBITS": 1048}
    assert (dwc.in_w, dwc.out_w, dwc.in_elem, dwc.out_elem) == (8, 1048, (8, 1, True), (8, 131, True))
    assert width_converter((4, 3, False), (4, 1, False), "dwc").params == {"IBITS": 12, "OBITS": 4}  # 12 -> 16-bit words
    with pytest.raises(StitchError, match="4-bit unsigned elements feeds one reading 8-bit signed"):
        width_converter((4, 2, False), (8, 1, True), "l0_dwc_in")
