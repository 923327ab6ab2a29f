"""``sigmabranch export``: one QONNX file per tree node, their integer programs and ``tree.json``.

Nodes (names as in the manifest): ``backbone``; ``router_<level>_<node>`` (average pool ->
quantised projection; the decision integers sit in the manifest); ``branch_<level>_<b>`` (one
specialiser); ``head_<leaf>`` (average pool -> quantised classifier).

Each node is exported as it will run in hardware: its **input is integers** (the producer's
quantised output, or the host-quantised image for the backbone) multiplied by the producer's
scale inside the graph (a ``Mul``), and the graph input is annotated with the integer
datatype. FINN+'s streamlining moves that ``Mul`` into the first thresholds, as it does with
FINN's usual ``/255`` preprocessing, so no float-input thresholding unit appears (the input
quantizer of a plain export would become one).

Per node, ``export_tree`` writes:

- ``<node>.onnx``: the QONNX export (Brevitas, TorchScript exporter, cleaned up): the
  interchange file the FINN+ build starts from.
- ``<node>.finn.onnx``: the same after ``ConvertQONNXtoFINN`` + streamlining (for inspection).
- ``<node>.npz`` + the node's ``program`` in ``tree.json``: the streamlined graph as integer ops
  (see ``host/int_reference.py``), with the float ops left at its end (the output scale, and a
  head's bias) recorded in the manifest as ``output_scale``/``output_bias``.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import io
import json
import logging
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator

import brevitas.nn as qnn
import numpy as np
import torch
import torch.nn as nn

from host.int_reference import FORMAT, MANIFEST, IntegerTree

from .qtree import QuantizationError, QuantRouterNode, last_quant_act, split_at_input_quant

# The ops a node's integer program may contain; anything else left by streamlining means the
# node is not fully integer and cannot be mapped.
INTEGER_OPS = {"Transpose", "Im2Col", "MatMul", "MultiThreshold", "MaxPool", "MaxPoolNHWC", "GlobalAccPool",
               "Flatten", "Reshape", "Add"}
_ATTRS = {"Transpose": ["perm"], "Im2Col": ["kernel_size", "stride", "pad_amount", "pad_value", "dilations"],
          "MultiThreshold": ["out_bias", "out_scale", "data_layout"],
          "MaxPool": ["kernel_shape", "strides", "pads"], "MaxPoolNHWC": ["kernel_shape", "strides", "pads"]}


class IntegerInput(nn.Module):
    """A node as exported: integer input -> ``* scale`` -> the node's Brevitas modules."""

    def __init__(self, scale: float, body: nn.Module):
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.body = body

    def forward(self, x_int: torch.Tensor) -> torch.Tensor:
        out = self.body(x_int * self.scale)
        return out.value if hasattr(out, "value") else out


def act_scale(relu: nn.Module) -> float:
    return float(relu.act_quant.scale())


def act_datatype(act: qnn.QuantReLU | qnn.QuantIdentity) -> str:
    return f"{'INT' if act.act_quant.is_signed else 'UINT'}{int(act.act_quant.bit_width())}"


def projection_without_bias(router: QuantRouterNode) -> nn.Module:
    """The router's pool + quantised projection; its bias is added as an integer by the decision
    block (``bias_int`` in the manifest), so it is left out of the graph."""
    proj = copy.deepcopy(router.proj)
    proj.bias = None
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), proj)


