"""The stages of a model worker's pipeline: reader threads, one inference thread, writer threads."""

from __future__ import annotations

from dataclasses import dataclass

from tiler.errors import EngineError

__all__ = ["MAX_DEFAULT_READERS", "Stages"]

MAX_DEFAULT_READERS = 4
"""Reader threads per model worker when ``engine.readers`` is not set, however many CPUs it has."""


@dataclass(frozen=True)
class Stages:
    """The threads of one model worker's pipeline: readers read and assemble, one infers, writers write.

    Attributes:
        readers: Blocks read and cut into batches at once (each with its own copy of the input reader).
        writers: Blocks written and recorded at once.

    >>> Stages.sized(None, None, cpus=1.0), Stages.sized(None, 2, cpus=16).depth
    (Stages(readers=1, writers=1), 7)
    """

    readers: int = 1
    writers: int = 1

    def __post_init__(self) -> None:
        for name in ("readers", "writers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EngineError(f"engine.{name}={value!r} must be a whole number >= 1 (or null for the default)")

    @classmethod
    def sized(cls, readers: int | None, writers: int | None, *, cpus: float) -> Stages:
        """Stages of ``readers`` and ``writers`` threads; None: a reader per CPU (at most 4), one writer."""
        if readers is None:
            readers = max(1, min(MAX_DEFAULT_READERS, int(cpus)))
        return cls(readers, 1 if writers is None else writers)

    @property
    def depth(self) -> int:
        """Blocks one worker holds at once to keep every stage busy: one per reader, one inferring, one per writer."""
        return self.readers + 1 + self.writers
