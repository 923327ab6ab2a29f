"""FINN+ RTL nodes in cocotb + Verilator: a one-call node simulator.

FINN+'s own rtlsim needs Vivado's XSI. Here a node's generated HDL (``PrepareIP``, no Vivado) is
built with Verilator instead, against the patched copy of FINN+'s ``finn-rtllib`` that the
hardware uses too (:mod:`hls.finn_rtllib`, its ``PATCHES`` each with the reason), and driven by a
cocotb testbench (``sim/tb/test_stream_io.py``) with random valid/ready back-pressure::

    from hls.finn_rtllib import prepare_ip
    from sim.finn_rtllib import simulate_finn_node
    model = prepare_ip(model, "xczu7ev-ffvc1156-2-e", 5.0)
    y = simulate_finn_node(model, model.graph.node[0], x)       # same layout as execute_onnx

Inputs and outputs are packed and unpacked with FINN's own ``npy_to_rtlsim_input`` /
``rtlsim_output_to_npy``, and streamed weights (MVAU/VVAU ``internal_decoupled`` / ``external``)
are fed on ``in1_V`` exactly as FINN's rtlsim does, so the result is comparable bit for bit with
``finn.core.onnx_exec.execute_onnx`` (``exec_mode="cppsim"``, i.e. FINN's Python execution).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hls.finn_rtllib import node_sources
from sim.verilator import run_cocotb


def _streamed_weights(inst) -> bool:
    try:
        mem_mode = inst.get_nodeattr("mem_mode")
    except AttributeError:
        return False
    return mem_mode in ("internal_decoupled", "external")


def _ports(inst) -> tuple[dict[str, str], dict[str, str]]:
    """Stream port prefixes exactly as the generated top spells them (``in0_V`` + ``_TDATA``/``_tdata``)."""
    srcs, _, top = node_sources(inst)
    text = "\n".join(Path(s).read_text(errors="replace") for s in srcs if Path(s).name.startswith(top))
    ins, outs = {}, {}
    for m in re.finditer(r"\b((in|out)(\d+)_V)_(TDATA|tdata)\b", text):
        (ins if m.group(2) == "in" else outs)[m.group(1)] = m.group(4)
    return ins, outs


def node_streams(model, node, inputs: Mapping[str, np.ndarray] | np.ndarray) -> tuple[dict, dict]:
    """Packed input words per port and the output geometry, the way FINN's rtlsim prepares them."""
    from finn.util.data_packing import npy_to_rtlsim_input
    from qonnx.custom_op.registry import getCustomOp
    inst = getCustomOp(node)
    if not isinstance(inputs, Mapping):
        inputs = {node.input[0]: inputs}
    streams = {}
    x = np.asarray(inputs[node.input[0]], dtype=np.float32).reshape(inst.get_folded_input_shape(0))
    streams["in0_V"] = npy_to_rtlsim_input(x, inst.get_input_datatype(0), inst.get_instream_width(0))
    if _streamed_weights(inst):
        code_gen_dir = Path(inst.get_nodeattr("code_gen_dir_ipgen"))
        wfile = code_gen_dir / "input_1.npy"
        if inst.get_nodeattr("mem_mode") == "external" or not wfile.exists():
            w = inputs.get(node.input[1]) if len(node.input) > 1 else None
            if w is None:
                w = model.get_initializer(node.input[1])
            w = np.asarray(w)
            inst.make_weight_file(w.reshape(-1, w.shape[-1]), "decoupled_npy", str(wfile))
        words = npy_to_rtlsim_input(str(wfile), inst.get_input_datatype(1), inst.get_instream_width(1))
        reps = int(np.prod(inst.get_nodeattr("numInputVectors")))
        if "TH" in inst.get_nodeattr_types():  # tiled MVU: one weight pass per tile (FINN's rtlsim does the same)
            reps //= int(inst.get_nodeattr("TH"))
        streams["in1_V"] = words * reps
    else:
        for i in range(1, len(node.input)):
            if model.get_initializer(node.input[i]) is None:
                raise NotImplementedError(f"{node.name}: dynamic input {i} not supported by simulate_finn_node")
    out = {"out0_V": {"n_words": int(np.prod(inst.get_folded_output_shape()[:-1])),
                      "dtype": inst.get_output_datatype(), "folded_shape": inst.get_folded_output_shape(),
                      "normal_shape": inst.get_normal_output_shape(), "packed_bits": inst.get_outstream_width()}}
    return streams, out


def simulate_finn_node(model, node, inputs: Mapping[str, np.ndarray] | np.ndarray, *, p_valid: float = 0.7,
                       p_ready: float = 0.7, seed: int = 0, defines: Mapping[str, Any] | None = None,
                       return_info: bool = False):
    """Simulate one prepared FINN+ RTL node in Verilator; returns its output (normal shape, float32).

    ``inputs``: the node's data input (array) or a mapping tensor name -> array (same values
    ``execute_onnx`` would see; a name missing for a weight input falls back to its initializer).
    The testbench drives every input stream and the output with random valid/ready
    (``p_valid``/``p_ready``; 1.0 gives full throughput). ``FINN_SIMULATION`` is defined, so the
    MVU uses its behavioural datapath instead of vendor DSP primitives.
    With ``return_info``: ``(output, info)`` with build/sim times and the sources used.
    """
    from finn.util.data_packing import rtlsim_output_to_npy
    from qonnx.custom_op.registry import getCustomOp
    inst = getCustomOp(node)
    srcs, incs, top = node_sources(inst)
    ins, outs = _ports(inst)
    streams, out_geom = node_streams(model, node, inputs)
    declared = {name for name, _ in inst.get_verilog_top_module_intf_names().get("s_axis", [])}
    missing = set(ins) - set(streams)
    if missing & declared:
        raise NotImplementedError(f"{node.name}: no driver for input ports {sorted(missing & declared)}")
    # HDL ports FINN does not list as interfaces (e.g. Thresholding's set-select in1_V with SETS=1)
    # are held idle (tvalid = 0).
    cfg = {"inputs": {p: {"words": [hex(int(w)) for w in streams.get(p, [])]} for p in ins},
           "outputs": {p: {"n_words": out_geom[p]["n_words"]} for p in outs if p in out_geom},
           "p_valid": p_valid, "p_ready": p_ready, "seed": seed,
           # a streaming node may legitimately start on the next frame (FMPadding_rtl emits the next
           # image's top padding without input): count the words, do not demand silence afterwards
           "check_idle": False}
    defs = {"FINN_SIMULATION": 1}
    defs.update(defines or {})
    # FINN's wrappers read memory images ($readmemh) relative to the simulator's working directory
    cg = Path(inst.get_nodeattr("code_gen_dir_ipgen"))
    data = [f for f in cg.iterdir() if f.suffix in (".dat", ".mem", ".hex")]
    res = run_cocotb(srcs, top, "sim.tb.test_stream_io", includes=incs, defines=defs, config=cfg, copy_files=data)
    got = json.loads((res.test_dir / "outputs.json").read_text())
    g = out_geom["out0_V"]
    words = [int(w, 16) for w in got["out0_V"]]
    y = rtlsim_output_to_npy(words, None, g["dtype"], g["folded_shape"], g["packed_bits"], g["dtype"].bitwidth())
    y = np.asarray(y, dtype=np.float32).reshape(g["normal_shape"])
    if return_info:
        return y, {"build_seconds": res.build.seconds, "cached": res.build.cached, "sim_seconds": res.sim_seconds,
                   "toplevel": top, "sources": [str(s) for s in srcs], "test_dir": str(res.test_dir)}
    return y
