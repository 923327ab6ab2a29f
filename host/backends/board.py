"""``board``: the driver's hardware interface on a PYNQ board, through the real ``pynq`` API.

``pynq.Overlay`` loads the bitstream (its ``.hwh`` beside it), ``pynq.allocate`` gives the
contiguous buffers, the AXI DMAs move the input (MM2S), the output (S2MM) and, in ``host`` fetch
mode, each level's weight region (one MM2S transfer per level and inference), and the stitched
design's AXI-Lite control block (register map: :data:`host.backends.base.REGISTERS`) starts an
inference and reports the router's decisions and the fetchers' byte counters.

``pynq``'s ``DMA.wait()`` spins without a bound, so nothing here calls it: the driver polls
``idle``/``error`` of a channel with a deadline, and on timeout :meth:`BoardHardware.reset`
soft-resets the accelerator first (so its streams drain), then stops and restarts the DMA
channels (the overlay stays loaded). ``pynq``'s ``stop()`` itself waits for the channel to halt;
an AXI DMA halts once its outstanding beats are accepted, which the accelerator's reset ensures.

The same class runs in simulation with ``sim/pynq_sim.py`` passed as ``pynq_module`` (``sim``
backend): only ``Overlay``, ``allocate``, the DMA channels and ``read``/``write`` of an IP are used.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from .base import IPS, PATH_DEPTH, REGISTERS, BackendUnavailable, Buffer, DesignInfo, Hardware

STATUS_DONE, STATUS_ERROR = 0x1, 0x4
DMA_ERROR_BITS = 0x70  # DMASR: internal, slave, decode error


class BoardHardware(Hardware):
    name = "board"
    clock_unit = "s"

    def __init__(self, bitfile: str | Path | None = None, pynq_module: Any = None, download: bool = True):
        self._bitfile, self._download = bitfile, download
        if pynq_module is None:
            try:
                pynq_module = importlib.import_module("pynq")
            except ImportError as err:
                raise BackendUnavailable("the board backend needs the `pynq` package (a PYNQ board image); "
                                         "use --backend ref (or sim) elsewhere") from err
        self.pynq = pynq_module
        self._fetching: dict[int, Any] = {}
        self._log: list[tuple[int, int, int]] = []
        self._wbuf = None

    # -- design
    def open(self, bundle) -> DesignInfo:
        d = bundle.driver
        bitfile = self._bitfile or d.get("bitstream")
        if not bitfile:
            raise BackendUnavailable(f"{bundle.root / 'driver.json'} names no bitstream (Vivado did not run for "
                                     "this build); pass bitfile=")
        bitfile = Path(bitfile) if Path(bitfile).is_absolute() else bundle.root / bitfile
        # pynq downloads by default; the simulation's stand-in takes the name only.
        self.overlay = self.pynq.Overlay(str(bitfile)) if self._download else self.pynq.Overlay(str(bitfile), download=False)
        self.regs = {**REGISTERS, **d.get("registers", {})}
        self._levels = d["levels"]
        ips = {**IPS, **d.get("ips", {})}
        self.ctrl = self._ip(ips["ctrl"])
        self.idma, self.odma = self._ip(ips["idma"]), self._ip(ips["odma"])
        # Weight DMAs exist only where the design offers host-driven fetch; driver.json's "ips" must
        # then name them. Without them (the on-chip-only build) the defaults are simply absent.
        named = "wdma" in d.get("ips", {})
        self.wdma = [self._ip(name) for name in ips["wdma"]] if named else \
            [dma for dma in (self._ip_or_none(name) for name in ips["wdma"]) if dma is not None]
        if len(self.wdma) not in (0, len(d["levels"])):
            raise BackendUnavailable(f"the overlay has {len(self.wdma)} weight DMAs for {len(d['levels'])} levels")
        self._t0 = time.perf_counter()
        # One region is one transfer: the DMA's length register must hold it (PG021: c_sg_length_width).
        largest = max(int(level["region_bytes"]) for level in d["levels"])
        for name, dma in zip(ips["wdma"], self.wdma):
            limit = getattr(dma, "buffer_max_size", None)
            if limit is not None and int(limit) < largest:
                raise BackendUnavailable(f"weight DMA {name} moves at most {limit} bytes per transfer, a region has "
                                         f"{largest}: build the AXI DMA with c_sg_length_width >= "
                                         f"{max(14, largest.bit_length())}")
        modes = ("host", "onchip") if self.wdma else ("onchip",)
        # Several images per start (FRAMES resets to 1; a design without the register reads 0).
        self.max_batch = PATH_DEPTH if self._read("FRAMES") else 1
        for dma, per in ((self.idma, int(d["input"]["bytes"])), (self.odma, int(d["output"]["bytes"]))):
            limit = getattr(dma, "buffer_max_size", None)   # one batch is one transfer each way
            if limit is not None:
                self.max_batch = max(1, min(self.max_batch, int(limit) // per))
        return DesignInfo(signature=self._read("SIGNATURE"), levels=self._read("LEVELS"), fetch_modes=modes,
                          clock_unit="s", extra={"bitstream": str(bitfile)})

    def _ip(self, path: str):
        obj = self.overlay
        for part in path.split("/"):
            try:
                obj = getattr(obj, part)
            except (AttributeError, KeyError) as err:
                raise BackendUnavailable(f"the overlay has no IP {path!r} (driver.json 'ips' names the control "
                                         "block and the DMAs of the stitched design)") from err
        return obj

    def _ip_or_none(self, path: str):
        try:
            return self._ip(path)
        except BackendUnavailable:
            return None

    def _read(self, reg: str, index: int = 0, stride: int = 4) -> int:
        return int(self.ctrl.read(self.regs[reg] + stride * index))

    def _write(self, reg: str, value: int, index: int = 0, stride: int = 4) -> None:
        self.ctrl.write(self.regs[reg] + stride * index, int(value) & 0xFFFFFFFF)

    def allocate(self, name: str, nbytes: int) -> Buffer:
        array = self.pynq.allocate(shape=(nbytes,), dtype="u1")
        return Buffer(name, array, int(getattr(array, "physical_address", 0)), handle=array)

    def sync_to_device(self, buf: Buffer) -> None:
        flush = getattr(buf.array, "flush", None)
        if flush is not None:
            flush()

    def sync_from_device(self, buf: Buffer) -> None:
        invalidate = getattr(buf.array, "invalidate", None)
        if invalidate is not None:
            invalidate()

    def set_weight_base(self, buf: Buffer, fetch_mode: str) -> None:
        self._wbuf, self._fetch_mode = buf, fetch_mode
        self._write("FETCH_MODE", 1 if fetch_mode == "onchip" else 0)
        self._write("WEIGHT_BASE_LO", buf.physical_address & 0xFFFFFFFF)
        self._write("WEIGHT_BASE_HI", buf.physical_address >> 32)

    # -- one inference
    def send_input(self, buf: Buffer, nbytes: int, out: Buffer, out_nbytes: int) -> None:
        self._fetching.clear()
        self._log = []
        self.odma.recvchannel.transfer(out.array, nbytes=out_nbytes)  # arm the output first, as FINN's driver
        self._write("CTRL", 0x1)
        self.idma.sendchannel.transfer(buf.array, nbytes=nbytes)

    def send_batch(self, buf: Buffer, nbytes: int, out: Buffer, out_nbytes: int, n: int) -> None:
        """``n`` images back to back in one start (on-chip fetch): ``nbytes`` / ``out_nbytes`` for
        all of them; they pass through the tree level by level."""
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"board: a batch of {n} images; this design takes 1 to {self.max_batch} per start")
        self._write("FRAMES", n)
        self.send_input(buf, nbytes, out, out_nbytes)

    def read_paths(self, n: int) -> list[int | None]:
        """The leaves of the last start's images, in order (None where the design kept none)."""
        words = [self._read("PATH") for _ in range(n)]
        self._write("FRAMES", 1)
        return [w & 0x7FFF_FFFF if w >> 31 else None for w in words]

    def poll_decision(self, level: int) -> int | None:
        if not (self._read("DECISION_VALID") >> level) & 1:
            return None
        return self._read("DECISION_0", level)

    def start_fetch(self, level: int, address: int, nbytes: int) -> None:
        channel = self.wdma[level].sendchannel
        self._fetching[level] = channel
        if self._wbuf is None or not self._wbuf.contains(address, nbytes):
            raise MemoryError(f"board: weight DMA of {nbytes} bytes at {address:#x} is outside the weight buffer")
        # The design forwards a region only if FETCH_BRANCH names its decision (a wrong prefetch is dropped
        # on chip), so tag the transfer with the branch whose region it is, before it starts.
        lv = self._levels[level]
        branch, rest = divmod(address - self._wbuf.physical_address - int(lv["base"]), int(lv["region_stride"]))
        if rest or not 0 <= branch < 2 ** (level + 1):
            raise MemoryError(f"board: weight DMA of level {level} at {address:#x} is not the start of one of its regions")
        self._write("FETCH_BRANCH_0", branch, level)
        channel.transfer(self._wbuf.array, start=address - self._wbuf.physical_address, nbytes=nbytes)
        self._log.append((level, address, nbytes))  # a cancelled transfer counts whole (an upper bound)

    def poll_fetch(self, level: int) -> bool:
        channel = self._fetching.get(level)
        if channel is None:
            return False
        self._check_channel(channel, f"weight DMA of level {level}")
        return bool(channel.idle)

    def cancel_fetch(self, level: int) -> None:
        channel = self._fetching.pop(level, None)
        if channel is not None and not channel.idle:
            channel.stop()
            channel.start()

    def commit_weights(self, level: int, branch: int) -> None:
        self._write("COMMIT_0", (1 << 31) | branch, level)

    def poll_output(self) -> bool:
        channel = self.odma.recvchannel
        self._check_channel(channel, "output DMA")
        if self._read("STATUS") & STATUS_ERROR:
            raise RuntimeError("board: the accelerator flagged an error (a level ran on uncommitted weights)")
        return bool(channel.idle)

    @staticmethod
    def _check_channel(channel, what: str) -> None:
        if channel.error:
            raise RuntimeError(f"board: {what} reports a DMA error (DMASR error bits set)")

    def fetch_log(self) -> list[tuple[int, int, int]]:
        if self._fetch_mode == "host":  # the host moved them: its own log of the DMA transfers
            return list(self._log)
        log = []  # on chip: the fetchers' address and byte counters
        for level in range(self._read("LEVELS")):
            address = self._read("FETCH_ADDR_LO_0", level, 8) | (self._read("FETCH_ADDR_HI_0", level, 8) << 32)
            log.append((level, address, self._read("FETCH_BYTES_0", level)))
        return log

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def reset(self) -> None:
        self._write("CTRL", 0x2)  # soft reset: aborts the inference and the on-chip fetchers
        for dma in [self.idma, self.odma, *self.wdma]:
            for channel in (getattr(dma, "sendchannel", None), getattr(dma, "recvchannel", None)):
                if channel is not None:
                    self._restart(channel)
        self._fetching.clear()

    @staticmethod
    def _restart(channel) -> None:
        """Stop and start a DMA channel. An AXI DMA error halts the channel and only a DMA reset
        clears it (PG021: DMACR bit 2); pynq's ``start()`` would spin on a halted channel, so a
        channel with its error bit set is reset first (through pynq's register window)."""
        mmio, offset = getattr(channel, "_mmio", None), getattr(channel, "_offset", None)
        if getattr(channel, "error", False) and mmio is not None and offset is not None:
            mmio.write(offset, 0x4)
            deadline = time.monotonic() + 1.0
            while mmio.read(offset) & 0x4:
                if time.monotonic() > deadline:
                    raise RuntimeError("board: an AXI DMA reset did not complete within 1 s")
        channel.stop()
        channel.start()

    def idle(self) -> None:
        time.sleep(0)

    def close(self) -> None:
        free = getattr(self.overlay, "free", None)
        if free is not None:
            free()
