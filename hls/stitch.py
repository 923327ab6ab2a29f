"""Stitched SystemVerilog tops of the tree's hardware (simulation and the Vivado sources).

FINN+ stitches its IP in Vivado (``CreateStitchedIP``). This module writes the same connections
as plain SystemVerilog text, from the stages and parts :mod:`hls.parts` describes (what is
connected; here only how it is written):

- :func:`write_chain_top`: one module chaining a part's stages stream to stream. Every
  ``external_mem`` MVAU gets its FINN+ ``fetch_weights`` wrapper with ``out0_V`` wired to the
  MVU's ``in1_V`` and ``ap_clk2x`` tied to ``ap_clk``; ``internal_decoupled`` MVAUs get their
  memstream. All fetchers share

  - ``region_base`` (64 bits): the DDR address of the chosen branch's region; each fetcher adds
    its layer's offset inside the region (``ADDRESS_OFFSET`` parameter = ``weights.json``'s layer
    ``offset``), so fetcher k reads ``region_base + offset_k``;
  - ``in_idx0_V``: one index token (value 0) per inference, broadcast to every fetcher (the token
    is taken once all fetchers took it); it triggers one fetch of each layer's weight set;
  - one AXI4 read port ``axi_mm_*`` (256-bit data, 64-bit address) through
    ``hls/rtl/axi_read_arbiter.sv``.

- :func:`write_tree_top`: the whole tree, each level's controller sending the router's decision
  as the index token (the fetchers' ``base_address`` is the level's base, ``LAYER_STRIDE`` its
  region stride), images overlapping level by level.
- the generated pieces a stage is built from: :func:`router_select_text` (a level's routers behind
  the branch register), :func:`host_feed_wrapper` (FINN+'s fetcher taking the host's weight stream).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BuildError

if TYPE_CHECKING:   # hls.parts builds on this module; the text only reads the stages
    from hls.parts import Stage, TreePart

RTL_DIR = Path(__file__).resolve().parent / "rtl"
RTL_FORK = RTL_DIR / "stream_fork.sv"    # write_tree_top's forks (and residual blocks')
ADDR_W, DATA_W, IDX_W = 64, 256, 16
# The weight port's arbiter (hls/rtl/axi_read_arbiter.sv): R beats buffered per fetcher, bursts in
# flight. Parameters of every generated top (FETCH_BUF_BEATS = 0: one burst at a time, unbuffered).
# FETCH_PRIORITY = 1: the fetchers (numbered in datapath order) served first to last, not in turn.
FETCH_BUF_BEATS, FETCH_OUTSTANDING, FETCH_PRIORITY = 32, 4, 1
# Images a level's input FIFO holds: a level takes its decision one image ahead (its fetchers'
# second bank fills meanwhile), so that image's map waits beside the one being computed. (On the
# demo the layer FIFOs were what lifted the batch rate; this alone measured no change.)
FMAP_IMAGES = 2
FETCH_PARAMS = (f" #(parameter int FETCH_BUF_BEATS = {FETCH_BUF_BEATS}, "
                f"parameter int FETCH_OUTSTANDING = {FETCH_OUTSTANDING}, "
                f"parameter int FETCH_PRIORITY = {FETCH_PRIORITY})")


class StitchError(BuildError):
    """A graph this module cannot stitch (names the layer and the reason)."""


def module_header(path: Path, module: str) -> str:
    """The port list of ``module`` in ``path`` (between ``module <name>`` and ``);``)."""
    text = path.read_text(errors="replace")
    m = re.search(rf"\bmodule\s+{re.escape(module)}\b(.*?)\);", text, re.S)
    if not m:
        raise StitchError(f"module {module} not found in {path}")
    return m.group(1)


def _inputs(header: str) -> list[str]:
    """Input port names of an ANSI module header (comments stripped)."""
    text = re.sub(r"//[^\n]*", "", header)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"`ifdef\s+\w+|`ifndef\s+\w+|`endif|`else", "", text)
    return re.findall(r"\binput\s+(?:wire\s+|logic\s+)?(?:\[[^\]]*\]\s*)?(\w+)", text)


HOST_FEED_MARK = "// host feed: hls/stitch.py"


def _unedited(wfile: Path, mark: str, anchors: tuple[str, ...], what: str) -> str | None:
    """``wfile``'s text if it still needs the edit ``mark`` names (None if done), each anchor
    found exactly once (else FINN+'s generated wrapper changed: refused, naming ``what``)."""
    text = wfile.read_text()
    if mark in text:
        return None
    if any(text.count(a) != 1 for a in anchors):
        raise StitchError(f"{wfile.name}: FINN+'s fetch_weights wrapper changed (no single {what})")
    return text


def host_feed_wrapper(wfile: Path) -> None:
    """Give a FINN+ ``fetch_weights`` wrapper a second source for its width converter: with
    ``host_feed`` high the VPC takes ``s_host_*`` (the level's weight DMA stream, split by
    ``hls/rtl/weight_stream_split.sv``) instead of the wrapper's own DMA engine, which then gets no
    index token. The local weight buffer, the VPC and FINN's layout stay as they are, so one
    region streamed by the PS fills the buffers exactly as the on-chip fetch does. Idempotent."""
    vpc_in = ".ivld(axis_dma_tvalid), .irdy(axis_dma_tready),\n\t.idat(axis_dma_tdata[DATA_BITS-1:0]),"
    ports_at = "\t// Stream\n\toutput\tout0_V_tvalid,"
    text = _unedited(wfile, HOST_FEED_MARK, (vpc_in, ports_at), "VPC input / stream port block to give the host feed")
    if text is None:
        return
    ports = (f"\t{HOST_FEED_MARK}: the level's weight DMA instead of the own DMA engine\n"
             "\tinput\thost_feed,\n\tinput\ts_host_tvalid,\n\toutput\ts_host_tready,\n"
             "\tinput\t[DATA_BITS-1:0] s_host_tdata,\n")
    mux = (f"{HOST_FEED_MARK}\nwire  vpc_irdy;\n"
           "wire  vpc_ivld = host_feed ? s_host_tvalid : axis_dma_tvalid;\n"
           "wire [DATA_BITS-1:0]  vpc_idat = host_feed ? s_host_tdata : axis_dma_tdata;\n"
           "assign  axis_dma_tready = !host_feed && vpc_irdy;\nassign  s_host_tready = host_feed && vpc_irdy;\n")
    text = text.replace(ports_at, ports + ports_at)
    text = text.replace(vpc_in, ".ivld(vpc_ivld), .irdy(vpc_irdy),\n\t.idat(vpc_idat),")
    at = text.index("vpc #(")
    wfile.write_text(text[:at] + mux + text[at:])


STRIDE_MARK = "// layer stride: hls/stitch.py"


def stride_wrapper(wfile: Path) -> None:
    """Give a FINN+ ``fetch_weights`` wrapper the ``LAYER_STRIDE`` parameter of the patched
    ``fetch_weights`` (:data:`hls.finn_rtllib.PATCHES`): index i reads at ``i * LAYER_STRIDE``.
    Idempotent."""
    param = "\tparameter [ADDR_BITS-1:0]  ADDRESS_OFFSET = 0,\n"
    inst = ".N_LAYERS(N_LAYERS), .ADDRESS_OFFSET(ADDRESS_OFFSET)"
    text = _unedited(wfile, STRIDE_MARK, (param, inst), "ADDRESS_OFFSET parameter / instance parameter list to "
                     "add LAYER_STRIDE to")
    if text is None:
        return
    text = text.replace(param, param + f"\tparameter [ADDR_BITS-1:0]  LAYER_STRIDE = 0,  {STRIDE_MARK}\n")
    wfile.write_text(text.replace(inst, inst + ", .LAYER_STRIDE(LAYER_STRIDE)"))


def router_select_text(name: str, n: int, in_w: int, sel_w: int) -> str:
    """Module ``name``: ``n`` routers ``<name>_b<i>`` (``router_decide`` wrappers), the input frame
    steered to, and the decision taken from, the one ``sel`` names."""
    inst = [f"\t{name}_b{i} u{i} (.ap_clk(ap_clk), .ap_rst_n(ap_rst_n), .in0_V_tdata(in0_V_tdata),\n"
            f"\t\t.in0_V_tvalid(in0_V_tvalid && sel == {sel_w}'d{i}), .in0_V_tready(rdy[{i}]),\n"
            f"\t\t.out0_V_tdata(od[{i}]), .out0_V_tvalid(ov[{i}]), .out0_V_tready(out0_V_tready && sel_out == {sel_w}'d{i}),\n"
            f"\t\t.decision(), .decision_valid());" for i in range(n)]
    return (f"// generated by hls/stitch.py: the routers of one level; the input frame goes to the one `sel`\n"
            f"// names, the decision comes from the one `sel_out` names (the same unless images overlap)\n"
            f"module {name} (\n\tinput ap_clk, input ap_rst_n, input [{sel_w - 1}:0] sel, input [{sel_w - 1}:0] sel_out,\n"
            f"\tinput [{in_w - 1}:0] in0_V_tdata, input in0_V_tvalid, output in0_V_tready,\n"
            f"\toutput [15:0] out0_V_tdata, output out0_V_tvalid, input out0_V_tready\n);\n"
            f"\twire [{n - 1}:0] rdy, ov; wire [15:0] od [{n}];\n" + "\n".join(inst)
            + "\n\tassign in0_V_tready = rdy[sel];\n\tassign out0_V_tvalid = ov[sel_out];\n"
            "\tassign out0_V_tdata = od[sel_out];\nendmodule\n")


def flat_stages(stages: list[Stage]) -> list[Stage]:
    """Every stage, a residual block's paths included, in the order :func:`chain_body` instances
    them (fetchers take their arbiter ports in this order)."""
    out = []
    for st in stages:
        if st.residual:
            for path in st.residual.paths:
                out += flat_stages(path)
        out.append(st)
    return out


def stage_files(stages: list[Stage], also: tuple[Path, ...] = ()) -> tuple[list[Path], list[Path], list[Path]]:
    """(sources without duplicates in a valid order, include dirs, data files); ``also``: the
    top's own blocks (a whole tree's forks), listed once even where a stage brings them too."""
    stages = flat_stages(stages)
    seen, srcs = set(), []
    # packages first (mvu_pkg), then the rest
    # (mvu_vvu_axi.sv's output-queue fix is one of hls.finn_rtllib.PATCHES, like the Verilator fixes)
    allsrc = [Path(s) for st in stages for s in st.sources]
    allsrc.sort(key=lambda p: 0 if p.name.endswith("_pkg.sv") else 1)
    for s in allsrc + [RTL_DIR / "axi_read_arbiter.sv", *also]:
        key = str(Path(s).resolve())
        if key not in seen:
            seen.add(key)
            srcs.append(Path(s))
    incs = sorted({Path(i) for st in stages for i in st.includes})
    data = {f.name: f for st in stages for f in st.data_files}
    return srcs, incs, list(data.values())


# --------------------------------------------------------------------------------- top text
def _sfx(st: Stage, sig: str) -> str:
    return sig.upper() if st.upper else sig


def _tieoffs(header: str, connected: set[str]) -> list[str]:
    return [f"\t\t.{p}('0)" for p in _inputs(header) if p not in connected]


def _param_list(params: dict[str, Any]) -> str:
    if not params:
        return ""
    return " #(" + ", ".join(f".{k}({v})" for k, v in params.items()) + ")"


@dataclass
class ChainContext:
    """The signals a chain's stages connect to besides their streams (set per level by
    :func:`write_tree_top`), and the fetchers instanced so far."""
    n: int = 0                          # fetchers instanced: the next one's index on the arbiter
    base: str = "region_base"           # the fetchers' base address
    idx_data: str = "in_idx0_V_tdata"   # the index token's value
    sel: str = "branch_sel"             # the branch register (router select, threshold set)
    lo: int = 0                         # the level's first fetcher (output 0 of its weight split)
    host: str | None = None             # host-driven fetch: the level's weight split (wire prefix)
    gate: str | None = None             # host-driven fetch: the level's weight gate
    stride: int = 0                     # the index token's stride in DDR (the level's region stride; 0: FINN's)
    n_sets: int = 1                     # weight sets an index token may select (the level's branches)
    tag_push: str | None = None         # the level took an image's decision (push its branch to each tag queue)
    tag_data: str = ""                  # that branch
    tag_w: int = 1


def _stage_instance(st: Stage, k: str, src: str, dst: str, lines: list[str], ctx: ChainContext) -> None:
    """Instance of stage ``st`` reading stream ``src`` and writing stream ``dst`` (wire name prefixes)."""
    conns = {"ap_clk": "ap_clk", "ap_rst_n": "ap_rst_n"}
    for sig in ("tdata", "tvalid"):
        conns[f"{st.in_port}_{_sfx(st, sig)}"] = f"{src}_{sig}"
    conns[f"{st.in_port}_{_sfx(st, 'tready')}"] = f"{src}_tready"
    for sig in ("tdata", "tvalid"):
        conns[f"{st.out_port}_{_sfx(st, sig)}"] = f"{dst}_{sig}"
    conns[f"{st.out_port}_{_sfx(st, 'tready')}"] = f"{dst}_tready"
    if "ap_clk2x" in st.port_text:
        conns["ap_clk2x"] = "ap_clk"
    sel = sel_out = ctx.sel
    if ctx.tag_push and (st.select or any("{sel}" in s for s in st.conns.values())):
        # Images overlap in the level: this stage's branch follows the image its input words belong
        # to (a queue of the level's decisions, popped after an image's frame_words input words), and
        # a router select's output the image of its decision word (one per image).
        if st.frame_words < 1:
            raise StitchError(f"{st.name}: selects by branch but its words per image are unknown")
        lines += _tag_queue(f"tq{k}", ctx, st.frame_words, f"{src}_tvalid && {src}_tready")
        lines += [f"\twire {k}_gi_tvalid, {k}_gi_tready;",
                  f"\tassign {k}_gi_tvalid = {src}_tvalid && tq{k}_v; assign {src}_tready = {k}_gi_tready && tq{k}_v;"]
        conns[f"{st.in_port}_{_sfx(st, 'tvalid')}"] = f"{k}_gi_tvalid"
        conns[f"{st.in_port}_{_sfx(st, 'tready')}"] = f"{k}_gi_tready"
        sel = f"tq{k}"
        if st.select:
            lines += _tag_queue(f"to{k}", ctx, 1, f"{dst}_tvalid && {dst}_tready")
            sel_out = f"to{k}"
    if st.select:
        conns["sel"], conns["sel_out"] = sel, sel_out
    conns.update({p: s.replace("{sel}", sel) for p, s in st.conns.items()})
    wp = st.weights
    if wp:
        ww = f"w{k}"
        lines.append(f"\twire [{wp.w_width - 1}:0] {ww}_tdata; wire {ww}_tvalid, {ww}_tready;")
        conns["in1_V_TDATA"], conns["in1_V_TVALID"], conns["in1_V_TREADY"] = f"{ww}_tdata", f"{ww}_tvalid", f"{ww}_tready"
        if wp.kind == "memstream":
            wconns = {"ap_clk": "ap_clk", "ap_clk2x": "ap_clk", "ap_rst_n": "ap_rst_n", "s_axis_0_tvalid": "1'b1",
                      "m_axis_0_tdata": f"{ww}_tdata", "m_axis_0_tvalid": f"{ww}_tvalid", "m_axis_0_tready": f"{ww}_tready"}
            body = [f"\t\t.{p}({s})" for p, s in wconns.items()] + _tieoffs(wp.header, set(wconns))
            lines.append(f"\t{wp.wrapper} {st.name}_mem (\n" + ",\n".join(body) + "\n\t);")
        else:
            f = ctx.n
            ctx.n += 1
            wconns = {"ap_clk": "ap_clk", "ap_rst_n": "ap_rst_n", "out_done": f"fetch_done_v[{f}]",
                      "base_address": ctx.base, "in_idx0_V_tvalid": f"fidx_tvalid[{f}]",
                      "in_idx0_V_tready": f"fidx_tready[{f}]", "in_idx0_V_tdata": ctx.idx_data,
                      "out0_V_tdata": f"{ww}_tdata", "out0_V_tvalid": f"{ww}_tvalid", "out0_V_tready": f"{ww}_tready"}
            gate = ctx.gate
            if gate:   # the weights wait at the fetcher until the level's decision (see write_tree_top)
                wconns.update(out0_V_tdata=f"{ww}_f_tdata", out0_V_tvalid=f"{ww}_f_tvalid", out0_V_tready=f"{ww}_f_tready")
                lines.append(f"\twire [{wp.w_width - 1}:0] {ww}_f_tdata; wire {ww}_f_tvalid, {ww}_f_tready;\n"
                             f"\tassign {ww}_tdata = {ww}_f_tdata; assign {ww}_tvalid = {ww}_f_tvalid && {gate}; "
                             f"assign {ww}_f_tready = {ww}_tready && {gate};")
            for sig, w in (("araddr", ADDR_W), ("arlen", 8), ("arsize", 3), ("arburst", 2), ("arid", 2)):
                wconns[f"axi_mm_{sig}"] = f"ar_{sig}[{f * w} +: {w}]"
            wconns["axi_mm_arvalid"], wconns["axi_mm_arready"] = f"ar_arvalid[{f}]", f"ar_arready[{f}]"
            wconns["axi_mm_rvalid"], wconns["axi_mm_rready"] = f"ar_rvalid[{f}]", f"ar_rready[{f}]"
            for sig, w in (("rdata", DATA_W), ("rresp", 2), ("rlast", 1), ("rid", 2)):
                wconns[f"axi_mm_{sig}"] = f"ar_{sig}[{f * w} +: {w}]"
            wconns["axi_mm_awready"], wconns["axi_mm_wready"], wconns["axi_mm_bvalid"] = "1'b0", "1'b0", "1'b0"
            if ctx.host:   # the level's weight_stream_split output j (host-driven fetch)
                hp, j = ctx.host, f - ctx.lo
                wconns.update(host_feed="host_fetch", s_host_tdata=f"{hp}_md", s_host_tvalid=f"{hp}_mv[{j}]",
                              s_host_tready=f"{hp}_mr[{j}]", ap_rst_n=f"ap_rst_n && !{hp}_flush")   # a wrong prefetch flushed
            body = [f"\t\t.{p}({s})" for p, s in wconns.items()] + _tieoffs(wp.header, set(wconns))
            lines.append(f"\t{wp.wrapper} #(.ADDRESS_OFFSET(64'd{int(wp.offset)}), .LAYER_STRIDE(64'd{ctx.stride}), "
                         f".N_LAYERS({max(1, ctx.n_sets)})) {st.name}_fetch (\n"
                         + ",\n".join(body) + "\n\t);")
    body = [f"\t\t.{p}({s})" for p, s in conns.items()] + _tieoffs(st.port_text, set(conns)) if st.port_text else \
        [f"\t\t.{p}({s})" for p, s in conns.items()]
    lines.append(f"\t{st.module}{_param_list(st.params)} {st.name} (\n" + ",\n".join(body) + "\n\t);")


def _residual_instance(st: Stage, k: str, src: str, dst: str, lines: list[str], ctx: ChainContext) -> None:
    """A residual block reading ``src``, writing ``dst``: ``stream_fork`` -> two paths, each
    ending in its FIFO (``Residual.fifo_depths``) -> ``stream_add`` (path 0 its first operand)."""
    r = st.residual
    ends = []
    for p, path in enumerate(r.paths):
        head, tail, queued = f"{k}_p{p}", f"{k}_p{p}_end", f"{k}_q{p}"
        lines.append(_wire(head, st.in_w))
        width = path[-1].out_w if path else st.in_w
        if path:
            lines.append(_wire(tail, width))
            chain_body(path, head, tail, f"{k}p{p}", lines, ctx)
        else:
            tail = head
        lines.append(_wire(queued, width))
        lines += _fifo(f"{st.name}_q{p}", width, r.fifo_depths[p], tail, queued)
        ends.append(queued)
    lines += _fork(f"{st.name}_fork", st.in_w, src, f"{k}_p0", f"{k}_p1")
    conns = {"ap_clk": "ap_clk", "ap_rst_n": "ap_rst_n"}
    for port, stream in (("in0_V", ends[0]), ("in1_V", ends[1]), ("out0_V", dst)):
        conns.update({f"{port}_{sig}": f"{stream}_{sig}" for sig in ("tdata", "tvalid", "tready")})
    body = [f"\t\t.{p}({s})" for p, s in conns.items()]
    lines.append(f"\t{st.module}{_param_list(st.params)} {st.name} (\n" + ",\n".join(body) + "\n\t);")


def chain_body(stages: list[Stage], src: str, dst: str, tag: str, lines: list[str], ctx: ChainContext) -> None:
    """Wires and instances of a chain reading stream ``src`` and ending in stream ``dst``."""
    prev = src
    for k, st in enumerate(stages):
        out = dst if k == len(stages) - 1 else f"{tag}_s{k}"
        if out != dst:
            lines.append(f"\twire [{st.out_w - 1}:0] {out}_tdata; wire {out}_tvalid, {out}_tready;")
        instance = _residual_instance if st.residual else _stage_instance
        if st.out_fifo and out != dst:   # between two layers: a FIFO decouples their rates (FINN's InsertFIFO)
            lines.append(_wire(f"{out}q", st.out_w))
            instance(st, f"{tag}_{k}", prev, f"{out}q", lines, ctx)
            lines += _fifo(f"{out}_fifo", st.out_w, st.out_fifo, f"{out}q", out)
        else:
            instance(st, f"{tag}_{k}", prev, out, lines, ctx)
        prev = out


def _idx_broadcast(lo: int, hi: int, valid: str, ready: str, tag: str) -> list[str]:
    """One index token on (valid, ready) to fetchers lo..hi-1, taken once all of them took it."""
    n = hi - lo
    return [f"\tlogic [{n - 1}:0] {tag}_taken;",
            f"\tassign fidx_tvalid[{hi - 1}:{lo}] = {{{n}{{{valid}}}}} & ~{tag}_taken;",
            f"\tassign {ready} = &({tag}_taken | fidx_tready[{hi - 1}:{lo}]);",
            "\talways_ff @(posedge ap_clk) begin",
            f"\t\tif (!ap_rst_n || ({valid} && {ready})) {tag}_taken <= '0;",
            f"\t\telse {tag}_taken <= {tag}_taken | (fidx_tvalid[{hi - 1}:{lo}] & fidx_tready[{hi - 1}:{lo}]);",
            "\tend"]


def _arbiter_block(n: int) -> list[str]:
    """Declarations of the fetchers' vectors and the AXI read arbiter onto ``axi_mm_*`` (its R
    buffers and bursts in flight: the top's ``FETCH_BUF_BEATS``/``FETCH_OUTSTANDING``)."""
    return [f"\twire [{n - 1}:0] fetch_done_v;",
            f"\twire [{n - 1}:0] fidx_tvalid, fidx_tready;",
            f"\twire [{n * ADDR_W - 1}:0] ar_araddr; wire [{n * 8 - 1}:0] ar_arlen; wire [{n * 3 - 1}:0] ar_arsize;",
            f"\twire [{n * 2 - 1}:0] ar_arburst; wire [{n * 2 - 1}:0] ar_arid; wire [{n - 1}:0] ar_arvalid, ar_arready;",
            f"\twire [{n * DATA_W - 1}:0] ar_rdata; wire [{n * 2 - 1}:0] ar_rresp; wire [{n - 1}:0] ar_rlast; "
            f"wire [{n * 2 - 1}:0] ar_rid;",
            f"\twire [{n - 1}:0] ar_rvalid, ar_rready;",
            f"\taxi_read_arbiter #(.N({n}), .ADDR_W({ADDR_W}), .DATA_W({DATA_W}), .ID_W(2), "
            ".BUF_BEATS(FETCH_BUF_BEATS), .OUTSTANDING(FETCH_OUTSTANDING), .PRIORITY(FETCH_PRIORITY)) ddr_arb (",
            "\t\t.ap_clk(ap_clk), .ap_rst_n(ap_rst_n),",
            "\t\t.s_araddr(ar_araddr), .s_arlen(ar_arlen), .s_arsize(ar_arsize), .s_arburst(ar_arburst), .s_arid(ar_arid),",
            "\t\t.s_arvalid(ar_arvalid), .s_arready(ar_arready), .s_rdata(ar_rdata), .s_rresp(ar_rresp), .s_rlast(ar_rlast),",
            "\t\t.s_rid(ar_rid), .s_rvalid(ar_rvalid), .s_rready(ar_rready),",
            "\t\t.m_araddr(axi_mm_araddr), .m_arlen(axi_mm_arlen), .m_arsize(axi_mm_arsize), .m_arburst(axi_mm_arburst),",
            "\t\t.m_arid(axi_mm_arid), .m_arvalid(axi_mm_arvalid), .m_arready(axi_mm_arready), .m_rdata(axi_mm_rdata),",
            "\t\t.m_rresp(axi_mm_rresp), .m_rlast(axi_mm_rlast), .m_rid(axi_mm_rid), .m_rvalid(axi_mm_rvalid),",
            "\t\t.m_rready(axi_mm_rready)",
            "\t);"]


def _fetch_block(n_fetch: int, lines: list[str]) -> None:
    """Index broadcast (``in_idx0_V``) and the AXI read arbiter for ``n_fetch`` fetchers."""
    decl = _arbiter_block(n_fetch) + _idx_broadcast(0, n_fetch, "in_idx0_V_tvalid", "in_idx0_V_tready", "idx")
    decl.append("\tassign fetch_done = |fetch_done_v;")
    lines[:0] = decl


AXI_PORTS = [f"\toutput [{ADDR_W - 1}:0] axi_mm_araddr", "\toutput [7:0] axi_mm_arlen", "\toutput [2:0] axi_mm_arsize",
             "\toutput [1:0] axi_mm_arburst", "\toutput [1:0] axi_mm_arid", "\toutput axi_mm_arvalid",
             "\tinput axi_mm_arready", f"\tinput [{DATA_W - 1}:0] axi_mm_rdata", "\tinput [1:0] axi_mm_rresp",
             "\tinput axi_mm_rlast", "\tinput [1:0] axi_mm_rid", "\tinput axi_mm_rvalid", "\toutput axi_mm_rready"]


def write_chain_top(path: Path, name: str, stages: list[Stage], taps: tuple[int, ...] = ()) -> dict[str, Any]:
    """One module: ``in0_V`` -> stages -> ``out0_V``; with fetchers also ``region_base``,
    ``in_idx0_V``, ``fetch_done`` and ``axi_mm_*``; with a router-select stage ``branch_sel``.
    ``taps``: stage indices whose output stream is mirrored (read-only) on ``tap<k>_tdata/tvalid/
    tready`` for the testbench to observe. Returns the top's description."""
    n_fetch = sum(1 for st in flat_stages(stages) if st.fetches)
    sel_w = max([st.select.sel_w for st in stages if st.select] + [0])
    ports = ["\tinput ap_clk", "\tinput ap_rst_n",
             f"\tinput [{stages[0].in_w - 1}:0] in0_V_tdata", "\tinput in0_V_tvalid", "\toutput in0_V_tready",
             f"\toutput [{stages[-1].out_w - 1}:0] out0_V_tdata", "\toutput out0_V_tvalid", "\tinput out0_V_tready"]
    if n_fetch:
        ports += [f"\tinput [{ADDR_W - 1}:0] region_base", "\tinput in_idx0_V_tvalid", "\toutput in_idx0_V_tready",
                  f"\tinput [{IDX_W - 1}:0] in_idx0_V_tdata", "\toutput fetch_done"] + AXI_PORTS
    if sel_w:
        ports.append(f"\tinput [{sel_w - 1}:0] branch_sel")
    body: list[str] = []
    chain_body(stages, "in0_V", "out0_V", "c", body, ChainContext())
    for t in taps:
        ports += [f"\toutput [{stages[t].out_w - 1}:0] tap{t}_tdata", f"\toutput tap{t}_tvalid", f"\toutput tap{t}_tready"]
        body.append(f"\tassign tap{t}_tdata = c_s{t}_tdata; assign tap{t}_tvalid = c_s{t}_tvalid; "
                    f"assign tap{t}_tready = c_s{t}_tready;")
    if n_fetch:
        _fetch_block(n_fetch, body)
    text = (f"// generated by hls/stitch.py: {name}\n`timescale 1ns/1ps\nmodule {name}"
            + (FETCH_PARAMS if n_fetch else "") + " (\n" + ",\n".join(ports)
            + "\n);\n" + "\n".join(body) + "\nendmodule\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"module": name, "n_fetchers": n_fetch, "in_w": stages[0].in_w, "out_w": stages[-1].out_w,
            "in_elem": stages[0].in_elem, "out_elem": stages[-1].out_elem,
            "taps": {t: stages[t].out_elem for t in taps}, "sel_w": sel_w}


def _fifo(name: str, width: int, depth: int, src: str, dst: str) -> list[str]:
    return [f"\tfifo #(.DEPTH({depth}), .DATA_WIDTH({width})) {name} (.clk(ap_clk), .rst(!ap_rst_n),",
            f"\t\t.idat({src}_tdata), .ivld({src}_tvalid), .irdy({src}_tready),",
            f"\t\t.odat({dst}_tdata), .ovld({dst}_tvalid), .ordy({dst}_tready), .count(), .maxcount());"]


def _fork(name: str, width: int, src: str, a: str, b: str) -> list[str]:
    return [f"\tstream_fork #(.DATA_W({width})) {name} (.ap_clk(ap_clk), .ap_rst_n(ap_rst_n),",
            f"\t\t.in0_V_tdata({src}_tdata), .in0_V_tvalid({src}_tvalid), .in0_V_tready({src}_tready),",
            f"\t\t.out0_V_tdata({a}_tdata), .out0_V_tvalid({a}_tvalid), .out0_V_tready({a}_tready),",
            f"\t\t.out1_V_tdata({b}_tdata), .out1_V_tvalid({b}_tvalid), .out1_V_tready({b}_tready));"]


def _wire(name: str, width: int) -> str:
    return f"\twire [{width - 1}:0] {name}_tdata; wire {name}_tvalid, {name}_tready;"


def _tag_queue(name: str, ctx: ChainContext, words: int, take: str) -> list[str]:
    """A queue of the level's branches (pushed at each decision, ``ctx.tag_push``/``tag_data``),
    the head ``name`` valid while ``name_v``; popped after ``words`` handshakes ``take``."""
    cw = max(1, (words - 1).bit_length())
    return [f"\tlogic [{ctx.tag_w - 1}:0] {name}_q [4]; logic [1:0] {name}_rd, {name}_wr; logic [2:0] {name}_n; "
            f"logic [{cw - 1}:0] {name}_w;",
            f"\twire {name}_v = {name}_n != 0; wire [{ctx.tag_w - 1}:0] {name} = {name}_q[{name}_rd];",
            f"\twire {name}_pop = ({take}) && {name}_w == {cw}'d{words - 1};",
            "\talways_ff @(posedge ap_clk) begin",
            f"\t\tif (!ap_rst_n) begin {name}_rd <= '0; {name}_wr <= '0; {name}_n <= '0; {name}_w <= '0; end",
            "\t\telse begin",
            f"\t\t\tif ({ctx.tag_push}) begin {name}_q[{name}_wr] <= {ctx.tag_data}; {name}_wr <= {name}_wr + 1; end",
            f"\t\t\tif ({take}) {name}_w <= {name}_pop ? '0 : {name}_w + 1;",
            f"\t\t\tif ({name}_pop) {name}_rd <= {name}_rd + 1;",
            f"\t\t\t{name}_n <= {name}_n + 3'({ctx.tag_push}) - 3'({name}_pop);",
            "\t\tend",
            "\tend"]


def _split_block(L: int, fetchers: list[Stage]) -> list[str]:
    """Level ``L``'s ``weight_stream_split``: the host's weight DMA stream to the level's fetchers,
    beat ranges from each layer's offset and bytes inside the region (``weights.json``)."""
    beat = DATA_W // 8
    lo = [int(st.weights.offset) // beat for st in fetchers]
    hi = [-(-(int(st.weights.offset) + int(st.weights.layer_bytes)) // beat) for st in fetchers]
    n = len(fetchers)

    def packed(vals):
        return f"{32 * n}'h" + "".join(f"{v:08x}" for v in reversed(vals))
    return [f"\tweight_stream_split #(.N({n}), .DATA_W({DATA_W}), .BRANCH_W(8), .REGION_BEATS({max(hi)}), "
            f".BEAT_LO({packed(lo)}), .BEAT_HI({packed(hi)})) wsplit{L} (",
            "\t\t.ap_clk(ap_clk), .ap_rst_n(ap_rst_n), .clear(fetch_clear),",
            f"\t\t.s_axis_tdata(s_axis_w{L}_tdata), .s_axis_tvalid(s_axis_w{L}_tvalid), "
            f".s_axis_tready(s_axis_w{L}_tready), .s_axis_tlast(s_axis_w{L}_tlast),",
            f"\t\t.tag(w{L}_tag), .decision_valid(busy_{L} && host_fetch), .decision(8'(branch_{L})),",
            "\t\t.speculate(host_fetch),",
            f"\t\t.m_tdata(w{L}_md), .m_tvalid(w{L}_mv), .m_tready(w{L}_mr),",
            f"\t\t.fwd_beats(w{L}_fwd_beats), .drop_beats(w{L}_drop_beats), .filled(w{L}_filled), "
            f".len_error(w{L}_len_error), .flush(w{L}_flush)",
            "\t);"]


HOST_PORTS = ["\tinput host_fetch", "\tinput fetch_clear"]


def _host_ports(L: int) -> list[str]:
    return [f"\tinput [{DATA_W - 1}:0] s_axis_w{L}_tdata", f"\tinput s_axis_w{L}_tvalid", f"\toutput s_axis_w{L}_tready",
            f"\tinput s_axis_w{L}_tlast", f"\tinput [7:0] w{L}_tag", f"\toutput [31:0] w{L}_fwd_beats",
            f"\toutput [31:0] w{L}_drop_beats", f"\toutput w{L}_filled", f"\toutput w{L}_len_error"]


def write_tree_top(path: Path, name: str, tree: TreePart, host_fetch: bool = False) -> dict[str, Any]:
    """The whole tree as one module (see the module docstring)::

        in0_V (image, NHWC) -> backbone -> fork -+-> root router -> decision d0
                                                 +-> FIFO (feature map) -> level 0 datapath -> fork -+-> router(s) -> d1
                                                                                                     +-> FIFO -> level 1 ...
        last level: branch -> leaf head -> out0_V (accumulators)

    Level L's controller takes decision d_L (a one-word stream) as ``2*branch_{L-1} + d_L`` and
    sends it as the index token to the level's fetchers, which read ``weights_base + base_L +
    token * stride_L`` (+ the layer's offset): the region of that image's branch. The branch
    register ``branch_L`` (threshold set, router select) holds the image the level works on; a
    decision taken while the level is busy (on-chip fetch: one ahead) waits in ``nxt_L`` and becomes
    ``branch_L`` when the image's output has left the level. Its token goes out at once, so the
    fetchers' second buffer bank fills while the level still computes and the next image follows
    the previous one through the level's layers without a gap. The stages that select by branch
    (threshold sets, router select) take it from their own queue of the level's decisions, popped
    at the end of each image's input words, so each image meets its own branch; the branch
    register names the image whose output leaves (``leaf``). Images therefore overlap in the tree
    (the input may stream without gaps). Ports: ``ap_clk``, ``ap_rst_n``, ``in0_V_*``, ``out0_V_*``, ``weights_base[63:0]``,
    ``axi_mm_*`` (AXI4 read, 256-bit), ``leaf`` and ``leaf_valid`` (the last level's branch).

    ``host_fetch=True`` adds the host-driven fetch: ports ``host_fetch`` (mode), ``fetch_clear``
    (an inference starts) and per level ``s_axis_w<L>_*`` (the level's weight DMA, 256-bit with
    TLAST), ``w<L>_tag`` (FETCH_BRANCH) and the split's counters; in host mode the controllers
    send no index token and the fetchers' width converters take the split's streams.
    """
    backbone, levels = tree.backbone, tree.levels
    depth = len(levels)
    body: list[str] = []
    ctx = ChainContext()
    first = (backbone or tree.root_router)[0]  # a backbone on the processor (PointNet++): the input feeds the fork
    bb_w = backbone[-1].out_w if backbone else first.in_w
    if backbone:
        body.append(_wire("bb_out", bb_w))
        chain_body(backbone, "in0_V", "bb_out", "bb", body, ctx)
    body += [_wire("f0a", bb_w), _wire("f0b", bb_w), _wire("lv0_in", bb_w), _wire("dec0", 16)]
    body += _fork("fork0", bb_w, "bb_out" if backbone else "in0_V", "f0a", "f0b")
    body += _fifo("fmap0", bb_w, max(2, FMAP_IMAGES * tree.bb_words), "f0b", "lv0_in")
    chain_body(tree.root_router, "f0a", "dec0", "rr", body, ctx)
    ranges = []
    for L, lv in enumerate(levels):
        sw = max(1, (lv.n_branches - 1).bit_length())
        body.append(f"\tlogic [{sw - 1}:0] branch_{L}; logic busy_{L}; logic idxv_{L}; wire idxr_{L};")
        body += [f"\tlogic [{sw - 1}:0] nxt_{L}, tok_{L}; logic nxtv_{L}; wire take_{L}; wire [{sw - 1}:0] d_{L};",
                 f"\twire [{ADDR_W - 1}:0] level_base_{L} = weights_base + {ADDR_W}'d{lv.base};"]
        lo = ctx.n
        # The level's fetchers read the region of the branch their index token names (LAYER_STRIDE =
        # the region stride), so the next image's token can go out while this image computes; the
        # stages that select by branch take it from their own queue of the level's decisions.
        ctx.base, ctx.idx_data, ctx.sel, ctx.lo = f"level_base_{L}", f"{IDX_W}'(tok_{L})", f"branch_{L}", lo
        ctx.stride, ctx.n_sets = int(lv.stride), lv.n_branches
        ctx.tag_push, ctx.tag_data, ctx.tag_w = f"take_{L}", f"d_{L}", sw
        ctx.host = f"w{L}" if host_fetch else None
        last = L == depth - 1
        if host_fetch:
            # The split's outputs, declared before the fetchers use them. The fetchers' weight
            # streams wait for the level's decision (ChainContext.gate, wgate_L): weights a
            # speculative prefetch put into their buffers are not taken by an MVAU before the
            # decision says whether they are the right ones (gating the feature map would not do:
            # FMPadding emits border pixels without input, and an MVAU takes weights with them).
            n_level_fetch = sum(1 for st in flat_stages(lv.branch + lv.below) if st.fetches)
            # The gate opens two cycles after the decision and stays shut while the split flushes a
            # wrong guess (its flush rises the cycle after the decision), so not one word of a wrong
            # region reaches an MVAU.
            body += [f"\twire [{DATA_W - 1}:0] w{L}_md; wire [{max(n_level_fetch, 1) - 1}:0] w{L}_mv, w{L}_mr; "
                     f"wire w{L}_flush;",
                     f"\tlogic [1:0] busy_d_{L};",
                     f"\talways_ff @(posedge ap_clk) busy_d_{L} <= ap_rst_n ? {{busy_d_{L}[0], busy_{L}}} : 2'b00;",
                     f"\twire wgate_{L} = busy_{L} && busy_d_{L}[1] && !w{L}_flush;"]
            ctx.gate = f"wgate_{L}"
        bw = lv.branch[-1].out_w
        if not last:
            body += [_wire(f"lv{L}_b", bw), _wire(f"lv{L}_ba", bw), _wire(f"lv{L}_bb", bw),
                     _wire(f"lv{L + 1}_in", bw), _wire(f"dec{L + 1}", 16)]
            chain_body(lv.branch, f"lv{L}_in", f"lv{L}_b", f"l{L}b", body, ctx)
            body += _fork(f"fork{L + 1}", bw, f"lv{L}_b", f"lv{L}_ba", f"lv{L}_bb")
            body += _fifo(f"fmap{L + 1}", bw, max(2, FMAP_IMAGES * levels[L + 1].fmap_words), f"lv{L}_bb",
                          f"lv{L + 1}_in")
            chain_body(lv.below, f"lv{L}_ba", f"dec{L + 1}", f"l{L}n", body, ctx)
            done = f"(dec{L + 1}_tvalid && dec{L + 1}_tready)"
        else:
            body.append(_wire(f"lv{L}_b", bw))
            chain_body(lv.branch, f"lv{L}_in", f"lv{L}_b", f"l{L}b", body, ctx)
            chain_body(lv.below, f"lv{L}_b", "out0_V", f"l{L}n", body, ctx)
            body.append("\tlogic [15:0] outcnt;")
            done = f"(out0_V_tvalid && out0_V_tready && outcnt == 16'd{lv.out_words - 1})"
            body += ["\talways_ff @(posedge ap_clk) begin",
                     "\t\tif (!ap_rst_n) outcnt <= '0;",
                     f"\t\telse if (out0_V_tvalid && out0_V_tready) outcnt <= (outcnt == 16'd{lv.out_words - 1}) ? '0 : outcnt + 1;",
                     "\tend"]
        hi = ctx.n
        ranges.append((lo, hi))
        prev = f"{{branch_{L - 1}, dec{L}_tdata[0]}}" if L else f"dec{L}_tdata[0]"
        # On-chip fetch: a decision is taken while the level still works on the previous image (one
        # ahead, nxt_L) and its token sent at once, so the fetchers' second buffer bank fills during
        # that image. Host-driven fetch: the next decision waits until the level is free.
        ahead = f"{int(hi > lo)}" + (" && !host_fetch" if host_fetch else "")
        body += [f"\t// level {L} controller: decision -> branch (threshold set, router select), one index token",
                 f"\tassign take_{L} = dec{L}_tvalid && dec{L}_tready;",
                 f"\twire done_{L} = busy_{L} && {done};",
                 f"\tassign d_{L} = {sw}'({prev});",
                 f"\tassign dec{L}_tready = (!busy_{L} || ({ahead}) && !nxtv_{L}) && !idxv_{L};",
                 "\talways_ff @(posedge ap_clk) begin",
                 f"\t\tif (!ap_rst_n) begin busy_{L} <= 0; idxv_{L} <= 0; branch_{L} <= '0; nxt_{L} <= '0; "
                 f"tok_{L} <= '0; nxtv_{L} <= 0; end",
                 "\t\telse begin",
                 f"\t\t\tif (idxv_{L} && idxr_{L}) idxv_{L} <= 0;",
                 f"\t\t\tif (done_{L}) begin   // the image left the level: the next one (if taken) starts",
                 f"\t\t\t\tif (nxtv_{L}) begin branch_{L} <= nxt_{L}; nxtv_{L} <= 0; end",
                 f"\t\t\t\telse busy_{L} <= 0;",
                 "\t\t\tend",
                 f"\t\t\tif (take_{L}) begin",
                 f"\t\t\t\tif (!busy_{L} || (done_{L} && !nxtv_{L})) begin branch_{L} <= d_{L}; busy_{L} <= 1; end",
                 f"\t\t\t\telse begin nxt_{L} <= d_{L}; nxtv_{L} <= 1; end",
                 f"\t\t\t\ttok_{L} <= d_{L}; idxv_{L} <= {int(hi > lo)}" + (" && !host_fetch" if host_fetch else "") + ";",
                 "\t\t\tend",
                 "\t\tend",
                 "\tend"]
        if hi > lo:
            body += _idx_broadcast(lo, hi, f"idxv_{L}", f"idxr_{L}", f"idx{L}")
            if host_fetch:
                body += _split_block(L, [st for st in flat_stages(lv.branch + lv.below) if st.fetches])
        else:
            body.append(f"\tassign idxr_{L} = 1'b1;")
            if host_fetch:                             # a level without fetchers takes no weight stream
                body.append(f"\tassign s_axis_w{L}_tready = 1'b0; assign w{L}_fwd_beats = '0; "
                            f"assign w{L}_drop_beats = '0; assign w{L}_filled = 1'b0; assign w{L}_len_error = 1'b0; "
                            f"assign w{L}_flush = 1'b0;")
    n_fetch = ctx.n
    body[:0] = _arbiter_block(n_fetch)
    lb = max(1, (levels[-1].n_branches - 1).bit_length())
    body += [f"\tassign leaf = branch_{depth - 1};", f"\tassign leaf_valid = busy_{depth - 1};"]
    ports = ["\tinput ap_clk", "\tinput ap_rst_n",
             f"\tinput [{first.in_w - 1}:0] in0_V_tdata", "\tinput in0_V_tvalid", "\toutput in0_V_tready",
             f"\toutput [{levels[-1].below[-1].out_w - 1}:0] out0_V_tdata", "\toutput out0_V_tvalid",
             "\tinput out0_V_tready", f"\tinput [{ADDR_W - 1}:0] weights_base",
             f"\toutput [{lb - 1}:0] leaf", "\toutput leaf_valid"] + AXI_PORTS
    if host_fetch:
        ports += HOST_PORTS + [p for L in range(depth) for p in _host_ports(L)]
    text = (f"// generated by hls/stitch.py: {name}, the whole tree\n`timescale 1ns/1ps\nmodule {name}{FETCH_PARAMS} (\n"
            + ",\n".join(ports) + "\n);\n" + "\n".join(body) + "\nendmodule\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"module": name, "n_fetchers": n_fetch, "fetchers_per_level": ranges, "in_w": first.in_w,
            "in_elem": first.in_elem, "out_elem": levels[-1].below[-1].out_elem}
