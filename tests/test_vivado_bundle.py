"""The Vivado side of a build (hls/vivado.py), checked without Vivado.

The tiny tree is exported and built (no HDL), then :func:`hls.vivado.write_vivado_project`
writes ``vivado/`` (sources, ``make_project.tcl``, ``build_bitstream.sh``), ``Makefile`` and
``registers.json``. The Tcl is also run in plain ``tclsh`` with every Vivado command stubbed
(recorded, not executed): that checks it parses and runs through, which files it adds (they
must exist), which cells it creates and connects, and that its last part copies the bitstream
and ``.hwh`` into the build directory.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


# One worker builds the tiny ZCU104 tree's AXI top (tests/test_vivado_bundle.py's tiny_bundle, one
# folder per process: its HDL names it) and simulates it; the other modules of the group reuse that
# Verilator model (pytest-xdist --dist loadgroup, see the Makefile).
pytestmark = pytest.mark.xdist_group("tiny_axi")


_BUNDLES: dict = {}


def tiny_bundle(shared_builds):
    """The tiny tree's ZCU104 build (shared, tests/fixtures_build.py) copied and its Vivado folder
    written; once per process, in one folder: its HDL names that folder, so tests/test_tree_axi.py
    and tests/test_host.py simulate the very same sources (one cached Verilator model)."""
    from hls.vivado import write_vivado_project
    if "zcu104" not in _BUNDLES:
        root = Path(tempfile.mkdtemp(prefix="sigmabranch-vivado-"))
        atexit.register(shutil.rmtree, root, True)
        shared_builds.copy(root, "zcu104")
        _BUNDLES["zcu104"] = root / "zcu104", write_vivado_project(root / "zcu104")
    return _BUNDLES["zcu104"]


@pytest.fixture(scope="module")
def bundle(shared_builds):
    return tiny_bundle(shared_builds)


STUB = r"""
set ::calls [open $::env(SB_CALLS) w]
proc unknown {args} {
    puts $::calls $args
    switch -- [lindex $args 0] {
        get_property { if {[string match *ADDR_WIDTH* [lindex $args 1]]} { return 12 } ; return stub }
        get_param { return {} }
        default { return [lindex $args end] }
    }
}
cd $::env(SB_CWD)
source $::env(SB_TCL)
close $::calls
"""


@pytest.fixture(scope="module")
def tcl_run(bundle, tmp_path_factory):
    """make_project.tcl in tclsh with stubbed Vivado commands; a fake bitstream and .hwh where
    Vivado would leave them. Returns the recorded commands (with Tcl variables substituted)."""
    assert shutil.which("tclsh") is not None, "tclsh is not installed: run `make install` (it installs Tcl)"
    build_dir, project = bundle
    cwd = tmp_path_factory.mktemp("vivado-project")
    (cwd / "finn_zynq_link.runs" / "impl_1").mkdir(parents=True)
    (cwd / "finn_zynq_link.runs" / "impl_1" / "top_wrapper.bit").write_bytes(b"bit")
    hwh = cwd / "finn_zynq_link.gen" / "sources_1" / "bd" / "top" / "hw_handoff"
    hwh.mkdir(parents=True)
    (hwh / "top.hwh").write_text("<hwh/>")
    stub = cwd / "stub.tcl"
    stub.write_text(STUB)
    calls = cwd / "calls.txt"
    env = {**os.environ, "SB_CALLS": str(calls), "SB_CWD": str(cwd), "SB_TCL": project["tcl"]}
    proc = subprocess.run(["tclsh", str(stub)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    copied = {}
    for name in ("sigmabranch.bit", "sigmabranch.hwh"):       # the fake outputs must not stay in the bundle
        if (build_dir / name).exists():
            copied[name] = (build_dir / name).read_bytes()
            (build_dir / name).unlink()
    return [line for line in calls.read_text().splitlines() if line.strip()], build_dir, copied


def test_tcl_is_finn_shell_for_the_board_and_part(bundle):
    build_dir, project = bundle
    tcl = Path(project["tcl"]).read_text()
    assert "set BOARD ZCU104" in tcl and "set FPGA_PART xczu7ev-ffvc1156-2-e" in tcl
    assert "set FREQ_MHZ 200" in tcl                          # 5 ns, as MakeZYNQProject computes it
    assert "set NUM_AXILITE 5" in tcl and "set NUM_AXIMM 5" in tcl     # + one weight DMA per level (2)
    assert "create_bd_design \"top\"" in tcl and "zynq_ultra_ps_e" in tcl   # FINN+'s shell
    assert "$BOARDFILES$" not in tcl and "$NUM_JOBS$" not in tcl and "$PR_CONFIG$" not in tcl


def test_tcl_runs_through_and_adds_only_existing_files(tcl_run, bundle):
    calls, build_dir, copied = tcl_run
    added = [c for c in calls if c.startswith("add_files")]
    assert len(added) == 2                                     # sources, then the $readmemh images
    sources = added[0].split(" ", 2)[2].strip("{}").split()
    data = added[1].split(" ", 2)[2].strip("{}").split()
    assert len(sources) == len(bundle[1]["hdl"]["sources"]) and len(data) == len(bundle[1]["hdl"]["data"]) > 0
    missing = [f for f in sources + data if not Path(f).is_file()]
    assert not missing, missing[:5]
    names = {Path(f).name for f in sources}
    assert {"sigmabranch_tree_axi.v", "sigmabranch_tree.sv", "tree_ctrl.sv", "axi_read_arbiter.sv",
            "fetch_weights.sv", "mvu.sv", "stream_fork.sv"} <= names
    assert all(Path(f).is_relative_to(build_dir / "vivado" / "src") for f in sources + data)
    # every path inside the HDL points into the bundle (no prepare/cache folder, no "./" left)
    for f in sources:
        text = Path(f).read_text()
        for path in re.findall(r'"(/[^"]+)"', text):
            assert Path(path).is_relative_to(build_dir / "vivado" / "src"), (f, path)
        assert '"./' not in text, f
    # the last part copied the bitstream and the hardware handoff into the build
    assert copied == {"sigmabranch.bit": b"bit", "sigmabranch.hwh": b"<hwh/>"}


def test_cells_and_connections_match_the_host_contract(tcl_run, bundle):
    from host.backends.base import IPS
    calls, _, _ = tcl_run
    created = {c.split()[-1] for c in calls if c.startswith("create_bd_cell")}
    assert {IPS["ctrl"], IPS["idma"], IPS["odma"], "wdma0", "wdma1"} <= created
    assert f"create_bd_cell -type module -reference sigmabranch_tree_axi {IPS['ctrl']}" in calls
    top_text = Path(bundle[1]["hdl"]["top_file"]).read_text()
    tcl = Path(bundle[1]["tcl"]).read_text()
    connected = [c.split() for c in calls if c.startswith(("connect_bd_intf_net", "connect_bd_net"))]
    ours = set()
    for c in connected:
        for pin in [t for t in c[1:] if "/" in t]:
            cell, _, port = pin.partition("/")
            assert cell in created, f"{' '.join(c)}: no cell {cell}"
            if cell == IPS["ctrl"]:
                ours.add(port)
    assert ours == {"s_axis_in", "m_axis_out", "m_axi_weights", "s_axi_ctrl", "ap_clk", "ap_rst_n", "s_axis_w0",
                    "s_axis_w1"}
    for bus in ("s_axis_in", "m_axis_out", "m_axi_weights", "s_axi_ctrl", "s_axis_w0", "s_axis_w1"):
        assert re.search(rf'X_INTERFACE_INFO = "xilinx.com:interface:\S+ {bus} ', top_text), bus
    assert 'X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 ap_clk CLK"' in top_text
    # stream widths: idma0's MM2S carries the top's input word, odma0's S2MM 32-bit words
    width = int(re.search(r"wire \[(\d+):0\] s_axis_in_tdata", top_text).group(1)) + 1
    assert f"c_m_axis_mm2s_tdata_width {{{width}}}" in tcl and "c_s_axis_s2mm_tdata_width {32}" in tcl
    pairs = [" ".join(c) for c in connected]
    assert any(f"{IPS['ctrl']}/m_axi_weights" in c and "smartconnect_0/S02_AXI" in c for c in pairs)
    assert any(f"{IPS['ctrl']}/s_axi_ctrl" in c and "axi_interconnect_0/M02_AXI" in c for c in pairs)
    assert any(f"{IPS['idma']}/M_AXIS_MM2S" in c and f"{IPS['ctrl']}/s_axis_in" in c for c in pairs)
    assert any(f"{IPS['ctrl']}/m_axis_out" in c and f"{IPS['odma']}/S_AXIS_S2MM" in c for c in pairs)
    for l in range(2):   # host-driven fetch: wdma<l> MM2S (256-bit) -> s_axis_w<l>, its master and registers wired
        assert any(f"wdma{l}/M_AXIS_MM2S" in c and f"{IPS['ctrl']}/s_axis_w{l}" in c for c in pairs)
        assert any(f"wdma{l}/M_AXI_MM2S" in c and f"smartconnect_0/S0{3 + l}_AXI" in c for c in pairs)
        assert any(f"wdma{l}/S_AXI_LITE" in c and f"axi_interconnect_0/M0{3 + l}_AXI" in c for c in pairs)
    assert "c_m_axis_mm2s_tdata_width {256}" in tcl


def test_pynq_z2_shell(bundle):
    from hls.vivado import make_project_tcl
    build_dir, project = bundle
    tcl = make_project_tcl(project["hdl"], "pynq-z2", build_dir / "vivado")
    assert "set BOARD Pynq-Z2" in tcl and "set FPGA_PART xc7z020clg400-1" in tcl and "set FREQ_MHZ 100" in tcl
    assert "c_addr_width {32}" in tcl and "c_m_axi_mm2s_data_width {64}" in tcl


def test_bitstream_without_vivado_stops_naming_it(bundle):
    from hls.vivado import VivadoMissing, run_bitstream
    build_dir, project = bundle
    path = ":".join(p for p in ("/usr/bin", "/bin") if not (Path(p) / "vivado").exists())
    env = {**os.environ, "PATH": path}
    proc = subprocess.run(["bash", project["script"]], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0 and "`vivado` is not on PATH" in proc.stderr
    if shutil.which("make", path=path):
        proc = subprocess.run(["make", "-C", str(build_dir), "bitstream"], capture_output=True, text=True, env=env,
                              timeout=60)
        assert proc.returncode != 0 and "vivado" in proc.stderr
    if shutil.which("vivado") is None:
        with pytest.raises(VivadoMissing, match="vivado"):
            run_bitstream(build_dir)


def test_registers_json_is_the_host_contract(bundle):
    from host.backends.base import IPS, REGISTERS, layout_signature
    from hls.vivado import driver_overrides
    build_dir, _ = bundle
    reg = json.loads((build_dir / "registers.json").read_text())
    driver = json.loads((build_dir / "driver.json").read_text())
    assert reg["registers"] == REGISTERS
    assert reg["ips"] == {**IPS, "wdma": ["wdma0", "wdma1"]} and reg["fetch_modes"] == ["onchip", "host"]
    assert reg["signature"] == layout_signature(driver) and reg["levels"] == len(driver["levels"])
    assert reg["buffers"]["input"]["bytes"] == driver["input"]["bytes"]
    assert reg["buffers"]["output"]["bytes"] == driver["output"]["bytes"]
    assert reg["buffers"]["weights"]["bytes"] == (build_dir / "weights.bin").stat().st_size
    offsets = {r["name"]: r["offset"] for r in reg["register_map"]}
    assert offsets["FETCH_BYTES_1"] == REGISTERS["FETCH_BYTES_0"] + 4
    assert offsets["FETCH_ADDR_HI_1"] == REGISTERS["FETCH_ADDR_HI_0"] + 8
    over = driver_overrides(build_dir)
    assert over["registers"] == REGISTERS and over["ips"]["ctrl"] == IPS["ctrl"]
    assert over["ips"]["wdma"] == ["wdma0", "wdma1"]             # the board backend offers both fetch modes
    assert "bitstream" not in over                              # Vivado has not run


def test_vivado_step_merges_the_driver_keys_then_stops_without_vivado(bundle):
    from host.backends.base import REGISTERS
    from hls.vivado import VivadoMissing, vivado_step
    build_dir, _ = bundle
    if shutil.which("vivado") is not None:
        pytest.skip("vivado is installed: this test is about its absence")
    with pytest.raises(VivadoMissing, match="`vivado` is not on PATH"):
        vivado_step(build_dir)
    driver = json.loads((build_dir / "driver.json").read_text())
    assert driver["registers"] == REGISTERS and driver["ips"]["wdma"] == ["wdma0", "wdma1"]
    assert driver["bitstream"] is None and (build_dir / "vivado" / "make_project.tcl").is_file()
