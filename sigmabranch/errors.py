"""The errors the CLI reports as one line instead of a traceback.

The CLI sits above every package, so it owns this list: ``model`` contributes its own
(:data:`model.errors.MODEL_ERRORS`), the later stages theirs.
"""
from __future__ import annotations


class HardwareCheckFailed(RuntimeError):
    """The simulated hardware disagreed with the integer reference (accumulators, routing path) or
    fetched other weight bytes than the path's; names the images and the node or level."""


# Exit code 1: a check of the flow failed (the run's files are written; they show where).
CHECK_FAILURES: tuple[type[Exception], ...] = (HardwareCheckFailed,)


def user_errors() -> tuple[type[Exception], ...]:
    """Bad input (exit code 2): model's errors plus the later stages' own. Imported lazily (they
    pull in torch and Brevitas): the CLI evaluates this only when an error is being reported."""
    from hls.errors import BuildError  # hls.vivado.VivadoMissing (no vivado on PATH) is one
    from host.errors import ManifestError
    from model.errors import MODEL_ERRORS
    from quant.qtree import QuantizationError
    return MODEL_ERRORS + (FileNotFoundError, QuantizationError, ManifestError, BuildError)