def tree_nodes(qtree) -> Iterator[dict[str, Any]]:
    """Every node of a quantised tree with its export module and integer interface."""
    _, input_quant, fabric_backbone = split_at_input_quant(qtree.backbone)
    backbone_out = last_quant_act(qtree.backbone)
    yield {"name": "backbone", "kind": "backbone", "input_node": None,
           "module": IntegerInput(act_scale(input_quant), fabric_backbone),
           "input_scale": act_scale(input_quant), "input_datatype": act_datatype(input_quant),
           "output_scale": act_scale(backbone_out), "output_datatype": act_datatype(backbone_out)}
    producer = {0: ("backbone", backbone_out)}  # node index of the current level -> (name, its last act)
    for level in range(qtree.depth):
        next_producer = {}
        for node, router in enumerate(qtree.routers[level]):
            source, source_act = producer[node]
            yield {"name": IntegerTree.router_name(level, node), "kind": "router", "level": level, "index": node,
                   "input_node": source, "selects": [IntegerTree.branch_name(level, 2 * node + c) for c in (0, 1)],
                   "module": IntegerInput(act_scale(source_act), projection_without_bias(router)), "router": router,
                   "input_scale": act_scale(source_act), "input_datatype": act_datatype(source_act)}
            for child in (0, 1):
                branch = 2 * node + child
                module = qtree.specialisers[level][branch]
                out_act = last_quant_act(module)
                name = IntegerTree.branch_name(level, branch)
                yield {"name": name, "kind": "branch", "level": level, "index": branch, "input_node": source,
                       "module": IntegerInput(act_scale(source_act), module),
                       "input_scale": act_scale(source_act), "input_datatype": act_datatype(source_act),
                       "output_scale": act_scale(out_act), "output_datatype": act_datatype(out_act)}
                next_producer[branch] = (name, out_act)
        producer = next_producer
    for leaf, head in enumerate(qtree.heads):
        source, source_act = producer[leaf]
        yield {"name": IntegerTree.head_name(leaf), "kind": "head", "leaf": leaf, "input_node": source,
               "module": IntegerInput(act_scale(source_act), head),
               "input_scale": act_scale(source_act), "input_datatype": act_datatype(source_act)}


@torch.no_grad()
def fabric_inputs(qtree, x: torch.Tensor) -> torch.Tensor:
    """The float tensor the tree's input quantizer sees: the images of a CNN tree; for PointNet++,
    the processor's SA1 + SA2 output as the fabric's map (quant/qpointnet.py)."""
    host, _, _ = split_at_input_quant(qtree.backbone)
    return host.eval()(x) if len(host) else x


def host_record(qtree, input_shape: tuple[int, ...], out: Path) -> dict[str, Any] | None:
    """``tree.json``'s ``host``: what the processor computes before the fabric's input (PointNet++:
    SA1 + SA2, written as ``host_backbone.npz`` for ``host/pointnet_backbone.py``), or None."""
    host, _, _ = split_at_input_quant(qtree.backbone)
    if not len(host):
        return None
    from model.pointnet2 import export_backbone
    export_backbone(host[0], out / "host_backbone.npz")
    return {"kind": "pointnet2_sa12", "file": "host_backbone.npz", "input_shape": list(input_shape),
            "input_layout": "points-major (N, C), xyz first",
            "output": "per SA2 centroid its xyz then its features, channels first: (3 + D2, S2, 1)"}


# ------------------------------------------------------------------------------ QONNX and FINN+
def export_node_qonnx(module: nn.Module, input_shape: tuple[int, ...], input_datatype: str, path: Path):
    """Brevitas -> QONNX (TorchScript exporter: it keeps GlobalAveragePool/MatMul, which FINN+
    maps; the dynamo exporter's ReduceMean/Gemm it does not) -> cleaned-up ModelWrapper."""
    from brevitas.export import export_qonnx
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(module, torch.zeros(input_shape), export_path=str(path), dynamo=False)
    model = cleanup_model(ModelWrapper(str(path)))
    model.set_tensor_datatype(model.graph.input[0].name, DataType[input_datatype])
    model.save(str(path))
    return model


def tidy(model):
    """The qonnx clean-up after each FINN+ step (shapes, constants, names, datatypes, layouts)."""
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (GiveReadableTensorNames, GiveUniqueNodeNames,
                                              GiveUniqueParameterTensors, RemoveUnusedTensors)
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    for transform in (InferShapes(), FoldConstants(), GiveUniqueNodeNames(), GiveUniqueParameterTensors(),
                      GiveReadableTensorNames(), InferDataTypes(), InferDataLayouts(), RemoveUnusedTensors()):
        model = model.transform(transform)
    return model


@contextlib.contextmanager
def quiet_logging():
    """FINN+ and qonnx log notes at WARNING that are no problem here: hidden while a step runs."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def has_fork(model) -> bool:
    """A tensor (not a parameter) that more than one node reads: a residual block's skip path."""
    readers = collections.Counter(name for node in model.graph.node for name in node.input
                                  if name and model.get_initializer(name) is None)
    return any(count > 1 for count in readers.values())


