"""The host driver's exceptions, in one module (no numpy, no pynq: importable anywhere).

Everything the driver raises on purpose is one of these; ``host.driver`` re-exports them (``from
host.driver import DriverTimeout`` keeps working), ``host.int_reference`` re-exports
:class:`ManifestError` and ``host.backends.base`` :class:`BackendUnavailable`.

============================ ===================================================================
``ManifestError``            a manifest or node file missing, malformed or inconsistent
``BundleError``              bundle files that disagree with each other or with the loaded design
                             (a ``ManifestError``)
``InputError``               an input the tree cannot take (shape, dtype, range)
``DriverError``              the accelerator misbehaved
``DriverTimeout``            a bounded wait ran out (a ``DriverError`` and a ``TimeoutError``)
``DecisionError``            a router decision out of range (a ``DriverError``)
``WeightImageError``         a weight region fails its CRC32 (a ``DriverError``)
``BackendUnavailable``       the backend cannot run here (no ``pynq``, no sim/ package, no design)
============================ ===================================================================
"""
from __future__ import annotations


class ManifestError(ValueError):
    """A manifest or node file that is missing, malformed or inconsistent (names the node)."""


class DriverError(RuntimeError):
    """The accelerator misbehaved (names what and where)."""


class DriverTimeout(DriverError, TimeoutError):
    """A DMA or router wait did not complete in its bounded time; the accelerator was reset."""


class DecisionError(DriverError):
    """The router reported a branch that does not exist or does not continue the path."""


class WeightImageError(DriverError):
    """The weight image in DDR does not match its manifest (CRC32 per region)."""


class BundleError(ManifestError):
    """Bundle files that disagree with each other or with the loaded design."""


class InputError(ValueError):
    """An input the tree cannot take (shape, dtype, range)."""


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (no ``pynq``, no Verilator or cocotb, no stitched design): says what is missing."""


# What a simulation process may report back by name (sim.host_backend.run_sim re-raises these).
DRIVER_ERRORS: dict[str, type[Exception]] = {cls.__name__: cls for cls in (
    DriverError, DriverTimeout, DecisionError, WeightImageError, BundleError, InputError, BackendUnavailable)}
