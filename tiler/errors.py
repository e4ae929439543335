"""The project's one family of errors: every failure a user can cause raises a subclass of TilerError.

Each message names the file or key, the bad value, and the fix. :func:`exit_code` is the one rule
turning an error into the command line's exit status.
"""

from __future__ import annotations


class TilerError(Exception):
    """Base of every error tiler raises on purpose."""


class GeometryError(TilerError, ValueError):
    """A window, tile grid or block partition that cannot exist (bad sizes, overlap >= tile, ...)."""


class ConfigError(TilerError, ValueError):
    """A configuration key holds a value that cannot work."""


class InputError(TilerError, ValueError):
    """An input image exists but its content cannot be processed (all nodata, rotated, wrong bands...)."""


class ReadError(TilerError, OSError):
    """An input file is missing, unreadable, corrupt or of an unsupported format."""


class OutputError(TilerError, OSError):
    """An output location cannot be written, or already holds another job's result."""


class ModelError(TilerError, ValueError):
    """A model spec, checkpoint or weight file that cannot be used."""


class ScoreError(TilerError, ValueError):
    """Prediction and truth cannot be scored together (shape, georeferencing, nothing left to score)."""


class EngineError(TilerError, RuntimeError):
    """A job failed while executing (a block that kept failing, a lost cluster, a concurrent job)."""


EXIT_OK = 0
"""The command did what was asked."""
EXIT_FAILED = 1
"""The job failed (a block kept failing, the cluster was lost, an output could not be written)."""
EXIT_USAGE = 2
"""Bad usage or bad input: fix the command line, the config or an input file and run again."""

USAGE_ERRORS: tuple[type[TilerError], ...] = (
    ConfigError, InputError, ReadError, ModelError, ScoreError, GeometryError,
)  # fmt: skip
"""Errors that mean the request cannot work as given (exit 2); any other TilerError means the job failed (exit 1)."""


def exit_code(exc: BaseException) -> int:
    """The exit status of a command that raised ``exc``: 2 bad usage or input, 1 the job failed.

    >>> exit_code(ConfigError("tiling.tile: ...")), exit_code(EngineError("block 3 kept failing"))
    (2, 1)
    """
    return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_FAILED
