"""``ref``: the integer reference behind the driver's hardware interface (no hardware).

Results come from :class:`host.int_reference.IntegerTree` (bit-exact with the FINN+ graphs the
hardware is built from). Time is a transaction-level model in fabric cycles, driven by the
driver's own calls, so the driver's fetch strategies can be compared before the RTL exists:

- compute: FINN+'s expected cycles per layer (``placement.json``), summed per on-chip part (the
  critical path FINN+'s ``dataflow_performance`` reports): backbone + root router, then per
  level its datapath (branch + router below it, or branch + head);
- one DDR port shared by every fetch (FIFO): a fetch of ``n`` bytes takes
  ``setup + n / bytes_per_cycle`` cycles, ``bytes_per_cycle = min(port width / 8, DDR
  bandwidth x clock period)``, ``setup`` = the DDR's first-word latency; the board's numbers
  come from ``driver.json`` ``"board_facts"`` (``ddr_bytes_per_s``, ``axi_port_bits``,
  ``ddr_first_word_ns``: ``hls/boards.py``'s record, written by ``sigmabranch build``);
- a level's datapath starts once its input (the level's decision) is there *and* the host has
  committed the right weights; each MMIO access costs ``mmio_cycles``.

Faults are not modelled here; tests inject them by subclassing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from ..int_reference import IntegerTree
from .base import PATH_DEPTH, Buffer, DesignInfo, Hardware, layout_signature

MMIO_CYCLES = 25        # one AXI-Lite register access from the PS (assumption)
# What the timing model reads from driver.json "board_facts" (hls/boards.py's record of the board).
BOARD_FACTS = ("ddr_bytes_per_s", "axi_port_bits", "ddr_first_word_ns")


def weight_port(board: dict[str, Any], clk_ns: float) -> dict[str, float]:
    """The DDR read port the fetchers see, per fabric cycle: bytes a cycle (the narrower of the
    port's width and its bandwidth), first-word latency in cycles, the port's read FIFO (Zynq's
    HP ports buffer 1 KiB of an outstanding burst). ``board``: the board facts (driver.json)."""
    return {"port_bytes": min(board["axi_port_bits"] / 8, board["ddr_bytes_per_s"] * clk_ns * 1e-9),
            "first_word_cycles": int(np.ceil(board["ddr_first_word_ns"] / clk_ns)), "port_fifo_bytes": 1024}


def board_facts(driver: dict[str, Any], where: str | Path = "driver.json") -> dict[str, float]:
    """The board numbers the timing model needs, from ``driver["board_facts"]``; a clear
    :class:`BundleError` naming ``where`` (the driver.json) and the missing key otherwise."""
    facts = driver.get("board_facts")
    if not isinstance(facts, dict):
        raise BundleError(f"{where} has no \"board_facts\" (the board's record: {', '.join(BOARD_FACTS)}, ...), "
                          f"which the ref backend's timing model needs; rebuild the bundle with the current "
                          f"`sigmabranch build`")
    missing = [key for key in BOARD_FACTS if key not in facts]
    if missing:
        raise BundleError(f"{where}: \"board_facts\" of board {facts.get('name', driver.get('board'))!r} lacks "
                          f"{', '.join(repr(k) for k in missing)} (the ref backend's timing model needs "
                          f"{', '.join(BOARD_FACTS)}); rebuild the bundle with the current `sigmabranch build`")
    return {key: float(facts[key]) for key in BOARD_FACTS}


@dataclass
class Timing:
    """Cycle numbers of one design (see the module docstring)."""
    clk_ns: float
    bytes_per_cycle: float
    setup_cycles: int
    backbone_cycles: int        # backbone + root router
    level_cycles: list[int]     # per level: its datapath
    io_bytes_per_cycle: float
    mmio_cycles: int = MMIO_CYCLES

    def fetch_cycles(self, nbytes: int) -> int:
        return self.setup_cycles + int(np.ceil(nbytes / self.bytes_per_cycle))

    def io_cycles(self, nbytes: int) -> int:
        return self.setup_cycles + int(np.ceil(nbytes / self.io_bytes_per_cycle))

    @classmethod
    def from_bundle(cls, root: Path, driver: dict[str, Any], depth: int) -> "Timing":
        board = board_facts(driver, root / "driver.json")
        clk_ns = float(driver["clk_ns"])
        port = weight_port(board, clk_ns)
        placement_path = root / "placement.json"
        if placement_path.is_file():
            parts = json.loads(placement_path.read_text())["onchip"]
            cycles = [(part["streamed"], sum(int(row["cycles"]) for row in part["layers"])) for part in parts]
            # on chip: backbone (none where the processor computes it) + root router; streamed: the levels
            backbone, levels = sum(c for streamed, c in cycles if not streamed), [c for streamed, c in cycles if streamed]
        else:  # no estimate: compute takes no time, fetches still do
            backbone, levels = 0, [0] * depth
        return cls(clk_ns=clk_ns, bytes_per_cycle=port["port_bytes"], setup_cycles=port["first_word_cycles"],
                   backbone_cycles=backbone, level_cycles=levels, io_bytes_per_cycle=port["port_bytes"])


class RefHardware(Hardware):
    """The integer reference as a :class:`Hardware`. ``design`` is the build the "loaded
    design" comes from (default: the driver's bundle), so a mismatched bundle can be shown."""

    name = "ref"
    clock_unit = "cycles"

    def __init__(self, design: str | Path | None = None, fetch_modes: tuple[str, ...] = ("host", "onchip")):
        self._design_dir = Path(design) if design is not None else None
        self._fetch_modes = fetch_modes
        self._buffers: list[Buffer] = []
        self._next_address = 0x1000_0000
        self._clock = 0
        self._inference: dict[str, Any] | None = None

    # -- design
    def open(self, bundle) -> DesignInfo:
        root = self._design_dir or bundle.root
        driver = json.loads((root / "driver.json").read_text())
        self.tree = IntegerTree.load(root / Path(driver["manifest"]).parent)
        self.depth = self.tree.depth
        self.timing = Timing.from_bundle(root, driver, self.depth)
        self.regions = [(int(l["base"]), int(l["region_stride"]), int(l["region_bytes"])) for l in driver["levels"]]
        self.in_shape = tuple(driver["input"]["shape_nhwc"])
        self.in_dtype = np.int8 if driver["input"]["datatype"].startswith("INT") else np.uint8
        return DesignInfo(signature=layout_signature(driver), levels=len(driver["levels"]),
                          fetch_modes=self._fetch_modes, clock_unit="cycles",
                          extra={"timing": self.timing.__dict__})

    def allocate(self, name: str, nbytes: int) -> Buffer:
        buf = Buffer(name, np.zeros(nbytes, dtype=np.uint8), self._next_address)
        self._next_address += -(-max(nbytes, 1) // 4096) * 4096 + 4096  # page-aligned, a guard page between
        self._buffers.append(buf)
        return buf

    def _buffer_at(self, address: int, nbytes: int) -> Buffer:
        for buf in self._buffers:
            if buf.contains(address, nbytes):
                return buf
        raise MemoryError(f"ref: DMA of {nbytes} bytes at {address:#x} is outside every allocated buffer")

    def set_weight_base(self, buf: Buffer, fetch_mode: str) -> None:
        self._tick()
        self.weights, self.fetch_mode = buf, fetch_mode
        if all(b is not buf for b in self._buffers):  # a buffer the host allocated elsewhere: now known
            self._buffers.append(buf)

    # -- the clock
    def now(self) -> float:
        return float(self._clock)

    def _tick(self, cycles: int | None = None) -> None:
        self._clock += self.timing.mmio_cycles if cycles is None else cycles

    def _advance(self) -> None:
        """A poll that saw nothing ready: move the clock to the next event, if any is scheduled."""
        pending = [t for t in self._events() if t > self._clock]
        if pending:
            self._clock = min(pending)

    def _events(self) -> list[float]:
        inf = self._inference
        if inf is None:
            return []
        times = [f["end"] for f in inf["fetches"].values() if f["end"] is not None]
        times += [t for t in inf["decision_at"] if t is not None]
        if inf["output_at"] is not None:
            times.append(inf["output_at"])
        return times

    # -- one inference
    def send_input(self, buf: Buffer, nbytes: int, out: Buffer, out_nbytes: int) -> None:
        self._tick()
        x = np.frombuffer(buf.array[:nbytes].tobytes(), dtype=self.in_dtype).reshape(self.in_shape)
        result = self.tree.infer(x.transpose(0, 3, 1, 2).astype(np.int64), quantized=True)
        path = [int(b) for b in _branches(result["path_decisions"][0])]
        start = self._clock + self.timing.io_cycles(nbytes)
        self._port_free = max(getattr(self, "_port_free", 0), self._clock)
        self._inference = {"path": path, "acc": result["acc"][0].astype(np.int32), "out": out,
                           "out_nbytes": out_nbytes, "fetches": {}, "log": [], "committed": {},
                           "decision_at": [start + self.timing.backbone_cycles] + [None] * (self.depth - 1),
                           "output_at": None}
        if self.fetch_mode == "onchip":  # the router's decision drives the fetch: schedule all of it now
            inf = self._inference
            for level, branch in enumerate(path):
                decided = inf["decision_at"][level]  # set by the level above (_run_level)
                base, stride, size = self.regions[level]
                fetch = self._schedule_fetch(level, self.weights.physical_address + base + branch * stride, size, decided)
                inf["committed"][level] = branch
                self._run_level(level, max(fetch["end"], decided))

    # -- several images per start (on-chip fetch): the design's FRAMES / PATH
    max_batch = PATH_DEPTH

    def send_batch(self, buf: Buffer, nbytes: int, out: Buffer, out_nbytes: int, n: int) -> None:
        """``n`` images back to back, scheduled as the stitched design runs them: the inputs stream
        one after another, each level works on one image at a time and takes the next image's
        decision one ahead (its fetch starts then, the port serving fetches in order), an image
        enters a level once the level's previous image left it and its weights are in."""
        if self.fetch_mode != "onchip" or not 1 <= n <= self.max_batch:
            raise ValueError(f"ref: a batch of {n} images needs the on-chip fetch and 1 to {self.max_batch} images")
        self._tick()
        x = np.frombuffer(buf.array[:nbytes].tobytes(), dtype=self.in_dtype).reshape((n,) + self.in_shape[1:])
        result = self.tree.infer(x.transpose(0, 3, 1, 2).astype(np.int64), quantized=True)
        paths = [[int(b) for b in _branches(d)] for d in result["path_decisions"]]
        tm, per_in = self.timing, nbytes // n
        self._port_free = max(getattr(self, "_port_free", 0), self._clock)
        self._inference = {"path": paths[-1], "paths": paths, "acc": result["acc"].astype(np.int32), "out": out,
                           "out_nbytes": out_nbytes, "fetches": {}, "log": [], "committed": {},
                           "decision_at": [None] * self.depth, "output_at": None}
        bb_free, level_free, started = self._clock, [self._clock] * self.depth, [self._clock] * self.depth
        end = self._clock
        for i, path in enumerate(paths):
            arrived = self._clock + tm.io_cycles(per_in * (i + 1))
            decided = bb_free = max(arrived, bb_free) + tm.backbone_cycles
            for level, branch in enumerate(path):
                base, stride, size = self.regions[level]
                issued = max(decided, started[level])          # one decision ahead of the level's image
                fetch_start = max(issued, self._port_free)
                fetch_end = self._port_free = fetch_start + tm.fetch_cycles(size)
                self._inference["log"].append((level, self.weights.physical_address + base + branch * stride, size))
                started[level] = max(decided, level_free[level])
                level_free[level] = decided = max(started[level], fetch_end) + tm.level_cycles[level]
            end = max(end, decided + tm.io_cycles(out_nbytes // n))
        self._inference["committed"] = dict(enumerate(paths[-1]))
        self._inference["decision_at"] = [self._clock] * self.depth
        self._inference["output_at"] = end

    def read_paths(self, n: int) -> list[int | None]:
        paths = (self._inference or {}).get("paths", [])
        return [p[-1] for p in paths[:n]] + [None] * max(0, n - len(paths))

    def _schedule_fetch(self, level: int, address: int, nbytes: int, issued: float) -> dict[str, Any]:
        self._buffer_at(address, nbytes)
        start = max(issued, self._port_free)
        fetch = {"address": address, "nbytes": nbytes, "start": start,
                 "end": start + self.timing.fetch_cycles(nbytes), "cancelled": False}
        self._port_free = fetch["end"]
        self._inference["fetches"][level] = fetch
        self._inference["log"].append((level, address, nbytes))
        return fetch

    def _run_level(self, level: int, start: float) -> None:
        end = start + self.timing.level_cycles[level]
        if level + 1 < self.depth:
            self._inference["decision_at"][level + 1] = end
        else:
            self._inference["output_at"] = end + self.timing.io_cycles(self._inference["out_nbytes"])

    def poll_decision(self, level: int) -> int | None:
        self._tick()
        inf = self._inference
        at = inf["decision_at"][level] if inf else None
        if at is None or at > self._clock:
            self._advance()
            return None
        return inf["path"][level]

    def start_fetch(self, level: int, address: int, nbytes: int) -> None:
        self._tick()
        self._schedule_fetch(level, address, nbytes, self._clock)

    def poll_fetch(self, level: int) -> bool:
        self._tick()
        fetch = self._inference["fetches"].get(level)
        if fetch is None or fetch["end"] > self._clock:
            self._advance()
            return False
        return True

    def cancel_fetch(self, level: int) -> None:
        self._tick()
        fetch = self._inference["fetches"].pop(level, None)
        if fetch is not None and fetch["end"] > self._clock:  # stop at the current beat: the port frees now
            done = max(0.0, self._clock - fetch["start"] - self.timing.setup_cycles)
            moved = int(min(fetch["nbytes"], done * self.timing.bytes_per_cycle))
            log = self._inference["log"]
            log[log.index((level, fetch["address"], fetch["nbytes"]))] = (level, fetch["address"], moved)
            if self._port_free == fetch["end"]:
                self._port_free = max(self._clock, fetch["start"])

    def commit_weights(self, level: int, branch: int) -> None:
        self._tick()
        inf = self._inference
        base, stride, size = self.regions[level]
        fetch = inf["fetches"].get(level)
        expected = self.weights.physical_address + base + branch * stride
        if fetch is None or fetch["address"] != expected or fetch["nbytes"] != size:
            raise RuntimeError(f"ref: commit of level {level} branch {branch} without that region fetched")
        inf["committed"][level] = branch
        decided = inf["decision_at"][level]
        self._run_level(level, max(self._clock, fetch["end"], decided))

    def poll_output(self) -> bool:
        self._tick()
        inf = self._inference
        if inf is None or inf["output_at"] is None or inf["output_at"] > self._clock:
            self._advance()
            return False
        if inf["committed"] != dict(enumerate(inf["path"])):
            raise RuntimeError("ref: a level ran on weights other than its decided branch")
        out = inf["out"]
        out.array[:inf["out_nbytes"]] = np.frombuffer(inf["acc"].astype("<i4").tobytes(), dtype=np.uint8)
        return True

    def fetch_log(self) -> list[tuple[int, int, int]]:
        return list(self._inference["log"]) if self._inference else []

    def reset(self) -> None:
        self._tick()
        self._inference = None
        self._port_free = self._clock


def _branches(decisions: np.ndarray) -> list[int]:
    """Per-level decisions (0/1) -> the branch index chosen at each level."""
    out, branch = [], 0
    for d in decisions:
        branch = 2 * (branch if out else 0) + int(d)
        out.append(branch)
    return out
