"""What the driver needs from the hardware: the one interface behind ``board``, ``sim`` and ``ref``.

numpy only. The driver (``host/driver.py``) is written against :class:`Hardware` alone, so the
same driver code runs on a PYNQ board (``board``: real ``pynq``), against the Verilator model
of the stitched design (``sim``: ``sim/pynq_sim.py`` standing in for ``pynq``) and on the integer
reference (``ref``: no hardware, a transaction-level timing model).

The hardware-facing object offers, and nothing else is used:

============================== ==============================================================
``open(bundle)``               program / attach the design; return :class:`DesignInfo` (what
                               the *loaded design* says about itself: its layout signature)
``allocate(name, nbytes)``     one physically contiguous buffer (:class:`Buffer`), allocated
                               once per overlay: ``input``, ``output``, ``weights``
``sync_to_device(buf)``        cache flush before the accelerator reads ``buf``
``sync_from_device(buf)``      cache invalidate before the host reads ``buf``
``set_weight_base(buf)``       tell the on-chip fetchers where the weight image lies
``send_input(buf, nbytes)``    input DMA (memory -> stream) and start of one inference
``poll_decision(level)``       the router's decision of ``level`` (the level's branch index,
                               ``0 .. 2**(level+1)-1``) once valid, else ``None``; never blocks
``start_fetch(level, addr, n)`` host-driven fetch: one DMA of ``n`` bytes at physical ``addr``
                               (one branch's contiguous region) into the level's weight buffer
``poll_fetch(level)``          ``True`` once the level's fetch has completed
``cancel_fetch(level)``        abandon the level's fetch (a wrong prefetch)
``commit_weights(level, b)``   the level's weight buffer holds branch ``b``: the datapath may run
``poll_output(buf, nbytes)``   ``True`` once the output DMA (stream -> memory) has completed
``fetch_log()``                what the weight fetchers read during the last inference:
                               ``[(level, addr, nbytes), ...]`` (hardware byte counters)
``now()``                      the backend's clock (``clock_unit``: ``"s"`` or ``"cycles"``)
``reset()``                    abort the inference in flight (soft reset of the accelerator and
                               its DMAs); the overlay stays loaded and usable
``idle()``                     what to do between two polls (board: yield the CPU)
============================== ==============================================================

Two fetch modes (``driver.json`` ``fetch_mode``, default ``host``): in ``host`` mode the host
moves each level's weights with one DMA transfer of the chosen region (``start_fetch``); in
``onchip`` mode the router's decision drives FINN+'s ``fetch_weights`` base address on chip and
the driver only checks, from ``fetch_log()``, that exactly the chosen region was read.

The register map the stitched design exposes (``REGISTERS``; ``driver.json`` ``registers``
overrides it, ``ips`` names the AXI-Lite control block and the DMAs in the overlay) is the
contract with ``hls/stitch.py``.
"""
from __future__ import annotations

import abc
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BackendUnavailable  # noqa: F401  (re-exported: hls/ and the backends import it from here)

# AXI-Lite control block of the stitched design (byte offsets). Read-only unless noted.
REGISTERS: dict[str, int] = {
    "CTRL": 0x00,             # W: bit0 start, bit1 soft reset (aborts the inference and the fetches)
    "STATUS": 0x04,           # bit0 done (output written), bit1 idle, bit2 error (bad commit)
    "SIGNATURE": 0x08,        # layout signature the design was built for (:func:`layout_signature`)
    "LEVELS": 0x0C,           # tree depth the design implements
    "FETCH_MODE": 0x10,       # W: 0 host-driven fetch, 1 on-chip (router drives fetch_weights)
    "WEIGHT_BASE_LO": 0x14,   # W: physical address of the weight image (on-chip mode)
    "WEIGHT_BASE_HI": 0x18,
    "DECISION_VALID": 0x1C,   # bit l: the decision of level l is valid for this inference
    "DECISION_0": 0x20,       # + 4*l: branch index chosen at level l
    "COMMIT_0": 0x40,         # W, + 4*l: bit31 set + branch: the level's buffer holds that branch
    "FETCH_ADDR_LO_0": 0x60,  # + 8*l: first address the level's fetchers read (on-chip mode)
    "FETCH_ADDR_HI_0": 0x64,
    "FETCH_BYTES_0": 0xA0,    # + 4*l: bytes the level's fetchers read in this inference
    "FETCH_BRANCH_0": 0xC0,   # W, + 4*l: host mode: branch whose region the next weight DMA carries
    "FRAMES": 0xE0,           # RW: images the next start takes (on-chip fetch; 0 and host mode: 1)
    "FRAMES_DONE": 0xE4,      # images whose output left since the start
    "PATH": 0xE8,             # R, pops: bit31 + the oldest unread image's leaf (0: none left)
}
# DMA instances in the overlay: input (MM2S), output (S2MM), one weight DMA per level (MM2S).
IPS: dict[str, Any] = {"ctrl": "sigmabranch_ctrl", "idma": "idma0", "odma": "odma0", "wdma": ["wdma0", "wdma1"]}


