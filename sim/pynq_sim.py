"""A stand-in for the part of ``pynq`` the host driver uses, over a design simulated with cocotb.

The host driver's board backend (``host/backends/board.py`` :class:`BoardHardware`) talks to
the PL through ``pynq`` alone: ``Overlay`` (IPs as attributes), an IP's ``read``/``write``
(AXI4-Lite), the AXI DMA channels (``transfer``, ``idle``, ``running``, ``error``, ``stop``,
``start``, ``wait``, ``buffer_max_size``) and ``allocate`` (contiguous buffers with a physical
address, ``flush``/``invalidate``). :class:`Simulation` offers exactly that against the
Verilator model of the stitched top (``sigmabranch_tree_axi``, hls/axi_top.py), so the *same*
driver code runs on it unchanged (``sim/host_backend.py`` :class:`SimHardware`).

Why our own and not ``cocotbpynq`` (0.2.0): it is GPL-3.0 (this project is Apache-2.0); its DMA
streams are 32 bits only (the weight streams are 256); its channels have no ``idle``/``error``/
``stop``/``start`` (what the driver polls and resets with); its ``allocate`` gives plain arrays
without physical addresses; and it has no AXI-MM memory for the on-chip weight fetchers.

What is modelled (the top's ports come from ``hdl.json`` ``"pynq"``, so any number of DMAs)::

    ctrl -> s_axi_ctrl       AXI4-Lite master (random valid/ready), one transaction per read/write
    <dma> send -> s_axis_*   AXI DMA MM2S: little-endian bytes of DDR into beats of the port's width,
                             TKEEP (partial on a short last beat), TLAST on the last beat, random
                             gaps between beats (TVALID held until taken); stop() drops TVALID at
                             once, the aborted transfer ends without TLAST
    <dma> recv <- m_axis_*   AXI DMA S2MM: random TREADY, beats (TKEEP lanes) written to DDR, done
                             at TLAST; a packet longer than the transfer is an internal error
    ddr <- m_axi_*           simulated DDR served on the design's AXI4 read port(s)
                             (sim/tb/axi_ram.py AxiReadRam: random stalls, bytes counted)
    allocate()               ndarrays inside one simulated DDR byte array at fake physical
                             addresses (4 KiB aligned, a guard page between buffers)

How the driver's synchronous code runs against the simulator: the cocotb test starts the driver
in a thread with ``cocotb.task.bridge``; the simulator only advances while that thread is
blocked in a call converted by ``cocotb.task.resume``. Every call here that touches the design
is such a call (a coroutine run by the scheduler, the thread waiting for its result), and every
one costs simulated cycles: an MMIO access is a real AXI4-Lite transaction on ``s_axi_ctrl``, a
DMA register access (``idle``, ``error``, ``running``, ``stop``, ``start``, ``transfer``) a few
cycles (``mmio_cycles``). So a driver that polls with a wall-clock deadline always sees the
design move on, and a transfer that never completes ends in the driver's timeout, never in a
hung simulation. ``max_cycles`` bounds the whole run as a backstop (:class:`SimulationLimit`).

Speed (an inference of the PYNQ-Z2 demo is ~150k cycles): the Verilator model itself is built
for it (sim/verilator.py: only the top's signals public, -O1 for this top; ~0.03 ms a cycle), and
the Python side stays off the clock where nothing happens: the clock toggles in C++
(``clock_impl="gpi"``); waits of several cycles (``advance``, the DMA register accesses, the
reset) are one timer, not a wake-up per edge; ``advance`` from the driver is owed and passed at
the start of its next call (one switch into the scheduler per poll, not two); with
``sleep_idle`` (default) an S2MM channel with TVALID low, an MM2S channel with a beat shown and
TREADY low, and the DDR model with nothing outstanding and ARVALID low wait for that signal to
rise instead of waking every cycle (the same handshakes: the random TREADY/ARREADY draws
resume when there is something to take); and every testbench output is written only when its
value changes (``sim/tb/axis.py`` :class:`Pin`: each write costs the model one more evaluation).
Random back-pressure stays (``p_valid``, ``p_ready``, ``p_arready``, ``p_rvalid``, ``p_lite``);
1.0 everywhere gives full-throughput streams.

Fault hooks for tests: ``channel.stall = True`` (an MM2S channel never raises TVALID, an S2MM
channel never raises TREADY: the transfer never completes), ``channel.stall_after = n`` (the same
once ``n`` bytes of a transfer have moved). DMA semantics follow the AXI DMA in
direct-register mode as ``pynq`` drives it: an error halts the channel and only a DMA reset
clears it (``pynq``'s ``start()`` would spin; here it raises).
"""
from __future__ import annotations

