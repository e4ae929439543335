"""The project's one family of errors: every failure a user can cause raises a subclass of TilerError.

Each message names the file or key, the bad value, and the fix.
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
