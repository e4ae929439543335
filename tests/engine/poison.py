"""A poison input for the Ray engine's tests: opening it inside a model actor kills that actor's process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tiler.engine.plan import ReaderRef


@dataclass(frozen=True)
class PoisonRef(ReaderRef):
    """The input at ``path``, except that an actor opening it dies at once (as on a decoder crash)."""

    def open(self) -> Any:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            os._exit(1)
        return super().open()