import random
import threading
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.task import resume
from cocotb.triggers import ClockCycles, Event, First, ReadOnly, RisingEdge
from cocotb.utils import get_sim_steps, get_sim_time

from sim.tb.axi_lite import AxiLiteMaster
from sim.tb.axi_ram import AxiReadRam
from sim.tb.axis import Pin, clock_cycles

T = TypeVar("T")

DDR_BASE = 0x8_0000_0000          # ZynqMP's high DDR window: addresses above 4 GiB (the HI registers count)
PAGE = 4096
MAX_C_SG_LENGTH_WIDTH = 26        # AXI DMA's widest length register (PG021)
# DMASR bits (PG021) the channel keeps
SR_HALTED, SR_IDLE, SR_INT_ERR, SR_SLV_ERR, SR_DEC_ERR = 0x1, 0x2, 0x10, 0x20, 0x40
SR_ERRORS = SR_INT_ERR | SR_SLV_ERR | SR_DEC_ERR

_current: "Simulation | None" = None


class SimulationLimit(Exception):
    """The run passed ``max_cycles`` simulated cycles (not a ``RuntimeError``: the driver does not
    take it for a DMA error and retry, it ends the run)."""


def current() -> "Simulation | None":
    """The simulation started last in this process (what the module-level ``Overlay``/``allocate`` use)."""
    return _current


def Overlay(bitfile: str, download: bool = True, **kwargs) -> "SimOverlay":
    """``pynq.Overlay`` on the current simulation (``import sim.pynq_sim as pynq`` style)."""
    return _need_current().Overlay(bitfile, download=download, **kwargs)


def allocate(shape, dtype="u4", **kwargs) -> "SimBuffer":
    """``pynq.allocate`` in the current simulation's DDR."""
    return _need_current().allocate(shape, dtype=dtype, **kwargs)


def _need_current() -> "Simulation":
    if _current is None:
        raise RuntimeError("pynq_sim: no simulation is running (construct sim.pynq_sim.Simulation(dut, ...) and "
                           "await its start() inside a cocotb test first)")
    return _current


# ------------------------------------------------------------------------------ memory
class SimBuffer(np.ndarray):
    """An ndarray inside simulated DDR (``pynq``'s ``PynqBuffer``): ``physical_address`` of its
    first element, ``flush``/``invalidate`` (no-ops: the simulated memory is coherent, but counted),
    ``freebuffer``."""

    def __array_finalize__(self, obj: Any) -> None:
        self._sim = getattr(obj, "_sim", None)

    @property
    def physical_address(self) -> int:
        sim = self._sim
        offset = self.__array_interface__["data"][0] - sim._ddr_ptr if sim is not None else -1
        if sim is None or not 0 <= offset < len(sim.ddr) or offset + self.nbytes > len(sim.ddr):
            raise ValueError("pynq_sim: this array does not lie in simulated DDR (a copy, not an allocate()d buffer)")
        return sim.ddr_base + offset

    @property
    def device_address(self) -> int:
        return self.physical_address

    def flush(self) -> None:
        if self._sim is not None:
            self._sim.stats["flush"] += 1

    def invalidate(self) -> None:
        if self._sim is not None:
            self._sim.stats["invalidate"] += 1

    def freebuffer(self) -> None:
        if self._sim is not None:
            self._sim._free(self)

    close = freebuffer

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.freebuffer()