def finn_streamline(model):
    """FINN+'s ConvertQONNXtoFINN + streamlining, as its CNV examples do, plus the global-pool
    tail (``InferGlobalAccPoolLayer`` before any MVAU inference, else the classifier stays float)."""
    from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.absorb import (AbsorbConsecutiveTransposes, AbsorbScalarBiasIntoMultiThreshold,
                                                       AbsorbTransposeIntoMultiThreshold)
    from finn.transformation.streamline.reorder import MakeMaxPoolNHWC, MoveLinearPastEltwiseAdd, MoveLinearPastFork
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    # FINN logs notes such as "Could not absorb transpose->flatten" (harmless here: the flatten
    # after a global pool is removed by RemoveCNVtoFCFlatten).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_logging():
        warnings.simplefilter("ignore")
        model = tidy(model.transform(ConvertQONNXtoFINN()))
        model = model.transform(AbsorbScalarBiasIntoMultiThreshold()).transform(Streamline())
        # Residual blocks: the input scale must pass the fork and the shared add scale the add
        # before the thresholds can absorb them (FINN+'s ResNet recipe). A graph without a fork has
        # neither (skipping them saves two of the five Streamline passes, ~40% of an export).
        if has_fork(model):
            for transform in (MoveLinearPastFork(), MoveLinearPastEltwiseAdd(), Streamline()) * 2:
                model = tidy(model.transform(transform))
        model = tidy(model.transform(LowerConvsToMatMul()))
        for transform in (MakeMaxPoolNHWC(), AbsorbTransposeIntoMultiThreshold(), AbsorbConsecutiveTransposes()):
            model = model.transform(transform)
        model = tidy(tidy(model).transform(Streamline()))
        model = tidy(model.transform(RoundAndClipThresholds()))
        for transform in (InferGlobalAccPoolLayer(), AbsorbConsecutiveTransposes(), Streamline(),
                          RemoveCNVtoFCFlatten(), AbsorbConsecutiveTransposes()):
            model = tidy(model.transform(transform))
    return model


def drop_float_tail(model):
    """A copy of a streamlined graph without its trailing Mul/Add: its output is the integers."""
    import copy

    from qonnx.core.modelwrapper import ModelWrapper
    model = ModelWrapper(copy.deepcopy(model.model))
    graph = model.graph
    while graph.node[-1].op_type in ("Mul", "Add") and model.get_initializer(graph.node[-1].input[1]) is not None:
        last = graph.node[-1]
        info = next(v for v in graph.value_info if v.name == last.input[0])
        graph.output[0].CopyFrom(info)
        graph.value_info.remove(info)
        graph.node.remove(last)
    return model


def _attr_value(attr):
    from onnx import helper
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    return list(value) if isinstance(value, (list, tuple)) else value


