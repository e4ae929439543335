"""The stream: blocks of many jobs through one executor, each job finished off the inference path.

One run has one executor (one pool of model workers). Jobs are opened a few at a time ahead of the
pool (``lookahead``), their blocks are handed to the executor in order as soon as a slot is free —
from the next job when the current one has none left — and a job whose last block is recorded is
finished (exports, scores, reports, the complete flag) on a separate thread while the pool goes on
with the following jobs. One job is the one-job case of the same loop.

A job that fails (on opening, in a block or while finishing) ends alone: its remaining blocks are
dropped, its blocks in flight are waited for, it is closed, and the stream goes on with the others.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from tiler.engine.executor import Executor
from tiler.engine.plan import BlockRecord, Plan
from tiler.geometry import Shape

WAIT_S = 0.05
"""How often the driver looks at finished jobs while blocks are in flight (seconds)."""


@dataclass
class Work:
    """What an opened job asks of the pool.

    Attributes:
        plan: The job's plan.
        pending: Block positions still to run, in the order to run them.
        total: Blocks in the plan (the rest were done by an earlier run).
    """

    plan: Plan
    pending: list[Shape]
    total: int


class Job(Protocol):
    """One input's job as the stream sees it."""

    name: str

    def open(self) -> Work:
        """Plan, create or resume the output, lock it; return the blocks to run (on the driver)."""
        ...

    def finish(self) -> Any:
        """Everything after the last block: check records, exports, scores, complete flag.

        Called on a driver thread, which hands the work to worker processes and waits for it.
        """
        ...

    def close(self) -> None:
        """Release what :meth:`open` took (the lock); called once, after success or failure, even if open failed."""
        ...


@dataclass
class Outcome:
    """How one job ended.

    Attributes:
        job: The job.
        result: What :meth:`Job.finish` returned, or None when the job failed.
        error: Why it failed, or None.
        blocks_run: Blocks this run computed for it.
        blocks_total: Blocks in its plan (0 when it failed before planning).
        seconds: From opening to the end of finishing (or failure).
    """

    job: Job
    result: Any = None
    error: BaseException | None = None
    blocks_run: int = 0
    blocks_total: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the job finished."""
        return self.error is None


@dataclass
class _Open:
    job: Job
    work: Work
    queue: deque[Shape]
    t0: float
    outstanding: int = 0
    done: int = 0
    error: BaseException | None = None

    def outcome(self, result: Any = None, error: BaseException | None = None) -> Outcome:
        return Outcome(self.job, result, error, self.done, self.work.total, time.perf_counter() - self.t0)


def _close(job: Job) -> None:
    try:
        job.close()
    except Exception:  # noqa: BLE001 - closing must never hide the job's own outcome
        pass


def run_stream(
    jobs: Iterable[Job],
    executor: Executor,
    *,
    lookahead: int = 2,
    finishers: int = 2,
    on_open: Callable[[Job, Work], None] | None = None,
    on_record: Callable[[Job, BlockRecord], None] | None = None,
) -> Iterator[Outcome]:
    """Run every job's blocks through ``executor`` and finish each job beside it; yield outcomes as jobs end.

    Args:
        jobs: The jobs, consumed lazily (a huge manifest is never planned up front).
        executor: Where blocks run; it is not closed here.
        lookahead: Jobs opened ahead of the pool whose blocks are not all handed out yet.
        finishers: Jobs finished at once (a driver thread each, waiting on its steps); no new job is opened while
            ``2 × finishers`` wait to be finished.
        on_open: Called on the driver with each job and its work once opened.
        on_record: Called on the driver with each block record as it arrives.

    Yields:
        One :class:`Outcome` per job, in the order they end.
    """
    inputs = iter(jobs)
    exhausted = False
    active: list[_Open] = []  # opened, with blocks queued or in flight
    finishing: dict[Future[Any], _Open] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, finishers), thread_name_prefix="tiler-finish")
    try:
        while True:
            # 1. open jobs ahead of the pool (bounded), unless finishing has fallen behind
            while (
                not exhausted
                and sum(1 for s in active if s.queue) < max(1, lookahead)
                and len(finishing) < 2 * max(1, finishers)
            ):
                job = next(inputs, None)
                if job is None:
                    exhausted = True
                    break
                t0 = time.perf_counter()
                try:
                    work = job.open()
                except Exception as exc:  # noqa: BLE001 - a job that cannot open fails alone
                    _close(job)
                    yield Outcome(job, error=exc, seconds=time.perf_counter() - t0)
                    continue
                state = _Open(job, work, deque(work.pending), t0)
                if on_open is not None:
                    on_open(job, work)
                if state.queue:
                    active.append(state)
                else:
                    finishing[pool.submit(job.finish)] = state

            # 2. fill every free slot, from the earliest job with blocks left
            while True:
                waiting = next((s for s in active if s.queue and s.error is None), None)
                if waiting is None:
                    break
                state = waiting
                model = state.work.plan.model
                if executor.model != model:
                    if executor.in_flight():
                        break  # a job of another model: let the pool drain, then restart it
                    executor.start(model, hint=sum(len(s.queue) for s in active) if exhausted else None)
                if executor.slots() <= 0:
                    break
                executor.submit(state, state.work.plan, state.queue.popleft())
                state.outstanding += 1

            if not active and not finishing and exhausted:
                return

            # 3. wait for blocks (or, with none in flight, for a finished job)
            if executor.in_flight():
                dones = executor.wait(WAIT_S if finishing else None)
            else:
                dones = []
                if finishing:
                    wait(list(finishing), return_when=FIRST_COMPLETED)
            for done in dones:
                state = done.token
                state.outstanding -= 1
                if done.error is not None:
                    if state.error is None:
                        state.error = done.error
                    state.queue.clear()
                else:
                    state.done += 1
                    if on_record is not None and done.record is not None:
                        on_record(state.job, done.record)
                if state.outstanding == 0 and not state.queue:
                    active.remove(state)
                    if state.error is not None:
                        _close(state.job)
                        yield state.outcome(error=state.error)
                    else:
                        finishing[pool.submit(state.job.finish)] = state

            # 4. jobs whose finishing ended
            for future in [f for f in finishing if f.done()]:
                state = finishing.pop(future)
                _close(state.job)
                error = future.exception()
                yield state.outcome(result=None if error else future.result(), error=error)
    finally:
        for state in active:
            _close(state.job)
        pool.shutdown(wait=True, cancel_futures=True)
        for state in finishing.values():
            _close(state.job)
