"""The hardware top for Vivado: the stitched whole tree behind AXI (``sigmabranch_tree_axi``).

:func:`write_axi_top` takes a ``sigmabranch build`` output and writes a self-contained HDL
folder (``<out>/src``): the stitched whole-tree top of :func:`hls.stitch.write_tree_top` (the
parts :meth:`hls.parts.TreeParts.whole_tree` assembles: FINN+ RTL layers, this repository's
blocks, multi-set thresholds), ``hls/rtl/tree_ctrl.sv`` and the wrapper below, with every
source and ``$readmemh`` data file copied in and every path inside the HDL pointing at the
copies (absolute, as FINN's ``ReplaceVerilogRelPaths`` makes them for Vivado)::

    s_axi_ctrl (AXI4-Lite) --> tree_ctrl --- weights_base ----------------------+
                                  ^  start / soft reset / decisions / byte counts |
    s_axis_in (idma0 MM2S) -> repack (DMA bytes -> tree word) -> sigmabranch_tree (whole tree)
                                                                    |      axi_mm_* --> m_axi_weights (AXI4 read, HP port)
    m_axis_out (odma0 S2MM) <- TLAST <- repack (INT32 words) <- sign-extend <- out0_V (accumulators)
    s_axis_w<l> (wdma<l> MM2S, 256-bit) -> the level's weight_stream_split -> its fetchers' local buffers

Two fetch modes (``FETCH_MODE``): on chip, the router's decision drives the fetchers' base address
and they read the region on ``m_axi_weights``; host-driven, the PS reads ``DECISION_l``, writes
``FETCH_BRANCH_l`` and starts one ``wdma<l>`` transfer of the chosen region, which
``hls/rtl/weight_stream_split.sv`` hands to the level's fetchers (a region of another branch, a
wrong prefetch, is dropped there).

The wrapper is plain Verilog-2001 (``sigmabranch_tree_axi.v``): Vivado accepts a module
reference cell only with a Verilog or VHDL top file (FINN's own module references are ``.v``
wrappers); the modules under it are SystemVerilog. Its bus ports carry ``X_INTERFACE_INFO``
attributes, so IP integrator sees ``s_axi_ctrl``, ``s_axis_in``, ``m_axis_out``,
``m_axi_weights`` and ``s_axis_w<l>`` as interfaces on the ``ap_clk`` / ``ap_rst_n`` domain.

Per inference (the host driver's order): CTRL start arms the input for exactly the image's
beats; the output stream carries one little-endian INT32 per class (``driver.json`` ``output``)
with TLAST on the last, as AXI DMA S2MM needs; STATUS done follows the TLAST handshake. A soft
reset (CTRL bit1) holds the tree in reset until the next start, drains the input and weight
streams (``tready`` high) and the weight port's outstanding read bursts (``rready`` high, no new
``arvalid``), so the DMAs and the interconnect can always finish.

The per-level decisions come from the tree top's branch registers: :func:`expose_levels` adds
``level_branch``/``level_busy`` ports to the text :func:`hls.stitch.write_tree_top` wrote (that
module is not changed here).

The top is simulated (cocotb + Verilator) by ``simulate`` of the ``sim`` package's ``axi_top_sim``.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from .stitch import FETCH_BUF_BEATS, FETCH_OUTSTANDING, FETCH_PRIORITY

REPO = Path(__file__).resolve().parents[1]
RTL_DIR = REPO / "hls" / "rtl"
TOP = "sigmabranch_tree_axi"
CORE = "sigmabranch_tree"
CTRL_ADDR_W = 8            # tree_ctrl's register space: 256 bytes (levels <= 8)
BRANCH_W = 8               # decision register width per level
OUT_BYTES_PER_CLASS = 4    # the host reads INT32 accumulators
WEIGHT_STREAM_BITS = 256   # wdma<l> MM2S stream width: one beat = one word of FINN's external_mem layout


class AxiTopError(ValueError):
    """A build this wrapper cannot put behind AXI (says which limit)."""


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def expose_levels(text: str, depth: int) -> str:
    """Add ``level_branch[8*depth-1:0]`` (branch register of each level) and ``level_busy[depth-1:0]``
    outputs to a :func:`hls.stitch.write_tree_top` module text."""
    if re.search(r"\blevel_branch\b", text):
        return text                                   # the stitched top has them already
    for L in range(depth):
        if not re.search(rf"logic \[[^\]]*\] branch_{L};", text) or not re.search(rf"\blogic busy_{L};", text):
            raise AxiTopError(f"the stitched tree top has no branch_{L}/busy_{L} register (hls/stitch.py "
                              "write_tree_top changed): the control block cannot read the decisions")
    head = text.index("\n);\n")
    ports = f",\n\toutput [{BRANCH_W * depth - 1}:0] level_branch,\n\toutput [{depth - 1}:0] level_busy"
    text = text[:head] + ports + text[head:]
    assigns = "".join(f"\tassign level_branch[{BRANCH_W * L + BRANCH_W - 1}:{BRANCH_W * L}] = {BRANCH_W}'(branch_{L});\n"
                      f"\tassign level_busy[{L}] = busy_{L};\n" for L in range(depth))
    end = text.rindex("endmodule")
    return text[:end] + "\t// decisions for the control block (hls/axi_top.py)\n" + assigns + text[end:]


# --------------------------------------------------------------------------------- copying
def _group(path: Path, roots: list[tuple[Path, str]]) -> str:
    """Where a source goes inside ``src/``: below the first root that holds it."""
    p = path.resolve()
    for root, name in roots:
        try:
            return f"{name}/{p.relative_to(root.resolve()).as_posix()}"
        except ValueError:
            continue
    return f"gen/{p.name}"


def _rewrite(text: str, own_dir: Path, dir_map: dict[str, str], data_by_prefix: dict[str, Path]) -> str:
    """Absolute paths of copied files' old folders -> their new folders; ``"./name"`` -> the folder
    the data file ``name...`` was copied to (else this file's own folder, FINN's rule)."""
    for old in sorted(dir_map, key=len, reverse=True):
        text = text.replace(old + "/", dir_map[old] + "/")

    def rel(m: re.Match) -> str:
        stem = m.group(1)
        hits = {str(f.parent) for name, f in data_by_prefix.items() if stem and name.startswith(stem)}
        where = hits.pop() if len(hits) == 1 else str(own_dir)
        return f'"{where}/{stem}'
    return re.sub(r'"\./([\w.\-]*)', rel, text)


# --------------------------------------------------------------------------------- the wrapper
def _axi_attrs(bus: str, vlnv: str, sig: str, params: str | None = None) -> str:
    text = f'(* X_INTERFACE_INFO = "xilinx.com:interface:{vlnv} {bus} {sig}" *)'
    if params:
        text += f' (* X_INTERFACE_PARAMETER = "{params}" *)'
    return text


def wrapper_text(p: dict[str, Any]) -> str:
    """``sigmabranch_tree_axi`` (Verilog-2001) for the geometry ``p`` (see :func:`write_axi_top`)."""
    L, din, kin, kout = p["levels"], p["dma_in_bytes"], p["tree_in_bytes"], p["out_pe"] * OUT_BYTES_PER_CLASS
    ob, ope, osg = p["out_bits"], p["out_pe"], p["out_signed"]
    if ob > 32:
        raise AxiTopError(f"the head's accumulators are {ob} bits wide: the host reads INT32")

    def hexp(vals: list[int]) -> str:
        v = 0
        for i, x in enumerate(vals):
            v |= int(x) << (64 * i)
        return f"{64 * len(vals)}'h{v:x}"

    ports = []
    clk_busif = "s_axi_ctrl:s_axis_in:m_axis_out:m_axi_weights" + "".join(f":s_axis_w{l}" for l in range(L))
    ports.append('\t(* X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 ap_clk CLK" *) '
                 f'(* X_INTERFACE_PARAMETER = "ASSOCIATED_BUSIF {clk_busif}, ASSOCIATED_RESET ap_rst_n" *)\n'
                 '\tinput  wire ap_clk')
    ports.append('\t(* X_INTERFACE_INFO = "xilinx.com:signal:reset:1.0 ap_rst_n RST" *) '
                 '(* X_INTERFACE_PARAMETER = "POLARITY ACTIVE_LOW" *)\n\tinput  wire ap_rst_n')
    lite = [("input", CTRL_ADDR_W, "AWADDR"), ("input", 3, "AWPROT"), ("input", 1, "AWVALID"), ("output", 1, "AWREADY"),
            ("input", 32, "WDATA"), ("input", 4, "WSTRB"), ("input", 1, "WVALID"), ("output", 1, "WREADY"),
            ("output", 2, "BRESP"), ("output", 1, "BVALID"), ("input", 1, "BREADY"),
            ("input", CTRL_ADDR_W, "ARADDR"), ("input", 3, "ARPROT"), ("input", 1, "ARVALID"), ("output", 1, "ARREADY"),
            ("output", 32, "RDATA"), ("output", 2, "RRESP"), ("output", 1, "RVALID"), ("input", 1, "RREADY")]
    axis_in = [("input", 8 * din, "TDATA"), ("input", din, "TKEEP"), ("input", 1, "TLAST"), ("input", 1, "TVALID"),
               ("output", 1, "TREADY")]
    axis_out = [("output", 32, "TDATA"), ("output", 4, "TKEEP"), ("output", 1, "TLAST"), ("output", 1, "TVALID"),
                ("input", 1, "TREADY")]
    mm = [("output", 64, "ARADDR"), ("output", 8, "ARLEN"), ("output", 3, "ARSIZE"), ("output", 2, "ARBURST"),
          ("output", 2, "ARID"), ("output", 4, "ARCACHE"), ("output", 3, "ARPROT"), ("output", 1, "ARVALID"),
          ("input", 1, "ARREADY"), ("input", 256, "RDATA"), ("input", 2, "RRESP"), ("input", 1, "RLAST"),
          ("input", 2, "RID"), ("input", 1, "RVALID"), ("output", 1, "RREADY")]
    buses = [("s_axi_ctrl", "aximm:1.0", lite, f"PROTOCOL AXI4LITE, DATA_WIDTH 32, ADDR_WIDTH {CTRL_ADDR_W}"),
             ("s_axis_in", "axis:1.0", axis_in, None), ("m_axis_out", "axis:1.0", axis_out, None),
             ("m_axi_weights", "aximm:1.0", mm, "PROTOCOL AXI4, READ_WRITE_MODE READ_ONLY, DATA_WIDTH 256, "
              "ADDR_WIDTH 64, ID_WIDTH 2")]
    axis_w = [("input", WEIGHT_STREAM_BITS, "TDATA"), ("input", WEIGHT_STREAM_BITS // 8, "TKEEP"), ("input", 1, "TLAST"),
              ("input", 1, "TVALID"), ("output", 1, "TREADY")]
    buses += [(f"s_axis_w{l}", "axis:1.0", axis_w, None) for l in range(L)]   # wdma<l> MM2S: host-driven fetch
    for bus, vlnv, sigs, params in buses:
        for k, (d, w, sig) in enumerate(sigs):
            rng = f"[{w - 1}:0] " if w > 1 else ""
            ports.append(f"\t{_axi_attrs(bus, vlnv, sig, params if k == 0 else None)}\n"
                         f"\t{d:<6} wire {rng}{bus}_{sig.lower()}")
    ext = []
    for i in range(ope):
        lo, hi = ob * i, ob * i + ob - 1
        msb = f"core_out_tdata[{hi}]" if osg else "1'b0"
        value = f"core_out_tdata[{hi}:{lo}]" if ob == 32 else f"{{{{{32 - ob}{{{msb}}}}}, core_out_tdata[{hi}:{lo}]}}"
        ext.append(f"\tassign out_ext[{32 * i + 31}:{32 * i}] = {value};")
    # host-driven fetch: level l's weight DMA into the tree's split (drained while flushing, as s_axis_in)
    wstreams = ",\n".join(
        f"\t\t.s_axis_w{l}_tdata(s_axis_w{l}_tdata), .s_axis_w{l}_tvalid(s_axis_w{l}_tvalid & ~flush), "
        f".s_axis_w{l}_tready(cw{l}_tready), .s_axis_w{l}_tlast(s_axis_w{l}_tlast),\n"
        f"\t\t.w{l}_tag(fetch_tag[{BRANCH_W * l + BRANCH_W - 1}:{BRANCH_W * l}]), "
        f".w{l}_fwd_beats(host_fwd_beats[{32 * l + 31}:{32 * l}]), .w{l}_drop_beats(), .w{l}_filled(), "
        f".w{l}_len_error(host_len_error[{l}])" for l in range(L))
    wready = "\n".join(f"\twire        cw{l}_tready;\n\tassign s_axis_w{l}_tready = flush | cw{l}_tready;"
                        for l in range(L))
    body = f"""
	localparam IN_BEATS = {p["in_beats"]};     // DMA beats of one image ({p["input_bytes"]} bytes)
	localparam OUT_BEATS = {p["num_classes"]};    // INT32 words of one output ({4 * p["num_classes"]} bytes)
	localparam CORE_OUT_WORDS = {p["num_classes"] // p["out_pe"]};   // the tree's output words of one image

	wire        start, running, soft_reset, out_done;
	wire [31:0] frames;                // images this start takes (FRAMES; 1 in host-driven fetch)
	wire [63:0] weights_base;
	wire [{BRANCH_W * L - 1}:0] level_branch;
	wire [{L - 1}:0]  level_busy;
	wire        host_fetch;            // FETCH_MODE 0: the PS streams each level's region (wdma<l>)
	wire [{BRANCH_W * L - 1}:0] fetch_tag;
	wire [{32 * L - 1}:0] host_fwd_beats;
	wire [{L - 1}:0]  host_len_error;
	reg         draining;
	reg  [7:0]  rd_out;            // weight read bursts in flight on m_axi_weights
	wire        flush = soft_reset | draining;
	wire        core_rst_n = ap_rst_n & ~flush;

	// ---------------------------------------------------------------- control block
	tree_ctrl #(.LEVELS({L}), .SIGNATURE(32'h{p["signature"]:08x}), .LEVEL_LO({hexp(p["level_lo"])}),
		.LEVEL_HI({hexp(p["level_hi"])}), .BRANCH_W({BRANCH_W}), .ADDR_W({CTRL_ADDR_W}),
		.RD_FIFO(FETCH_OUTSTANDING)) ctrl (
		.ap_clk(ap_clk), .ap_rst_n(ap_rst_n),
		.s_axi_awaddr(s_axi_ctrl_awaddr), .s_axi_awvalid(s_axi_ctrl_awvalid), .s_axi_awready(s_axi_ctrl_awready),
		.s_axi_wdata(s_axi_ctrl_wdata), .s_axi_wstrb(s_axi_ctrl_wstrb), .s_axi_wvalid(s_axi_ctrl_wvalid),
		.s_axi_wready(s_axi_ctrl_wready), .s_axi_bresp(s_axi_ctrl_bresp), .s_axi_bvalid(s_axi_ctrl_bvalid),
		.s_axi_bready(s_axi_ctrl_bready), .s_axi_araddr(s_axi_ctrl_araddr), .s_axi_arvalid(s_axi_ctrl_arvalid),
		.s_axi_arready(s_axi_ctrl_arready), .s_axi_rdata(s_axi_ctrl_rdata), .s_axi_rresp(s_axi_ctrl_rresp),
		.s_axi_rvalid(s_axi_ctrl_rvalid), .s_axi_rready(s_axi_ctrl_rready),
		.start(start), .running(running), .soft_reset(soft_reset), .weights_base(weights_base),
		.level_branch(level_branch), .level_busy(level_busy), .out_done(out_done),
		.frames(frames), .path_push(path_push), .path_leaf({BRANCH_W}'(core_leaf)),
		.host_fetch(host_fetch), .fetch_tag(fetch_tag), .host_fwd_beats(host_fwd_beats),
		.host_len_error(host_len_error),
		.mon_araddr(m_axi_weights_araddr), .mon_arsize(m_axi_weights_arsize),
		.mon_arvalid(m_axi_weights_arvalid), .mon_arready(m_axi_weights_arready),
		.mon_rvalid(m_axi_weights_rvalid & ~flush), .mon_rready(m_axi_weights_rready), .mon_rlast(m_axi_weights_rlast)
	);

	// ---------------------------------------------------------------- input: FRAMES images per start
	reg  [31:0] in_left;
	wire        in_take = ~flush && in_left != 0;
	wire        rin_ready;
	wire        rin_valid = s_axis_in_tvalid & in_take;
	assign s_axis_in_tready = flush | (in_take & rin_ready);
	always @(posedge ap_clk) begin
		if (!ap_rst_n) in_left <= 0;
		else if (start) in_left <= IN_BEATS * frames;
		else if (soft_reset) in_left <= 0;
		else if (rin_valid && rin_ready) in_left <= in_left - 1;
	end
	wire [{8 * kin - 1}:0] core_in_tdata;
	wire        core_in_tvalid, core_in_tready;
	sigmabranch_axis_repack #(.IN_BYTES({din}), .OUT_BYTES({kin})) in_repack (.clk(ap_clk), .rst_n(core_rst_n),
		.in_tdata(s_axis_in_tdata), .in_tvalid(rin_valid), .in_tready(rin_ready),
		.out_tdata(core_in_tdata), .out_tvalid(core_in_tvalid), .out_tready(core_in_tready));

	// ---------------------------------------------------------------- the tree
	wire [{p["out_w"] - 1}:0] core_out_tdata;
	wire        core_out_tvalid, core_out_tready;
	wire [{p["leaf_bits"] - 1}:0] core_leaf;        // the last level's branch, held while the image's output leaves
	// an image's path: its leaf at its first output word (the next image's decision comes only after
	// its last word), queued in the control block for the host (PATH)
	reg  [15:0] core_out_cnt;
	wire        path_push = core_out_tvalid & core_out_tready & (core_out_cnt == 0);
	always @(posedge ap_clk) begin
		if (!ap_rst_n || start || flush) core_out_cnt <= 0;
		else if (core_out_tvalid && core_out_tready)
			core_out_cnt <= (core_out_cnt == CORE_OUT_WORDS - 1) ? 0 : core_out_cnt + 1;
	end
	wire [63:0] c_araddr; wire [7:0] c_arlen; wire [2:0] c_arsize; wire [1:0] c_arburst, c_arid;
	wire        c_arvalid, c_rready;
{wready}
	{CORE} #(.FETCH_BUF_BEATS(FETCH_BUF_BEATS), .FETCH_OUTSTANDING(FETCH_OUTSTANDING), .FETCH_PRIORITY(FETCH_PRIORITY)) core (
		.ap_clk(ap_clk), .ap_rst_n(core_rst_n),
		.in0_V_tdata(core_in_tdata), .in0_V_tvalid(core_in_tvalid), .in0_V_tready(core_in_tready),
		.out0_V_tdata(core_out_tdata), .out0_V_tvalid(core_out_tvalid), .out0_V_tready(core_out_tready),
		.weights_base(weights_base), .leaf(core_leaf), .leaf_valid(),
		.axi_mm_araddr(c_araddr), .axi_mm_arlen(c_arlen), .axi_mm_arsize(c_arsize), .axi_mm_arburst(c_arburst),
		.axi_mm_arid(c_arid), .axi_mm_arvalid(c_arvalid), .axi_mm_arready(m_axi_weights_arready & ~flush),
		.axi_mm_rdata(m_axi_weights_rdata), .axi_mm_rresp(m_axi_weights_rresp), .axi_mm_rlast(m_axi_weights_rlast),
		.axi_mm_rid(m_axi_weights_rid), .axi_mm_rvalid(m_axi_weights_rvalid & ~flush), .axi_mm_rready(c_rready),
		.level_branch(level_branch), .level_busy(level_busy),
		.host_fetch(host_fetch), .fetch_clear(start),
{wstreams}
	);

	// ---------------------------------------------------------------- weight port (read only)
	assign m_axi_weights_araddr = c_araddr;
	assign m_axi_weights_arlen = c_arlen;
	assign m_axi_weights_arsize = c_arsize;
	assign m_axi_weights_arburst = c_arburst;
	assign m_axi_weights_arid = c_arid;
	assign m_axi_weights_arcache = 4'b0011;
	assign m_axi_weights_arprot = 3'b000;
	assign m_axi_weights_arvalid = c_arvalid & ~flush;
	assign m_axi_weights_rready = flush | c_rready;
	always @(posedge ap_clk) begin
		if (!ap_rst_n) begin
			rd_out <= 0;
			draining <= 0;
		end
		else begin
			rd_out <= rd_out + (m_axi_weights_arvalid && m_axi_weights_arready)
			                 - (m_axi_weights_rvalid && m_axi_weights_rready && m_axi_weights_rlast);
			if (soft_reset) draining <= 1;
			else if (rd_out == 0) draining <= 0;
		end
	end

	// ---------------------------------------------------------------- output: INT32 per class, TLAST
	wire [{32 * ope - 1}:0] out_ext;
{chr(10).join(ext)}
	wire        rout_valid;
	wire [31:0] rout_data;
	sigmabranch_axis_repack #(.IN_BYTES({kout}), .OUT_BYTES(4)) out_repack (.clk(ap_clk), .rst_n(core_rst_n),
		.in_tdata(out_ext), .in_tvalid(core_out_tvalid), .in_tready(core_out_tready),
		.out_tdata(rout_data), .out_tvalid(rout_valid), .out_tready(m_axis_out_tready & ~flush));
	reg  [15:0] out_cnt;
	reg  [31:0] out_left;              // images whose output is still to leave: TLAST ends the last one
	wire        out_word_last = out_cnt == OUT_BEATS - 1;
	assign m_axis_out_tdata = rout_data;
	assign m_axis_out_tkeep = 4'hF;
	assign m_axis_out_tvalid = rout_valid & ~flush;
	assign m_axis_out_tlast = out_word_last && out_left <= 1;
	assign out_done = m_axis_out_tvalid & m_axis_out_tready & out_word_last;
	always @(posedge ap_clk) begin
		if (!ap_rst_n || flush) begin out_cnt <= 0; out_left <= 0; end
		else if (start) begin out_cnt <= 0; out_left <= frames; end
		else if (m_axis_out_tvalid && m_axis_out_tready) begin
			out_cnt <= out_word_last ? 0 : out_cnt + 1;
			if (out_word_last && out_left != 0) out_left <= out_left - 1;
		end
	end
