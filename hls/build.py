"""``sigmabranch build``: the exported tree -> FINN+ hardware layers per node, memory placement,
the DDR weight image and the placement report.

Flow per node (FINN+ transformations; nothing here re-implements them):

1. ``<node>.finn.onnx`` (streamlined by ``sigmabranch export``) without its float tail, and with
   the NCHW<->NHWC transposes at its boundaries removed: between nodes the hardware streams NHWC
   integers.
2. HW layers: ``InferThresholdingLayer``, ``InferQuantizedMatrixVectorActivation``, ``InferPool``,
   ``InferConvInpGen``; RTL variants preferred, ``SpecializeLayers(part)``; weight and accumulator
   widths minimised.
3. Folding: ``SetFolding`` from a target of cycles per frame, or a FINN folding config (JSON,
   ``ApplyConfig``).
4. HDL and the Vivado project (``hls/stitch.py``, ``hls/axi_top.py``, ``hls/vivado.py``): FINN+'s
   ``InsertDWC`` + ``PrepareIP`` per layer, the stitched tree behind AXI, the block-design Tcl.

Placement (the co-design of ../shared/notes/hardware-targets.md):

- **On chip**: the backbone and the root router; their MVAUs keep weights in BRAM/URAM
  (``mem_mode="internal_decoupled"``).
- **One datapath per tree level**, shared by all branches of the level: the level's branch, the
  router of the next level that sits below it, and (last level) its leaf head. Their MVAUs use
  ``mem_mode="external_mem"``: FINN+'s ``fetch_weights`` reads one weight set from DDR into a local
  buffer once per inference, and the MVU reuses it for every output pixel. All branches of a
  level have the same shapes; their widths are unified (the widest weight/accumulator type of
  the level) so one datapath serves them all. Thresholds are small (channels x steps): each
  ``Thresholding_rtl`` of a shared datapath keeps every branch's set on chip and the router's
  decision selects one (FINN+'s multi-set thresholding, ``hls.stitch.multiset_thresholds``).
- **DDR weight image** (``weights.bin`` + ``weights.json``): per level, one region per branch,
  each region contiguous (its layers in datapath order, each in FINN's ``external_mem`` layout:
  256-bit words, elements packed from the LSB), regions 4 KiB-aligned so no AXI burst crosses a
  4 KiB boundary, a CRC32 per region. The router's decision selects the region: each fetcher of
  the level reads ``region_base(branch) + layer_offset``.

HLS-only nodes (``Pool_hls`` for max-pooling, ``GlobalAccPool_hls``) are replaced in the
stitched design by the SystemVerilog blocks of ``hls/rtl/``; the report shows FINN+'s estimate of
the HLS node as a stand-in. Synthesis and bitstream need Vivado (see :func:`vivado_step`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from host.int_reference import read_manifest

from .boards import Board, get_board

REGION_ALIGN = 4096          # AXI bursts must not cross 4 KiB
FETCH_DATA_BITS = 256        # fetch_weights' AXI-MM data width (DATA_BITS in fetch_weights.sv)
HW_DOMAIN = "finn.custom_op.fpgadataflow"
OWN_RTL = {"Pool_hls": "stream_maxpool.sv", "GlobalAccPool_hls": "global_sum_pool.sv"}


class BuildError(ValueError):
    """A design that cannot be built as asked (names the node and the problem)."""


# ------------------------------------------------------------------------------ per node
def _remove_node(model, node) -> None:
    """Bypass a single-input, single-output node."""
    graph = model.graph
    src, dst = node.input[0], node.output[0]
    if dst in [o.name for o in graph.output]:
        info = next(v for v in graph.value_info if v.name == src)
        graph.output[0].CopyFrom(info)
        graph.value_info.remove(info)
    elif src in [i.name for i in graph.input]:
        info = next(v for v in graph.value_info if v.name == dst)
        datatype = model.get_tensor_datatype(src)
        graph.input[0].CopyFrom(info)
        graph.value_info.remove(info)  # consumers keep reading `dst`, now the graph input
        model.set_tensor_datatype(dst, datatype)
    else:
        for consumer in model.find_consumers(dst) or []:
            for i, name in enumerate(consumer.input):
                if name == dst:
                    consumer.input[i] = src
    graph.node.remove(node)


def nhwc_boundaries(model):
    """Drop the float tail and the layout transposes at a node's edges: the stream between
    hardware nodes is NHWC integers (the host sends the image NHWC too)."""
    from quant.export import drop_float_tail

    model = drop_float_tail(model)
    first = model.graph.node[0]
    if first.op_type == "Transpose" and list(_perm(first)) == [0, 2, 3, 1]:
        _remove_node(model, first)
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
    return model


def _perm(node):
    from onnx import helper
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "perm")


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
    from finn.transformation.streamline.absorb import AbsorbConsecutiveTransposes
    from qonnx.custom_op.registry import getCustomOp

    from quant.export import _quiet_logging, _tidy

    with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
        model = nhwc_boundaries(model)
        for transform in (InferThresholdingLayer(), InferQuantizedMatrixVectorActivation(), InferPool(),
                          InferConvInpGen(), RemoveCNVtoFCFlatten(), AbsorbConsecutiveTransposes()):
            model = _tidy(model.transform(transform))
        left = [f"{n.op_type} ({n.name})" for n in model.graph.node if not n.domain.startswith(HW_DOMAIN)]
        if left:
            raise BuildError(f"node {name}: no FINN+ hardware layer for {', '.join(left)}")
        for node in model.graph.node:
            getCustomOp(node).set_nodeattr("preferred_impl_style", "rtl")
        model = _tidy(model.transform(SpecializeLayers(part)))
        model = _tidy(model.transform(MinimizeWeightBitWidth()).transform(MinimizeAccumulatorWidth()))
    return model


# ------------------------------------------------------------------------------ folding, widths
def fold(model, target_cycles: int | None, folding_config: str | Path | None = None):
    """FINN+'s folding: a folding config (``ApplyConfig``) if given, else ``SetFolding``."""
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from finn.transformation.general import ApplyConfig

    from quant.export import _quiet_logging, _tidy

    with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
        if folding_config is not None:
            return _tidy(model.transform(ApplyConfig(str(folding_config))))
        return _tidy(model.transform(SetFolding(target_cycles_per_frame=target_cycles)))


