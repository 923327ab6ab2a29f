"""The host driver's ``sim`` backend: the same driver code against the Verilator model of the design.

It lives in ``sim/`` (not ``host/``: it needs cocotb, Verilator and the repository's simulation
code, none of which a PYNQ board has); ``host/`` imports it by name, ``sim.host_backend``, only
when ``--backend sim`` is asked for (``host.backends.load_sim_backend``), and says clearly when
it cannot (``BackendUnavailable``).

Two routes, one driver:

- the whole design behind AXI (``sigmabranch_tree_axi``, hls/axi_top.py, described by
  ``<bundle>/vivado/hdl.json``): :class:`SimHardware` is :class:`BoardHardware` itself, unchanged,
  with ``sim/pynq_sim.py`` standing in for the ``pynq`` package (the overlay's IPs on the top's
  ports named by ``hdl.json`` ``"pynq"``: the control block over AXI4-Lite, the AXI DMAs as
  stream drivers, the buffers inside a simulated DDR that also serves the on-chip weight
  fetchers). :func:`run_sim` builds the top with Verilator (``sim/verilator.py``'s
  content-hashed cache) and runs ``sim/tb/test_host_driver.py``, which constructs
  ``SigmaBranchOverlay(bundle, backend=SimHardware(...))`` and calls ``execute`` unchanged,
  inside the cocotb test (the driver in a thread, every MMIO access and DMA poll advancing
  simulated time). ``now()`` is the simulated cycle count. The stand-in is our own rather than
  ``cocotbpynq`` for the reasons in ``sim/pynq_sim.py`` (license, 32-bit-only streams, no DMA
  status/stop/start, no physical addresses, no AXI-MM memory for the fetchers).
- part by part (:class:`SimPartsHardware`, ``host.backends.get_backend("sim")``): where a build
  has no ``vivado/`` folder, the build's parts (backbone, router, each level's datapath) simulated
  one after another behind the driver's interface.

Which route a bundle takes is decided in one place, ``host.backends.execute_on_backend``
(``host.backends.sim_route``: the first where the bundle has ``vivado/hdl.json``, else the
second); :func:`execute_in_simulation` and ``host/run.py --backend sim`` go through it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from host.backends import execute_on_backend, hdl_description
from host.backends.base import BackendUnavailable, Buffer, DesignInfo
from host.backends.board import BoardHardware
from host.backends.ref import RefHardware
from host.errors import DRIVER_ERRORS, DriverError

DEFAULT_SIM_TIMEOUT_S = 2.0  # simulated seconds one driver wait may take (the driver's default)

__all__ = ["SimHardware", "SimPartsHardware", "run_sim", "execute_in_simulation", "hdl_description",
           "DEFAULT_SIM_TIMEOUT_S"]


class SimHardware(BoardHardware):
    """:class:`BoardHardware` with ``sim/pynq_sim.py``'s :class:`Simulation` as ``pynq``; clock =
    simulated fabric cycles. Only inside a cocotb test, from the driver's bridge thread
    (:func:`run_sim` sets that up)."""

    name = "sim"
    clock_unit = "cycles"
    simulated = True   # the driver's deadlines count simulated time

    def __init__(self, simulation: Any = None, bitfile: str | Path | None = None, download: bool = True,
                 idle_cycles: int = 16):
        if simulation is None:
            try:
                from sim import pynq_sim
            except ImportError as err:
                raise BackendUnavailable("the sim backend needs cocotb and the repository's sim/ package: "
                                         f"{err}") from err
            simulation = pynq_sim.current()
        if simulation is None:
            raise BackendUnavailable("the sim backend's SimHardware runs inside a cocotb test against the Verilator "
                                     "model: use sim.host_backend.run_sim(bundle, x) or execute_in_simulation(...) "
                                     "(or `host/run.py --backend sim`), which build and start it")
        self.sim, self.idle_cycles = simulation, int(idle_cycles)
        # There is no bitstream in simulation; the overlay needs a name: the top's.
        super().__init__(bitfile=bitfile or f"{simulation.dut._name}.bit", pynq_module=simulation, download=download)

    def open(self, bundle) -> DesignInfo:
        info = super().open(bundle)
        info.clock_unit = "cycles"
        info.extra.update(simulator="Verilator via cocotb (sim/pynq_sim.py standing in for pynq)",
                          top=self.sim.dut._name)
        return info

    def now(self) -> float:
        return float(self.sim.cycles)

    def idle(self) -> None:
        """Between two polls the PS does other things: ``idle_cycles`` fabric cycles pass (one call
        into the simulation instead of a poll every few cycles; a real MMIO read takes tens)."""
        self.sim.advance(self.idle_cycles)


def run_sim(bundle: str | Path, x: np.ndarray, *, strategy: str = "serial", fetch_mode: str | None = None,
            timeout_s: float = DEFAULT_SIM_TIMEOUT_S, seed: int = 0, p_valid: float = 0.8, p_ready: float = 0.8,
            p_arready: float = 0.8, p_rvalid: float = 0.9, mmio_cycles: int = 4, idle_cycles: int = 16,
            max_cycles: int | None = None, fault: dict[str, Any] | None = None,
            test_dir: str | Path | None = None, prior: list[list[float]] | None = None,
            ddr_port: dict[str, float] | None = None, parameters: dict[str, int] | None = None,
            record_beats: bool = False, batch: int = 1) -> dict[str, Any]:
    """Build the bundle's whole design behind AXI with Verilator and run the driver on it.
    ``prior``: per-level branch counts the prefetch predictor starts from (``SigmaBranchOverlay.prior``).
    ``ddr_port``: the memory's port model (``hls.boards.Board.weight_port()``; default a 32-byte
    beat a cycle, no latency); ``parameters``: the top's Verilog parameters (``FETCH_BUF_BEATS``,
    ``FETCH_OUTSTANDING``); ``record_beats``: per inference the port's beats (cycle, address);
    ``batch``: ``execute``'s (several inputs per start, back to back; ``sim.per_inference`` is then
    one record per batch).

    ``x``: the inputs as :meth:`SigmaBranchOverlay.execute` takes them. Returns what ``execute``
    returns (numpy arrays; ``latency`` in simulated cycles) plus ``sim``: per inference the bytes
    the DDR model served (``ddr_read_bytes``) and each DMA channel moved, the cycles, protocol
    errors, build/simulation seconds, and with ``fault`` what the faulty inference raised.

    ``fault`` (a test of the driver's recovery): ``{"dma": "idma0", "channel": "send",
    "stall_after": bytes, "timeout_s": s}``: before the batch, one inference of ``x[0]`` whose DMA
    channel stops moving after ``stall_after`` bytes (never completes), under ``timeout_s``.
    Raises the driver's own exception classes (``DriverTimeout``, ``BundleError``, ...) for
    what the driver raised in the simulation, ``BackendUnavailable`` where the tools or the
    design are missing.
    """
    bundle = Path(bundle).resolve()
    hdl_path = hdl_description(bundle)
    if hdl_path is None:
        raise BackendUnavailable(f"{bundle / 'vivado' / 'hdl.json'} not found: the build has no design behind AXI "
                                 "(hls/vivado.py writes it); the part-by-part sim backend runs without it")
    desc = json.loads(hdl_path.read_text())
    if "pynq" not in desc:
        raise BackendUnavailable(f"{hdl_path} has no 'pynq' key (which top port each overlay IP drives): rebuild "
                                 "the vivado/ folder with the current hls/axi_top.py")
    try:
        from sim.verilator import SimToolError, SimulationFailed, run_cocotb
    except ImportError as err:
        raise BackendUnavailable(f"the sim backend needs the repository's sim/ package (cocotb, Verilator): {err}") \
            from err
    driver = json.loads((bundle / "driver.json").read_text())
    weights = (bundle / "weights.bin").stat().st_size if (bundle / "weights.bin").is_file() else 0
    x = np.asarray(x)
    cfg = {"bundle": str(bundle), "hdl": str(hdl_path), "strategy": strategy, "fetch_mode": fetch_mode,
           "timeout_s": float(timeout_s), "seed": int(seed), "fault": fault, "idle_cycles": int(idle_cycles),
           "prior": None if prior is None else [[float(c) for c in level] for level in prior],
           "record_beats": bool(record_beats), "batch": int(batch),
           "sim": {"p_valid": p_valid, "p_ready": p_ready, "p_arready": p_arready, "p_rvalid": p_rvalid,
                   "mmio_cycles": int(mmio_cycles), "max_cycles": max_cycles, "period_ns": float(driver["clk_ns"]),
                   "ddr_bytes": _ddr_bytes(weights, int(driver["input"]["bytes"]), int(driver["output"]["bytes"])),
                   "ddr_port": ddr_port}}
    try:
        res = run_cocotb(desc["sources"], desc["top"], "sim.tb.test_host_driver", includes=desc["includes"],
                         parameters=parameters,
                         defines={"FINN_SIMULATION": 1}, config=cfg, files={"x.npy": x},
                         test_dir=Path(test_dir) if test_dir is not None else None)
    except SimToolError as err:
        raise BackendUnavailable(str(err)) from err
    except SimulationFailed as err:
        raise DriverError(f"the simulation of {desc['top']} failed: {err}") from err
    got = json.loads((res.test_dir / "outputs.json").read_text())
    if got.get("error"):
        err = got["error"]
        cls = DRIVER_ERRORS.get(err["type"])  # the driver's own exceptions (and BackendUnavailable), by name
        if cls is not None:
            raise cls(err["message"])
        raise DriverError(f"the driver failed in the simulation of {desc['top']}: {err['type']}: "
                          f"{err['message']}\n{err.get('traceback', '')[-3000:]}")
    out = _from_json(got["result"])
    out["sim"] = {**{k: v for k, v in got.items() if k != "result"}, "build_seconds": res.build.seconds,
                  "cached": res.build.cached, "sim_seconds": res.sim_seconds, "test_dir": str(res.test_dir)}
    return out


def _ddr_bytes(weights: int, input_bytes: int, output_bytes: int) -> int:
    """Simulated DDR big enough for the driver's three buffers (a guard page after each) and a margin."""
    pages = sum(-(-n // 4096) + 1 for n in (weights, input_bytes, output_bytes))
    return max(1 << 20, (pages + 16) * 4096)


def _from_json(r: dict[str, Any]) -> dict[str, Any]:
    """outputs.json's copy of ``execute``'s result -> the same dict with numpy arrays."""
    n = len(r["classes"])
    paths = np.array(r["paths"], dtype=np.int64).reshape(n, -1)
    acc = np.array(r["acc"], dtype=np.int64).reshape(n, -1)
    return {"classes": np.array(r["classes"], dtype=np.int64), "leaves": np.array(r["leaves"], dtype=np.int64),
            "paths": paths, "logits": np.array(r["logits"], dtype=np.float64).reshape(acc.shape), "acc": acc,
            "bytes": {k: np.array(v, dtype=np.int64).reshape(n, -1) if k == "weights_by_level"
                      else np.array(v, dtype=np.int64) for k, v in r["bytes"].items()},
            "latency": np.array(r["latency"], dtype=np.float64), "latency_unit": r["latency_unit"],
            "host_seconds_per_inference": float(r.get("host_seconds_per_inference", 0.0))}


def execute_in_simulation(bundle: str | Path, x: np.ndarray, *, strategy: str = "serial",
                          fetch_mode: str | None = None, timeout_s: float = DEFAULT_SIM_TIMEOUT_S,
                          **options) -> dict[str, Any]:
    """The driver on the most complete simulation the bundle allows: the whole design behind
    AXI (:func:`run_sim`) where ``vivado/hdl.json`` exists, else part by part
    (:class:`SimPartsHardware`); the choice is ``host.backends.execute_on_backend``'s. Returns
    ``execute``'s dict (the whole design's with ``sim``)."""
    return execute_on_backend(bundle, x, backend="sim", strategy=strategy, fetch_mode=fetch_mode,
                              timeout_s=timeout_s, **options).out


# ------------------------------------------------------------------------------ available now: part by part
class SimPartsHardware(RefHardware):
    """The driver's hardware interface over the Verilator model of the build's parts
    (``sim/tree_nodes.py``'s ``TreeSim``: backbone, root router, each level's datapath with its
    ``fetch_weights`` reading the chosen region from a DDR model, random back-pressure and DDR
    stalls), for builds without the whole design behind AXI (no ``vivado/hdl.json``; with it,
    :func:`run_sim` runs :class:`SimHardware` on the whole top instead).

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
