"""The routed part of a PointNet++ tree quantised for the fabric (quant/qpointnet.py): Brevitas
tree, per-node export, integer reference, and the processor's numpy input path."""
import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from host.int_reference import IntegerTree
from host.pointnet_backbone import PointNetBackbone
from model.config import TreeConfig
from model.convert import convert
from model.registry import create_model
from model.tree import RouterNode
from quant.check import check_export
from quant.export import export_tree, fabric_inputs
from quant.presets import get_preset
from quant.qpointnet import FabricInput, QuantGlobalSetAbstraction, QuantLinearBNReLU
from quant.qtree import quantize_tree, router_agreement

POINTS = 256


def pointnet_qtree(seed=0):
    """A converted small PointNet++ tree on two kinds of random clouds, quantised and calibrated."""
    torch.manual_seed(seed)
    args = {"num_classes": 4}
    dense = create_model("pointnet2_ssg_small", **args).eval()
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(48) % 4
    x = torch.randn(48, POINTS, 3, generator=g) * 0.5
    x[y < 2, :, 0] *= 2.0   # stretched clouds vs round ones: something for the root to split
    tree, _ = convert(dense, "pointnet2_ssg_small", args, TensorDataset(x, y), TreeConfig(max_samples=48, proj_dim=16))
    qtree = quantize_tree(tree, get_preset("w4a4")).train()
    with torch.no_grad():
        for _ in range(3):
            qtree(x, mode="leaves")
    return tree, qtree.eval(), x, y


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tree, qtree, x, y = pointnet_qtree()
    out = tmp_path_factory.mktemp("pointnet_export")
    manifest = export_tree(qtree, (POINTS, 3), out, progress=False)
    return tree, qtree, x, y, out, manifest


def test_the_routed_part_is_quantised_and_the_backbone_stays_on_the_processor(exported):
    tree, qtree, x, _, _, _ = exported
    host, fabric_in, quantizer = qtree.backbone
    assert type(host).__name__ == "PointNetBackbone" and isinstance(fabric_in, FabricInput)
    assert isinstance(quantizer, qnn.QuantIdentity) and quantizer.act_quant.is_signed  # xyz is signed
    assert not any(isinstance(m, (qnn.QuantConv2d, qnn.QuantReLU)) for m in host.modules())
    assert all(isinstance(b[0], QuantGlobalSetAbstraction) for b in qtree.specialisers[0])
    assert all(isinstance(b[0], QuantLinearBNReLU) for b in qtree.specialisers[1])
    assert all(isinstance(h[-1], qnn.QuantLinear) for h in qtree.heads)
    # The root router reads the whole fabric map, with zero weights on xyz: the float router's latent.
    root, float_root = qtree.routers[0][0], tree.routers[0][0]
    assert torch.equal(root.proj.weight[:, :3], torch.zeros(root.proj.out_features, 3))
    with torch.no_grad():
        h = tree.eval().backbone(x)
        float_latent = float_root.eval().latent(h)
        root_float = RouterNode(root.proj.in_features, root.proj.out_features)  # the widened router in float
        root_float.load_state_dict({k: v for k, v in root.state_dict().items() if k in root_float.state_dict()})
        widened_latent = root_float.eval().latent(fabric_in(h))
    assert torch.allclose(widened_latent, float_latent, atol=1e-5)
    logits, leaves = qtree(x, mode="hard")
    assert logits.shape == (len(x), 4) and leaves.max() < 4
    assert router_agreement(qtree, x) >= 0.9


def test_export_gives_integer_nodes_that_match_brevitas_qonnx_and_finn(exported):
    _, qtree, x, y, out, manifest = exported
    nodes = manifest["nodes"]
    s2, d2 = 16, 128                                          # pointnet2_ssg_small: SA2 keeps 16 points x 128
    assert manifest["input"]["shape"] == [3 + d2, s2, 1] and manifest["input"]["datatype"] == "INT8"
    assert manifest["host"]["file"] == "host_backbone.npz" and manifest["host"]["input_shape"] == [POINTS, 3]
    assert nodes["backbone"]["program"] == []               # the fabric backbone only quantises
    assert [op["op"] for op in nodes["branch_0_0"]["program"]][-1] == "MaxPool"   # max over the points
    assert nodes["branch_0_0"]["output_shape"] == [1, 128, 1, 1] and nodes["branch_1_0"]["output_shape"] == [1, 64]
    assert nodes["router_0_0"]["input_datatype"] == "INT8" and nodes["router_1_0"]["input_datatype"] == "UINT4"
    report = check_export(out, qtree, x[:12], finn_inputs=2, labels=y[:12])
    assert report["same_class"] == report["same_leaf"] == 1.0
    assert all(e["finn_exact_inputs"] == (0 if n == "backbone" else 2) for n, e in report["nodes"].items())


def test_the_processors_numpy_path_feeds_the_integer_tree_as_torch_does(exported):
    _, qtree, x, _, out, _ = exported
    ref = IntegerTree.load(out)
    backbone = PointNetBackbone.load(out / "host_backbone.npz")
    host_map = backbone.fabric_input(x.numpy())
    torch_map = fabric_inputs(qtree, x).numpy()
    assert host_map.shape == torch_map.shape and np.allclose(host_map, torch_map, atol=1e-5)
    q_host, q_torch = ref.quantize_input(host_map), ref.quantize_input(torch_map)
    # float32 rounding may move a value across a rounding boundary: one step, rarely
    assert np.abs(q_host - q_torch).max() <= 1 and (q_host != q_torch).mean() < 1e-3
    got = ref.infer(q_host, quantized=True)
    logits, leaves = qtree(x, mode="hard")
    assert (got["leaves"] == leaves.numpy()).mean() >= 0.95 and (got["classes"] == logits.argmax(1).numpy()).mean() >= 0.95