"""
    head = (f"// generated by hls/axi_top.py: the whole tree behind AXI for Vivado (module reference top)\n"
            f"// build: {p['build']}\n`timescale 1ns/1ps\n")
    params = (f"#(parameter FETCH_BUF_BEATS = {FETCH_BUF_BEATS},  // weight port: R beats buffered per fetcher "
              f"(0: one burst at a time)\n  parameter FETCH_OUTSTANDING = {FETCH_OUTSTANDING},  // bursts in flight\n"
              f"  parameter FETCH_PRIORITY = {FETCH_PRIORITY})  // 1: fetchers served in datapath order, 0: in turn\n")
    return (head + f"module {TOP} " + params + "(\n" + ",\n".join(ports) + "\n);\n" + body + "endmodule\n\n" + REPACK)


REPACK = """// Byte gearbox between two AXI-stream widths (IN_BYTES -> OUT_BYTES per word), no gaps added.
module sigmabranch_axis_repack #(parameter IN_BYTES = 1, parameter OUT_BYTES = 1) (
	input  wire clk,
	input  wire rst_n,
	input  wire [8*IN_BYTES-1:0]  in_tdata,
	input  wire                   in_tvalid,
	output wire                   in_tready,
	output wire [8*OUT_BYTES-1:0] out_tdata,
	output wire                   out_tvalid,
	input  wire                   out_tready
);
	localparam CAP = IN_BYTES + OUT_BYTES;
	reg  [8*CAP-1:0] buffer;
	reg  [15:0]      count;
	wire out_fire = out_tvalid && out_tready;
	wire in_fire = in_tvalid && in_tready;
	assign out_tvalid = count >= OUT_BYTES;
	assign out_tdata = buffer[8*OUT_BYTES-1:0];
	assign in_tready = count <= OUT_BYTES;
	wire [15:0]      kept = out_fire ? count - OUT_BYTES : count;
	wire [8*CAP-1:0] shifted = out_fire ? buffer >> (8*OUT_BYTES) : buffer;
	wire [8*CAP-1:0] incoming = {{(8*OUT_BYTES){1'b0}}, in_tdata};
	always @(posedge clk) begin
		if (!rst_n) begin
			buffer <= 0;
			count <= 0;
		end
		else begin
			buffer <= in_fire ? (shifted | (incoming << (8*kept))) : shifted;
			count <= kept + (in_fire ? IN_BYTES : 0);
		end
	end
endmodule
"""


# --------------------------------------------------------------------------------- the folder
def write_axi_top(build_dir: str | Path, out_dir: str | Path, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``<out_dir>/src/`` (every HDL source and data file of the tree behind AXI, paths
    rewritten) and ``<out_dir>/hdl.json`` (what :mod:`hls.vivado` and the testbench need);
    return that description. ``work_dir``: where the build's nodes are prepared (FINN+
    ``PrepareIP``; default ``<out_dir>/prepared``)."""
    from host.backends.base import layout_signature

    from .finn_rtllib import patched_rtllib
    from .parts import TreeParts
    from .stitch import RTL_FORK, stage_files, write_tree_top

    build_dir, out_dir = Path(build_dir).resolve(), Path(out_dir).resolve()
    work = Path(work_dir).resolve() if work_dir else out_dir / "prepared"
    tp = TreeParts(build_dir, work)
    depth = tp.tree.depth
    if depth > 8:
        raise AxiTopError(f"depth {depth}: the control block's register map has room for 8 levels")
    tree = tp.whole_tree()
    levels, stages = tree.levels, tree.stages
    gen = work / "tops"
    info = write_tree_top(gen / f"{CORE}.sv", CORE, tree, host_fetch=True)
    core_file = gen / f"{CORE}.sv"
    core_file.write_text(expose_levels(core_file.read_text(), depth))
    srcs, incs, _ = stage_files(stages, also=(RTL_FORK,))
    srcs += [RTL_DIR / "weight_stream_split.sv", RTL_DIR / "tree_ctrl.sv", core_file]
    data = []
    for st in stages:                              # every stage's files (names repeat: memblock.dat)
        data += [Path(f) for f in st.data_files if Path(f) not in data]

    # geometry
    driver = tp.driver
    in_bits, in_pe, _ = info["in_elem"]
    if in_bits != 8:
        raise AxiTopError(f"the tree's input elements are {in_bits} bits: the input DMA carries INT8 bytes")
    kin = info["in_w"] // 8
    din = kin if _pow2(kin) and kin <= 128 else 1
    in_bytes = int(driver["input"]["bytes"])
    if in_bytes % din or in_bytes % kin:
        raise AxiTopError(f"input of {in_bytes} bytes is not a whole number of {kin}-byte words")
    out_bits, out_pe, out_signed = info["out_elem"]
    n_cls = int(tp.manifest["num_classes"])
    if n_cls % out_pe:
        raise AxiTopError(f"{n_cls} classes are not a whole number of {out_pe}-element output words")
    if int(driver["output"]["bytes"]) != OUT_BYTES_PER_CLASS * n_cls:
        raise AxiTopError(f"driver.json output is {driver['output']['bytes']} bytes, the top writes "
                          f"{OUT_BYTES_PER_CLASS * n_cls} (INT32 per class)")
    wl = tp.weights["levels"]
    geom = {"build": str(build_dir), "levels": depth, "signature": layout_signature(driver),
            "level_lo": [int(lv["base"]) for lv in wl],
            "level_hi": [int(lv["base"]) + len(lv["regions"]) * int(lv["region_stride"]) for lv in wl],
            "tree_in_bytes": kin, "dma_in_bytes": din, "input_bytes": in_bytes, "in_beats": in_bytes // din,
            "out_bits": out_bits, "out_pe": out_pe, "out_signed": bool(out_signed), "num_classes": n_cls,
            "out_w": levels[-1].below[-1].out_w, "out_bytes": OUT_BYTES_PER_CLASS * n_cls,
            "leaf_bits": max(1, (levels[-1].n_branches - 1).bit_length())}

    # copy into src/, rewrite paths
    src = out_dir / "src"
    if src.exists():
        shutil.rmtree(src)
    roots = [(patched_rtllib(), "finn-rtllib"), (RTL_DIR, "rtl"), (work, "nodes"), (REPO, "repo")]
    new_of: dict[Path, Path] = {}
    for f in srcs + data:
        dst = src / _group(f, roots)
        if dst in new_of.values() and new_of.get(f) != dst:
            raise AxiTopError(f"two files map to {dst}")
        new_of[f] = dst
    dir_map = {}
    for f, dst in new_of.items():
        for old in {str(f.parent), str(f.parent.resolve())}:
            dir_map[old] = str(dst.parent)
    data_by_prefix = {new_of[f].name: new_of[f] for f in data}
    for f, dst in new_of.items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if f in data:
            shutil.copy2(f, dst)
        else:
            dst.write_text(_rewrite(Path(f).read_text(errors="replace"), dst.parent, dir_map, data_by_prefix))
    top_file = src / "gen" / f"{TOP}.v"
    top_file.parent.mkdir(parents=True, exist_ok=True)
    top_file.write_text(wrapper_text(geom))
    desc = {"top": TOP, "core": CORE, "top_file": str(top_file),
            "sources": [str(new_of[f]) for f in srcs] + [str(top_file)],
            "includes": sorted({str(new_of[f].parent) for f in srcs
                                if any(Path(i).resolve() == f.parent.resolve() for i in incs)}),
            "data": [str(new_of[f]) for f in data], "geometry": geom,
            "ports": {"clock": "ap_clk", "reset": "ap_rst_n (active low)",
                      "s_axi_ctrl": f"AXI4-Lite slave, {CTRL_ADDR_W}-bit address, 32-bit data (tree_ctrl registers)",
                      "s_axis_in": f"AXI-stream slave, {8 * din} bits (idma0 MM2S: the image, NHWC INT8)",
                      "m_axis_out": "AXI-stream master, 32 bits, TLAST on the last word (odma0 S2MM: INT32 per class)",
                      "m_axi_weights": "AXI4 read master, 64-bit address, 256-bit data, ID 2 bits (weights.bin in DDR)",
                      **{f"s_axis_w{l}": f"AXI-stream slave, {WEIGHT_STREAM_BITS} bits, TLAST (wdma{l} MM2S: level {l}'s "
                         "chosen region, host-driven fetch)" for l in range(depth)}},
            "fetchers": info["n_fetchers"], "fetchers_per_level": info["fetchers_per_level"],
            # Which top port each overlay IP drives (the IP names of host/backends/base.py IPS, as
            # the Vivado block design names them): what a pynq stand-in in simulation attaches to.
            "pynq": {"ctrl": {"ip": "sigmabranch_ctrl", "port": "s_axi_ctrl"},
                     "dmas": {"idma0": {"send": "s_axis_in"}, "odma0": {"recv": "m_axis_out"},
                              **{f"wdma{l}": {"send": f"s_axis_w{l}"} for l in range(depth)}},
                     "ddr": "m_axi_weights"}}
    (out_dir / "hdl.json").write_text(json.dumps(desc, indent=1))
    return desc
