"""FINN+ RTL nodes in cocotb + Verilator: a patched finn-rtllib and a one-call node simulator.

FINN+'s own rtlsim needs Vivado's XSI. Here a node's generated HDL (``PrepareIP``, no Vivado) is
built with Verilator instead, against a copy of FINN+'s ``finn-rtllib`` with a few small fixes
for Verilator (:data:`PATCHES`, each with the reason), and driven by a cocotb testbench
(``sim/tb/test_stream_io.py``) with random valid/ready back-pressure::

    from sim.finn_rtllib import prepare_ip, simulate_finn_node
    model = prepare_ip(model, "xczu7ev-ffvc1156-2-e", 5.0)
    y = simulate_finn_node(model, model.graph.node[0], x)       # same layout as execute_onnx

Inputs and outputs are packed and unpacked with FINN's own ``npy_to_rtlsim_input`` /
``rtlsim_output_to_npy``, and streamed weights (MVAU/VVAU ``internal_decoupled`` / ``external``)
are fed on ``in1_V`` exactly as FINN's rtlsim does, so the result is comparable bit for bit with
``finn.core.onnx_exec.execute_onnx`` (``exec_mode="cppsim"``, i.e. FINN's Python execution).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sim.verilator import cache_root, run_cocotb

ZCU104_PART = "xczu7ev-ffvc1156-2-e"
PYNQZ2_PART = "xc7z020clg400-1"

# (file under finn-rtllib, text to replace, replacement, why). Applied to the cached copy only;
# a patch whose old text is missing (fixed upstream) is skipped and reported by patch_report().
PATCHES: list[tuple[str, str, str, str]] = [
    (
        "mvu/add_multi.sv",
        "\t\t// Compute the count of decendents for all nodes in the reduction trees.\n"
        "\t\ttypedef int unsigned  leaf_load_t[2*N-1];\n"
        "\t\tfunction leaf_load_t init_leaf_loads();\n"
        "\t\t\tautomatic leaf_load_t  res;\n"
        "\t\t\tfor(int unsigned  i = 2*N-1; i-- > N-1;)  res[i] = 1;\n"
        "\t\t\tfor(int unsigned  i =   N-1; i-- >   0;)  res[i] = res[2*i+1] + res[2*i+2];\n"
        "\t\t\treturn  res;\n"
        "\t\tendfunction : init_leaf_loads\n",
        "",
        "a constant function declared inside a generate block is illegal (IEEE 1800-2023 13.4.3) and "
        "Verilator refuses it: the typedef and function move to module scope (next patch)",
    ),
    (
        "mvu/add_multi.sv",
        "\tlocalparam int unsigned  L = $clog2(N);  // Number of levels with reductions\n",
        "\t// Compute the count of decendents for all nodes in the reduction trees.\n"
        "\ttypedef int unsigned  leaf_load_t[2*N-1];\n"
        "\tfunction leaf_load_t init_leaf_loads();\n"
        "\t\tautomatic leaf_load_t  res;\n"
        "\t\tfor(int unsigned  i = 2*N-1; i-- > N-1;)  res[i] = 1;\n"
        "\t\tfor(int unsigned  i =   N-1; i-- >   0;)  res[i] = res[2*i+1] + res[2*i+2];\n"
        "\t\treturn  res;\n"
        "\tendfunction : init_leaf_loads\n"
        "\tlocalparam int unsigned  L = $clog2(N);  // Number of levels with reductions\n",
        "the constant function removed from the generate block above, at module scope",
    ),
    (
        "skid/skid.sv",
        '$error("%m: Requested number of %0d FEED_STAGES exceeds SRL capacity.");',
        '$error("%m: Requested number of %0d FEED_STAGES exceeds SRL capacity.", FEED_STAGES);',
        "the format string has a %0d but no argument: Verilator rejects the $error call",
    ),
    (
        "fifo/hdl/fifo.sv",
        "\ttypedef struct {\n\t\tint unsigned  lo;\n\t\tint unsigned  hi;\n\t} abits_t;",
        "\ttypedef struct packed {\n\t\tint unsigned  lo;\n\t\tint unsigned  hi;\n\t} abits_t;",
        "INIT_ABITS() returns an unpacked struct into a localparam: Verilator cannot evaluate that "
        "constant function, a packed struct of the same fields it can",
    ),
    (
        "mvu/mvu_vvu_axi.sv",
        "/* else */    3 + $clog2(SIMD+1) + (SIMD == 1);",
        "/* else */    3 + $clog2(SIMD+1) + (SIMD == 1) + 2;  // sigmabranch fix: mvu.sv is deeper",
        "a functional fix, not a Verilator one: FINN+ 1.6.1 sizes the output queue by CORE_PIPELINE_DEPTH "
        "= 3 + clog2(SIMD+1) + (SIMD == 1), but mvu.sv's pipeline is 3 + clog2(SIMD) + (SIMD == 1) + 1 deep "
        "(SIMD = 9: 8 stages, 7 slots). A layer emitting every cycle (MW == SIMD) under back-pressure "
        "overflows the queue ('Overflowing output queue'; in hardware a word is lost): seen on the demo "
        "backbone's first conv behind FMPadding. Two more slots; the lock protocol is unchanged",
    ),
]


def finn_rtllib_source() -> Path:
    """The ``finn-rtllib`` directory of the installed FINN+ (``finn`` package)."""
    try:
        import finn
    except ImportError as e:
        raise ImportError("FINN+ not installed (pip install --no-deps finn-plus==1.6.1)") from e
    p = Path(finn.__file__).resolve().parent / "finn-rtllib"
    if not p.is_dir():
        raise FileNotFoundError(f"finn-rtllib not found next to the finn package ({p})")
    return p


def _finn_version() -> str:
    try:
        from importlib.metadata import version
        return version("finn-plus")
    except Exception:  # pragma: no cover
        return "unknown"


_REPORT: dict[str, str] = {}


def patched_rtllib(cache: Path | None = None) -> Path:
    """A copy of finn-rtllib with :data:`PATCHES` applied, under the sim cache (created once)."""
    src = finn_rtllib_source()
    key = hashlib.sha256(json.dumps([_finn_version(), str(src), PATCHES]).encode()).hexdigest()[:12]
    dst = (cache or cache_root()) / f"finn-rtllib-{key}"
    if (dst / ".patched").exists():
        _REPORT.update(json.loads((dst / ".patched").read_text()))
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    report = {}
    for rel, old, new, why in PATCHES:
        f = tmp / rel
        text = f.read_text()
        if old in text:
            f.write_text(text.replace(old, new) + f"\n// sigmabranch patch (sim/finn_rtllib.py): {why}\n")
            report[rel] = "patched"
        else:
            report[rel] = "not needed (text not found)"
    (tmp / ".patched").write_text(json.dumps(report, indent=1))
    try:
        tmp.rename(dst)
    except OSError:  # another process won
        shutil.rmtree(tmp, ignore_errors=True)
    _REPORT.update(report)
    return dst


def patch_report() -> dict[str, str]:
    """Which patches were applied to the cached copy."""
    patched_rtllib()
    return dict(_REPORT)


def to_patched(path: str | os.PathLike) -> Path:
    """Map a path inside the installed finn-rtllib to the patched copy (other paths unchanged)."""
    p = Path(path).resolve()
    src = finn_rtllib_source()
    try:
        rel = p.relative_to(src)
    except ValueError:
        return p
    return patched_rtllib() / rel


def ensure_finn_settings(build_dir: Path | None = None) -> None:
    """Initialise FINN+'s global settings outside its CLI, with FINN_BUILD_DIR under the sim cache."""
    from finn.util import settings as fs
    if fs._SETTINGS is not None:
        return
    bdir = Path(build_dir or os.environ.get("FINN_BUILD_DIR") or cache_root() / "finn-build").resolve()
    bdir.mkdir(parents=True, exist_ok=True)
    os.environ["FINN_BUILD_DIR"] = str(bdir)
    fs._SETTINGS = fs._initialize_from_environment()
    if fs._SETTINGS is None:
        fs.initialize_dummy_settings()


