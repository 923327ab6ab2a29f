"""QONNX export per node, the manifest, the numpy integer reference and its cross-checks."""
import json
import zlib

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from host.int_reference import IntegerTree, ManifestError, quantize_input
from model.config import TreeConfig
from model.convert import convert
from model.registry import create_model
from quant.check import ExportMismatch, check_export
from quant.export import check_bits, export_tree
from quant.qtree import QuantizationError

from fixtures_quant import WIDTHS, tiny_qtree


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_builds):
    """The tiny tree's export (made once per session by export_tree, tests/fixtures_build.py), a copy."""
    qtree, x = tiny_qtree()
    out = shared_builds.copy(tmp_path_factory.mktemp("export")) / "export"
    return qtree, x, out, shared_builds.returned_manifest()


def test_every_node_is_exported_with_its_topology(exported):
    qtree, x, out, manifest = exported
    names = ["backbone", "router_0_0", "branch_0_0", "branch_0_1", "router_1_0", "branch_1_0", "branch_1_1",
             "router_1_1", "branch_1_2", "branch_1_3", "head_0", "head_1", "head_2", "head_3"]
    assert list(manifest["nodes"]) == names
    assert json.loads((out / "tree.json").read_text()) == manifest
    nodes = manifest["nodes"]
    assert nodes["router_1_1"]["input_node"] == "branch_0_1"
    assert nodes["router_1_1"]["selects"] == ["branch_1_2", "branch_1_3"]
    assert nodes["branch_1_3"]["input_node"] == "branch_0_1" and nodes["head_3"]["input_node"] == "branch_1_3"
    assert nodes["backbone"]["input_datatype"] == "INT8" and nodes["branch_0_0"]["input_datatype"] == "UINT4"
    assert nodes["branch_0_0"]["input_scale"] == nodes["backbone"]["output_scale"]
    assert nodes["head_0"]["output_shape"] == [1, 4] and len(nodes["head_0"]["output_bias"]) == 4
    for name in names:
        assert (out / f"{name}.onnx").is_file() and (out / f"{name}.finn.onnx").is_file()
        ops = {op["op"] for op in nodes[name]["program"]}
        assert ops <= {"Transpose", "Im2Col", "MatMul", "MultiThreshold", "MaxPoolNHWC", "MaxPool", "GlobalAccPool",
                       "Flatten", "Reshape"}
    assert "MultiThreshold" in {op["op"] for op in nodes["branch_0_0"]["program"]}
    assert {op["op"] for op in nodes["router_0_0"]["program"]} >= {"GlobalAccPool", "MatMul"}
    # The QONNX files hold Quant nodes with the preset's bit widths; weights are integers in the programs.
    params = np.load(out / "branch_0_0.npz")
    weights = [params[k] for k in params.files if k.endswith("weights")]
    assert weights and all(np.abs(w).max() <= 7 for w in weights)  # 4-bit narrow range


def test_integer_reference_matches_qonnx_finn_and_brevitas(exported):
    qtree, x, out, _ = exported
    report = check_export(out, qtree, x[:48], finn_inputs=4)
    assert report["same_class"] == 1.0 and report["same_leaf"] == 1.0
    for name, entry in report["nodes"].items():
        assert entry["finn_exact_inputs"] == 4, name
        assert entry["qonnx"]["max_off_grid"] < 0.05 and entry["brevitas"]["max_off_grid"] < 0.05, name
        assert entry["qonnx"]["boundary_flips"] <= 1e-4 * entry["qonnx"]["values"], name


def test_reference_routes_like_the_quantised_tree(exported):
    qtree, x, out, _ = exported
    ref = IntegerTree.load(out)
    result = ref.infer(x.numpy())
    with torch.no_grad():
        logits, leaves = qtree(x, mode="hard")
    assert result["leaves"].tolist() == leaves.tolist()
    assert len(set(result["leaves"].tolist())) >= 2  # the check exercises routing, not one path
    # Each level's decision is the leaf's bit at that level.
    assert (result["path_decisions"][:, 0] * 2 + result["path_decisions"][:, 1]).tolist() == result["leaves"].tolist()


def test_input_quantisation_is_brevitas_round_half_even():
    assert quantize_input(np.array([0.5, 1.5, 2.5, -0.5, 300.0, -300.0]), 1.0, "INT8").tolist() == [0, 2, 2, 0, 127, -128]
    assert quantize_input(np.array([0.26]), 0.1, "UINT4").tolist() == [3]


