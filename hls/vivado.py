"""The Vivado side of a build: block-design Tcl, the bitstream script, the host's register map.

:func:`write_vivado_project` writes, into a ``sigmabranch build`` output ``<build>``:

- ``vivado/src/`` + ``vivado/hdl.json``: the tree behind AXI (:func:`hls.axi_top.write_axi_top`),
  every HDL source and ``$readmemh`` file copied in;
- ``vivado/make_project.tcl``: FINN+'s own Zynq shell (``custom_zynq_shell_template``, formatted
  the way FINN+'s ``MakeZYNQProject`` formats it: clock in MHz, AXI-Lite and AXI-MM port counts,
  board, part; Zynq PS, clocking wizard, reset, ``axi_interconnect_0`` for AXI-Lite,
  ``smartconnect_0`` to the HP0 port) whose custom-instantiation section adds the sources,
  instantiates ``sigmabranch_tree_axi`` as a module-reference cell named ``sigmabranch_ctrl`` (so
  PYNQ's ``.hwh`` names the control block as ``host/backends/base.py`` ``IPS`` expects), two
  ``axi_dma`` (``idma0`` MM2S -> ``s_axis_in``, ``odma0`` S2MM <- ``m_axis_out``) and one weight
  DMA per level (``wdma<l>`` MM2S, 256-bit stream -> ``s_axis_w<l>``, for the host-driven fetch),
  their register blocks on the interconnect, the on-chip weight reader ``m_axi_weights`` and every
  DMA's master on the smartconnect; then copies the bitstream and its ``.hwh`` to ``<build>/sigmabranch.bit/.hwh``;
- ``vivado/build_bitstream.sh``: stops with a message naming ``vivado`` when it is not on PATH,
  else runs Vivado in batch mode on the Tcl (``vivado/project/``, log ``vivado/vivado.log``);
- ``Makefile``: ``make bitstream`` runs that script;
- ``registers.json``: what the host needs without a ``.hwh``: register map, IP names, buffer
  sizes, stream widths, signature (:func:`driver_overrides` gives the keys for ``driver.json``).

:func:`vivado_step` is the one Vivado entry point (``hls.build.build`` calls it with
``run=False``; ``sigmabranch build --bitstream`` with ``run=True``). The per-board values (FINN+
platform, part, clock, PS port width, DMA address width, board files) come from
:class:`hls.boards.Board`.

Vivado is not installed where this was written: the Tcl follows FINN+'s template and Vivado IP
integrator conventions but has not been run (docs/vivado.md).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from .axi_top import WEIGHT_STREAM_BITS
from .boards import Board, get_board
from .errors import BuildError
from .weight_image import REGION_ALIGN

BITFILE, HWHFILE = "sigmabranch.bit", "sigmabranch.hwh"
# AXI-Lite slaves: idma0, odma0, sigmabranch_ctrl + one wdma per level; AXI-MM masters: idma0,
# odma0, m_axi_weights + one wdma per level
FIXED_AXILITE = FIXED_AXIMM = 3
SG_LENGTH_WIDTH = 26               # AXI DMA transfer length register: up to 64 MiB per transfer


class VivadoMissing(BuildError, RuntimeError):
    """``vivado`` is not on PATH: names it and where everything else was written (a
    :class:`BuildError`, so the CLI prints it as one line)."""


def _board(board: Board | str) -> Board:
    return board if isinstance(board, Board) else get_board(board)


def _ips(levels: int) -> dict[str, Any]:
    from host.backends.base import IPS
    return {"ctrl": IPS["ctrl"], "idma": IPS["idma"], "odma": IPS["odma"], "wdma": [f"wdma{l}" for l in range(levels)]}


def register_map(levels: int) -> list[dict[str, Any]]:
    """Every register of ``tree_ctrl`` (name, byte offset, access, meaning), levels expanded."""
    from host.backends.base import REGISTERS as R
    rows = [("CTRL", R["CTRL"], "RW", "W: bit0 start, bit1 soft reset (holds the tree in reset until the next start). "
                                      "R: bit0 running, bit1 in soft reset"),
            ("STATUS", R["STATUS"], "R", "bit0 done, bit1 idle, bit2 error (bit3|bit4), bit3 host fetch went wrong "
                                         "(a region of the wrong length, or COMMIT naming another branch than the "
                                         "decision), bit4 a fetch read outside every level's regions"),
            ("SIGNATURE", R["SIGNATURE"], "R", "layout signature the design was built for"),
            ("LEVELS", R["LEVELS"], "R", "tree depth"),
            ("FETCH_MODE", R["FETCH_MODE"], "RW", "1 on-chip fetch (reset value), 0 host-driven (wdma<l>)"),
            ("WEIGHT_BASE_LO", R["WEIGHT_BASE_LO"], "RW", "physical address of weights.bin, bits 31:0"),
            ("WEIGHT_BASE_HI", R["WEIGHT_BASE_HI"], "RW", "bits 63:32"),
            ("DECISION_VALID", R["DECISION_VALID"], "R", "bit l: level l decided in this inference")]
    for l in range(levels):
        rows += [(f"DECISION_{l}", R["DECISION_0"] + 4 * l, "R", f"branch index of level {l}"),
                 (f"COMMIT_{l}", R["COMMIT_0"] + 4 * l, "RW", "host mode: bit31 + branch once the region went out "
                                                              "(another branch than DECISION sets STATUS bit3)"),
                 (f"FETCH_BRANCH_{l}", R["FETCH_BRANCH_0"] + 4 * l, "RW",
                  f"host mode: branch whose region wdma{l}'s next transfer carries (others are dropped)"),
                 (f"FETCH_ADDR_LO_{l}", R["FETCH_ADDR_LO_0"] + 8 * l, "R",
                  f"lowest address level {l}'s fetchers read in this inference, bits 31:0"),
                 (f"FETCH_ADDR_HI_{l}", R["FETCH_ADDR_HI_0"] + 8 * l, "R", "bits 63:32"),
                 (f"FETCH_BYTES_{l}", R["FETCH_BYTES_0"] + 4 * l, "R", f"bytes level {l}'s fetchers took in this "
                                                                           "inference (host mode: from wdma)")]
    return [{"name": n, "offset": o, "access": a, "description": d} for n, o, a, d in sorted(rows, key=lambda r: r[1])]


# --------------------------------------------------------------------------------- Tcl
def _dma_tcl(name: str, mm2s: bool, stream_bits: int, mm_bits: int, addr_bits: int) -> list[str]:
    if mm2s:
        conf = (f"CONFIG.c_include_mm2s {{1}} CONFIG.c_include_s2mm {{0}} CONFIG.c_m_axis_mm2s_tdata_width {{{stream_bits}}} "
                f"CONFIG.c_m_axi_mm2s_data_width {{{mm_bits}}}")
    else:
        conf = (f"CONFIG.c_include_mm2s {{0}} CONFIG.c_include_s2mm {{1}} CONFIG.c_s_axis_s2mm_tdata_width {{{stream_bits}}} "
                f"CONFIG.c_m_axi_s2mm_data_width {{{mm_bits}}}")
    return [f"create_bd_cell -type ip -vlnv $sb_dma_vlnv {name}",
            f"set_property -dict [list CONFIG.c_include_sg {{0}} CONFIG.c_sg_length_width {{{SG_LENGTH_WIDTH}}} "
            f"CONFIG.c_addr_width {{{addr_bits}}} {conf}] [get_bd_cells {name}]"]


def custom_section(desc: dict[str, Any], board: Board | str, vivado_dir: Path) -> str:
    """The custom-instantiation part of FINN's shell (``%s`` in the template)."""
    g = desc["geometry"]
    ips = _ips(g["levels"])
    b = _board(board)
    in_bits = 8 * g["dma_in_bytes"]
    mm_bits = max(32, b.axi_port_bits, in_bits)
    rel = lambda p: f'"$SB_DIR/{Path(p).resolve().relative_to(vivado_dir.resolve()).as_posix()}"'  # noqa: E731
    ctrl, idma, odma = ips["ctrl"], ips["idma"], ips["odma"]
    lines = ["# ---------------------------------------------------------------- sigmabranch (hls/vivado.py)",
             "# HDL of the tree behind AXI (hls/axi_top.py): FINN+ layers, finn-rtllib, hls/rtl, generated tops",
             "set SB_SOURCES [list \\"] + [f"    {rel(s)} \\" for s in desc["sources"]] + ["]",
             "add_files -norecurse $SB_SOURCES",
             "foreach f [get_files -quiet *.sv] { set_property file_type SystemVerilog $f }",
             "# $readmemh images (the HDL names them by absolute path, as FINN's ReplaceVerilogRelPaths does)",
             "set SB_DATA [list \\"] + [f"    {rel(s)} \\" for s in desc["data"]] + ["]",
             "add_files -norecurse $SB_DATA",
             "catch {set_property file_type {Memory File} [get_files -quiet *.dat]}",
             "update_compile_order -fileset sources_1",
             "# the whole tree as a module-reference cell; its AXI-Lite slave is the host's control block",
             f"create_bd_cell -type module -reference {desc['top']} {ctrl}",
             "# input / output DMAs (simple mode, as pynq's DMA driver uses them)",
             'set sb_dma_vlnv [get_property VLNV [get_ipdefs "xilinx.com:ip:axi_dma:*"]]']
    lines += _dma_tcl(idma, True, in_bits, mm_bits, b.addr_bits)
    lines += _dma_tcl(odma, False, 32, mm_bits, b.addr_bits)
    lines.append("# one weight DMA per level: the chosen branch's region, host-driven fetch (s_axis_w<l>)")
    for w in ips["wdma"]:
        lines += _dma_tcl(w, True, WEIGHT_STREAM_BITS, max(mm_bits, WEIGHT_STREAM_BITS), b.addr_bits)
    lines += ["# streams",
              f"connect_bd_intf_net [get_bd_intf_pins {idma}/M_AXIS_MM2S] [get_bd_intf_pins {ctrl}/s_axis_in]",
              f"connect_bd_intf_net [get_bd_intf_pins {ctrl}/m_axis_out] [get_bd_intf_pins {odma}/S_AXIS_S2MM]",
              "# memory-mapped masters -> smartconnect_0 -> the PS's HP0 port (DDR)",
              f"connect_bd_intf_net [get_bd_intf_pins {idma}/M_AXI_MM2S] [get_bd_intf_pins smartconnect_0/S00_AXI]",
              f"connect_bd_intf_net [get_bd_intf_pins {odma}/M_AXI_S2MM] [get_bd_intf_pins smartconnect_0/S01_AXI]",
              f"connect_bd_intf_net [get_bd_intf_pins {ctrl}/m_axi_weights] [get_bd_intf_pins smartconnect_0/S02_AXI]",
              *[f"connect_bd_intf_net [get_bd_intf_pins {w}/M_AXI_MM2S] [get_bd_intf_pins smartconnect_0/S{3 + l:02d}_AXI]"
                for l, w in enumerate(ips["wdma"])],
              *[f"connect_bd_intf_net [get_bd_intf_pins {w}/M_AXIS_MM2S] [get_bd_intf_pins {ctrl}/s_axis_w{l}]"
                for l, w in enumerate(ips["wdma"])],
              "# AXI-Lite: the DMAs' registers and the control block on axi_interconnect_0",
              f"connect_bd_intf_net [get_bd_intf_pins {idma}/S_AXI_LITE] -boundary_type upper "
              "[get_bd_intf_pins axi_interconnect_0/M00_AXI]",
              f"connect_bd_intf_net [get_bd_intf_pins {odma}/S_AXI_LITE] -boundary_type upper "
              "[get_bd_intf_pins axi_interconnect_0/M01_AXI]",
              f"connect_bd_intf_net [get_bd_intf_pins {ctrl}/s_axi_ctrl] -boundary_type upper "
              "[get_bd_intf_pins axi_interconnect_0/M02_AXI]",
              f"assign_axi_addr_proc {idma}/S_AXI_LITE",
              f"assign_axi_addr_proc {odma}/S_AXI_LITE",
              *[s for l, w in enumerate(ips["wdma"]) for s in (
                  f"connect_bd_intf_net [get_bd_intf_pins {w}/S_AXI_LITE] -boundary_type upper "
                  f"[get_bd_intf_pins axi_interconnect_0/M{3 + l:02d}_AXI]", f"assign_axi_addr_proc {w}/S_AXI_LITE")],
              "# a module reference names its address block itself: assign it, else leave it to assign_bd_address",
              f"if {{[catch {{assign_bd_address -range 4K [get_bd_addr_segs -of_objects [get_bd_intf_pins {ctrl}/s_axi_ctrl]]}}]}} {{",
              f'    puts "sigmabranch: {ctrl}/s_axi_ctrl is assigned by assign_bd_address below"',
              "}",
              "# one clock and reset domain (the clocking wizard's output, as FINN's own IP)",
              f"connect_bd_net [get_bd_pins {ctrl}/ap_clk] [get_bd_pins smartconnect_0/aclk]",
              f"connect_bd_net [get_bd_pins {ctrl}/ap_rst_n] [get_bd_pins proc_sys_reset_0/peripheral_aresetn]",
              f"foreach p {{{idma}/s_axi_lite_aclk {idma}/m_axi_mm2s_aclk {odma}/s_axi_lite_aclk {odma}/m_axi_s2mm_aclk"
              + "".join(f" {w}/s_axi_lite_aclk {w}/m_axi_mm2s_aclk" for w in ips["wdma"]) + "} {",
              "    connect_bd_net [get_bd_pins $p] [get_bd_pins smartconnect_0/aclk]",
              "}",
              f"foreach p {{{idma}/axi_resetn {odma}/axi_resetn" + "".join(f" {w}/axi_resetn" for w in ips["wdma"]) + "} {",
              "    connect_bd_net [get_bd_pins $p] [get_bd_pins proc_sys_reset_0/peripheral_aresetn]",
              "}",
              "# ---------------------------------------------------------------- end sigmabranch"]
    return "\n".join(lines) + "\n"


