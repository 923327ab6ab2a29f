"""What the tree's hardware is made of: stages, parts and the whole tree, from one build output.

This module describes what is connected; :mod:`hls.stitch` writes it as SystemVerilog text. From
``sigmabranch build``'s output (``nodes/<node>.hw.onnx``, ``weights.json``, ``export/``)::

    from hls.parts import TreeParts
    tp = TreeParts("build/zcu104", "build/zcu104/vivado/prepared")
    tp.backbone()          # Part: every FINN+ RTL layer, max-pools by hls/rtl/stream_maxpool.sv
    tp.router(0, 0)        # Part: global_sum_pool -> projection MVAU_rtl (memstream) -> router_decide
    tp.level(0, 1)         # Part: branch_0_1 -> router_1_1, its external_mem MVAUs fetching region 1
    tp.whole_tree()        # TreePart: backbone, root router, one shared datapath per level

1. :func:`prepare_node`: FINN+'s ``InsertDWC`` (data width converters between layers of different
   folding, as FINN's stitching flow inserts them), ``SpecializeLayers`` (RTL DWCs), node names
   prefixed with the tree node (module names must be unique in one top), ``PrepareIP``;
   :meth:`TreeParts.prepared` keeps the result on disk under its work directory.
2. :func:`node_stages`: the node's layers as :class:`Stage` s, with FINN+'s HLS-only layers
   replaced by this repository's blocks (``hls/rtl``): ``ConvolutionInputGenerator_rtl`` ->
   ``Pool_hls`` becomes ``stream_maxpool``, ``GlobalAccPool_hls`` becomes ``global_sum_pool``;
   a router node gets its ``router_decide`` wrapper (integers from ``tree.json``) appended
   (:func:`router_stage`), a level's datapath the routers of the next level behind the branch
   register (:func:`router_select_stage`).
3. MVAUs carry a :class:`WeightPort`: ``internal_decoupled`` ones their memstream wrapper,
   ``external_mem`` ones FINN+'s ``fetch_weights`` wrapper and, from ``weights.json``
   (:func:`annotate_fetchers`), their layer's offset and bytes inside the branch region.

A level's datapath serves every branch of the level: module names are level-generic (prefix
``l<L>b``/``l<L>n``), the branches' thresholds are ``$readmemh`` files (in the whole tree one
multi-set thresholding, :func:`multiset_thresholds`), the next level's routers are selected by
the branch register.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from host.int_reference import IntegerTree
from hls.filelock import file_lock
from hls.finn_rtllib import (dwc_sources, ensure_finn_settings, fetcher_sources, fifo_source, memstream_sources,
                             node_sources)
from hls.residual import layer_fifo_depth, path_fifo_depths, stream_order
from hls.router_params import write_router_params
from hls.weight_image import narrow_layers
from hls.stitch import (RTL_DIR, StitchError, flat_stages, host_feed_wrapper, module_header, router_select_text,
                        stride_wrapper)


def _rup8(n: int) -> int:
    return -(-int(n) // 8) * 8


# --------------------------------------------------------------------------------- stages
@dataclass
class WeightPort:
    """The weight input (``in1_V``) of an MVAU stage and the FINN+ wrapper that feeds it."""
    kind: str                      # "memstream" (on chip) or "fetch" (external_mem, from DDR)
    wrapper: str                   # the wrapper's module name
    header: str                    # its port header, to tie off inputs not connected
    mh: int                        # the layer's matrix height / width
    mw: int
    pe: int
    simd: int
    ww: int                        # weight bits
    offset: int | None = None      # a fetcher: the layer's offset inside the branch region (weights.json)
    layer_bytes: int | None = None  # and its bytes there
    n_reps: int = 1                # output pixels per image: the weight set streams this often

    @property
    def words_per_image(self) -> int:
        """Weight words the MVAU takes per image (the fetcher's buffer streams its set n_reps times)."""
        return (self.mh // self.pe) * (self.mw // self.simd) * self.n_reps

    @property
    def w_width(self) -> int:
        """Width of the weight stream (PE * SIMD weights, padded to bytes)."""
        return _rup8(self.pe * self.simd * self.ww)


@dataclass
class RouterSelect:
    """A stage holding one router per branch: its ``sel`` input is the branch register."""
    sel_w: int                     # width of ``sel``


@dataclass
class Stage:
    """One streaming block of a chain: a FINN+ RTL layer or one of ``hls/rtl``'s blocks."""
    name: str                      # instance name
    module: str
    in_w: int                      # padded stream widths
    out_w: int
    in_port: str = "in0_V"
    out_port: str = "out0_V"
    upper: bool = True             # FINN wrappers spell _TDATA, ours _tdata
    params: dict[str, Any] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    includes: list[Path] = field(default_factory=list)
    data_files: list[Path] = field(default_factory=list)
    port_text: str = ""            # module header, to tie off inputs not connected
    weights: WeightPort | None = None
    select: RouterSelect | None = None
    # further port -> signal connections; "{sel}" stands for the chain's branch register
    conns: dict[str, str] = field(default_factory=dict)
    # element geometry of the output stream (for unpacking): (element bits, elements per word, signed)
    out_elem: tuple[int, int, bool] = (0, 0, False)
    in_elem: tuple[int, int, bool] = (0, 0, False)
    residual: Residual | None = None  # a residual block: this stage is its adder, the paths inside
    frame_words: int = 0           # input words of one image (where a branch tag must follow the image)
    out_fifo: int = 0              # depth of the FIFO after this stage inside its chain (0: none)

    @property
    def fetches(self) -> bool:
        """Whether the stage's weights come from DDR (one fetcher on the shared read port)."""
        return self.weights is not None and self.weights.kind == "fetch"


@dataclass
class Residual:
    """A residual block inside a node: the stream forks (``stream_fork``) into two paths that
    ``stream_add`` (the :class:`Stage` holding this) joins. Each path ends in a FIFO sized by
    :func:`path_fifo_depths`, so neither path's backlog can stall the fork (no deadlock) and the
    slower path never waits on the faster one."""
    paths: tuple[list[Stage], list[Stage]]   # the add's first (in0_V) and second (in1_V) operand
    fifo_depths: tuple[int, int]             # words buffered at each path's end (the fork's width: the stage's in_w)
    backlog: tuple[int, int]                 # the words each FIFO must hold (depths: these + one pixel)


@dataclass
class LevelPart:
    """One level's shared datapath: the branch layers, then the node below (router select or head)."""
    branch: list[Stage]
    below: list[Stage]
    n_branches: int
    base: int                      # level base inside weights.bin
    stride: int                    # region stride
    fmap_words: int                # words of the level's input feature map (FIFO depth)
    out_words: int = 1             # words the level emits per inference (1 decision, or the head's)


@dataclass
class Part:
    """One part as a chain of stages (:func:`hls.stitch.write_chain_top`'s input)."""
    top: str                       # module name of its stitched top
    stages: list[Stage]
    out_elems: int                 # output elements per inference (a decision: 1)
    tap: int | None = None         # a level datapath: index of the branch's last stage
    below: str | None = None       # a level datapath: the node after the branch (router or head)


@dataclass
class TreePart:
    """The whole tree (:func:`hls.stitch.write_tree_top`'s input)."""
    backbone: list[Stage]
    root_router: list[Stage]
    levels: list[LevelPart]
    bb_words: int                  # words of the backbone's output map (the level-0 FIFO depth)

    @property
    def stages(self) -> list[Stage]:
        """Every stage of the tree, residual paths included."""
        return flat_stages(self.backbone + self.root_router + [st for lv in self.levels for st in lv.branch + lv.below])


# --------------------------------------------------------------------------------- stages of one node
def prepare_node(model, part: str, clk_ns: float, prefix: str, out_dir: Path):
    """InsertDWC + SpecializeLayers + unique names + PrepareIP into ``out_dir`` (returns the model)."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from finn.util.settings import get_settings
    from qonnx.transformation.general import GiveUniqueNodeNames

    ensure_finn_settings()
    with contextlib.redirect_stdout(io.StringIO()):
        model = model.transform(InsertDWC()).transform(SpecializeLayers(part)).transform(GiveUniqueNodeNames())
        for node in model.graph.node:
            node.name = f"{prefix}_{node.name}"
        out_dir.mkdir(parents=True, exist_ok=True)
        saved = get_settings().finn_build_dir
        get_settings().finn_build_dir = out_dir.resolve()
        try:
            model = model.transform(PrepareIP(part, clk_ns))
        finally:
            get_settings().finn_build_dir = saved
    return model


def narrow_fetched_weights(model, prefix: str, narrow: set[str]) -> None:
    """Declare narrow weights (``NARROW_WEIGHTS = 1``) to the ``external_mem`` MVAU_rtl layers in
    ``narrow`` (unprefixed names) of a prepared node.

    FINN+ generates ``NARROW_WEIGHTS = 0`` for any layer whose weights it cannot see (fetched
    from DDR), and on DSP48E1 its MVU then packs 3 PE lanes per DSP instead of 4 for 4-bit
    weights and activations: the demo's fetched layers took 270 DSPs where 189 do. The build
    knows every branch's weights: a layer is in ``narrow`` only if no branch has a weight at the
    datatype's minimum (``weights.json`` records it; a weight image with such a value is not this
    design's)."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if node.op_type != "MVAU_rtl" or node.name[len(prefix) + 1:] not in narrow:
            continue
        inst = getCustomOp(node)
        if inst.get_nodeattr("mem_mode") != "external_mem":
            continue
        wrapper = Path(inst.get_nodeattr("code_gen_dir_ipgen")) / f"{node.name}_wrapper.v"
        text = wrapper.read_text()
        patched = re.sub(r"(parameter\s+NARROW_WEIGHTS\s*=\s*)0\b", r"\g<1>1", text)
        if patched == text:
            raise StitchError(f"{wrapper}: no NARROW_WEIGHTS = 0 parameter to set (FINN+'s MVAU_rtl wrapper changed?)")
        wrapper.write_text(patched)


def _finn_stage(model, node) -> Stage:
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(node)
    srcs, incs, top = node_sources(inst)
    cg = Path(inst.get_nodeattr("code_gen_dir_ipgen"))
    top_file = next((s for s in srcs if Path(s).stem in (top, f"{top}_wrapper")), srcs[0])
    header = module_header(Path(top_file), top)
    st = Stage(node.name, top, _rup8(inst.get_instream_width(0)), _rup8(inst.get_outstream_width(0)),
               upper="in0_V_TDATA" in header, sources=list(srcs), includes=list(incs), port_text=header,
               frame_words=int(np.prod(inst.get_folded_input_shape()[:-1])), out_fifo=layer_fifo_depth(inst))
    st.data_files = [f for f in cg.iterdir() if f.suffix in (".dat", ".mem", ".hex")]
    if st.out_fifo:
        st.sources.append(fifo_source())
    odt, idt = inst.get_output_datatype(), inst.get_input_datatype(0)
    st.out_elem = (odt.bitwidth(), int(inst.get_folded_output_shape()[-1]), odt.signed())
    st.in_elem = (idt.bitwidth(), int(inst.get_folded_input_shape(0)[-1]), idt.signed())
    if node.op_type.startswith("MVAU"):
        mode = inst.get_nodeattr("mem_mode")
        kind = {"external_mem": "fetch", "internal_decoupled": "memstream"}.get(mode)
        if kind is None:
            raise StitchError(f"{node.name}: mem_mode {mode!r} is not stitched (internal_decoupled, external_mem)")
        wmod = f"{top}_{'fetch_weights' if kind == 'fetch' else 'memstream'}_wrapper"
        wfile = cg / f"{wmod}.v"
        if kind == "fetch":
            if inst.get_nodeattr("TH") != 1:
                raise StitchError(f"{node.name}: the tiled MVU (TH > 1) does not compile in Verilator; keep TH=1")
            host_feed_wrapper(wfile)
            stride_wrapper(wfile)
            st.sources += [wfile] + fetcher_sources()
        else:
            st.sources += [wfile] + memstream_sources()
        st.weights = WeightPort(kind, wmod, module_header(wfile, wmod), mh=inst.get_nodeattr("MH"),
                                mw=inst.get_nodeattr("MW"), pe=inst.get_nodeattr("PE"), simd=inst.get_nodeattr("SIMD"),
                                ww=inst.get_input_datatype(1).bitwidth(),
                                n_reps=int(np.prod(inst.get_nodeattr("numInputVectors"))))
    return st


def _maxpool_stage(model, cig, pool, name: str) -> Stage:
    from qonnx.custom_op.registry import getCustomOp
    c, p = getCustomOp(cig), getCustomOp(pool)
    ifm = c.get_nodeattr("IFMDim")
    k = c.get_nodeattr("ConvKernelDim")
    stride = c.get_nodeattr("Stride")
    if list(k) == list(ifm):
        return _global_maxpool_stage(c, p, name)
    if ifm[0] != ifm[1] or k[0] != k[1] or list(stride) != list(k):
        raise StitchError(f"{pool.name}: only square, non-overlapping max-pooling maps to stream_maxpool "
                          f"(IFMDim {ifm}, kernel {k}, stride {stride})")
    pe_in, pe_out = c.get_nodeattr("SIMD"), p.get_nodeattr("PE")
    if pe_in != pe_out:
        raise StitchError(f"{pool.name}: the window generator's SIMD ({pe_in}) differs from the pool's PE "
                          f"({pe_out}); stream_maxpool keeps one PE")
    dt = c.get_input_datatype(0)
    chans = p.get_nodeattr("Channels")
    params = dict(IFM_DIM=ifm[0], K=k[0], C=chans, PE=pe_in, W=dt.bitwidth(), SIGNED=int(dt.signed()))
    w = _rup8(pe_in * dt.bitwidth())
    return Stage(name, "stream_maxpool", w, w, upper=False, params=params, sources=[RTL_DIR / "stream_maxpool.sv"],
                 out_elem=(dt.bitwidth(), pe_in, dt.signed()), in_elem=(dt.bitwidth(), pe_in, dt.signed()))


def _global_maxpool_stage(cig, pool, name: str) -> Stage:
    """A max-pool whose window is the whole map (PointNet++'s max over the points, any H x W):
    ``global_sum_pool`` with ``MAX=1`` (one output pixel, no window buffer)."""
    ifm = cig.get_nodeattr("IFMDim")
    pe_in, pe_out = cig.get_nodeattr("SIMD"), pool.get_nodeattr("PE")
    if pe_in != pe_out:
        raise StitchError(f"{pool.onnx_node.name}: the window generator's SIMD ({pe_in}) differs from the pool's PE "
                          f"({pe_out}); global_sum_pool keeps one PE")
    dt = cig.get_input_datatype(0)
    params = dict(C=pool.get_nodeattr("Channels"), PE=pe_in, N_PIXELS=int(np.prod(ifm)), IN_W=dt.bitwidth(),
                  SIGNED=int(dt.signed()), MAX=1)
    w = _rup8(pe_in * dt.bitwidth())
    return Stage(name, "global_sum_pool", w, w, upper=False, params=params, sources=[RTL_DIR / "global_sum_pool.sv"],
                 out_elem=(dt.bitwidth(), pe_in, dt.signed()), in_elem=(dt.bitwidth(), pe_in, dt.signed()))


def width_converter(src: tuple[int, int, bool], dst: tuple[int, int, bool], name: str) -> Stage | None:
    """FINN+'s ``dwc_axi`` between two nodes whose streams carry the same elements in words of
    different sizes (``src``/``dst``: (element bits, elements per word, signed)); None where they
    already agree. Inside a node FINN+'s ``InsertDWC`` does this; between nodes nothing did."""
    if src[:2] == dst[:2]:
        return None
    if src[0] != dst[0] or src[2] != dst[2]:
        raise StitchError(f"{name}: a stream of {src[0]}-bit {'signed' if src[2] else 'unsigned'} elements feeds one "
                          f"reading {dst[0]}-bit {'signed' if dst[2] else 'unsigned'} elements")
    ibits, obits = src[0] * src[1], dst[0] * dst[1]
    return Stage(name, "dwc_axi", _rup8(ibits), _rup8(obits), in_port="s_axis", out_port="m_axis", upper=False,
                 params={"IBITS": ibits, "OBITS": obits}, sources=dwc_sources(), out_elem=dst, in_elem=src)


def joined(src_elem: tuple[int, int, bool], stages: list[Stage], name: str) -> list[Stage]:
    """``stages`` reading a stream of ``src_elem``: a width converter in front where they differ."""
    dwc = width_converter(src_elem, stages[0].in_elem, name)
    return [dwc, *stages] if dwc else stages


def _sumpool_stage(model, node, name: str) -> Stage:
    from qonnx.custom_op.registry import getCustomOp
    inst = getCustomOp(node)
    idt, odt = inst.get_input_datatype(0), inst.get_output_datatype()
    pe, chans = inst.get_nodeattr("PE"), inst.get_nodeattr("NumChannels")
    n_pix = int(np.prod(inst.get_nodeattr("numInputVectors")[1:]))
    params = dict(C=chans, PE=pe, N_PIXELS=n_pix, IN_W=idt.bitwidth(), SIGNED=int(idt.signed()), OUT_W=odt.bitwidth())
    return Stage(name, "global_sum_pool", _rup8(pe * idt.bitwidth()), _rup8(pe * odt.bitwidth()), upper=False,
                 params=params, sources=[RTL_DIR / "global_sum_pool.sv"],
                 out_elem=(odt.bitwidth(), pe, odt.signed()), in_elem=(idt.bitwidth(), pe, idt.signed()))


def _projection(model):
    """(output datatype, PE) of a router node's last layer: the projection router_decide reads."""
    from qonnx.custom_op.registry import getCustomOp
    last = getCustomOp(model.graph.node[-1])
    return last.get_output_datatype(), int(last.get_folded_output_shape()[-1])


def _write_router(path: Path, decision: dict[str, Any], zdt, pe: int, idx_base: int = 0) -> None:
    write_router_params(path, np.asarray(decision["bias_int"]), np.asarray(decision["u_int"]),
                        int(decision["c_int"]), int(decision["e_int"]), z_width=zdt.bitwidth(), pe=pe,
                        idx_base=idx_base)


def router_stage(model, decision: dict[str, Any], name: str, gen_dir: Path, idx_base: int = 0) -> Stage:
    """``router_decide`` with this router's integers, after the projection MVAU (its output stream)."""
    zdt, pe = _projection(model)
    gen_dir.mkdir(parents=True, exist_ok=True)
    path = gen_dir / f"{name}.sv"
    _write_router(path, decision, zdt, pe, idx_base)
    return Stage(name, name, _rup8(pe * zdt.bitwidth()), 16, upper=False,
                 sources=[RTL_DIR / "router_decide.sv", path], out_elem=(16, 1, False),
                 in_elem=(zdt.bitwidth(), pe, zdt.signed()))


def router_select_stage(model, decisions: list[dict[str, Any]], name: str, gen_dir: Path) -> Stage:
    """One router per branch of a level (each ``router_decide`` with its own integers), the input
    frame steered to, and the decision taken from, the one ``sel`` (the branch register) names.
    The integers are baked into each instance, so a level of B branches holds B decision units
    (small next to the MVAU: one PE-wide multiply-accumulate each)."""
    zdt, pe = _projection(model)
    gen_dir.mkdir(parents=True, exist_ok=True)
    in_w = _rup8(pe * zdt.bitwidth())
    files = []
    for i, d in enumerate(decisions):
        path = gen_dir / f"{name}_b{i}.sv"
        _write_router(path, d, zdt, pe)
        files.append(path)
    sw = max(1, (len(decisions) - 1).bit_length())
    top = gen_dir / f"{name}.sv"
    top.write_text(router_select_text(name, len(decisions), in_w, sw))
    n = len(np.asarray(decisions[0]["u_int"]))
    return Stage(name, name, in_w, 16, upper=False, sources=[RTL_DIR / "router_decide.sv", *files, top],
                 select=RouterSelect(sw), out_elem=(16, 1, False), in_elem=(zdt.bitwidth(), pe, zdt.signed()),
                 frame_words=n // pe)


def _add_stage(model, add, name: str) -> Stage:
    """``stream_add`` for FINN+'s ``ElementwiseAdd`` of two streams (its PE, operand and output types)."""
    from qonnx.custom_op.registry import getCustomOp
    inst = getCustomOp(add)
    if inst.get_nodeattr("lhs_style") != "input" or inst.get_nodeattr("rhs_style") != "input":
        raise StitchError(f"{add.name}: an add of a constant is not a residual join (stream_add adds two streams)")
    a, b, o = (inst.get_input_datatype(0), inst.get_input_datatype(1), inst.get_output_datatype())
    if not (a.is_integer() and b.is_integer() and o.is_integer()):
        raise StitchError(f"{add.name}: stream_add adds integers ({a.name} + {b.name} -> {o.name})")
    if not (o.allowed(a.min() + b.min()) and o.allowed(a.max() + b.max())):
        # FINN+ types INT<n> + UINT<n> one bit short; the hardware would wrap where the reference does not
        raise StitchError(f"{add.name}: {a.name} + {b.name} does not fit FINN+'s output type {o.name}")
    pe = inst.get_nodeattr("PE")
    params = dict(PE=pe, A_W=a.bitwidth(), B_W=b.bitwidth(), A_SIGNED=int(a.signed()), B_SIGNED=int(b.signed()),
                  OUT_W=o.bitwidth())
    return Stage(name, "stream_add", _rup8(pe * a.bitwidth()), _rup8(pe * o.bitwidth()), upper=False, params=params,
                 sources=[RTL_DIR / "stream_add.sv"], out_elem=(o.bitwidth(), pe, o.signed()),
                 in_elem=(a.bitwidth(), pe, a.signed()))


def _stages_of(model, nodes: list, prefix: str, made: list[Stage]) -> list[Stage]:
    """Stages of nodes in stream order (``made``: every stage so far, for unique names)."""
    from qonnx.custom_op.registry import getCustomOp
    stages, i = [], 0
    while i < len(nodes):
        n = nodes[i]
        if isinstance(n, tuple):                     # a residual block: fork, two paths, add
            fork, path0, path1, add = n
            paths = (_stages_of(model, path0, prefix, made), _stages_of(model, path1, prefix, made))
            depths, backlog = path_fifo_depths(model, fork, (path0, path1), add)
            st = _add_stage(model, add, add.name)
            st.sources = [RTL_DIR / "stream_add.sv", RTL_DIR / "stream_fork.sv", fifo_source()]
            st.residual = Residual(paths, depths, backlog)
            fork_inst = getCustomOp(fork)   # the block reads what the fork reads
            idt = fork_inst.get_input_datatype(0)
            st.in_w = _rup8(fork_inst.get_instream_width(0))
            st.in_elem = (idt.bitwidth(), int(fork_inst.get_folded_input_shape(0)[-1]), idt.signed())
            stages.append(st)
            made.append(st)
            i += 1
            continue
        if n.op_type.startswith("ConvolutionInputGenerator") and i + 1 < len(nodes):
            j = i + 1
            while j < len(nodes) and nodes[j].op_type.startswith("StreamingDataWidthConverter"):
                j += 1
            if j < len(nodes) and nodes[j].op_type == "Pool_hls":
                if j != i + 1:
                    raise StitchError(f"{nodes[j].name}: a width converter between the window generator and the pool")
                stages.append(_maxpool_stage(model, n, nodes[j], f"{prefix}_maxpool_{len(made)}"))
                made.append(stages[-1])
                i = j + 1
                continue
        if n.op_type == "GlobalAccPool_hls":
            stages.append(_sumpool_stage(model, n, f"{prefix}_sumpool_{len(made)}"))
        elif n.op_type.endswith("_hls"):
            raise StitchError(f"{n.name}: HLS-only layer {n.op_type} has no RTL replacement here")
        else:
            stages.append(_finn_stage(model, n))
        made.append(stages[-1])
        i += 1
    return stages


def node_stages(model, prefix: str) -> list[Stage]:
    """The layers of one prepared node as stages (HLS-only layers replaced, see the module doc);
    a residual block is one stage (its adder) holding the two paths (:class:`Residual`)."""
    nodes = stream_order(model)
    return _stages_of(model, nodes, prefix, [])


def annotate_fetchers(stages: list[Stage], layers: list[dict[str, Any]],
                      original_names: dict[str, tuple[str, str]]) -> None:
    """Give each fetcher stage its layer offset and bytes inside the branch region (``weights.json``
    ``layers``; ``original_names``: stage name -> (tree node, layer name in the build))."""
    for st in flat_stages(stages):
        if not st.fetches:
            continue
        orig = original_names.get(st.name)
        match = [layer for layer in layers if orig and layer["layer"] == orig[1] and layer["node"] == orig[0]]
        if len(match) != 1:
            raise StitchError(f"{st.name}: no unique layer {orig} in weights.json")
        st.weights.offset = int(match[0]["offset"])
        st.weights.layer_bytes = int(match[0]["bytes"])


def multiset_thresholds(per_branch: list[Stage], gen_dir: Path) -> Stage:
    """The level's shared ``Thresholding_rtl`` holding every branch's thresholds as FINN+ threshold
    sets (``SETS`` = branches, set = branch, memory ``{set, channel fold, step}``); the set-select
    stream ``in1_V`` is the branch register, valid all the time. ``per_branch[b]``: the same layer
    prepared from branch b's graph (its single-set ``.dat`` files)."""
    st = per_branch[0]
    texts = {Path(s).read_text() for b in per_branch for s in b.sources if Path(s).stem == b.module}
    if len(texts) != 1:
        raise StitchError(f"{st.name}: the branches' thresholding wrappers differ (not one shared datapath)")
    n = len(per_branch)
    if n & (n - 1):
        raise StitchError(f"{st.name}: {n} threshold sets; FINN+'s set select needs a power of two")
    gen_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for f in sorted(st.data_files):
        m = re.search(r"_threshs_(\d+)_(\d+)\.dat$", f.name)
        if not m:
            continue
        stage = int(m.group(2))
        blocks = []
        for b in per_branch:
            lines = next(g for g in b.data_files if g.name == f.name).read_text().split()
            cf = len(lines) >> stage
            cfp = 1 << max(0, (cf - 1).bit_length())
            blocks += lines + ["0"] * ((cfp - cf) << stage)
        out = gen_dir / f.name.replace("_threshs_", "_ms_threshs_")
        out.write_text("\n".join(blocks) + "\n")
        files.append(out)
    return dataclasses.replace(st, data_files=files, params={"SETS": n, "THRESHOLDS_PATH": f'"./{st.name}_ms_"'},
                               conns={**st.conns, "in1_V_TDATA": "8'({sel})", "in1_V_TVALID": "1'b1"})


def shared_datapath(per_branch: list[list[Stage]], gen_dir: Path) -> list[Stage]:
    """One level's datapath from the same stages prepared for each branch: branch 0's stages,
    every thresholding (residual paths included) holding all branches' sets."""
    out = []
    for same in zip(*per_branch):
        st = same[0]
        if st.residual:
            paths = tuple(shared_datapath([b.residual.paths[p] for b in same], gen_dir) for p in (0, 1))
            st = dataclasses.replace(st, residual=dataclasses.replace(st.residual, paths=paths))
        elif "Thresholding" in st.module:
            st = multiset_thresholds(list(same), gen_dir)
        out.append(st)
    return out


# --------------------------------------------------------------------------------- parts of one build
class TreeParts:
    """The parts of one ``sigmabranch build`` output, their nodes prepared under ``work_dir``."""

    def __init__(self, build_dir: str | Path, work_dir: str | Path):
        self.build_dir = Path(build_dir)
        self.work = Path(work_dir)
        self.driver = json.loads((self.build_dir / "driver.json").read_text())
        self.weights = json.loads((self.build_dir / "weights.json").read_text())
        self.tree = IntegerTree.load(self.build_dir / "export")
        self.manifest = self.tree.manifest
        self.part, self.clk_ns = self.driver["part"], float(self.driver["clk_ns"])
        # PointNet++: the processor computes the backbone, the fabric's input is its output map
        self.host_backbone = not self.manifest["nodes"]["backbone"]["program"]
        self._models: dict[tuple[str, str], Any] = {}
        ensure_finn_settings()

    def prepared(self, node: str, prefix: str):
        """``nodes/<node>.hw.onnx`` with DWCs, unique names (``prefix``) and HDL, cached on disk."""
        from qonnx.core.modelwrapper import ModelWrapper

        if (node, prefix) in self._models:
            return self._models[(node, prefix)]
        d = self.work / prefix / node
        saved = d / "prepared.onnx"
        with file_lock(self.work / prefix / f".{node}.lock"):  # the work folder may be shared (content-keyed)
            if saved.exists():
                model = ModelWrapper(str(saved))
            else:
                if d.exists():
                    shutil.rmtree(d)
                model = prepare_node(ModelWrapper(str(self.build_dir / "nodes" / f"{node}.hw.onnx")), self.part,
                                     self.clk_ns, prefix, d)
                narrow_fetched_weights(model, prefix, narrow_layers(self.weights, node))
                model.save(str(saved))
        self._models[(node, prefix)] = model
        return model

    def stages(self, node: str, prefix: str, layers: list[dict[str, Any]] | None = None):
        """(prepared model, stages) of ``node``; its fetchers located in the region's ``layers``
        (a backbone on the processor: no model, no stages)."""
        if node == "backbone" and self.host_backbone:
            return None, []
        model = self.prepared(node, prefix)
        stages = node_stages(model, prefix)
        names = {n.name: (node, n.name[len(prefix) + 1:]) for n in model.graph.node}
        annotate_fetchers(stages, layers or [], names)
        return model, stages

    def region(self, level: int, branch: int) -> dict[str, Any]:
        """``weights.json``'s region of branch ``branch`` at ``level`` (offset, bytes, layers)."""
        return self.weights["levels"][level]["regions"][branch]

    def region_offset(self, level: int, branch: int) -> int:
        """Where the region starts in ``weights.bin``: ``level.base + branch * level.region_stride``."""
        lv = self.weights["levels"][level]
        return lv["base"] + branch * lv["region_stride"]

    def n_out(self, node: str) -> int:
        """Output elements of ``node`` per inference."""
        return int(np.prod(self.manifest["nodes"][node]["output_shape"][1:]))

    def _below(self, level: int, branch: int) -> str:
        """The node after branch ``branch`` of ``level``: the next level's router, or the leaf head."""
        if level + 1 < self.tree.depth:
            return IntegerTree.router_name(level + 1, branch)
        return IntegerTree.head_name(branch)

    def _router_select(self, level: int, model) -> Stage:
        """The routers of level ``level + 1``, one per branch of ``level``, behind its branch register."""
        decisions = [self.manifest["nodes"][IntegerTree.router_name(level + 1, b)]["decision"]
                     for b in range(2 ** (level + 1))]
        return router_select_stage(model, decisions, f"l{level}_routers", self.work / f"l{level}n" / "gen")

    # ----------------------------------------------------------------- parts
    def backbone(self) -> Part:
        _, stages = self.stages("backbone", "bb")
        return Part("tree_backbone", stages, self.n_out("backbone"))

    def router(self, level: int, node: int) -> Part:
        name = IntegerTree.router_name(level, node)
        prefix = f"r{level}{node}"
        model, stages = self.stages(name, prefix)
        stages.append(router_stage(model, self.manifest["nodes"][name]["decision"], f"{prefix}_decide",
                                   self.work / prefix / "gen"))
        return Part(f"tree_{prefix}", stages, 1)

    def level(self, level: int, branch: int) -> Part:
        """The level's datapath with branch ``branch``'s thresholds (its MVAU weights come from DDR)."""
        layers = self.region(level, branch)["layers"]
        # level-generic prefixes: the same modules for every branch of the level
        _, bstages = self.stages(IntegerTree.branch_name(level, branch), f"l{level}b", layers)
        below = self._below(level, branch)
        nmodel, nstages = self.stages(below, f"l{level}n", layers)
        if level + 1 < self.tree.depth:
            nstages.append(self._router_select(level, nmodel))
            out_elems = 1
        else:
            out_elems = self.n_out(below)
        nstages = joined(bstages[-1].out_elem, nstages, f"l{level}_dwc_below")
        return Part(f"tree_l{level}", bstages + nstages, out_elems, tap=len(bstages) - 1, below=below)

    def whole_tree(self) -> TreePart:
        """The whole tree as one stitched top's parts."""
        depth = self.tree.depth
        _, bb = self.stages("backbone", "bb")
        rr = self.router(0, 0).stages
        # the stream the levels start from: the backbone's output, or the input (as the root router reads it)
        src = bb[-1].out_elem if bb else rr[0].in_elem
        rr = joined(src, rr, "rr_dwc")
        levels: list[LevelPart] = []
        for L in range(depth):
            nb = 2 ** (L + 1)
            per_branch = [self.stages(IntegerTree.branch_name(L, b), f"l{L}b", self.region(L, b)["layers"])[1]
                          for b in range(nb)]
            bstages = joined(src, shared_datapath(per_branch, self.work / f"l{L}b" / "sets"), f"l{L}_dwc_in")
            below0 = self._below(L, 0)
            nmodel, nstages = self.stages(below0, f"l{L}n", self.region(L, 0)["layers"])
            if L + 1 < depth:
                if any("Thresholding" in st.module for st in nstages):
                    raise StitchError(f"{below0}: a router with thresholds (a hidden activation) is not stitched")
                nstages.append(self._router_select(L, nmodel))
                out_words = 1
            else:   # the leaf heads share the datapath too (a hidden FC layer: one threshold set each)
                nstages = shared_datapath([nstages] + [self.stages(self._below(L, b), f"l{L}n", self.region(L, b)["layers"])[1]
                                                       for b in range(1, nb)], self.work / f"l{L}n" / "sets")
                out_words = self.manifest["num_classes"] // nstages[-1].out_elem[1]
            nstages = joined(bstages[-1].out_elem, nstages, f"l{L}_dwc_below")
            in_node = "backbone" if L == 0 else IntegerTree.branch_name(L - 1, 0)
            fmap_words = self.n_out(in_node) // src[1]
            src = bstages[-1].out_elem
            lv = self.weights["levels"][L]
            levels.append(LevelPart(bstages, nstages, nb, lv["base"], lv["region_stride"], fmap_words, out_words))
        return TreePart(bb, rr, levels, levels[0].fmap_words)