def test_a_wrong_integer_is_caught_and_named(exported, tmp_path):
    qtree, x, out, manifest = exported
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    params = dict(np.load(broken / "branch_1_2.npz"))
    key = next(k for k in params if k.endswith("weights"))
    params[key][0, 0] += 1 if params[key][0, 0] < 7 else -1
    np.savez(broken / "branch_1_2.npz", **params)
    manifest = json.loads((broken / "tree.json").read_text())
    manifest["nodes"]["branch_1_2"]["params_crc32"] = zlib.crc32((broken / "branch_1_2.npz").read_bytes())
    (broken / "tree.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportMismatch, match="node branch_1_2"):
        check_export(broken, qtree, x[:16], finn_inputs=0)


def _copy_export(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return json.loads((dst / "tree.json").read_text())


def test_bad_manifests_are_clear_errors(exported, tmp_path):
    _, _, out, _ = exported
    d = tmp_path / "missing"
    _copy_export(out, d)
    (d / "head_2.npz").unlink()
    with pytest.raises(ManifestError, match="node head_2: parameter file .* is missing"):
        IntegerTree.load(d)

    d = tmp_path / "corrupt"
    _copy_export(out, d)
    data = bytearray((d / "router_0_0.npz").read_bytes())
    data[-40] ^= 0xFF
    (d / "router_0_0.npz").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="node router_0_0"):
        IntegerTree.load(d)

    d = tmp_path / "shape"
    manifest = _copy_export(out, d)
    manifest["nodes"]["branch_0_1"]["output_shape"] = [1, 99, 2, 2]
    (d / "tree.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="node branch_0_1: its program gives shape"):
        IntegerTree.load(d)

    d = tmp_path / "node"
    manifest = _copy_export(out, d)
    del manifest["nodes"]["router_1_1"]
    (d / "tree.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="node router_1_1 of a depth-2 tree is missing"):
        IntegerTree.load(d)

    (d / "tree.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        IntegerTree.load(d)
    with pytest.raises(ManifestError, match="not found"):
        IntegerTree.load(tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="input of shape"):
        IntegerTree.load(out).infer(np.zeros((2, 8, 8)))


def test_unquantised_trees_and_unmappable_widths_are_refused(tmp_path):
    qtree, _ = tiny_qtree()
    with pytest.raises(QuantizationError, match="not quantised"):
        check_bits({"dense_model": "edge_cnn"})
    with pytest.raises(QuantizationError, match="weight_bits=9"):
        check_bits({"quant": {"weight_bits": 9, "act_bits": 4, "input_bits": 8}})
    qtree.spec = {k: v for k, v in qtree.spec.items() if k != "quant"}
    with pytest.raises(QuantizationError, match="not quantised"):
        export_tree(qtree, (1, 8, 8), tmp_path)


def test_cli_refuses_a_float_tree_checkpoint(tmp_path, capsys):
    from model.convert import save_tree
    from sigmabranch.cli import main
    tree, _ = convert(create_model("edge_cnn", num_classes=4, widths=WIDTHS).eval(), "edge_cnn",
                      {"num_classes": 4, "widths": WIDTHS}, TensorDataset(torch.randn(8, 1, 8, 8), torch.arange(8) % 4),
                      TreeConfig(max_samples=8, proj_dim=16))
    save_tree(tmp_path / "tree.pt", tree)
    assert main(["export", str(tmp_path / "tree.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "is not quantised" in capsys.readouterr().err


@pytest.mark.slow
def test_w2a2_tree_exports_exactly(tmp_path):
    qtree, x = tiny_qtree("w2a2", seed=1)
    export_tree(qtree, (1, 8, 8), tmp_path, progress=False)
    report = check_export(tmp_path, qtree, x[:32], finn_inputs=2)
    assert report["same_leaf"] == 1.0 and report["same_class"] == 1.0


@pytest.mark.slow
def test_resnet_tree_with_residual_adds_exports_exactly(tmp_path, shared_builds):
    qtree, x = tiny_qtree(model="resnet8")
    export = shared_builds.copy(tmp_path, model="resnet8") / "export"   # export_tree(qtree, ...), made once
    manifest = json.loads((export / "tree.json").read_text())
    # Residual blocks stay integer: a fork, a shared-scale requantisation of each input, an Add.
    ops = [op["op"] for op in manifest["nodes"]["backbone"]["program"]]
    assert "Add" in ops and ops.count("MultiThreshold") >= 3
    report = check_export(export, qtree, x[:32], finn_inputs=2)
    assert report["same_leaf"] == 1.0 and report["same_class"] == 1.0