TCL_HEAD = """# generated by hls/vivado.py: the block design, synthesis and bitstream of a sigmabranch build.
# FINN+'s Zynq shell (finn.transformation.fpgadataflow.templates.custom_zynq_shell_template),
# formatted as MakeZYNQProject formats it; the custom section instantiates the tree.
# Run from an empty directory (build_bitstream.sh uses vivado/project/):
#     vivado -mode batch -source <build>/vivado/make_project.tcl
set SB_DIR [file normalize [file dirname [info script]]]
set SB_OUT [file normalize [file join $SB_DIR ..]]
if {[info exists ::env(SIGMABRANCH_BOARD_FILES)]} {
    set SB_BOARDFILES $::env(SIGMABRANCH_BOARD_FILES)
} else {
    set SB_BOARDFILES [file join $SB_DIR board_files]
}
if {[info exists ::env(SIGMABRANCH_VIVADO_JOBS)]} {
    set SB_JOBS $::env(SIGMABRANCH_VIVADO_JOBS)
} else {
    set SB_JOBS 4
}
"""

TCL_TAIL = """
# ---------------------------------------------------------------- sigmabranch: outputs into the build
# (the shell above closed the project; its files stay in the working directory)
set sb_bit [file join [pwd] finn_zynq_link.runs impl_1 top_wrapper.bit]
set sb_hwh ""
foreach c [list finn_zynq_link.gen/sources_1/bd/top/hw_handoff/top.hwh \\
               finn_zynq_link.srcs/sources_1/bd/top/hw_handoff/top.hwh] {
    if {[file exists $c]} { set sb_hwh $c }
}
if {![file exists $sb_bit] || $sb_hwh == ""} {
    puts stderr "sigmabranch: no bitstream or no hardware handoff (.hwh) was written; see the Vivado log"
    exit 1
}
file copy -force $sb_bit [file join $SB_OUT %(bit)s]
file copy -force $sb_hwh [file join $SB_OUT %(hwh)s]
if {[file exists synth_report.xml]} { file copy -force synth_report.xml [file join $SB_DIR utilization.xml] }
puts "sigmabranch: [file join $SB_OUT %(bit)s] and [file join $SB_OUT %(hwh)s] written"
"""


