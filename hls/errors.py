"""The build's error type, in a module of its own so every part of the build can raise it
without importing the orchestration (``hls.build`` re-exports it)."""


class BuildError(ValueError):
    """A design that cannot be built as asked (names the node and the problem)."""
