"""Executors run single blocks of any plan: in this process, or on a pool of Ray actors (``tiler.engine.ray``).

An executor knows nothing of jobs: :func:`tiler.engine.stream.run_stream` decides which block goes
next and hands it over; the executor runs it somewhere and reports its record, or why it failed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Protocol

from tiler.engine.finishing import Finisher, ProcessFinisher
from tiler.engine.plan import BlockRecord, ModelFacts, ModelRef, Plan, block_key
from tiler.engine.stages import MAX_DEFAULT_READERS, Stages
from tiler.errors import EngineError, InputError, TilerError
from tiler.geometry import Shape

__all__ = ["MAX_DEFAULT_READERS", "Done", "Executor", "LocalExecutor", "Stages", "block_failure"]

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

    def finisher(self, workers: int, preload: Sequence[str] = ()) -> Finisher:
        """Where this executor's run finishes its inputs (never the driver).

        ``workers``: inputs at once; ``preload``: the modules its steps need, imported once ahead of them.
        """
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
    """The in-process executor: one model worker in this process, fed by a few threads (its pipeline's depth).

    Each thread runs :meth:`tiler.engine.worker.ModelWorker.run` on one block, so reading the next blocks,
    inference and writing the last ones overlap as they do in a Ray actor (see :class:`Stages`).

    Args:
        threads: torch intra-op threads for a CPU runner (None: the runner's default).
        readers: Reader threads (None: one per CPU of this machine, at most :data:`MAX_DEFAULT_READERS`).
        writers: Writer threads (None: one).
        depth: Blocks in flight at once (None: ``stages.depth``; 1 runs one block at a time).
    """

    def __init__(
        self, *, threads: int | None = None, readers: int | None = None, writers: int | None = None,
        depth: int | None = None,
    ) -> None:
        self.threads = threads
        self.stages = Stages.sized(readers, writers, cpus=os.cpu_count() or 1)
        self.depth = max(1, depth) if depth is not None else self.stages.depth
        self._worker: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[Future[Any], tuple[Any, Plan, Shape]] = {}
        self._loading = threading.Lock()  # the planning thread may ask for facts while the driver starts

    @property
    def model(self) -> ModelRef | None:
        """The model loaded here, or None."""
        return None if self._worker is None else self._worker.model

    def slots(self) -> int:
        """Blocks that can be submitted now: the depth less the blocks in flight."""
        return max(0, self.depth - len(self._futures))

    def in_flight(self) -> int:
        """Blocks submitted and not yet returned by :meth:`wait`."""
        return len(self._futures)

    def start(self, model: ModelRef, *, hint: int | None = None) -> None:
        """Load ``model`` here unless it is already loaded."""
        from tiler.engine.worker import ModelWorker

        with self._loading:
            if self._worker is not None and self._worker.model == model:
                return
            if self._futures:
                raise EngineError("the in-process engine cannot change its model while blocks are in flight")
            self.close()
            self._worker = ModelWorker(model, threads=self.threads, stages=self.stages)
            self._pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="tiler-block")

    def facts(self, model: ModelRef) -> ModelFacts | None:
        """The facts of ``model`` as this process loaded it (loading it now if nothing is loaded)."""
        if self._worker is None:
            self.start(model)
        worker = self._worker
        return worker.facts if worker is not None and worker.model == model else None

    def submit(self, token: Any, plan: Plan, position: Shape) -> None:
        """Start a block on a free thread (it runs beside the blocks in flight)."""
        if self._pool is None or self._worker is None:
            raise EngineError("the in-process engine has no model: call start() before submit()")
        if self.slots() <= 0:
            raise EngineError("no free slot: wait for a block to finish before submitting another")
        self._futures[self._pool.submit(self._worker.run, plan, position)] = (token, plan, position)

    def wait(self, timeout: float | None = None) -> list[Done]:
        """Blocks that finished, at least one unless ``timeout`` (seconds) passed or nothing is in flight."""
        if not self._futures:
            return []
        finished, _ = wait_futures(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for future in [f for f in self._futures if f in finished]:  # in the order they were submitted
            token, plan, position = self._futures.pop(future)
            exc = future.exception()
            if exc is None:
                out.append(Done(token, plan, position, record=future.result()))
                continue
            cause = exc if isinstance(exc, TilerError) else f"{type(exc).__name__}: {exc}"
            error = block_failure(plan, position, cause)
            error.__cause__ = exc
            out.append(Done(token, plan, position, error=error))
        return out

    def finisher(self, workers: int, preload: Sequence[str] = ()) -> Finisher:
        """Worker processes forked from this one, ``workers`` at most (the model is not loaded in them)."""
        return ProcessFinisher(workers, preload)

    def close(self) -> None:
        """Drop the model and close the open inputs; blocks not started are dropped, running ones end first."""
        worker, pool = self._worker, self._pool
        if worker is not None:
            worker.stop()  # running blocks give up at their next stage
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if worker is not None:
            worker.close()
        self._worker = self._pool = None
        self._futures.clear()