PATH_DEPTH = 64   # images' paths tree_ctrl keeps per start (its PATH_DEPTH): the largest batch


def layout_signature(driver: dict[str, Any]) -> int:
    """CRC32 of what a design is built for: the weight regions, input and output sizes. The
    stitched design holds it in ``SIGNATURE``; the driver refuses a bundle whose value differs."""
    key = {"levels": [[int(l["level"]), int(l["base"]), int(l["region_stride"]), int(l["region_bytes"])]
                      for l in driver["levels"]],
           "input": [list(driver["input"]["shape_nhwc"]), driver["input"]["datatype"], int(driver["input"]["bytes"])],
           "output": [list(driver["output"]["shape"]), driver["output"]["datatype"], int(driver["output"]["bytes"])]}
    return zlib.crc32(json.dumps(key, sort_keys=True).encode())


@dataclass
class Buffer:
    """One contiguous buffer: ``array`` (uint8 view the host fills/reads), its physical address."""
    name: str
    array: np.ndarray
    physical_address: int
    handle: Any = None  # the backend's own object (a ``pynq`` ``PynqBuffer``)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def contains(self, address: int, nbytes: int) -> bool:
        return self.physical_address <= address and address + nbytes <= self.physical_address + self.nbytes


@dataclass
class DesignInfo:
    """What the loaded design reports about itself."""
    signature: int
    levels: int
    fetch_modes: tuple[str, ...] = ("host",)
    clock_unit: str = "s"
    extra: dict[str, Any] = field(default_factory=dict)


class Hardware(abc.ABC):
    """The hardware-facing object (see the module docstring for the contract)."""

    name = "abstract"
    clock_unit = "s"
    simulated = False  # True: now() is the simulated design's time, and the driver's deadlines count it

    @abc.abstractmethod
    def open(self, bundle) -> DesignInfo: ...

    @abc.abstractmethod
    def allocate(self, name: str, nbytes: int) -> Buffer: ...

    def sync_to_device(self, buf: Buffer) -> None:
        pass

    def sync_from_device(self, buf: Buffer) -> None:
        pass

    @abc.abstractmethod
    def set_weight_base(self, buf: Buffer, fetch_mode: str) -> None: ...

    @abc.abstractmethod
    def send_input(self, buf: Buffer, nbytes: int, out: Buffer, out_nbytes: int) -> None: ...

    @abc.abstractmethod
    def poll_decision(self, level: int) -> int | None: ...

    @abc.abstractmethod
    def start_fetch(self, level: int, address: int, nbytes: int) -> None: ...

    @abc.abstractmethod
    def poll_fetch(self, level: int) -> bool: ...

    @abc.abstractmethod
    def cancel_fetch(self, level: int) -> None: ...

    @abc.abstractmethod
    def commit_weights(self, level: int, branch: int) -> None: ...

    @abc.abstractmethod
    def poll_output(self) -> bool: ...

    @abc.abstractmethod
    def fetch_log(self) -> list[tuple[int, int, int]]: ...

    @abc.abstractmethod
    def now(self) -> float: ...

    @abc.abstractmethod
    def reset(self) -> None: ...

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass
