"""The FINN+ steps of ``sigmabranch build``, per node (FINN+ transformations; nothing here
re-implements them). The graph rewrites of our own are qonnx ``Transformation``s, applied as
``model = model.transform(X())``:

- :class:`NhwcBoundaries`: the streamlined graph without its float tail and without the
  NCHW<->NHWC transposes at its edges (between nodes the hardware streams NHWC integers);
- :class:`SetLayerAttrs` with :func:`datapath_attrs`: every branch of a level gets the first
  one's folding and the level's widest types, so one datapath computes them all;
- :class:`SetWeightMemory`: weights on chip (``internal_decoupled``) or fetched from DDR
  (``external_mem``);
- :class:`SetThresholdMemory`: threshold memories from a depth on in block RAM (FINN+'s LUTRAM below);
- :class:`PortRateFill`: a fetched layer's SIMD wide enough that its weight buffer fills at the
  DDR port's rate.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from qonnx.transformation.base import Transformation

from .errors import BuildError

HW_DOMAIN = "finn.custom_op.fpgadataflow"
FOLDING_ATTRS = ("PE", "SIMD", "parallel_window", "ram_style", "resType", "mem_mode")
WIDTH_ATTRS = ("weightDataType", "accDataType", "outputDataType", "inputDataType")


# ------------------------------------------------------------------------------ node boundaries
def _remove_node(model, node) -> None:
    """Bypass a single-input, single-output node."""
    graph = model.graph
    src, dst = node.input[0], node.output[0]
    if dst in [o.name for o in graph.output]:
        info = next(v for v in graph.value_info if v.name == src)
        graph.output[0].CopyFrom(info)
        graph.value_info.remove(info)
    elif src in [i.name for i in graph.input]:
        # the graph input takes the transposed shape; its readers (several at a fork) read it
        model.set_tensor_shape(src, model.get_tensor_shape(dst))
        model.set_tensor_layout(src, model.get_tensor_layout(dst) or ["N", "H", "W", "C"])
        for consumer in model.find_consumers(dst) or []:
            for i, name in enumerate(consumer.input):
                if name == dst:
                    consumer.input[i] = src
        graph.value_info.remove(next(v for v in graph.value_info if v.name == dst))
    else:
        for consumer in model.find_consumers(dst) or []:
            for i, name in enumerate(consumer.input):
                if name == dst:
                    consumer.input[i] = src
    graph.node.remove(node)


def _perm(node):
    from onnx import helper
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "perm")


class NhwcBoundaries(Transformation):
    """Drop the float tail and the layout transposes at a node's edges: the stream between
    hardware nodes is NHWC integers (the host sends the image NHWC too). One pass does it all."""

    def apply(self, model):
        from quant.export import drop_float_tail

        model = drop_float_tail(model)
        # A residual node forks at its input: each reader has its own transpose (FINN+'s fork passes).
        graph_in = model.graph.input[0].name
        for node in [n for n in model.graph.node if n.input and n.input[0] == graph_in]:
            if node.op_type == "Transpose" and list(_perm(node)) == [0, 2, 3, 1]:
                _remove_node(model, node)
        # A node reading a 1x1 map (after a global pool) flattens it first: the stream is the same
        # C elements either way, so the node reads them as a vector.
        first = model.graph.node[0]
        shape = model.get_tensor_shape(graph_in)
        if first.op_type == "Flatten" and first.input[0] == graph_in and int(np.prod(shape[2:])) == 1:
            model.set_tensor_shape(graph_in, [shape[0], int(np.prod(shape[1:]))])
            for consumer in model.find_consumers(first.output[0]) or []:
                for i, name in enumerate(consumer.input):
                    if name == first.output[0]:
                        consumer.input[i] = graph_in
            model.graph.node.remove(first)
        nodes = list(model.graph.node)
        # ... -> Transpose(NHWC->NCHW) -> MaxPool (NCHW) at the end: pool in NHWC instead.
        if len(nodes) >= 2 and nodes[-1].op_type == "MaxPool" and nodes[-2].op_type == "Transpose":
            pool, transpose = nodes[-1], nodes[-2]
            pool.op_type, pool.domain = "MaxPoolNHWC", "qonnx.custom_op.general"
            pool.input[0] = transpose.input[0]
            out_shape = model.get_tensor_shape(pool.output[0])
            model.set_tensor_shape(pool.output[0], [out_shape[0], out_shape[2], out_shape[3], out_shape[1]])
            model.graph.node.remove(transpose)
        last = model.graph.node[-1]
        if last.op_type == "Transpose" and list(_perm(last)) == [0, 3, 1, 2]:
            _remove_node(model, last)
        return model, False


# ------------------------------------------------------------------------------ HW layers, folding
def to_hw_layers(model, part: str, name: str):
    """Streamlined integer graph -> FINN+ HW layers (RTL where FINN+ has them)."""
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation)
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.fpgadataflow.convert_to_hw.duplicate_streams import InferDuplicateStreamsLayer
    from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import (
        InferElementwiseBinaryOperation)
    from finn.transformation.streamline.absorb import AbsorbConsecutiveTransposes, AbsorbTransposeIntoMultiThreshold
    from finn.transformation.streamline.reorder import MoveTransposePastFork, MoveTransposePastJoinAdd
    from qonnx.custom_op.registry import getCustomOp

    from quant.export import has_fork, quiet_logging, tidy

    with contextlib.redirect_stdout(io.StringIO()), quiet_logging():
        model = model.transform(NhwcBoundaries())
        residual = has_fork(model)
        if residual:
            # A residual block's add runs in NCHW after export: move the layout transposes past
            # the fork and the add and into the thresholds (FINN+'s ResNet-50 recipe), so the
            # whole block streams NHWC. Each round moves them one block on: repeat until none moves.
            def transposes(m):
                return sum(n.op_type == "Transpose" for n in m.graph.node)
            before = None
            while before != transposes(model):
                before = transposes(model)
                for transform in (MoveTransposePastFork(), AbsorbConsecutiveTransposes(),
                                  AbsorbTransposeIntoMultiThreshold(), MoveTransposePastJoinAdd(),
                                  AbsorbTransposeIntoMultiThreshold(), AbsorbConsecutiveTransposes()):
                    model = tidy(model.transform(transform))
                model = model.transform(NhwcBoundaries())   # the output transpose, once it reached the end
        for transform in (InferThresholdingLayer(), InferQuantizedMatrixVectorActivation(), InferPool(),
                          InferConvInpGen(), RemoveCNVtoFCFlatten(), AbsorbConsecutiveTransposes()):
            model = tidy(model.transform(transform))
        if residual:
            # the fork (DuplicateStreams) and the add (ElementwiseAdd): HLS in FINN+ on these parts,
            # stitched as hls/rtl/stream_fork.sv and hls/rtl/stream_add.sv (hls.parts)
            for transform in (InferDuplicateStreamsLayer(), InferElementwiseBinaryOperation()):
                model = tidy(model.transform(transform))
        left = [f"{n.op_type} ({n.name})" for n in model.graph.node if not n.domain.startswith(HW_DOMAIN)]
        if left:
            raise BuildError(f"node {name}: no FINN+ hardware layer for {', '.join(left)}")
        for node in model.graph.node:
            getCustomOp(node).set_nodeattr("preferred_impl_style", "rtl")
        model = tidy(model.transform(SpecializeLayers(part)))
        model = tidy(model.transform(MinimizeWeightBitWidth()).transform(MinimizeAccumulatorWidth()))
    return model


def fold(model, target_cycles: int | None, folding_config: str | Path | None = None):
    """FINN+'s folding: a folding config (``ApplyConfig``) if given, else ``SetFolding``."""
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from finn.transformation.general import ApplyConfig

    from quant.export import quiet_logging, tidy

    with contextlib.redirect_stdout(io.StringIO()), quiet_logging():
        if folding_config is not None:
            return tidy(model.transform(ApplyConfig(str(folding_config))))
        return tidy(model.transform(SetFolding(target_cycles_per_frame=target_cycles)))


