"""Executors run single blocks of any plan: in this process, or on a pool of Ray actors (``tiler.engine.ray``).

An executor knows nothing of jobs: :func:`tiler.engine.stream.run_stream` decides which block goes
next and hands it over; the executor runs it somewhere and reports its record, or why it failed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from tiler.engine.plan import BlockRecord, ModelFacts, ModelRef, Plan, block_key
from tiler.errors import EngineError, InputError, TilerError
from tiler.geometry import Shape


@dataclass(frozen=True)
class Done:
    """A block that finished: its record, or the error that ended it.

    Attributes:
        token: What the caller passed to :meth:`Executor.submit` (it identifies the job).
        plan: The block's plan.
        position: The block's position in the plan's partition.
        record: The block record (see :class:`tiler.engine.worker.BlockWorker`), or None on failure.
        error: The error naming the block and the cause (see :func:`block_failure`), or None.
    """

    token: Any
    plan: Plan
    position: Shape
    record: BlockRecord | None = None
    error: TilerError | None = None


class Executor(Protocol):
    """Where blocks run. ``submit`` never blocks; ``wait`` returns finished blocks."""

    @property
    def model(self) -> ModelRef | None:
        """The model the workers hold (None before :meth:`start`)."""
        ...

    def slots(self) -> int:
        """How many more blocks can be submitted now without queueing behind busy workers."""
        ...

    def in_flight(self) -> int:
        """Blocks submitted and not yet returned by :meth:`wait`."""
        ...

    def start(self, model: ModelRef, *, hint: int | None = None) -> None:
        """Load ``model`` in the workers (a no-op when they hold it); ``hint``: blocks known to be waiting."""
        ...

    def facts(self, model: ModelRef) -> ModelFacts | None:
        """What planning needs of ``model``, from the workers that load it (starting them for it if none run).

        None when the workers hold another model: the caller loads it itself. Safe to call from a thread
        other than the one driving the executor. Raises the error that stopped the model from loading.
        """
        ...

    def submit(self, token: Any, plan: Plan, position: Shape) -> None:
        """Queue one block of ``plan`` (whose model was passed to :meth:`start`)."""
        ...

    def wait(self, timeout: float | None = None) -> list[Done]:
        """Blocks that finished, at least one unless ``timeout`` (seconds) passed or nothing is in flight."""
        ...

    def close(self) -> None:
        """Stop every worker; blocks still in flight are abandoned (their jobs are not complete)."""
        ...


def block_failure(plan: Plan, position: Shape, cause: BaseException | str) -> TilerError:
    """The one-line error of a failed block: which block of which input and store, and the cause.

    An :class:`~tiler.errors.InputError` cause (bad data the user can fix, such as truth labels out of
    range) stays an InputError; any other failure is an :class:`~tiler.errors.EngineError`.
    """
    where = f"block {block_key(position)} (window {plan.window(position)}) of {plan.input.path} → {plan.store_path}"
    kind = InputError if isinstance(cause, InputError) else EngineError
    return kind(f"{where} failed: {cause}")


class LocalExecutor:
    """The in-process executor: one model worker in this process runs each block when asked for results.

    Args:
        threads: torch intra-op threads for a CPU runner (None: the runner's default).
    """

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = threads
        self._worker: Any = None
        self._queue: deque[tuple[Any, Plan, Shape]] = deque()
        self._loading = threading.Lock()  # the planning thread may ask for facts while the driver starts

    @property
    def model(self) -> ModelRef | None:
        """The model loaded here, or None."""
        return None if self._worker is None else self._worker.model

    def slots(self) -> int:
        """One block at a time: a block can be queued when none is."""
        return 0 if self._queue else 1

    def in_flight(self) -> int:
        """Blocks queued and not yet run."""
        return len(self._queue)

    def start(self, model: ModelRef, *, hint: int | None = None) -> None:
        """Load ``model`` here unless it is already loaded."""
        from tiler.engine.worker import ModelWorker

        with self._loading:
            if self._worker is not None and self._worker.model == model:
                return
            self.close()
            self._worker = ModelWorker(model, threads=self.threads)

    def facts(self, model: ModelRef) -> ModelFacts | None:
        """The facts of ``model`` as this process loaded it (loading it now if nothing is loaded)."""
        if self._worker is None:
            self.start(model)
        worker = self._worker
        return worker.facts if worker is not None and worker.model == model else None

    def submit(self, token: Any, plan: Plan, position: Shape) -> None:
        """Queue a block; it runs in :meth:`wait`."""
        self._queue.append((token, plan, position))

    def wait(self, timeout: float | None = None) -> list[Done]:
        """Run the queued block now and return it."""
        if not self._queue:
            return []
        token, plan, position = self._queue.popleft()
        try:
            record = self._worker.run(plan, position)
        except Exception as exc:  # noqa: BLE001 - a block's failure fails its job, not the run
            cause = exc if isinstance(exc, TilerError) else f"{type(exc).__name__}: {exc}"
            error = block_failure(plan, position, cause)
            error.__cause__ = exc
            return [Done(token, plan, position, error=error)]
        return [Done(token, plan, position, record=record)]

    def close(self) -> None:
        """Drop the model and close the open inputs."""
        if self._worker is not None:
            self._worker.close()
        self._worker = None
        self._queue.clear()