FOLDING_ATTRS = ("PE", "SIMD", "parallel_window", "ram_style", "resType", "mem_mode")
WIDTH_ATTRS = ("weightDataType", "accDataType", "outputDataType", "inputDataType")


def _widest(types):
    from qonnx.core.datatype import DataType
    if len(set(types)) == 1:
        return types[0]
    signed = any(t.signed() for t in types)
    bits = max(t.bitwidth() + (1 if signed and not t.signed() else 0) for t in types)
    return DataType[f"{'INT' if signed else 'UINT'}{bits}"]


def share_datapath(models: list, names: list[str]) -> None:
    """Make every branch of a level use the first one's folding and the level's widest types,
    so one datapath computes them all (in place)."""
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp

    layers = [[getCustomOp(n) for n in m.graph.node] for m in models]
    for i, name in enumerate(names[1:], start=1):
        if [n.op_type for n in models[i].graph.node] != [n.op_type for n in models[0].graph.node]:
            raise BuildError(f"node {name}: its layers differ from {names[0]}'s, so they cannot share a datapath")
    for position, insts in enumerate(zip(*layers)):
        first = insts[0]
        attrs = first.get_nodeattr_types()
        for attr in FOLDING_ATTRS:
            if attr in attrs:
                for inst in insts[1:]:
                    inst.set_nodeattr(attr, first.get_nodeattr(attr))
        for attr in WIDTH_ATTRS:
            if attr in attrs:
                widest = _widest([DataType[inst.get_nodeattr(attr)] for inst in insts])
                for inst in insts:
                    inst.set_nodeattr(attr, widest.name)


# ------------------------------------------------------------------------------ memory placement
def set_weight_memory(model, external: bool) -> None:
    """On chip: ``internal_decoupled`` (memstream in BRAM/URAM). From DDR: ``external_mem``, the
    ``fetch_weights`` reader with an index port (``mlo_max_iter``) and a ``base_address`` port
    (``address_offset``) that the router's decision drives."""
    from qonnx.custom_op.registry import getCustomOp
    for node in model.graph.node:
        if node.op_type.startswith("MVAU"):
            inst = getCustomOp(node)
            if external:
                inst.set_nodeattr("mem_mode", "external_mem")
                inst.set_nodeattr("mlo_max_iter", 1)
                from onnx import helper
                node.attribute.append(helper.make_attribute("address_offset", 0))
            else:
                inst.set_nodeattr("mem_mode", "internal_decoupled")