# ------------------------------------------------------------------------------ one datapath per level
def _widest(types):
    from qonnx.core.datatype import DataType
    if len(set(types)) == 1:
        return types[0]
    signed = any(t.signed() for t in types)
    bits = max(t.bitwidth() + (1 if signed and not t.signed() else 0) for t in types)
    return DataType[f"{'INT' if signed else 'UINT'}{bits}"]


def datapath_attrs(models: list, names: list[str]) -> list[dict[str, Any]]:
    """Per layer position of a level's branches: the first branch's folding and the level's
    widest weight/accumulator/stream types (what :class:`SetLayerAttrs` gives every branch)."""
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp

    for i, name in enumerate(names[1:], start=1):
        if [n.op_type for n in models[i].graph.node] != [n.op_type for n in models[0].graph.node]:
            raise BuildError(f"node {name}: its layers differ from {names[0]}'s, so they cannot share a datapath")
    attrs = []
    for insts in zip(*[[getCustomOp(n) for n in m.graph.node] for m in models]):
        types = insts[0].get_nodeattr_types()
        shared = {a: insts[0].get_nodeattr(a) for a in FOLDING_ATTRS if a in types}
        shared.update({a: _widest([DataType[inst.get_nodeattr(a)] for inst in insts]).name
                       for a in WIDTH_ATTRS if a in types})
        attrs.append(shared)
    return attrs


class SetLayerAttrs(Transformation):
    """Set node attributes by layer position (``attrs[i]`` for the i-th node); an attribute that
    already has the value is left as it is."""

    def __init__(self, attrs: list[dict[str, Any]]):
        super().__init__()
        self.attrs = attrs

    def apply(self, model):
        from qonnx.custom_op.registry import getCustomOp
        for node, attrs in zip(model.graph.node, self.attrs, strict=True):
            inst = getCustomOp(node)
            for attr, value in attrs.items():
                if inst.get_nodeattr(attr) != value:
                    inst.set_nodeattr(attr, value)
        return model, False


