"""Backends of the host driver behind one interface (:class:`host.backends.base.Hardware`):
``board`` (real ``pynq``), ``sim`` (the Verilator model, off-board only), ``ref`` (the integer
reference with a transaction-level timing model).

numpy only. ``board`` and ``ref`` live here; ``sim`` lives in the repository's ``sim/`` package
(``sim/host_backend.py``: it needs cocotb and Verilator) and is imported *by name*
(:func:`load_sim_backend`) only when it is asked for, so nothing under ``host/`` imports ``sim``,
cocotb or FINN, and a PYNQ board without them runs ``board`` and ``ref`` unchanged.

:func:`execute_on_backend` is the one place that decides how a backend runs a batch; for ``sim``
(:func:`sim_route`): the whole design behind AXI where the bundle has ``vivado/hdl.json`` (the
driver inside the cocotb test, ``sim.host_backend.run_sim``), else part by part (the driver
here over ``SimPartsHardware``, ``sim/tree_nodes.py``'s ``TreeSim``).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import BackendUnavailable

BACKENDS = ("board", "sim", "ref")
SIM_MODULE = "sim.host_backend"   # where the sim backend lives (the repository's sim/ package)
WHOLE, PARTS = "whole", "parts"   # the two routes of the sim backend


def load_sim_backend():
    """``sim.host_backend``, imported by name; :class:`BackendUnavailable` where it cannot be."""
    try:
        return importlib.import_module(SIM_MODULE)
    except ImportError as err:
        raise BackendUnavailable(f"the sim backend ({SIM_MODULE}) cannot be imported here: {err}. It runs off-board "
                                 "only, from a checkout of the repository (its sim/ package, cocotb and Verilator); "
                                 "on a board use --backend board or ref") from err


def hdl_description(bundle: str | Path) -> Path | None:
    """``<bundle>/vivado/hdl.json`` if the build has the whole design behind AXI, else ``None``."""
    path = Path(bundle) / "vivado" / "hdl.json"
    return path if path.is_file() else None


def sim_route(bundle: str | Path) -> str:
    """How ``sim`` runs this bundle: :data:`WHOLE` (the whole design behind AXI, ``vivado/hdl.json``
    present) or :data:`PARTS` (the build's parts one after another)."""
    return WHOLE if hdl_description(bundle) is not None else PARTS


def get_backend(name: str, **kwargs):
    """The :class:`~host.backends.base.Hardware` object of backend ``name``. ``sim``: the part-by-part
    hardware (``SimPartsHardware``) unless ``via="whole"`` (``SimHardware``: only inside the cocotb
    test that :func:`execute_on_backend` / ``run_sim`` starts)."""
    if name == "ref":
        from .ref import RefHardware
        return RefHardware(**kwargs)
    if name == "board":
        from .board import BoardHardware
        return BoardHardware(**kwargs)
    if name == "sim":
        sim = load_sim_backend()
        if kwargs.pop("via", PARTS) == WHOLE:
            return sim.SimHardware(**kwargs)
        return sim.SimPartsHardware(**kwargs)
    raise ValueError(f"unknown backend {name!r}; one of {', '.join(BACKENDS)}")


@dataclass
class BackendRun:
    """What :func:`execute_on_backend` ran: ``out`` (``SigmaBranchOverlay.execute``'s dict), the
    loaded ``bundle``, the ``fetch_mode`` used, the ``route`` (``sim``: :data:`WHOLE` or
    :data:`PARTS`; else ``None``), the wall-clock ``seconds`` the inputs took (the whole design:
    its build and simulation; else ``execute``, the design already open) and, for the whole
    design, ``simulation`` (``run_sim``'s ``sim``)."""
    out: dict[str, Any]
    bundle: Any
    fetch_mode: str
    route: str | None = None
    seconds: float = 0.0
    simulation: dict[str, Any] | None = field(default=None, repr=False)


def execute_on_backend(bundle: str | Path, x, *, backend: str = "ref", strategy: str = "serial",
                       fetch_mode: str | None = None, timeout_s: float = 2.0,
                       progress: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                       batch: int = 1, **backend_args) -> BackendRun:
    """Run the driver over the inputs ``x`` on ``backend``, the one place that chooses how.

    ``board``/``ref`` (and ``sim`` part by part): a :class:`~host.driver.SigmaBranchOverlay` here
    (``backend_args`` go to the backend), ``progress(0)`` once it is open, then ``progress(1)`` per
    inference. ``sim`` on a bundle with ``vivado/hdl.json``: the driver in the cocotb test on the
    whole design (``sim.host_backend.run_sim``, ``backend_args`` are its options), ``log`` gets a
    line before the (possibly long) build and simulation, ``progress`` is not called (the driver
    runs in another process). ``timeout_s``: simulated seconds in simulation. ``batch``:
    ``execute``'s (inputs per start, on-chip fetch)."""
    from ..driver import Bundle, SigmaBranchOverlay
    if backend == "sim" and sim_route(bundle) == WHOLE:
        sim = load_sim_backend()
        loaded = Bundle.load(bundle)                      # a bundle error before any build
        if log is not None:
            log(f"sim: {len(x)} inputs through the driver on the Verilator model of {Path(bundle) / 'vivado'} "
                "(builds it first unless cached) ...")
        t0 = time.perf_counter()
        out = sim.run_sim(bundle, x, strategy=strategy, fetch_mode=fetch_mode, timeout_s=timeout_s, batch=batch,
                          **backend_args)
        return BackendRun(out, loaded, out["sim"]["open"]["fetch_mode"], WHOLE, time.perf_counter() - t0, out["sim"])
    overlay = SigmaBranchOverlay(bundle, backend, strategy=strategy, fetch_mode=fetch_mode, timeout_s=timeout_s,
                                 **backend_args)
    try:
        if progress is not None:
            progress(0)                                   # the design is open: the run starts
        t0 = time.perf_counter()
        out = overlay.execute(x, progress=progress, batch=batch)
        seconds = time.perf_counter() - t0
    finally:
        overlay.close()
    return BackendRun(out, overlay.bundle, overlay.fetch_mode, PARTS if backend == "sim" else None, seconds)