def fetch_layer_bytes(inst, weights: np.ndarray, scratch: Path) -> bytes:
    """One weight set in FINN+'s ``external_mem`` layout (``make_weight_file``): 256-bit words,
    written one hex word per line; as DDR bytes, little-endian (byte 0 = bits 7:0)."""
    path = scratch / "weights.dat"
    inst.make_weight_file(weights, "decoupled_verilog_dat", str(path))
    words = path.read_text().split()
    return b"".join(int(word, 16).to_bytes(FETCH_DATA_BITS // 8, "little") for word in words)


def node_resources(model, part: str, streamed: bool, sets: int = 1) -> list[dict[str, Any]]:
    """FINN+'s estimate per layer. A streamed MVAU's weights live in DDR, but its
    ``fetch_weights`` buffer holds one weight set on chip: estimated as FINN+ would estimate the
    same weights stored on chip (``internal_decoupled``). A shared datapath's thresholds hold
    ``sets`` sets (one per branch)."""
    from qonnx.custom_op.registry import getCustomOp
    rows = []
    for node in model.graph.node:
        inst = getCustomOp(node)
        if streamed and node.op_type.startswith("MVAU"):
            inst.set_nodeattr("mem_mode", "internal_decoupled")
            estimate = inst.node_res_estimation(part)
            inst.set_nodeattr("mem_mode", "external_mem")
        elif sets > 1 and node.op_type.startswith("Thresholding"):
            inst.set_nodeattr("mlo_max_iter", sets)
            estimate = inst.node_res_estimation(part)
            inst.set_nodeattr("mlo_max_iter", 0)
        else:
            estimate = inst.node_res_estimation(part)
        row = {"layer": node.name, "op": node.op_type, "BRAM_18K": int(estimate.get("BRAM_18K", 0)),
               "URAM": int(estimate.get("URAM", 0)), "LUT": int(estimate.get("LUT", 0)),
               "DSP": int(estimate.get("DSP", 0)), "cycles": int(inst.get_exp_cycles())}
        if node.op_type in OWN_RTL:
            row["implemented_by"] = f"hls/rtl/{OWN_RTL[node.op_type]} (estimate: FINN+'s {node.op_type})"
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ the build
@dataclass
class LevelDatapath:
    """What one level's shared datapath computes for each branch: the branch, then the router
    below it (or, at the last level, the leaf head)."""
    level: int
    branches: list[list[str]] = field(default_factory=list)  # per branch: node names in datapath order


def level_datapaths(manifest: dict[str, Any]) -> list[LevelDatapath]:
    depth = int(manifest["depth"])
    paths = []
    for level in range(depth):
        path = LevelDatapath(level)
        for branch in range(2 ** (level + 1)):
            below = f"router_{level + 1}_{branch}" if level + 1 < depth else f"head_{branch}"
            path.branches.append([f"branch_{level}_{branch}", below])
        paths.append(path)
    return paths


def fetch_len(elements: int, weight_bits: int) -> int:
    """Bytes ``fetch_weights`` reads for one weight set (``get_weight_mem_bytes``)."""
    per_word = FETCH_DATA_BITS // weight_bits
    return -(-elements // per_word) * (FETCH_DATA_BITS // 8)


def weight_bytes(modules, bits: int) -> int:
    """What ``fetch_weights`` reads for every conv/linear weight below ``modules``, one set each."""
    import torch.nn as nn
    return sum(fetch_len(m.weight.numel(), bits) for module in modules for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def dense_weight_bytes(dense, depth: int, bits: int) -> int:
    """DDR weight bytes per inference of a dense (or statically pruned) model under the same
    placement: the backbone on chip, every later conv/linear (the tree levels' dense blocks and
    the classifier) fetched once per inference in the same layout."""
    from model.tree_layout import split_dense
    split = split_dense(dense, depth)
    return weight_bytes([b for blocks in split.level_blocks for b in blocks] + [split.head], bits)


def tree_weight_bytes(tree, bits: int) -> int:
    """One hard path's streamed weights: its specialisers, the projections of the routers below
    the root (the root router is on chip; a decision is a few integers) and its leaf head."""
    modules = [tree.specialisers[level][0] for level in range(tree.depth)]
    modules += [tree.routers[level][0].proj for level in range(1, tree.depth)] + [tree.heads[0]]
    return weight_bytes(modules, bits)


def dense_streamed_bytes(manifest: dict[str, Any]) -> int:
    """:func:`dense_weight_bytes` of the dense model an exported tree came from."""
    from model.registry import create_model
    spec = manifest["spec"]
    return dense_weight_bytes(create_model(spec["dense_model"], **spec["dense_args"]), int(manifest["depth"]),
                              int(manifest["quant"]["weight_bits"]))


def _align(n: int, to: int = REGION_ALIGN) -> int:
    return -(-n // to) * to


def write_weight_image(hw: dict[str, Any], paths: list[LevelDatapath], out: Path, scratch: Path) -> dict[str, Any]:
    """``weights.bin`` + ``weights.json`` (see the module docstring)."""
    from qonnx.custom_op.registry import getCustomOp

    image = bytearray()
    levels = []
    for path in paths:
        regions = []
        for branch, names in enumerate(path.branches):
            region, layers = bytearray(), []
            for name in names:
                model = hw[name]
                for node in model.graph.node:
                    if not node.op_type.startswith("MVAU"):
                        continue
                    inst = getCustomOp(node)
                    data = fetch_layer_bytes(inst, model.get_initializer(node.input[1]), scratch)
                    layers.append({"node": name, "layer": node.name, "offset": len(region), "bytes": len(data),
                                   "MH": inst.get_nodeattr("MH"), "MW": inst.get_nodeattr("MW"),
                                   "PE": inst.get_nodeattr("PE"), "SIMD": inst.get_nodeattr("SIMD"),
                                   "weight_datatype": inst.get_nodeattr("weightDataType")})
                    region += data
            regions.append((region, layers))
        stride = _align(max(len(r) for r, _ in regions))
        base = len(image)
        entries = []
        for branch, (region, layers) in enumerate(regions):
            offset = base + branch * stride
            image += bytes(offset - len(image)) + region
            entries.append({"branch": branch, "nodes": path.branches[branch], "offset": offset, "bytes": len(region),
                            "crc32": zlib.crc32(region), "layers": layers})
        image += bytes(base + len(regions) * stride - len(image))
        levels.append({"level": path.level, "base": base, "region_stride": stride, "regions": entries})
    (out / "weights.bin").write_bytes(bytes(image))
    meta = {"format": "sigmabranch-weights/1", "file": "weights.bin", "bytes": len(image), "align": REGION_ALIGN,
            "data_bits": FETCH_DATA_BITS, "crc32": zlib.crc32(bytes(image)),
            "layout": "per level, one contiguous region per branch at base + branch * region_stride; inside a "
                      "region, its layers in datapath order, each in FINN+'s external_mem layout",
            "levels": levels}
    (out / "weights.json").write_text(json.dumps(meta, indent=1))
    return meta


RESOURCES = ("BRAM_18K", "URAM", "LUT", "DSP")


def _sum(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {key: sum(r[key] for r in rows) for key in RESOURCES}


def check_budget(onchip: list[dict[str, Any]], board: Board) -> list[str]:
    """What exceeds the board: one line per resource, by how much, and the largest users."""
    budget = {"BRAM_18K": board.bram18, "URAM": board.uram, "LUT": board.lut, "DSP": board.dsp}
    problems = []
    for key in RESOURCES:
        used = sum(entry["resources"][key] for entry in onchip)
        if used > budget[key]:
            top = sorted(onchip, key=lambda e: -e["resources"][key])[:3]
            problems.append(f"{key}: {used} > {budget[key]} (over by {used - budget[key]}); largest: "
                            + ", ".join(f"{e['part']} {e['resources'][key]}" for e in top))
    return problems


def placement_table(report: dict[str, Any]) -> str:
    board = report["board"]
    lines = [f"# Placement: {board['name']} ({board['part']}, {1000 / board['clk_ns']:.0f} MHz)", "",
             "| on-chip part | nodes | BRAM18 | URAM | LUT | DSP | on-chip weight bytes | DDR bytes / inference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for e in report["onchip"]:
        r = e["resources"]
        lines.append(f"| {e['part']} | {', '.join(e['nodes'])} | {r['BRAM_18K']} | {r['URAM']} | {r['LUT']} | "
                     f"{r['DSP']} | {e['onchip_weight_bytes']} | {e['ddr_bytes_per_inference']} |")
    t, b = report["total"], report["budget"]
    lines.append(f"| **total** | | **{t['BRAM_18K']}** / {b['BRAM_18K']} | **{t['URAM']}** / {b['URAM']} | "
                 f"**{t['LUT']}** / {b['LUT']} | **{t['DSP']}** / {b['DSP']} | | |")
    d = report["ddr"]
    lines += ["", f"DDR bytes per inference: tree {d['tree_weight_bytes']} weights + {d['input_bytes']} input + "
              f"{d['output_bytes']} output; dense with the same placement {d['dense_weight_bytes']} weights "
              f"(ratio {d['tree_vs_dense']:.3f}).", "",
              "Estimates are FINN+'s (LUT/BRAM/DSP per layer); a streamed level's fetch buffer is counted as one "
              "branch's weights on chip; HLS-only layers stand in for the hls/rtl/ blocks that replace them."]
    return "\n".join(lines) + "\n"


def build(export_dir: str | Path, board_name: str, out_dir: str | Path, target_cycles: int | None = None,
          folding_config: str | Path | None = None, hdl: bool = True) -> dict[str, Any]:
    """The whole build up to the vendor step; returns the placement report. ``target_cycles``
    (cycles per frame for ``SetFolding``) defaults to the board's."""
    from qonnx.core.modelwrapper import ModelWrapper
    from tqdm.auto import tqdm

    board = get_board(board_name)
    target_cycles = target_cycles or board.target_cycles
    export_dir, out = Path(export_dir), Path(out_dir)
    manifest = read_manifest(export_dir)
    for name, info in manifest["nodes"].items():
        if any(op["op"] == "Add" for op in info["program"]):
            raise BuildError(f"node {name}: residual additions need a stream fork and an integer adder in RTL; "
                             "FINN+ has them only as HLS (DuplicateStreams, ElementwiseAdd), which cannot be built "
                             "without Vitis: residual trees are not built yet")
    out.mkdir(parents=True, exist_ok=True)
    paths = level_datapaths(manifest)
    hw = {}
    for name in tqdm(list(manifest["nodes"]), desc=f"FINN+ HW layers ({board.name})", unit="node"):
        hw[name] = to_hw_layers(ModelWrapper(str(export_dir / manifest["nodes"][name]["finn_onnx"])), board.part, name)
    hw["backbone"] = fold(hw["backbone"], target_cycles, folding_config)
    hw["router_0_0"] = fold(hw["router_0_0"], target_cycles, folding_config)
    set_weight_memory(hw["backbone"], external=False)
    set_weight_memory(hw["router_0_0"], external=False)
    for path in paths:
        for position in range(len(path.branches[0])):
            names = [branch[position] for branch in path.branches]
            hw[names[0]] = fold(hw[names[0]], target_cycles, folding_config)
            share_datapath([hw[n] for n in names], names)
            for n in names:
                set_weight_memory(hw[n], external=True)
    (out / "nodes").mkdir(exist_ok=True)
    for name, model in hw.items():
        model.save(str(out / "nodes" / f"{name}.hw.onnx"))

    scratch = out / ".scratch"
    scratch.mkdir(exist_ok=True)
    weights = write_weight_image(hw, paths, out, scratch)
    shutil.rmtree(scratch)

    onchip = []
    for part, names, streamed in [("backbone", ["backbone"], False), ("root router", ["router_0_0"], False)] + [
            (f"level {p.level} datapath (x1, serves {len(p.branches)} branches)", p.branches[0], True) for p in paths]:
        level = next((p for p in paths if p.branches[0] == names), None)
        sets = len(level.branches) if level else 1
        rows = [row for n in names for row in node_resources(hw[n], board.part, streamed, sets)]
        region_bytes = weights["levels"][level.level]["regions"][0]["bytes"] if level else 0
        onchip.append({"part": part, "nodes": names, "streamed": streamed, "resources": _sum(rows), "layers": rows,
                       "onchip_weight_bytes": region_bytes if streamed else sum(
                           fetch_len(r["MH"] * r["MW"], int(r["bits"])) for r in _mvau_shapes(hw, names)),
                       "ddr_bytes_per_inference": region_bytes})
    tree_bytes = sum(level["regions"][0]["bytes"] for level in weights["levels"])
    dense_bytes = dense_streamed_bytes(manifest)
    head = manifest["nodes"]["head_0"]
    report = {"board": board.as_dict(), "target_cycles": target_cycles, "folding_config": folding_config and str(folding_config),
              "onchip": onchip, "total": _sum([e["resources"] for e in onchip]),
              "budget": {"BRAM_18K": board.bram18, "URAM": board.uram, "LUT": board.lut, "DSP": board.dsp},
              "ddr": {"tree_weight_bytes": tree_bytes, "dense_weight_bytes": dense_bytes,
                      "tree_vs_dense": tree_bytes / dense_bytes,
                      "input_bytes": int(np.prod(manifest["nodes"]["backbone"]["input_shape"])),  # INT8 image
                      "output_bytes": 4 * int(np.prod(head["output_shape"]))},  # INT32 accumulators
              "weights": {k: weights[k] for k in ("file", "bytes", "crc32")}}
    report["problems"] = check_budget(onchip, board)
    write_bundle(export_dir, out, manifest, report, weights, board)
    (out / "placement.json").write_text(json.dumps(report, indent=1))
    (out / "placement.md").write_text(placement_table(report))
    if hdl and not report["problems"]:
        # The HDL and the Vivado side (hls/stitch.py, hls/axi_top.py, hls/vivado.py): FINN+'s
        # PrepareIP per layer, the stitched tree behind AXI (tree_ctrl, DMA streams, the weight
        # reader), the block-design Tcl, build_bitstream.sh, registers.json; driver.json gets the
        # register map and IP names.
        from .vivado import vivado_step as write_vivado
        written = write_vivado(out, run=False)
        report["hdl"] = {"top": written["hdl"]["top"], "sources": len(written["hdl"]["sources"]),
                         "folder": str(out / "vivado" / "src")}
        report["vivado"] = {k: str(v) for k, v in written.items() if k != "hdl"}
    if report["problems"]:
        raise BuildError(f"the on-chip part does not fit {board.name} ({board.part}): " + "; ".join(report["problems"])
                         + f" (report: {out / 'placement.md'})")
    return report


def _mvau_shapes(hw: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    from qonnx.custom_op.registry import getCustomOp
    rows = []
    for n in names:
        for node in hw[n].graph.node:
            if node.op_type.startswith("MVAU"):
                inst = getCustomOp(node)
                rows.append({"MH": inst.get_nodeattr("MH"), "MW": inst.get_nodeattr("MW"),
                             "bits": inst.get_input_datatype(1).bitwidth()})
    return rows


def write_bundle(export_dir: Path, out: Path, manifest: dict[str, Any], report: dict[str, Any],
                 weights: dict[str, Any], board: Board) -> None:
    """What a board needs besides the bitstream: the export's manifest and integer programs (the
    ``ref`` backend), the weight image, and ``driver.json`` (buffers and the weight regions)."""
    (out / "export").mkdir(exist_ok=True)
    for name in ["tree.json"] + [info["params_file"] for info in manifest["nodes"].values()]:
        shutil.copy2(export_dir / name, out / "export" / name)
    backbone, head = manifest["nodes"]["backbone"], manifest["nodes"]["head_0"]
    driver = {"format": "sigmabranch-driver/1", "board": board.name, "part": board.part, "clk_ns": board.clk_ns,
              "manifest": "export/tree.json", "weights": "weights.json",
              "input": {"shape_nhwc": [backbone["input_shape"][0], *backbone["input_shape"][2:], backbone["input_shape"][1]],
                        "datatype": backbone["input_datatype"], "scale": backbone["input_scale"],
                        "bytes": report["ddr"]["input_bytes"]},
              "output": {"shape": head["output_shape"], "datatype": "INT32", "bytes": report["ddr"]["output_bytes"]},
              "levels": [{"level": level["level"], "base": level["base"], "region_stride": level["region_stride"],
                          "region_bytes": level["regions"][0]["bytes"]} for level in weights["levels"]],
              "bitstream": None, "hwh": None}
    (out / "driver.json").write_text(json.dumps(driver, indent=1))


def vivado_step(out: str | Path) -> Path:
    """Synthesis, stitching and the bitstream (``<out>/vivado/build_bitstream.sh``, written by
    :func:`build`): only where Vivado is installed; otherwise a :class:`BuildError` naming it."""
    from .vivado import VivadoMissing, run_bitstream, vivado_step as merge_and_run
    if shutil.which("vivado") is None:
        try:
            run_bitstream(out)
        except (VivadoMissing, FileNotFoundError) as err:
            raise BuildError(str(err)) from err
    return Path(merge_and_run(out, run=True)["bitstream"])