# ------------------------------------------------------------------------------ memory placement
class SetWeightMemory(Transformation):
    """On chip: ``internal_decoupled`` (memstream in BRAM/URAM). From DDR: ``external_mem``, the
    ``fetch_weights`` reader with an index port (``mlo_max_iter``) and a ``base_address`` port
    (``address_offset``) that the router's decision drives.

    ``ram_style`` (on chip only; None keeps FINN+'s ``auto``) is the memstream's memory:
    ``"ultra"`` puts the weights in URAM. UltraScale+ URAM has no initial contents, so FINN+ then
    requires ``runtime_writeable_weights=1`` (the weights are written over AXI-Lite after
    configuration), which is set too."""

    def __init__(self, external: bool, ram_style: str | None = None):
        super().__init__()
        self.external = external
        self.ram_style = ram_style

    def apply(self, model):
        from onnx import helper
        from qonnx.custom_op.registry import getCustomOp
        for node in model.graph.node:
            if not node.op_type.startswith("MVAU"):
                continue
            inst = getCustomOp(node)
            if self.external:
                inst.set_nodeattr("mem_mode", "external_mem")
                inst.set_nodeattr("mlo_max_iter", 1)
                if not any(a.name == "address_offset" for a in node.attribute):
                    node.attribute.append(helper.make_attribute("address_offset", 0))
            else:
                inst.set_nodeattr("mem_mode", "internal_decoupled")
                if self.ram_style is not None:
                    inst.set_nodeattr("ram_style", self.ram_style)
                    if self.ram_style == "ultra":
                        inst.set_nodeattr("runtime_writeable_weights", 1)
        return model, False


class SetThresholdMemory(Transformation):
    """``Thresholding_rtl`` memories of ``bram_depth`` entries or more in block RAM, the smaller
    ones in FINN+'s default (LUTRAM): FINN+'s ``depth_trigger_bram``. A level's shared datapath
    holds every branch's threshold sets, which on a ResNet tree are most of its LUTs while BRAM is
    left over; every memory in BRAM would take a BRAM18 per lane and stage, too many. Only the
    memories' ``ram_style`` changes (thresholding.sv), not the logic or its latency.

    FINN+'s estimate reads the triggers as ``bram <= depth < uram`` (URAM at or above), so a URAM
    trigger of 0 would estimate URAM for every memory; it is set beyond any depth instead (the RTL
    treats 0 and that alike: no URAM)."""

    def __init__(self, bram_depth: int):
        super().__init__()
        if bram_depth < 1:
            raise ValueError(f"the threshold BRAM depth must be >= 1, not {bram_depth}")
        self.bram_depth = int(bram_depth)

    def apply(self, model):
        from qonnx.custom_op.registry import getCustomOp
        for node in model.graph.node:
            if node.op_type == "Thresholding_rtl":
                inst = getCustomOp(node)
                inst.set_nodeattr("depth_trigger_bram", self.bram_depth)
                inst.set_nodeattr("depth_trigger_uram", 2**31 - 1)
        return model, False


class PortRateFill(Transformation):
    """Widen a fetched (DDR) MVAU's SIMD so its weight buffer fills at the port's rate.

    FINN+'s ``local_weight_buffer`` takes one SIMD word of weights a cycle and a layer starts only
    once its whole set is in, so a layer folded for its compute target (SIMD 9 at INT4: 4.5 bytes
    a cycle) waits on its own buffer while the port could deliver more (PYNQ-Z2 8, ZCU104 16 bytes
    a cycle). SIMD is widened only where the buffer needs no more BRAM than the folding's, give or
    take one BRAM36 (its depth rounds up to a power of two, so a wider SIMD can need fewer; with
    many PE lanes a wider word costs a BRAM per lane): to the smallest divisor of MW from
    ``port bits / weight bits`` up to 4x that, else to the widest divisor below that; otherwise it
    stays. The compute gets faster as a side effect."""

    def __init__(self, port_bytes: float):
        super().__init__()
        self.port_bits = int(round(8 * port_bytes))

    @staticmethod
    def simd_for(mh: int, mw: int, pe: int, simd: int, weight_bits: int, port_bits: int) -> int:
        from .placement import lwb_bram18
        need = -(-port_bits // weight_bits)       # weights a cycle to keep up with the port
        if simd >= need:
            return simd
        budget = lwb_bram18(mh, mw, pe, simd, weight_bits) + 2
        wider = [d for d in range(simd + 1, min(mw, 4 * need) + 1)
                 if mw % d == 0 and lwb_bram18(mh, mw, pe, d, weight_bits) <= budget]
        enough = [d for d in wider if d >= need]
        return enough[0] if enough else max(wider, default=simd)

    def apply(self, model):
        from qonnx.core.datatype import DataType
        from qonnx.custom_op.registry import getCustomOp
        for node in model.graph.node:
            if not node.op_type.startswith("MVAU"):
                continue
            inst = getCustomOp(node)
            get = inst.get_nodeattr
            simd = self.simd_for(int(get("MH")), int(get("MW")), int(get("PE")), int(get("SIMD")),
                                 DataType[get("weightDataType")].bitwidth(), self.port_bits)
            if simd != get("SIMD"):
                inst.set_nodeattr("SIMD", simd)
        return model, False