def make_project_tcl(desc: dict[str, Any], board: Board | str, vivado_dir: Path, clk_ns: float | None = None) -> str:
    """FINN+'s ``custom_zynq_shell_template`` formatted as ``MakeZYNQProject.apply`` does (same
    nine values, same ``$BOARDFILES$``/``$PR_CONFIG$``/``$NUM_JOBS$`` replacements), with this
    design in its custom section, plus the copy of the bitstream and ``.hwh`` into the build."""
    from finn.transformation.fpgadataflow import templates
    from finn.util.basic import pynq_part_map

    b = _board(board)
    platform = b.platform
    if pynq_part_map[platform] != b.part:
        raise ValueError(f"FINN+ builds {platform} for {pynq_part_map[platform]}, hls/boards.py says {b.part}")
    period = float(clk_ns if clk_ns is not None else b.clk_ns)
    fclk_mhz = int(1 / (period * 0.001))
    enable_debug = enable_gpio_reset = enable_finn_switch = 0
    shell = (templates.custom_zynq_shell_template % (
        fclk_mhz, FIXED_AXILITE + desc["geometry"]["levels"], FIXED_AXIMM + desc["geometry"]["levels"], platform,
        pynq_part_map[platform],
        custom_section(desc, b, vivado_dir), enable_debug, enable_gpio_reset, enable_finn_switch))
    shell = (shell.replace("$BOARDFILES$", "$SB_BOARDFILES").replace("$PR_CONFIG$", "")
             .replace("$NUM_JOBS$", "$SB_JOBS"))
    return TCL_HEAD + shell + TCL_TAIL % {"bit": BITFILE, "hwh": HWHFILE}