def integer_program(model, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Split a streamlined graph into ``(integer program, its arrays, float tail)``.

    The program is every op up to the graph's float tail, each naming its input and output
    tensors (a residual block forks and adds). The tail is at most a per-tensor ``Mul`` (the
    output scale) and an ``Add`` of a constant (a classifier bias) at the end. Any other float op
    is a :class:`QuantizationError` naming the node and the op.
    """
    nodes = list(model.graph.node)
    has_const = lambda n: len(n.input) > 1 and model.get_initializer(n.input[1]) is not None
    first_float = len(nodes)
    while first_float and nodes[first_float - 1].op_type in ("Mul", "Add") and has_const(nodes[first_float - 1]):
        first_float -= 1
    tail_ops = [n.op_type for n in nodes[first_float:]]
    if tail_ops not in ([], ["Mul"], ["Mul", "Add"]):
        raise QuantizationError(f"node {name}: unexpected float ops {tail_ops} at the end of the streamlined graph")
    tail: dict[str, Any] = {"output_scale": 1.0, "output_bias": None}
    for node in nodes[first_float:]:
        value = model.get_initializer(node.input[1])
        if node.op_type == "Add":
            tail["output_bias"] = value.astype(np.float64).reshape(-1).tolist()
        elif value.size != 1:
            raise QuantizationError(f"node {name}: output scale is not per-tensor (shape {value.shape})")
        else:
            tail["output_scale"] = float(value.reshape(()))
    nodes = nodes[:first_float]
    program, arrays = [], {}
    for i, node in enumerate(nodes):
        if node.op_type not in INTEGER_OPS or (node.op_type == "Add" and has_const(node)):
            raise QuantizationError(f"node {name}: op {node.op_type} ({node.name}) is left after streamlining; "
                                    "it has no integer hardware mapping")
        dynamic = [t for t in node.input if model.get_initializer(t) is None]
        op = {"op": node.op_type, "name": node.name, "inputs": dynamic, "output": node.output[0],
              "attrs": {a.name: _attr_value(a) for a in node.attribute if a.name in _ATTRS.get(node.op_type, [])},
              "out_shape": list(model.get_tensor_shape(node.output[0]))}
        if node.op_type == "Im2Col":
            op["attrs"].setdefault("pad_value", 0)
            op["attrs"].setdefault("dilations", [1, 1])
        if node.op_type in ("MatMul", "MultiThreshold"):
            key = f"{i}_{'weights' if node.op_type == 'MatMul' else 'thresholds'}"
            value = model.get_initializer(node.input[1])
            if value is None or not np.array_equal(value, np.round(value)):
                raise QuantizationError(f"node {name}: {node.op_type} {node.name} has non-integer parameters")
            if node.op_type == "MultiThreshold" and float(op["attrs"].get("out_scale", 1.0)) != 1.0:
                raise QuantizationError(f"node {name}: {node.name} has a float out_scale")
            arrays[key] = value.astype(np.int64)
            op["params"] = {key.split("_", 1)[1]: key}
            op["datatype"] = str(model.get_tensor_datatype(node.input[1]).name)
        program.append(op)
    io = {"program_input": model.graph.input[0].name,
          "program_output": nodes[-1].output[0] if nodes else model.graph.input[0].name}
    return {"program": program, **io}, arrays, tail


# ------------------------------------------------------------------------------ the manifest
def check_bits(spec: dict[str, Any]) -> dict[str, Any]:
    quant = spec.get("quant")
    if not quant:
        raise QuantizationError("the tree is not quantised: export needs a `sigmabranch quantize` checkpoint")
    for key, lo, hi in (("weight_bits", 2, 8), ("act_bits", 1, 8), ("input_bits", 2, 8)):
        if not lo <= int(quant[key]) <= hi:
            raise QuantizationError(f"{key}={quant[key]} cannot be mapped by FINN+'s RTL layers (use {lo}-{hi})")
    return quant


def weight_elements(modules) -> list[int]:
    """Element count of every conv/linear weight below ``modules``, in module order: the weight
    sets a DDR fetch reads (``hls.weight_image.streamed_bytes`` turns them into bytes)."""
    return [m.weight.numel() for module in modules for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def dense_streamed_elements(dense: nn.Module, depth: int) -> dict[str, Any]:
    """The weight sets a dense (or statically pruned) model streams under the tree's placement:
    the backbone on chip, per level its dense blocks' conv/linear weights, then the classifier's."""
    from model.tree_layout import split_dense
    split = split_dense(dense, depth)
    return {"levels": [weight_elements(blocks) for blocks in split.level_blocks], "head": weight_elements([split.head])}


def dense_record(spec: dict[str, Any], depth: int) -> dict[str, Any]:
    """``tree.json``'s ``dense``: the dense model's streamed weight sets, so the build compares the
    tree's DDR bytes with the dense model's without building it in torch."""
    from model.registry import create_model
    return {"model": spec["dense_model"],
            "streamed_weight_elements": dense_streamed_elements(create_model(spec["dense_model"], **spec["dense_args"]),
                                                                depth)}


def readable_json(obj: Any) -> str:
    """Indented JSON with lists of numbers kept on one line (shapes, permutations, integers)."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s*([-+\d.eE,\s]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


@torch.no_grad()
def export_tree(qtree, input_shape: tuple[int, ...], out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write every node's QONNX, streamlined graph and integer program, and ``tree.json``."""
    from tqdm.auto import tqdm

    quant = check_bits(qtree.spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qtree.eval()
    points_shape = tuple(input_shape)
    input_shape = tuple(fabric_inputs(qtree, torch.zeros(1, *points_shape)).shape[1:])
    shapes = {}  # node name -> output shape, from a dry run of the Brevitas modules
    manifest_nodes = {}
    nodes = list(tree_nodes(qtree))
    for node in tqdm(nodes, desc="export", unit="node", disable=not progress):
        name = node.pop("name")
        module = node.pop("module")
        router = node.pop("router", None)
        in_shape = (1, *input_shape) if node["input_node"] is None else shapes[node["input_node"]]
        qonnx_path = out / f"{name}.onnx"
        model = export_node_qonnx(module, in_shape, node["input_datatype"], qonnx_path)
        streamlined = finn_streamline(model)
        streamlined.save(str(out / f"{name}.finn.onnx"))
        program, arrays, tail = integer_program(streamlined, name)
        params_path = out / f"{name}.npz"
        np.savez(params_path, **arrays)
        out_shape = list(module(torch.zeros(in_shape)).shape)
        shapes[name] = out_shape
        entry = {**node, "qonnx": qonnx_path.name, "finn_onnx": f"{name}.finn.onnx", "params_file": params_path.name,
                 "params_crc32": zlib.crc32(params_path.read_bytes()), "input_shape": list(in_shape),
                 "output_shape": out_shape, **program}
        if node["kind"] in ("router", "head"):
            entry["output_scale"] = tail["output_scale"]
            entry["output_datatype"] = "INT32"  # an accumulator; its exact width is set by the FINN+ build
        if node["kind"] == "head":
            entry["output_bias"] = tail["output_bias"] or [0.0] * out_shape[1]
        if router is not None:
            ints = router.integer_params(in_shape[2] * in_shape[3])
            from host.router_rule import DecisionBoundError, check_router_bounds
            try:  # every int64 term of the integer decision (host/router_rule.py) bounded below 2**63
                check_router_bounds(name, ints["weight_int"], ints["bias_int"], node["input_datatype"],
                                    ints["pool_size"], ints["u_int"], ints["c_int"], ints["e_int"])
            except DecisionBoundError as err:
                raise QuantizationError(str(err)) from err
            entry["decision"] = {"bias_int": ints["bias_int"].tolist(), "u_int": ints["u_int"].tolist(),
                                 "c_int": ints["c_int"], "e_int": ints["e_int"], "tie": "branch 0",
                                 "rule": "branch 1 iff A + c*sqrt(V+E) > 0 (host/router_rule.py)"}
            k = ints["act_scale"] * float(router.proj.quant_weight().scale) / ints["pool_size"]
            if not np.isclose(tail["output_scale"], k, rtol=1e-5):
                raise QuantizationError(f"node {name}: streamlined output scale {tail['output_scale']} differs from "
                                        f"the router's integer scale {k}")
        elif node["kind"] in ("backbone", "branch") and not np.isclose(tail["output_scale"], node["output_scale"],
                                                                        rtol=1e-6):
            raise QuantizationError(f"node {name}: streamlined output scale {tail['output_scale']} differs from its "
                                    f"last activation's {node['output_scale']}")
        manifest_nodes[name] = entry
    spec = {k: qtree.spec[k] for k in ("dense_model", "dense_args", "widths", "dense_widths", "level_names",
                                       "backbone_channels") if k in qtree.spec}
    manifest = {"format": FORMAT, "model": qtree.spec["dense_model"], "depth": qtree.depth, "spec": spec,
                "num_classes": shapes[IntegerTree.head_name(0)][1], "quant": quant,
                "dense": dense_record(qtree.spec, qtree.depth),
                "input": {"shape": list(input_shape), "layout": "NCHW", "datatype": manifest_nodes["backbone"]["input_datatype"],
                          "scale": manifest_nodes["backbone"]["input_scale"],
                          "quantize": "q = clip(round_half_even(float32(x) / scale)) on the host"},
                "nodes": manifest_nodes}
    host = host_record(qtree, points_shape, out)
    if host is not None:
        manifest["host"] = host
    (out / MANIFEST).write_text(readable_json(manifest))
    IntegerTree.load(out)  # the manifest must load and every program must give its declared shape
    return manifest


def run_export(checkpoint: str | Path, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """``sigmabranch export``: a ``qtree`` checkpoint -> QONNX per node + ``tree.json``."""
    from model.checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != "qtree":
        raise QuantizationError(f"{checkpoint}: a {ckpt.get('kind')!r} checkpoint is not quantised; export needs the "
                                "output of `sigmabranch quantize` (kind 'qtree')")
    from .qat import qtree_from_checkpoint

    qtree, ckpt = qtree_from_checkpoint(checkpoint)
    if "input_shape" not in ckpt:
        raise CheckpointError(f"{checkpoint}: no input_shape recorded; re-run `sigmabranch quantize`")
    out = Path(out_dir)
    if (out / MANIFEST).exists():  # a stale node file from an earlier export must not survive
        for stale in [*out.glob("*.onnx"), *out.glob("*.npz"), out / MANIFEST]:  # host_backbone.npz too
            stale.unlink()
    return export_tree(qtree, tuple(ckpt["input_shape"]), out, progress=progress)
