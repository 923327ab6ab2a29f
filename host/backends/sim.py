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

from .base import BackendUnavailable, Buffer, DesignInfo
from .board import BoardHardware
from .ref import RefHardware

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


# ------------------------------------------------------------------------------ available now: part by part
class SimPartsHardware(RefHardware):
    """The driver's hardware interface over the Verilator model of the build's parts
    (``sim/tree_nodes.py``'s ``TreeSim``: backbone, root router, each level's datapath with its
    ``fetch_weights`` reading the chosen region from a DDR model, random back-pressure and DDR
    stalls), until the whole stitched top with its control block simulates.

    Decisions, output accumulators, the fetchers' AXI bursts and bytes, and the cycles come from
    the simulation; the parts run one after another (serial), so ``now()`` advances by each part's
    simulated cycles. Fetch mode ``onchip`` only (the router's decision drives ``region_base``).
    :meth:`prepare` simulates a whole batch in one run per part; an input not prepared is
    simulated on its own when it is sent. The DDR model serves ``weights.bin`` from the bundle
    at ``WEIGHTS_BASE``, where the weight buffer is placed.
    """

    name = "sim"
    clock_unit = "cycles"

    def __init__(self, work_dir: str | Path | None = None, **sim_options):
        super().__init__(fetch_modes=("onchip",))
        # Where TreeSim prepares HDL and builds (default: its cache, keyed by the bundle's path).
        self._work, self._opts = work_dir or os.environ.get("SIGMABRANCH_SIM_WORK"), sim_options
        self._next_address = 0x4000_0000  # below it: simulated DDR's weight image
        self._records: dict[bytes, dict[str, Any]] = {}

    def open(self, bundle) -> DesignInfo:
        try:
            from sim.tree_nodes import WEIGHTS_BASE, TreeSim
        except ImportError as err:
            raise BackendUnavailable(f"the sim backend needs the repository's sim/ (cocotb, Verilator): {err}") from err
        info = super().open(bundle)
        self.timing.mmio_cycles = 0  # the clock is the simulation's alone
        self.ts = TreeSim(bundle.root, self._work)
        self._weights_base = WEIGHTS_BASE
        info.fetch_modes = ("onchip",)
        info.extra = {"simulator": "Verilator via cocotb (sim/tree_nodes.py), part by part"}
        return info

    def allocate(self, name: str, nbytes: int) -> Buffer:
        if name == "weights":
            buf = Buffer(name, np.zeros(nbytes, dtype=np.uint8), self._weights_base)
            self._buffers.append(buf)
            return buf
        return super().allocate(name, nbytes)

    def prepare(self, q: np.ndarray) -> None:
        """Simulate a batch of integer inputs ``(N, C, H, W)`` (one simulator run per part)."""
        todo = [x for x in np.asarray(q) if self._key(x) not in self._records]
        if todo:
            self._simulate(np.stack(todo).transpose(0, 2, 3, 1))

    def _key(self, x_chw: np.ndarray) -> bytes:
        return np.ascontiguousarray(x_chw.transpose(1, 2, 0)).astype(self.in_dtype).tobytes()

    def _simulate(self, x_nhwc: np.ndarray) -> None:
        ts, n, depth = self.ts, len(x_nhwc), self.depth
        shape = self.tree.manifest["nodes"]["backbone"]["output_shape"][1:]  # C, H, W
        bb = ts.backbone(x_nhwc, **self._opts)
        h = np.stack(bb.outputs).reshape(n, shape[1], shape[2], shape[0])
        rt = ts.router(0, 0, h, **self._opts)
        choice = np.array([int(o[0]) for o in rt.outputs])
        recs = [{"t": [bb.cycles[i] + rt.cycles[i]], "log": [], "path": [], "acc": None} for i in range(n)]
        node = np.zeros(n, dtype=np.int64)
        for level in range(depth):
            branch = 2 * node + choice
            out_shape = self.tree.manifest["nodes"][f"branch_{level}_0"]["output_shape"][1:]
            new_h = np.zeros((n, out_shape[1], out_shape[2], out_shape[0]), dtype=np.int64)
            for b in np.unique(branch):
                rows = np.flatnonzero(branch == b)
                r = ts.level(level, int(b), h[rows], **self._opts)
                for k, i in enumerate(rows):
                    rec = recs[i]
                    new_h[i] = r.taps[r.info["tap"]][k].reshape(out_shape[1], out_shape[2], out_shape[0])
                    rec["path"].append(int(b))
                    first = min((address for address, _ in r.bursts[k]), default=0)
                    rec["log"].append((level, int(first), int(r.bytes[k])))
                    rec["t"].append(rec["t"][-1] + r.cycles[k])
                    if level + 1 < depth:
                        choice[i] = int(r.outputs[k][0])
                    else:
                        rec["acc"] = np.asarray(r.outputs[k], dtype=np.int64).astype(np.int32)
            node, h = branch, new_h
        for i in range(n):
            self._records[x_nhwc[i].astype(self.in_dtype).tobytes()] = recs[i]

    def send_input(self, buf: Buffer, nbytes: int, out: Buffer, out_nbytes: int) -> None:
        key = buf.array[:nbytes].tobytes()
        if key not in self._records:
            x = np.frombuffer(key, dtype=self.in_dtype).reshape(self.in_shape)
            self._simulate(x.astype(np.int64))
        rec, start = self._records[key], self._clock
        self._port_free = self._clock
        self._inference = {"path": rec["path"], "acc": rec["acc"], "out": out, "out_nbytes": out_nbytes,
                           "fetches": {}, "log": list(rec["log"]), "committed": dict(enumerate(rec["path"])),
                           "decision_at": [start + t for t in rec["t"][:self.depth]], "output_at": start + rec["t"][-1]}

    def start_fetch(self, level: int, address: int, nbytes: int) -> None:
        raise RuntimeError("sim: the simulated design fetches on chip (fetch mode onchip)")
