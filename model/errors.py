"""The error types that mean "bad input" (the CLI prints them as one line, exit code 2)."""
from .checkpoint import CheckpointError
from .config import ConfigError
from .convert import ConversionError
from .data import DatasetError

USER_ERRORS: tuple[type[Exception], ...] = (CheckpointError, ConfigError, ConversionError, DatasetError,
                                            FileNotFoundError)


def user_errors() -> tuple[type[Exception], ...]:
    """USER_ERRORS plus the later stages' own (imported lazily: they pull in Brevitas)."""
    from hls.build import BuildError
    from host.int_reference import ManifestError
    from quant.qtree import QuantizationError
    return USER_ERRORS + (QuantizationError, ManifestError, BuildError)
