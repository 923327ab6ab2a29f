"""Memory placement and the placement report (the co-design of ../shared/notes/hardware-targets.md).

- **On chip**: the backbone and the root router; their MVAUs keep weights in BRAM/URAM
  (``mem_mode="internal_decoupled"``).
- **One datapath per tree level** (:func:`level_datapaths`), shared by all branches of the level:
  the level's branch, the router of the next level that sits below it, and (last level) its leaf
  head. Their MVAUs use ``mem_mode="external_mem"``: FINN+'s ``fetch_weights`` reads one weight
  set from DDR into a local buffer once per inference, and the MVU reuses it for every output
  pixel. All branches of a level have the same shapes; their widths are unified (the widest
  weight/accumulator type of the level) so one datapath serves them all. Thresholds are small
  (channels x steps): each ``Thresholding_rtl`` of a shared datapath keeps every branch's set on
  chip and the router's decision selects one (FINN+'s multi-set thresholding,
  ``hls.stitch.multiset_thresholds``).
- **Weight buffering of the levels** (``weight_buffer``, :data:`WEIGHT_BUFFERS`): ``"branch"`` (the
  default, above) keeps each layer's fetched set on chip for the whole inference, so a level holds
  one whole branch; ``"none"`` keeps no copy: the fetcher re-reads each layer's set from DDR for
  every input vector (pixel) the layer computes, so the level needs no weight memory and its DDR
  bytes per inference are each layer's bytes times its pixel count. ``"none"`` is a placement
  (estimate) today: FINN+'s ``fetch_weights`` re-reads per repetition only for the tiled MVU
  (TH > 1, DSP58 parts), and instantiates its local buffer whenever TH = 1.

The report (``placement.json`` / ``placement.md``) is FINN+'s estimate per layer, summed per
on-chip part, against the board's budget (:func:`check_budget`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from .boards import Board
from .residual import layer_fifos, residual_fifos
from .weight_image import fetch_len, narrow_layers

RESOURCES = ("BRAM_18K", "URAM", "LUT", "DSP")
# HLS-only FINN+ nodes the stitched design replaces by the blocks of hls/rtl/ (the report shows
# FINN+'s estimate of the HLS node as a stand-in)
OWN_RTL = {"Pool_hls": "stream_maxpool.sv", "GlobalAccPool_hls": "global_sum_pool.sv",
           "DuplicateStreams_hls": "stream_fork.sv", "ElementwiseAdd_hls": "stream_add.sv"}
ONCHIP_NODES = ("backbone", "router_0_0")
WEIGHT_BUFFERS = ("branch", "none")


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


# BRAM18 aspect ratios (depth, width) of 7-series and UltraScale+ alike (RAMB18E1/E2, simple dual port)
BRAM18_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))


def bram18_for(depth: int, width: int) -> int:
    """BRAM18s one ``depth`` x ``width`` memory needs in its cheapest aspect ratio."""
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_SHAPES)


def fetch_buffer_bram18(inst) -> int:
    """BRAM18s of FINN+'s ``local_weight_buffer`` behind a streamed MVAU, as its RTL instantiates
    them (``RAM_STYLE="block"``): two banks (one is filled while the other is read), each PE
    lanes of 2**ceil(log2(NF*SF)) words of SIMD weights. FINN+'s own estimate of the same
    weights on chip (``internal_decoupled``) is one bank at its exact depth: 2-2.4x fewer."""
    return lwb_bram18(inst.get_nodeattr("MH"), inst.get_nodeattr("MW"), inst.get_nodeattr("PE"),
                      inst.get_nodeattr("SIMD"), inst.get_input_datatype(1).bitwidth())


def lwb_bram18(mh: int, mw: int, pe: int, simd: int, weight_bits: int) -> int:
    """:func:`fetch_buffer_bram18` of a layer given by its shape and folding."""
    tiles = (mh // pe) * (mw // simd)
    depth = 2 ** max(1, math.ceil(math.log2(max(tiles, 2))))
    return 2 * pe * bram18_for(depth, simd * weight_bits)


def mvau_rtl_dsp(pe: int, simd: int, weight_bits: int, act_bits: int, narrow: bool, part: str) -> int | None:
    """DSPs FINN+'s ``MVAU_rtl`` instantiates on DSP48E1/E2 (``finn-rtllib/mvu/mvu.sv``): it packs
    ``1 + (A - !narrow - W) // (W + A_act - 1)`` PE lanes into a DSP's A port (A = 25 bits on
    DSP48E1, 27 on DSP48E2), one DSP per SIMD element and lane group. FINN+'s estimate assumes 4
    lanes; on DSP48E1 a 4-bit layer without narrow weights gets 3 (its ``external_mem`` layers:
    it cannot see their weights). None on DSP58 (FINN+'s estimate stands)."""
    from finn.util.basic import get_dsp_block
    block = get_dsp_block(part)
    if block == "DSP58":
        return None
    a_width = 25 if block == "DSP48E1" else 27
    lanes = 1 if a_width == weight_bits else 1 + (a_width - (not narrow) - weight_bits) // (weight_bits + act_bits - 1)
    return math.ceil(pe / lanes) * simd


# router_decide.sv as Yosys 0.23 maps it for xc7 (N = 128, PE = 1, 16-bit z_acc/u/c: 1160 LUT,
# 984 FF, 2 DSP48E1): the DSPs are the per-word u*z and z*z of each PE lane; the LUTs are mostly
# the serial multiplier's WIDE-bit registers and adder, which grow with the accumulator widths.
ROUTER_DECIDE = {"BRAM_18K": 0, "URAM": 0, "LUT": 1200, "DSP_PER_PE": 2}


def _projection_pe(model) -> int:
    """PE of a router's projection (its last layer), the elements router_decide takes per word."""
    from qonnx.custom_op.registry import getCustomOp
    return int(getCustomOp(model.graph.node[-1]).get_folded_output_shape()[-1])


def router_decide_resources(pe: int) -> dict[str, int]:
    return {"BRAM_18K": 0, "URAM": 0, "LUT": ROUTER_DECIDE["LUT"], "DSP": ROUTER_DECIDE["DSP_PER_PE"] * pe}


def node_resources(model, part: str, streamed: bool, sets: int = 1, buffered: bool = True,
                   narrow: Iterable[str] = ()) -> list[dict[str, Any]]:
    """FINN+'s estimate per layer. A streamed MVAU's weights live in DDR, but its
    ``fetch_weights`` buffer holds one weight set on chip: FINN+'s ``external_mem`` estimate
    (the MVU, no weight memory) plus the buffer's BRAM as the RTL instantiates it
    (:func:`fetch_buffer_bram18`); without a buffer (``buffered=False``) the ``external_mem``
    estimate alone. A shared datapath's thresholds hold ``sets`` sets (one per branch).
    ``MVAU_rtl`` DSPs are counted as its RTL packs them (:func:`mvau_rtl_dsp`): on chip, narrow
    if its weights are; streamed, if the layer is in ``narrow`` (every branch's set narrow, the
    stitch then builds it so)."""
    from qonnx.custom_op.registry import getCustomOp

    from .weight_image import is_narrow
    rows = []
    for node in model.graph.node:
        inst = getCustomOp(node)
        if streamed and buffered and node.op_type.startswith("MVAU"):
            estimate = dict(inst.node_res_estimation(part))
            estimate["BRAM_18K"] = int(estimate.get("BRAM_18K", 0)) + fetch_buffer_bram18(inst)
        elif sets > 1 and node.op_type.startswith("Thresholding"):
            inst.set_nodeattr("mlo_max_iter", sets)
            estimate = inst.node_res_estimation(part)
            inst.set_nodeattr("mlo_max_iter", 0)
        else:
            estimate = inst.node_res_estimation(part)
        if node.op_type == "MVAU_rtl":
            dsp = mvau_rtl_dsp(inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD"), inst.get_input_datatype(1).bitwidth(),
                               inst.get_input_datatype(0).bitwidth(),
                               node.name in narrow if streamed else
                               is_narrow(model.get_initializer(node.input[1]), inst.get_input_datatype(1)), part)
            estimate = {**estimate, "DSP": estimate.get("DSP", 0) if dsp is None else dsp}
        row = {"layer": node.name, "op": node.op_type, "BRAM_18K": int(estimate.get("BRAM_18K", 0)),
               "URAM": int(estimate.get("URAM", 0)), "LUT": int(estimate.get("LUT", 0)),
               "DSP": int(estimate.get("DSP", 0)), "cycles": int(inst.get_exp_cycles())}
        if node.op_type in OWN_RTL:
            row["implemented_by"] = f"hls/rtl/{OWN_RTL[node.op_type]} (estimate: FINN+'s {node.op_type})"
        rows.append(row)
    return rows


def resource_sum(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {key: sum(r[key] for r in rows) for key in RESOURCES}


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


def _reps(hw: dict[str, Any], name: str, layer: str) -> int:
    """How many input vectors (pixels) an MVAU computes per inference."""
    import numpy as np
    from qonnx.custom_op.registry import getCustomOp
    node = next(n for n in hw[name].graph.node if n.name == layer)
    return int(np.prod(getCustomOp(node).get_nodeattr("numInputVectors")))


def onchip_parts(hw: dict[str, Any], paths: list[LevelDatapath], weights: dict[str, Any],
                 part: str, weight_buffer: str = "branch") -> list[dict[str, Any]]:
    """One row per on-chip part (backbone, root router, each level's shared datapath): FINN+'s
    estimate per layer and summed, the weight bytes it holds on chip, its DDR bytes per inference
    (``weight_buffer``: see the module docstring)."""
    if weight_buffer not in WEIGHT_BUFFERS:
        raise ValueError(f"weight_buffer must be one of {WEIGHT_BUFFERS}, not {weight_buffer!r}")
    buffered = weight_buffer == "branch"
    onchip = []
    for label, names, streamed in [("backbone", ["backbone"], False), ("root router", ["router_0_0"], False)] + [
            (f"level {p.level} datapath (x1, serves {len(p.branches)} branches)", p.branches[0], True) for p in paths]:
        if not all(n in hw for n in names):   # a backbone on the processor (PointNet++)
            continue
        level = next((p for p in paths if p.branches[0] == names), None)
        sets = len(level.branches) if level else 1
        rows = [row for n in names for row in node_resources(hw[n], part, streamed, sets, buffered,
                                                              narrow_layers(weights, n) if level else ())]
        # hls/rtl/router_decide.sv after a router projection: the root's, or below a level one per
        # branch (each with its own integers, selected by the branch register)
        rows += [{"layer": f"{n} decision" + (f" (x{sets}, one per branch)" if sets > 1 else ""),
                  "op": "router_decide.sv (Yosys-calibrated)", "cycles": 0,
                  **{k: v * sets for k, v in router_decide_resources(_projection_pe(hw[n])).items()}}
                 for n in names if n.startswith("router_")]
        fifos = [{"node": n, **f} for n in names for f in residual_fifos(hw[n], part)]
        rows += [{"layer": f"{f['add']} FIFO {f['path']}", "op": "fifo.sv (residual path)", "cycles": 0,
                  **{k: f[k] for k in RESOURCES}} for f in fifos]
        rows += [{"layer": f"{f['layer']} FIFO", "op": f"fifo.sv (after the layer, depth {f['depth']})", "cycles": 0,
                  **{k: f[k] for k in RESOURCES}} for n in names for f in layer_fifos(hw[n], part, tuple(OWN_RTL))]
        region_bytes = weights["levels"][level.level]["regions"][0]["bytes"] if level else 0
        ddr_bytes = region_bytes if buffered or not level else sum(
            layer["bytes"] * _reps(hw, layer["node"], layer["layer"]) for layer in weights["levels"][level.level]["regions"][0]["layers"])
        onchip.append({"part": label, "nodes": names, "streamed": streamed, "resources": resource_sum(rows),
                       "layers": rows,
                       "onchip_weight_bytes": (region_bytes if buffered else 0) if streamed else sum(
                           fetch_len(r["MH"] * r["MW"], int(r["bits"])) for r in _mvau_shapes(hw, names)),
                       "ddr_bytes_per_inference": ddr_bytes, "residual_fifos": fifos})
    return onchip


def check_budget(onchip: list[dict[str, Any]], board: Board) -> list[str]:
    """What exceeds the board: one line per resource, by how much, and the largest users."""
    budget = board.budget()
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
    fifos = [(e["part"], f) for e in report["onchip"] for f in e.get("residual_fifos", [])]
    if fifos:
        lines += ["", "Residual-path FIFOs (hls/residual.py: depth = the backlog the other path's window "
                  "generators cause, plus one pixel; FINN+'s fifo.sv estimate, included above):", "",
                  "| part | node | add | path | layers | depth (words) | width (bits) | backlog (words) | BRAM18 | LUT |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {part} | {f['node']} | {f['add']} | {f['path']} | {f['layers']} | {f['depth']} | {f['width']} | "
                  f"{f['backlog_words']} | {f['BRAM_18K']} | {f['LUT']} |" for part, f in fifos]
    d = report["ddr"]
    buffered = report.get("weight_buffer", "branch") == "branch"
    lines += ["", f"DDR bytes per inference: tree {d['tree_weight_bytes']} weights + {d['input_bytes']} input + "
              f"{d['output_bytes']} output; dense with the same placement {d['dense_weight_bytes']} weights "
              f"(ratio {d['tree_vs_dense']:.3f})."]
    host = report.get("host_backbone")
    if host:
        lines += ["", f"The backbone runs on the processor ({host['kind']}: host/pointnet_backbone.py, numpy, from "
                  f"`export/{host['file']}`); the fabric's input is its output map, {d['input_bytes']} INT8 bytes per "
                  "inference, read by the root router and the level-0 datapath."]
    if not buffered:
        lines += ["", f"weight_buffer='none': the levels keep no weights on chip and re-read each layer's set for "
                  f"every pixel: {d['tree_streamed_bytes']} weight bytes read per inference "
                  f"({d['tree_streamed_bytes'] / d['tree_weight_bytes']:.1f}x the path's weights)."]
    if report.get("weight_ram"):
        lines += ["", f"On-chip MVAU weights (backbone, root router): ram_style={report['weight_ram']!r}."]
    if report.get("threshold_bram_depth"):
        lines += ["", f"Threshold memories of {report['threshold_bram_depth']} entries or more in BRAM "
                  "(FINN+'s depth_trigger_bram), the smaller ones in LUTRAM."]
    lines += ["", "Estimates are FINN+'s (LUT/BRAM/DSP per layer); "
              + ("a streamed level's fetch buffers are counted as FINN+'s local_weight_buffer instantiates them "
                 "(two banks, power-of-two depth); " if buffered else "")
              + "HLS-only layers stand in for the hls/rtl/ blocks that replace them."]
    return "\n".join(lines) + "\n"
