"""``sim``: the same driver code against the Verilator model of the stitched design, through
``cocotbpynq`` (a stand-in for the ``pynq`` API that drives a cocotb DUT).

Status: the structure is here; the stitched design is not (``hls/stitch.py`` is being written).
What this backend needs from the build, under ``<bundle>/sim/`` (``driver.json`` ``sim``):

- ``sources``: the stitched design's HDL (the FINN+ layers, ``hls/rtl/`` blocks, the AXI-Lite
  control block implementing :data:`host.backends.base.REGISTERS`), top-level ``toplevel``;
- ``hwh``: a hardware handoff naming a ``processing_system7`` (cocotbpynq discovers IPs and the
  MMIO range from it), the AXI DMAs of :data:`host.backends.base.IPS`;
- the fetchers' AXI-MM master port(s), which cocotbpynq does not model (its DMAs are
  AXI-Stream only, its ``allocate`` returns plain arrays): the testbench serves them from
  :attr:`SimHardware.ddr` with ``cocotbext.axi.AxiRam``, at the fake physical addresses that
  :meth:`SimHardware.allocate` hands out.

How it runs: :func:`run_sim` builds the design with Verilator (cocotb's runner, the
content-hashed cache of ``sim/verilator.py``) and runs ``host.backends.sim_test`` as the cocotb
test module; that test constructs ``SigmaBranchOverlay(bundle, backend="sim")`` *unchanged*
inside ``cocotbpynq.synctest``, so every MMIO read and DMA wait advances simulated time, and
``now()`` is the simulated cycle count. cocotbpynq 0.2.0 installs cleanly under
``constraints.txt`` (it adds ``pyslang`` and ``nanobind-backend``; cocotb 2.1.0 is already
pinned); it is GPL-3.0-or-later, so it stays an optional, separately installed tool.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendUnavailable, Buffer
from .board import BoardHardware

DDR_BASE = 0x1000_0000  # where simulated DDR starts (the fetchers' AxiRam maps it)


class SimHardware(BoardHardware):
    """:class:`BoardHardware` with ``cocotbpynq`` as ``pynq``; clock = simulated fabric cycles."""

    name = "sim"
    clock_unit = "cycles"

    def __init__(self, bitfile: str | Path | None = None, ddr_bytes: int = 1 << 22):
        try:
            cocotbpynq = importlib.import_module("cocotbpynq")
        except ImportError as err:
            raise BackendUnavailable("the sim backend needs cocotbpynq (`pip install -c constraints.txt cocotbpynq`, "
                                     "GPL-3.0) and the stitched design of the build") from err
        if "COCOTB_SYS_ARGV" not in os.environ:
            raise BackendUnavailable("the sim backend runs inside a cocotb test: use host.backends.sim.run_sim(...) "
                                     "(or `host/run.py --backend sim`), which builds the Verilator model first")
        super().__init__(bitfile=bitfile, pynq_module=cocotbpynq, download=True)
        self.ddr = np.zeros(ddr_bytes, dtype=np.uint8)
        self._next = 0

    def open(self, bundle):
        sim = bundle.driver.get("sim")
        if not sim:
            raise BackendUnavailable(f"{bundle.root / 'driver.json'} has no 'sim' entry: the build has no stitched "
                                     "design to simulate yet (hls/stitch.py)")
        os.environ.setdefault("HWH_LOCATION_DIR", str(bundle.root / Path(sim["hwh"]).parent))
        self._bitfile = self._bitfile or Path(sim["hwh"]).with_suffix(".bit").name
        info = super().open(bundle)
        info.clock_unit = "cycles"
        self._clk_ns = float(bundle.driver["clk_ns"])
        return info

    def allocate(self, name: str, nbytes: int) -> Buffer:
        """A slice of simulated DDR at a fake physical address (4 KiB-aligned, a guard page after)."""
        start = self._next
        self._next = start + (-(-nbytes // 4096) + 1) * 4096
        if self._next > len(self.ddr):
            raise MemoryError(f"sim: simulated DDR of {len(self.ddr)} bytes is too small for buffer {name!r}")
        view = self.ddr[start:start + nbytes]
        return Buffer(name, _Physical(view, DDR_BASE + start), DDR_BASE + start)

    def now(self) -> float:
        from cocotb.utils import get_sim_time
        return get_sim_time("ns") / self._clk_ns


class _Physical(np.ndarray):
    """A numpy view that carries ``physical_address`` (what ``pynq``'s DMA ``transfer`` reads)."""

    def __new__(cls, view: np.ndarray, address: int):
        obj = view.view(cls)
        obj.physical_address = address
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.physical_address = getattr(obj, "physical_address", 0)

    def flush(self) -> None:
        pass

    def invalidate(self) -> None:
        pass


def run_sim(bundle: str | Path, inputs: str | Path, **options) -> dict[str, Any]:
    """Build the stitched design with Verilator and run the driver on it (see the module docstring)."""
    import json
    driver = json.loads((Path(bundle) / "driver.json").read_text())
    if not driver.get("sim"):
        raise BackendUnavailable(f"{Path(bundle) / 'driver.json'} has no 'sim' entry: the build has no stitched "
                                 "design to simulate yet (hls/stitch.py); use --backend ref")
    try:
        importlib.import_module("cocotbpynq")
    except ImportError as err:
        raise BackendUnavailable("the sim backend needs cocotbpynq (`pip install -c constraints.txt cocotbpynq`)") from err
    raise BackendUnavailable("the stitched design's testbench (AxiRam for the fetchers, cocotb runner) is not "
                             "wired yet: it lands with hls/stitch.py")