# ------------------------------------------------------------------------------ MMIO (AXI4-Lite)
class SimMMIO:
    """An AXI4-Lite IP of the overlay (``pynq.DefaultIP``): ``read``/``write`` of 32-bit registers."""

    def __init__(self, sim: "Simulation", name: str, port: str):
        self.sim, self.name, self.port = sim, name, port
        self.master = AxiLiteMaster(sim.dut, port, sim.clk, seed=sim._seed("lite", name), p=sim.p_lite)
        self.addr_bits = len(getattr(sim.dut, f"{port}_araddr"))
        self.reads = self.writes = 0

    def _check(self, offset: int) -> int:
        offset = int(offset)
        if offset % 4 or not 0 <= offset < 1 << self.addr_bits:
            raise ValueError(f"pynq_sim: {self.name}: offset {offset:#x} is not a 32-bit register of its "
                             f"{1 << self.addr_bits}-byte space")
        return offset

    def read(self, offset: int = 0, length: int = 4) -> int:
        offset = self._check(offset)
        self.reads += 1
        return self.sim._call(lambda: self.master.read(offset))

    def write(self, offset: int, value: int) -> None:
        offset = self._check(offset)
        self.writes += 1
        self.sim._call(lambda: self.master.write(offset, int(value) & 0xFFFFFFFF))