def prepare_ip(model, fpgapart: str = ZCU104_PART, clk_ns: float = 5.0):
    """``GiveUniqueNodeNames`` + FINN+'s ``PrepareIP`` (HDL generation; needs no Vivado for RTL nodes)."""
    ensure_finn_settings()
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from qonnx.transformation.general import GiveUniqueNodeNames
    model = model.transform(GiveUniqueNodeNames())
    return model.transform(PrepareIP(fpgapart, clk_ns))


def _streamed_weights(inst) -> bool:
    try:
        mem_mode = inst.get_nodeattr("mem_mode")
    except AttributeError:
        return False
    return mem_mode in ("internal_decoupled", "external")


def node_sources(node_or_inst) -> tuple[list[Path], list[Path], str]:
    """(Verilog sources, include dirs, toplevel) of a prepared FINN RTL node, rtllib paths patched."""
    from qonnx.custom_op.registry import getCustomOp
    inst = node_or_inst if hasattr(node_or_inst, "get_nodeattr") else getCustomOp(node_or_inst)
    if not inst.get_nodeattr("code_gen_dir_ipgen"):
        raise ValueError(f"{inst.onnx_node.name}: no generated HDL, run prepare_ip(model, ...) first")
    files = [to_patched(f) for f in inst.get_rtl_file_list(abspath=True)]
    # .v/.sv sources only; headers are found through the include dirs
    srcs = [f for f in files if f.suffix in (".v", ".sv")]
    incs = sorted({f.parent for f in files} | {to_patched(p) for p in inst.get_verilog_paths()})
    try:
        top = inst.get_nodeattr("gen_top_module") or inst.get_verilog_top_module_name()
    except AttributeError:
        top = inst.get_verilog_top_module_name()
    return srcs, incs, top


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