BUILD_SH = """#!/usr/bin/env bash
# generated by hls/vivado.py: the Vivado part of `sigmabranch build --bitstream` (also `make bitstream`)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$(cd "$HERE/.." && pwd)"
if ! command -v vivado >/dev/null 2>&1; then
    echo "build_bitstream.sh: \\`vivado\\` is not on PATH: the block design, synthesis and the bitstream need" >&2
    echo "AMD Vivado (source its settings64.sh first). Everything else of this build is in $OUT;" >&2
    echo "the Vivado Tcl is $HERE/make_project.tcl." >&2
    exit 127
fi
if [ -n "%(board_files)s" ]; then
    BF="${SIGMABRANCH_BOARD_FILES:-$HERE/board_files}"
    if ! find "$BF" -ipath "*%(name)s*" -name board.xml 2>/dev/null | grep -q .; then
        echo "build_bitstream.sh: warning: no %(platform)s board files under $BF (board part %(board_files)s);" >&2
        echo "  Vivado finds them only there, in SIGMABRANCH_BOARD_FILES or in its own board store." >&2
    fi
fi
mkdir -p "$HERE/project"
cd "$HERE/project"
vivado -mode batch -nojournal -log "$HERE/vivado.log" -source "$HERE/make_project.tcl"
if [ ! -f "$OUT/%(bit)s" ] || [ ! -f "$OUT/%(hwh)s" ]; then
    echo "build_bitstream.sh: Vivado finished without $OUT/%(bit)s and $OUT/%(hwh)s; see $HERE/vivado.log" >&2
    exit 1
fi
echo "$OUT/%(bit)s"
"""