# ------------------------------------------------------------------------------ AXI DMA
class _Job:
    __slots__ = ("address", "nbytes", "count", "beats")

    def __init__(self, address: int, nbytes: int, width: int):
        self.address, self.nbytes, self.count = address, nbytes, 0
        self.beats = -(-nbytes // width)


class SimDMAChannel:
    """One channel of an AXI DMA (direct register mode), ``pynq``'s ``_SDMAChannel`` API, on a
    stream port of the design: ``send`` (MM2S, drives the port) or ``recv`` (S2MM, takes it)."""

    def __init__(self, sim: "Simulation", dma: str, direction: str, port: str, max_size: int, dre: bool):
        self.sim, self.dma, self.direction, self.port = sim, dma, direction, port
        self._max_size, self._dre = max_size, dre
        dut = sim.dut
        sig = _stream_signals(dut, port)
        # what the channel drives goes through a Pin (written only when it changes)
        drives = ("tdata", "tvalid", "tkeep", "tlast") if direction == "send" else ("tready",)
        sig = {k: Pin(v) if k in drives else v for k, v in sig.items()}
        self.data, self.valid, self.ready = sig["tdata"], sig["tvalid"], sig["tready"]
        self.keep, self.last = sig.get("tkeep"), sig.get("tlast")
        self.width = len(self.data) // 8
        if len(self.data) % 8:
            raise ValueError(f"pynq_sim: {port}_tdata is {len(self.data)} bits, not whole bytes")
        self.rng = random.Random(sim._seed("dma", dma, direction))
        self.p = sim.p_valid if direction == "send" else sim.p_ready
        self.sleep_idle = sim.sleep_idle   # wait for the other side's VALID/READY instead of polling each cycle
        self.stall = False                 # test hook: the transfer never completes
        self.stall_after: int | None = None  # test hook: ... after this many bytes of a transfer
        self.transferred = 0
        self.bytes = 0                     # bytes moved over the stream, all transfers
        self.transfers: list[tuple[int, int]] = []   # (physical address, nbytes) started
        self._sr = SR_HALTED
        self._first_transfer = True
        self._job: _Job | None = None
        self._active_buffer = None
        self._kick = Event()               # a transfer started
        self._wake = Event()               # the job changed (started, stopped, reset): a sleeping engine looks
        if direction == "send":
            self.valid.set(0)
            if self.last is not None:
                self.last.set(0)
            if self.keep is not None:
                self.keep.set(0)
        else:
            self.ready.set(0)

    def __repr__(self) -> str:
        return f"<pynq_sim DMA channel {self.dma}.{self.direction}channel on {self.port}>"

    # -- status (each read of DMASR costs an MMIO access)
    def _status(self) -> int:
        return self.sim._call(self._read_sr)

    async def _read_sr(self) -> int:
        await self.sim.wait_cycles(self.sim.mmio_cycles)
        return self._sr

    @property
    def running(self) -> bool:
        return not self._status() & SR_HALTED

    @property
    def idle(self) -> bool:
        return bool(self._status() & SR_IDLE)

    @property
    def error(self) -> bool:
        return bool(self._status() & SR_ERRORS)

    # -- control
    def start(self) -> None:
        self.sim._call(self._start)
        self._first_transfer = True

    async def _start(self) -> None:
        await self.sim.wait_cycles(self.sim.mmio_cycles)
        if self._sr & SR_ERRORS:
            raise RuntimeError(f"pynq_sim: {self.dma} {self.direction} channel stays halted after a DMA error "
                               f"(DMASR {self._sr:#x}): only a DMA reset clears it (pynq's start() spins here)")
        self._sr &= ~SR_HALTED

    def stop(self) -> None:
        self.sim._call(self._stop)

    async def _stop(self) -> None:
        self._abort()
        await self.sim.wait_cycles(self.sim.mmio_cycles)

    def _abort(self) -> None:
        """Halt at once: the transfer in flight ends here (an MM2S one without TLAST)."""
        self._job = None
        self._sr = (self._sr | SR_HALTED) & ~SR_IDLE
        (self.valid if self.direction == "send" else self.ready).set(0)
        self._wake.set()

    def transfer(self, array, start: int = 0, nbytes: int = 0) -> None:
        """Start one transfer of ``nbytes`` (0: to the end of ``array``) at ``array``'s physical address + ``start``."""
        start, nbytes = int(start), int(nbytes)
        if nbytes == 0:
            nbytes = array.nbytes - start
        address = array.physical_address + start
        if self.direction == "send":
            array.flush()
        self.sim._call(lambda: self._transfer(address, nbytes))
        self._active_buffer = array
        self._first_transfer = False

    async def _transfer(self, address: int, nbytes: int) -> None:
        mmio = self.sim.mmio_cycles
        await self.sim.wait_cycles(2 * mmio)                 # pynq reads DMASR twice (running, idle)
        if self._sr & SR_HALTED:
            raise RuntimeError("DMA channel not started")
        if not self._sr & SR_IDLE and not self._first_transfer:
            raise RuntimeError("DMA channel not idle")
        if nbytes > self._max_size:
            raise ValueError(f"Transfer size is {nbytes} bytes, which exceeds the maximum DMA buffer size "
                             f"{self._max_size}.")
        if nbytes <= 0:
            raise ValueError(f"pynq_sim: transfer of {nbytes} bytes")
        if not self._dre and address % self.width:
            raise RuntimeError(f"DMA does not support unaligned transfers; Starting address must be aligned to "
                               f"{self.width} bytes.")
        await self.sim.wait_cycles(3 * mmio)                 # address LO/HI, then LENGTH starts it
        self._sr &= ~SR_IDLE
        self.transferred = 0
        self.transfers.append((address, nbytes))
        if not self.sim._in_ddr(address, nbytes):          # no slave answers there: DMADecErr, halted
            self._sr |= SR_DEC_ERR | SR_HALTED
            return
        self._job = _Job(address, nbytes, self.width)
        self._kick.set()
        self._wake.set()

    def wait(self) -> None:
        """``pynq``'s blocking wait, bounded (``sim.max_wait_cycles``): raises on a DMA error or a timeout."""
        if not self.running:
            raise RuntimeError("DMA channel not started")
        waited, step = 0, max(1, self.sim.mmio_cycles)
        while True:
            sr = self._status()
            waited += step
            if sr & SR_INT_ERR:
                raise RuntimeError("DMA Internal Error (transfer length 0?)")
            if sr & SR_SLV_ERR:
                raise RuntimeError("DMA Slave Error (cannot access memory map interface)")
            if sr & SR_DEC_ERR:
                raise RuntimeError("DMA Decode Error (invalid address)")
            if sr & SR_IDLE:
                break
            if waited > self.sim.max_wait_cycles:
                raise TimeoutError(f"pynq_sim: {self.dma} {self.direction} channel not idle after {waited} cycles")
        if self.direction == "recv" and self._active_buffer is not None:
            self._active_buffer.invalidate()

    # -- the engine (runs in the scheduler for the whole test)
    async def _engine(self) -> None:
        while True:
            while self._job is None:
                await self._kick.wait()
                self._kick.clear()
            job = self._job
            await (self._mm2s(job) if self.direction == "send" else self._s2mm(job))

    def _stalled(self, job: _Job) -> bool:
        return self.stall or (self.stall_after is not None and job.count >= self.stall_after)

    def _complete(self, job: _Job) -> None:
        self._job = None
        self.transferred = job.count
        self._sr |= SR_IDLE

    def _fail(self, bits: int) -> None:
        self._abort()
        self._sr |= bits

    async def _sleep(self, signal) -> None:
        """Until ``signal`` rises or the job changes (stop, reset, a new transfer)."""
        self._wake.clear()
        await First(RisingEdge(signal), self._wake.wait())

    async def _mm2s(self, job: _Job) -> None:
        sim, w = self.sim, self.width
        edge, settled, ready = RisingEdge(sim.clk), ReadOnly(), self.ready
        shown = None                                     # bytes of the beat on the bus
        while True:
            await edge
            if self._job is not job:                     # stopped (TVALID already low)
                self.valid.set(0)
                return
            if shown is None:
                if job.count >= job.nbytes:
                    self.valid.set(0)
                    self._complete(job)
                    return
                if self._stalled(job) or self.rng.random() >= self.p:
                    self.valid.set(0)
                    continue
                n = min(w, job.nbytes - job.count)
                a = job.address - sim.ddr_base + job.count
                shown = n
                self.data.set(int.from_bytes(sim.ddr[a:a + n], "little"))
                if self.keep is not None:
                    self.keep.set((1 << n) - 1)          # all ones but on a short last beat
                if self.last is not None:
                    self.last.set(int(job.count + n >= job.nbytes))
                self.valid.set(1)
            elif self.sleep_idle and ready.value != 1:
                # a beat shown, TREADY low: nothing changes on our side until TREADY rises
                await self._sleep(ready)
                if self._job is not job:
                    self.valid.set(0)
                    return
            await settled
            if self._job is job and ready.value == 1:
                job.count += shown
                self.bytes += shown
                shown = None

    async def _s2mm(self, job: _Job) -> None:
        sim, w = self.sim, self.width
        edge, settled, valid = RisingEdge(sim.clk), ReadOnly(), self.valid
        full = (1 << w) - 1
        while True:
            await edge
            if self._job is not job:                     # done, stopped or failed
                self.ready.set(0)
                return
            if self.sleep_idle and valid.value != 1:
                # nothing offered: TREADY low until TVALID rises (any TREADY is legal meanwhile)
                self.ready.set(0)
                await self._sleep(valid)
                if self._job is not job:
                    self.ready.set(0)
                    return
            take = not self._stalled(job) and self.rng.random() < self.p
            self.ready.set(int(take))
            if not take:
                continue
            await settled
            if self._job is not job or valid.value != 1:
                continue
            keep = self.keep.value.to_unsigned() if self.keep is not None else full
            a = job.address - sim.ddr_base + job.count
            if keep == full:
                if job.count + w > job.nbytes:           # the packet is longer than the transfer
                    self._overrun()
                    continue
                sim.ddr[a:a + w] = self.data.value.to_unsigned().to_bytes(w, "little")
                n = w
            else:
                raw = self.data.value.to_unsigned().to_bytes(w, "little")
                lanes = [i for i in range(w) if keep >> i & 1]
                if job.count + len(lanes) > job.nbytes:
                    self._overrun()
                    continue
                for k, i in enumerate(lanes):
                    sim.ddr[a + k] = raw[i]
                n = len(lanes)
            job.count += n
            self.bytes += n
            last = self.last.value == 1 if self.last is not None else job.count >= job.nbytes
            if last:
                self._complete(job)

    def _overrun(self) -> None:
        """S2MM: a packet longer than the transfer: DMAIntErr, halted (TREADY dropped at the next edge)."""
        self._job = None
        self._sr |= SR_INT_ERR | SR_HALTED


class SimDMA:
    """An AXI DMA of the overlay: ``sendchannel`` (MM2S) and/or ``recvchannel`` (S2MM), else ``None``."""

    def __init__(self, sim: "Simulation", name: str, desc: dict[str, Any]):
        self.name, self.description = name, dict(desc)
        width = int(desc.get("length_width", MAX_C_SG_LENGTH_WIDTH))
        self.buffer_max_size = (1 << width) - 1
        dre = bool(desc.get("dre", False))
        self.sendchannel = SimDMAChannel(sim, name, "send", desc["send"], self.buffer_max_size, dre) \
            if desc.get("send") else None
        self.recvchannel = SimDMAChannel(sim, name, "recv", desc["recv"], self.buffer_max_size, dre) \
            if desc.get("recv") else None

    @property
    def channels(self) -> list[SimDMAChannel]:
        return [c for c in (self.sendchannel, self.recvchannel) if c is not None]


def _stream_signals(dut, port: str) -> dict[str, Any]:
    sig = {}
    for name in ("tdata", "tvalid", "tready", "tkeep", "tlast"):
        for spelled in (name, name.upper()):
            if hasattr(dut, f"{port}_{spelled}"):
                sig[name] = getattr(dut, f"{port}_{spelled}")
                break
    missing = {"tdata", "tvalid", "tready"} - set(sig)
    if missing:
        raise AttributeError(f"pynq_sim: the design has no stream {port} ({', '.join(sorted(missing))} missing)")
    return sig


# ------------------------------------------------------------------------------ the overlay
class SimOverlay:
    """``pynq.Overlay``: the IPs named in ``hdl.json`` ``"pynq"`` as attributes."""

    def __init__(self, sim: "Simulation", bitfile: str):
        self.sim, self.bitfile_name = sim, bitfile
        self.ip_dict: dict[str, dict[str, Any]] = {}
        ctrl = sim.ctrl
        setattr(self, ctrl.name, ctrl)
        self.ip_dict[ctrl.name] = {"type": "AXI4-Lite", "port": ctrl.port}
        for name, dma in sim.dmas.items():
            setattr(self, name, dma)
            self.ip_dict[name] = {"type": "xilinx.com:ip:axi_dma", **dma.description}

    def is_loaded(self) -> bool:
        return self.sim._overlay is self

    def download(self) -> None:
        self.sim._call(self.sim._program)
        self.sim._overlay = self

    def free(self) -> None:
        self.sim.stats["free"] += 1


# ------------------------------------------------------------------------------ the simulation
class Simulation:
    """The ``pynq`` stand-in for one cocotb test: construct it with the DUT and ``hdl.json``'s
    ``"pynq"`` mapping, ``await start()``, then from a thread started with ``cocotb.task.bridge``
    use it as the ``pynq`` module (``Overlay``, ``allocate``)."""

    def __init__(self, dut, mapping: dict[str, Any], *, seed: int = 0, p_valid: float = 0.8, p_ready: float = 0.8,
                 p_arready: float = 0.8, p_rvalid: float = 0.9, p_lite: float = 0.8, ddr_bytes: int = 16 << 20,
                 ddr_base: int = DDR_BASE, mmio_cycles: int = 4, period_ns: float = 10.0,
                 max_cycles: int | None = None, max_wait_cycles: int = 1_000_000, clock: str = "ap_clk",
                 reset: str = "ap_rst_n", check_4k: bool = True, sleep_idle: bool = True,
                 clock_impl: str = "gpi", ddr_port: dict[str, float] | None = None):
        self.dut, self.mapping, self.seed = dut, mapping, int(seed)
        self.clk, self.rst = getattr(dut, clock), getattr(dut, reset)
        self.p_valid, self.p_ready, self.p_lite = p_valid, p_ready, p_lite
        self.mmio_cycles, self.period_ns = int(mmio_cycles), float(period_ns)
        self.sleep_idle, self.clock_impl = bool(sleep_idle), clock_impl
        self._period_steps = get_sim_steps(self.period_ns, "ns")
        self._pending = 0                                # cycles advance() owes the simulation (see advance)
        self.max_cycles, self.max_wait_cycles = max_cycles, int(max_wait_cycles)
        if ddr_base % PAGE:
            raise ValueError(f"pynq_sim: DDR base {ddr_base:#x} is not 4 KiB aligned")
        self.ddr_base, self.ddr = int(ddr_base), bytearray(int(ddr_bytes))
        self._ddr_np = np.frombuffer(self.ddr, dtype=np.uint8)
        self._ddr_ptr = self._ddr_np.__array_interface__["data"][0]
        self._next, self._blocks = 0, []                 # bump allocator: [(offset, bytes)] live
        self.stats = {"flush": 0, "invalidate": 0, "free": 0, "allocated": 0}
        self._cycle = 0
        self._overlay: SimOverlay | None = None
        ctrl = mapping["ctrl"]
        self.ctrl = SimMMIO(self, ctrl["ip"], ctrl["port"])
        self.dmas = {name: SimDMA(self, name, desc) for name, desc in mapping.get("dmas", {}).items()}
        ddr_ports = mapping.get("ddr") or []
        ddr_ports = [ddr_ports] if isinstance(ddr_ports, str) else list(ddr_ports)
        self.rams = [AxiReadRam(dut, port, self.ddr, self.ddr_base, p_arready, p_rvalid, self._seed("ddr", port),
                                data_bytes=len(getattr(dut, f"{port}_rdata")) // 8, check_4k=check_4k,
                                sleep_idle=self.sleep_idle, period_ns=self.period_ns, **(ddr_port or {}))
                     for port in ddr_ports]

    def _seed(self, *what: str) -> int:
        return random.Random(f"{self.seed}/" + "/".join(what)).randrange(1 << 31)

    # -- in the cocotb test
    async def start(self) -> None:
        """Clock on, the design held in reset (unprogrammed) until ``Overlay(...)`` programs it; the
        DDR ports served and the DMA engines running from now on."""
        global _current
        # "gpi": the clock toggles in the simulator's C++ callbacks, no Python wake-up per edge
        Clock(self.clk, self.period_ns, unit="ns", impl=self.clock_impl).start()
        self.rst.value = 0
        for ram in self.rams:
            cocotb.start_soon(ram.run())
        for dma in self.dmas.values():
            for channel in dma.channels:
                cocotb.start_soon(channel._engine())
        await ClockCycles(self.clk, 2)
        self._stamp()
        _current = self

    async def _program(self) -> None:
        """What a bitstream download does to the PL: everything reset."""
        for dma in self.dmas.values():
            for channel in dma.channels:
                channel._abort()
                channel._sr = SR_HALTED
        for ram in self.rams:
            ram.pending.clear()
        self.rst.value = 0
        await self.wait_cycles(8)
        self.rst.value = 1
        await self.wait_cycles(2)
        for dma in self.dmas.values():              # pynq's AxiDMA starts its channels when it is created
            for channel in dma.channels:
                await channel._start()
                channel._first_transfer = True

    # -- the bridge
    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine ``make()`` in the scheduler and wait for it (the simulator runs meanwhile)."""
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("pynq_sim: call the pynq API from a thread started with cocotb.task.bridge, not from "
                               "the cocotb scheduler (it would block the simulation)")
        return resume(self._guarded)(make)

    async def _guarded(self, make: Callable[[], Awaitable[T]]) -> T:
        owed, self._pending = self._pending, 0
        if self.max_cycles is not None and self._cycle + owed > self.max_cycles:
            raise SimulationLimit(f"pynq_sim: the simulation passed max_cycles={self.max_cycles}")
        try:
            if owed:
                await self.wait_cycles(owed)
            return await make()
        finally:
            self._stamp()

    async def wait_cycles(self, n: int) -> None:
        """``n`` rising edges of the clock (a timer over the middle ones: no Python wake-up a cycle)."""
        await clock_cycles(self.clk, n, self._period_steps)

    def _stamp(self) -> None:
        self._cycle = int(round(get_sim_time("ns") / self.period_ns))

    @property
    def cycles(self) -> int:
        """Simulated clock cycles so far (as of the last call into the simulation, plus what
        :meth:`advance` owes: time stands still while the driver's thread runs)."""
        return self._cycle + self._pending

    def advance(self, cycles: int) -> None:
        """Let ``cycles`` clock cycles pass (from the driver's thread).

        Nothing in the driver's thread can see the design between this and its next call into the
        simulation, so the cycles are owed and passed at the start of that call (one switch into
        the scheduler instead of two: the same simulated time line, the driver's clock included)."""
        n = int(cycles)
        if n > 0:
            self._pending += n

    # -- the pynq API
    def Overlay(self, bitfile: str, download: bool = True, **kwargs) -> SimOverlay:
        overlay = SimOverlay(self, str(bitfile))
        if download or self._overlay is None:        # an unprogrammed PL is programmed either way
            overlay.download()
        else:
            self._overlay = overlay
        return overlay

    def allocate(self, shape, dtype="u4", target=None, **kwargs) -> SimBuffer:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = max(count * dtype.itemsize, 1)
        start = self._next
        end = start + -(-nbytes // PAGE) * PAGE
        if end > len(self.ddr):
            raise RuntimeError(f"pynq_sim: simulated DDR ({len(self.ddr)} bytes) is full: cannot allocate {nbytes} "
                               "bytes (Simulation(ddr_bytes=...))")
        self._next = end + PAGE                          # a guard page after each buffer
        self._blocks.append((start, end))
        self.stats["allocated"] += 1
        view = self._ddr_np[start:start + count * dtype.itemsize].view(dtype).reshape(shape).view(SimBuffer)
        view._sim = self
        view[...] = 0
        return view

    def _free(self, buf: SimBuffer) -> None:
        offset = buf.physical_address - self.ddr_base
        self._blocks = [b for b in self._blocks if b[0] != offset]
        self._next = max((end + PAGE for _, end in self._blocks), default=0)   # the top of the heap comes back
        self.stats["free"] += 1

    def _in_ddr(self, address: int, nbytes: int) -> bool:
        return self.ddr_base <= address and address + nbytes <= self.ddr_base + len(self.ddr)

    # -- what happened
    def counters(self) -> dict[str, Any]:
        """Bytes moved so far: DDR read port(s) (the fetchers), each DMA channel; protocol errors."""
        return {"ddr_read_bytes": sum(r.bytes for r in self.rams),
                "ddr_beats_logged": sum(len(r.beat_log) for r in self.rams),
                "ddr_bursts": sum(len(r.bursts) for r in self.rams),
                "dma_bytes": {f"{d.name}.{c.direction}": c.bytes for d in self.dmas.values() for c in d.channels},
                "mmio": {"reads": self.ctrl.reads, "writes": self.ctrl.writes},
                "errors": [e for r in self.rams for e in r.errors], "cycles": self.cycles}
