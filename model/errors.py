"""model's "bad input" errors. The CLI's full list of user-facing errors (these plus the later
stages') is ``sigmabranch/errors.py``: model imports nothing above it."""
from .checkpoint import CheckpointError
from .config import ConfigError
from .convert import ConversionError
from .data import DatasetError

MODEL_ERRORS: tuple[type[Exception], ...] = (CheckpointError, ConfigError, ConversionError, DatasetError)