MAKEFILE = """# generated by hls/vivado.py
.PHONY: bitstream
bitstream:
\tbash vivado/build_bitstream.sh
"""


# --------------------------------------------------------------------------------- the bundle
def registers_json(build_dir: str | Path, desc: dict[str, Any]) -> dict[str, Any]:
    """``registers.json``: the control block's register map, the IPs, buffer sizes and stream
    widths: what the host needs from the design without reading a ``.hwh``."""
    from host.backends.base import REGISTERS
    build_dir = Path(build_dir)
    driver = json.loads((build_dir / "driver.json").read_text())
    g = desc["geometry"]
    weights_bytes = (build_dir / "weights.bin").stat().st_size
    return {"format": "sigmabranch-registers/1", "top": desc["top"], "signature": g["signature"],
            "levels": g["levels"], "fetch_modes": ["onchip", "host"], "registers": dict(REGISTERS),
            "register_map": register_map(g["levels"]), "ips": _ips(g["levels"]),
            "buffers": {"input": {"bytes": g["input_bytes"], "dma": _ips(g["levels"])["idma"], "stream_bits": 8 * g["dma_in_bytes"],
                                  "layout": "NHWC INT8", "shape_nhwc": driver["input"]["shape_nhwc"]},
                        "output": {"bytes": g["out_bytes"], "dma": _ips(g["levels"])["odma"], "stream_bits": 32,
                                   "layout": "INT32 little-endian per class, TLAST on the last word"},
                        "weights": {"bytes": weights_bytes, "alignment": REGION_ALIGN,
                                    "reader": "on chip: m_axi_weights (256-bit AXI4 read); host mode: wdma<l> MM2S "
                                              f"({WEIGHT_STREAM_BITS}-bit stream, one transfer per region)",
                                    "levels": [{"level": l, "offset": lo, "end": hi}
                                               for l, (lo, hi) in enumerate(zip(g["level_lo"], g["level_hi"]))]}},
            "clock_mhz": int(1 / (float(driver["clk_ns"]) * 0.001)), "board": driver["board"], "part": driver["part"],
            "bitstream": BITFILE, "hwh": HWHFILE, "ports": desc["ports"]}


