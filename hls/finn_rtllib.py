"""FINN+'s ``finn-rtllib`` as this repository's hardware uses it: a patched copy, and node HDL.

The stitched tops (:mod:`hls.stitch`), the Vivado sources (:mod:`hls.axi_top`) and every
simulation (``sim/finn_rtllib.py``) are built against one copy of FINN+'s ``finn-rtllib`` with a
few small fixes (:data:`PATCHES`, each with its reason: Verilator's limits, and one functional
fix the hardware needs as well). The copy lives in the generated-HDL cache (:func:`cache_root`)
and is made once per FINN+ version and patch list::

    from hls.finn_rtllib import node_sources, prepare_ip
    model = prepare_ip(model, get_board("zcu104").part, 5.0)     # GiveUniqueNodeNames + PrepareIP
    srcs, incs, top = node_sources(model.graph.node[0])            # rtllib paths -> the patched copy
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from hls.boards import get_board

# The same folder and variable as the Verilator build cache (sim/verilator.py): one setting moves all
# generated HDL.
CACHE_ENV = "SIGMABRANCH_SIM_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[1]
ZCU104_PART = get_board("zcu104").part
# Appended to every patched file; part of the copy's key, so a changed mark makes a fresh copy.
PATCH_MARK = "// sigmabranch patch (hls/finn_rtllib.py)"


def cache_root() -> Path:
    """``$SIGMABRANCH_SIM_CACHE``, else ``build/sim-cache`` under the repository root."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else REPO_ROOT / "build" / "sim-cache"


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
    (
        "fetch_weights/fetch_weights.sv",
        "\tbit [ADDR_BITS-1:0]  ADDRESS_OFFSET = 0,\n",
        "\tbit [ADDR_BITS-1:0]  ADDRESS_OFFSET = 0,\n"
        "\tbit [ADDR_BITS-1:0]  LAYER_STRIDE = 0,  // sigmabranch: index i reads at i * LAYER_STRIDE (0: LAYER_OFFS)\n",
        "not a fix: an index token selects a weight set at i * LAYER_OFFS, FINN's layer-after-layer layout; "
        "the tree's image keeps one region per branch (all the branch's layers together, one host DMA), so "
        "the stride between a layer's sets is the region's. With the stride a parameter, the index token "
        "carries the branch and each fetcher reads the region of the image its token belongs to, so tokens "
        "of the next images can queue while a level still computes",
    ),
    (
        "fetch_weights/fetch_weights.sv",
        "\t\tassign\tl_offsets[i] = i * LAYER_OFFS;",
        "\t\tassign\tl_offsets[i] = i * (LAYER_STRIDE != 0 ? LAYER_STRIDE : LAYER_OFFS);",
        "the use of LAYER_STRIDE (above)",
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
    """A copy of finn-rtllib with :data:`PATCHES` applied, under :func:`cache_root` (created once)."""
    src = finn_rtllib_source()
    key = hashlib.sha256(json.dumps([_finn_version(), str(src), PATCHES, PATCH_MARK]).encode()).hexdigest()[:12]
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
            f.write_text(text.replace(old, new) + f"\n{PATCH_MARK}: {why}\n")
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
    """Initialise FINN+'s global settings outside its CLI, with FINN_BUILD_DIR under :func:`cache_root`."""
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


def fetcher_sources() -> list[Path]:
    """The patched rtllib files under FINN+'s ``fetch_weights`` wrapper (an ``external_mem`` MVAU)."""
    lib = patched_rtllib()
    return [lib / "fetch_weights" / "fetch_weights.sv", lib / "fetch_weights" / "local_weight_buffer.sv",
            lib / "dwc" / "hdl" / "vpc.sv", lib / "cdma" / "cdma_u" / "cdma_u_rd.sv",
            lib / "cdma" / "cdma_u" / "axi_dma_rd_u.sv", fifo_source(), lib / "skid" / "skid.sv"]


def dwc_sources() -> list[Path]:
    """FINN+'s ``dwc_axi`` (stream width converter, any ratio) and the ``vpc`` under it."""
    lib = patched_rtllib()
    return [lib / "dwc" / "hdl" / "dwc_axi.sv", lib / "dwc" / "hdl" / "vpc.sv"]


def fifo_source() -> Path:
    """FINN+'s ``fifo`` (the stitched design's feature-map and residual-path FIFOs)."""
    return patched_rtllib() / "fifo" / "hdl" / "fifo.sv"


def memstream_sources() -> list[Path]:
    """The patched rtllib files under FINN+'s memstream wrapper (an ``internal_decoupled`` MVAU)."""
    lib = patched_rtllib()
    return [lib / "memstream" / "hdl" / "memstream.sv", lib / "memstream" / "hdl" / "memstream_axi.sv",
            lib / "axi" / "hdl" / "axilite.sv"]