def driver_overrides(build_dir: str | Path) -> dict[str, Any]:
    """Keys to merge into ``driver.json``: ``registers`` and ``ips`` (with one ``wdma`` per level,
    so the board backend offers both fetch modes); ``bitstream``/``hwh`` once Vivado wrote them."""
    build_dir = Path(build_dir)
    reg = json.loads((build_dir / "registers.json").read_text())
    out = {"registers": reg["registers"], "ips": reg["ips"]}
    if (build_dir / BITFILE).exists() and (build_dir / HWHFILE).exists():
        out.update(bitstream=BITFILE, hwh=HWHFILE)
    return out


def write_vivado_project(build_dir: str | Path, board: str | None = None, work_dir: str | Path | None = None,
                         clk_ns: float | None = None) -> dict[str, Any]:
    """Everything of the Vivado step except running Vivado (see the module docstring). ``board``
    defaults to ``driver.json``'s. Returns the paths written and the top's description."""
    from .axi_top import write_axi_top
    build_dir = Path(build_dir).resolve()
    driver = json.loads((build_dir / "driver.json").read_text())
    board = get_board(board or driver["board"])
    vdir = build_dir / "vivado"
    vdir.mkdir(parents=True, exist_ok=True)
    desc = write_axi_top(build_dir, vdir, work_dir=work_dir)
    tcl = vdir / "make_project.tcl"
    tcl.write_text(make_project_tcl(desc, board, vdir, clk_ns))
    sh = vdir / "build_bitstream.sh"
    # Vivado does not ship every board's files: the script checks for those it needs (PYNQ-Z2)
    sh.write_text(BUILD_SH % {"platform": board.platform, "board_files": board.board_files or "", "name": board.name,
                              "bit": BITFILE, "hwh": HWHFILE})
    sh.chmod(sh.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (build_dir / "Makefile").write_text(MAKEFILE)
    (build_dir / "registers.json").write_text(json.dumps(registers_json(build_dir, desc), indent=1))
    return {"tcl": str(tcl), "script": str(sh), "makefile": str(build_dir / "Makefile"),
            "registers": str(build_dir / "registers.json"), "hdl": desc}


def run_bitstream(build_dir: str | Path, timeout_s: float | None = None) -> Path:
    """Run ``vivado/build_bitstream.sh``; :class:`VivadoMissing` (naming ``vivado``) when it is not
    on PATH, ``RuntimeError`` with the log's tail when Vivado fails. Returns the bitstream."""
    build_dir = Path(build_dir).resolve()
    sh = build_dir / "vivado" / "build_bitstream.sh"
    if not sh.exists():
        raise FileNotFoundError(f"{sh} does not exist: run write_vivado_project({str(build_dir)!r}) first")
    if shutil.which("vivado") is None:
        raise VivadoMissing(f"`vivado` is not on PATH: the block design, synthesis and the bitstream need AMD Vivado. "
                            f"Everything else is in {build_dir} (Tcl: {sh.parent / 'make_project.tcl'}; "
                            f"run `make -C {build_dir} bitstream` where Vivado is installed).")
    proc = subprocess.run(["bash", str(sh)], capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    if proc.returncode != 0:
        log = sh.parent / "vivado.log"
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else proc.stdout[-4000:]
        raise RuntimeError(f"Vivado failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")
    return build_dir / BITFILE


def vivado_step(out: str | Path, run: bool = True) -> dict[str, Any]:
    """The Vivado step of ``sigmabranch build`` (the one entry point): :func:`write_vivado_project`,
    the :func:`driver_overrides` merged into ``driver.json``, then (``run``) :func:`run_bitstream`.
    Without ``vivado`` on PATH: :class:`VivadoMissing` (a :class:`BuildError`) after everything
    else was written; a project ``build`` already wrote is then kept as it is (regenerating the
    HDL only to stop would be wasted). Returns what was written (and ``bitstream`` when Vivado ran)."""
    out = Path(out)
    keep = run and shutil.which("vivado") is None and (out / "vivado" / "build_bitstream.sh").is_file()
    written = {} if keep else write_vivado_project(out)

    def merge() -> None:
        path = out / "driver.json"
        driver = json.loads(path.read_text())
        driver.update(driver_overrides(out))
        path.write_text(json.dumps(driver, indent=1))
    merge()
    if run:
        written["bitstream"] = str(run_bitstream(out))
        merge()
    return written
