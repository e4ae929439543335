"""A plan's job on its output store: lock, create or resume, check every block's record, mark complete.

The executor that runs the blocks and the stream that feeds it are chosen by the caller; everything
about what "done" means lives here, once. A store is resumed under the same pixels hash; a complete
store whose last finishing had another config hash (other exports or scores) has its ``complete`` flag
cleared on open, before anything is touched, and is finished again from its recorded blocks.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiler.engine.executor import Executor, LocalExecutor
from tiler.engine.plan import BlockRecord, Plan, block_key
from tiler.engine.stream import Work, run_stream
from tiler.errors import EngineError

OnRecord = Callable[[BlockRecord], None]


@dataclass
class JobResult:
    """What a finished job did.

    Attributes:
        store_path: The output store.
        blocks_total: Blocks in the plan.
        blocks_run: Blocks computed by this run (the rest were resumed from records).
        tiles_run: Tiles run over the whole job (all runs).
        tiles_skipped: Tiles skipped as empty over the whole job.
        seconds: Wall time of this run.
        confusion: Confusion matrix summed over blocks when truth was configured, else None.
        records: Every block record, by key.
    """

    store_path: str
    blocks_total: int
    blocks_run: int
    tiles_run: int
    tiles_skipped: int
    seconds: float
    confusion: np.ndarray | None = None
    records: dict[str, BlockRecord] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (stored in the output store when the job completes)."""
        return {
            "blocks_total": self.blocks_total,
            "blocks_run": self.blocks_run,
            "blocks_resumed": self.blocks_total - self.blocks_run,
            "tiles_run": self.tiles_run,
            "tiles_skipped": self.tiles_skipped,
            "seconds": round(self.seconds, 3),
            "tiles_per_second": round(self.tiles_run / self.seconds, 3) if self.seconds > 0 else None,
        }


def _sum_confusion(records: Mapping[str, BlockRecord], scoring_key: str | None) -> np.ndarray | None:
    """The blocks' confusion matrices summed; None unless every block has one counted under ``scoring_key``.

    Blocks are reused across jobs with the same pixels but other scoring (a new truth, ignore index or
    K), so a matrix counts only when its block was scored as this job scores; a block recorded before
    blocks named their scoring counts as unknown.
    """
    if scoring_key is None:
        return None
    matrices = [
        np.asarray(r.confusion, dtype=np.int64)
        for r in records.values()
        if r.confusion is not None and r.scored_against == scoring_key
    ]
    if not matrices or len(matrices) != len(records) or len({m.shape for m in matrices}) != 1:
        return None
    return np.sum(matrices, axis=0)


def _record_fields_problem(record: Mapping[str, Any]) -> str | None:
    """Why a block record cannot be read as a :class:`BlockRecord` (a field missing or of another type), or None."""
    try:
        BlockRecord.from_json(record)
    except (KeyError, TypeError, ValueError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        return f"its fields cannot be read ({what})"
    return None


class StoreJob:
    """The store side of one plan: :meth:`open` before any block runs, :meth:`result` after the last one.

    Args:
        plan: The job.
        chunks: Output chunk shape; blocks must own whole chunks.
        pixels_hash: Identity of what the store holds (:func:`tiler.config.pixels_hash`); an existing store
            holding other pixels is refused.
        job_hash: The job's config hash (:func:`tiler.config.config_hash`), recorded with ``complete``;
            None: ``pixels_hash`` (a job that writes nothing beside the store).
        attrs: Store attributes (georeferencing, class names and colours, config).
        overwrite: Replace an existing tiler store holding another configuration's result.

    Attributes:
        refinishing: Whether :meth:`open` found the store complete under another config hash and cleared it.
    """

    def __init__(
        self, plan: Plan, *, chunks: Sequence[int], pixels_hash: str, job_hash: str | None = None,
        attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
    ) -> None:
        self.plan = plan
        self.chunks = tuple(chunks)
        self.pixels_hash = pixels_hash
        self.job_hash = job_hash or pixels_hash
        self.attrs = attrs
        self.overwrite = overwrite
        self.store: Any = None
        self.locked = False
        self.refinishing = False
        self.blocks_run = 0
        self.t0 = 0.0

    def open(self) -> Work:
        """Create or resume the store under the job lock; return the blocks without a record it can trust.

        A store complete under another config hash (the same pixels, another finishing) is no longer
        complete from here on: the flag is cleared before any block, export or report is touched. Block
        records are checked as ``tiler verify`` checks them (:meth:`~tiler.io.store.OutputStore.audit_blocks`
        under this plan's partition, and readable as :class:`BlockRecord`); those that fail are forgotten
        (with the exports drawn from them and the ``complete`` flag) and their blocks run again.
        """
        from tiler.io.store import OutputStore, acquire_store_lock

        plan = self.plan
        plan.partition.check_aligned(self.chunks)
        self.t0 = time.perf_counter()
        # the lock comes first: nobody else can create, replace or resume the store between check and create
        acquire_store_lock(plan.store_path, f"tiler job pid {os.getpid()} on {socket.gethostname()}")
        self.locked = True
        self.store = OutputStore.create(
            plan.store_path, shape=plan.partition.shape, num_classes=plan.num_classes, chunks=self.chunks,
            nodata_label=plan.nodata_label, probabilities=plan.probabilities, attrs=self.attrs,
            pixels_hash=self.pixels_hash, job_hash=self.job_hash, overwrite=self.overwrite,
            block=plan.partition.block,
        )
        if self.store.complete_flag and self.store.job_hash != self.job_hash:
            self.refinishing = self.store.job_hash is not None  # None: a flag over missing blocks, not a finishing
            self.store.clear_complete()
        # what `tiler verify` checks of blocks, checked here too: a block whose record is unreadable, does not
        # match its place in this plan's partition, or vouches for chunk files that are gone or not the ones it
        # wrote (another block's valid chunk swapped in) is recomputed, never trusted
        untrusted = self.store.audit_blocks(block=plan.partition.block, check=_record_fields_problem)
        if untrusted:
            first = min(untrusted)
            warnings.warn(
                f"{plan.store_path}: {len(untrusted)} recorded block(s) cannot be trusted (first: {first}: "
                f"{untrusted[first]}); they are computed again",
                stacklevel=2,
            )
            self.store.invalidate_blocks(sorted(untrusted))
        done = self.store.block_records()
        positions = plan.positions()
        pending = [p for p in positions if block_key(p) not in done]
        if pending and self.store.complete_flag:  # a flag over blocks still to run (set by hand): not believed
            self.store.clear_complete()
        self.blocks_run = len(pending)
        return Work(plan, pending, len(positions))

    def result(self) -> JobResult:
        """Check that every block is recorded and something ran; return the job's figures.

        Raises:
            EngineError: A block has no record, or every tile was skipped (nothing to segment).
        """
        plan = self.plan
        records: dict[str, BlockRecord] = {}
        for key, rec in self.store.block_records().items():
            problem = _record_fields_problem(rec)
            if problem is not None:
                raise EngineError(
                    f"block record {key} of {plan.store_path} is unreadable after the run ({problem}); the output "
                    f"is not marked complete. Run the job again to recompute it."
                )
            records[key] = BlockRecord.from_json(rec)
        positions = plan.positions()
        missing = [block_key(p) for p in positions if block_key(p) not in records]
        if missing:
            raise EngineError(
                f"{len(missing)} block(s) of {plan.store_path} have no record after the run (first: {missing[0]}); "
                f"the output is not marked complete. Run the job again to finish them."
            )
        result = JobResult(
            store_path=plan.store_path,
            blocks_total=len(positions),
            blocks_run=self.blocks_run,
            tiles_run=sum(r.tiles_run for r in records.values()),
            tiles_skipped=sum(r.tiles_skipped for r in records.values()),
            seconds=time.perf_counter() - self.t0,
            confusion=_sum_confusion(records, plan.scoring_key),
            records=records,
        )
        if result.tiles_run == 0:
            raise EngineError(
                f"every tile of {plan.input.path} was skipped: its valid-data mask is empty, so there is nothing "
                f"to segment. Check the input's nodata value or mask setting (input.mask=none disables skipping)."
            )
        return result

    def complete(self, summary: Mapping[str, Any]) -> None:
        """Write the summary, the job hash and the ``complete`` flag: the last thing a job does.

        The store's ``config`` attribute becomes this job's (the config of its last finishing).
        """
        config = (self.attrs or {}).get("config")
        self.store.mark_complete(summary, job_hash=self.job_hash, attrs={"config": config} if config else None)

    def release(self) -> None:
        """Drop the job lock (if it was taken)."""
        from tiler.io.store import release_store_lock

        if self.locked:
            release_store_lock(self.plan.store_path)
            self.locked = False


class _PlanJob:
    """A bare plan as a stream job: finishing marks the store complete (no exports, no scores)."""

    def __init__(self, store_job: StoreJob) -> None:
        self.name = store_job.plan.store_path
        self.store_job = store_job

    def open(self) -> Work:
        return self.store_job.open()

    def finish(self) -> JobResult:
        result = self.store_job.result()
        self.store_job.complete(result.summary())
        return result

    def close(self) -> None:
        self.store_job.release()


def run_job(
    plan: Plan,
    *,
    executor: Executor | None = None,
    chunks: Sequence[int],
    pixels_hash: str,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    on_record: OnRecord | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> JobResult:
    """Run every block of ``plan`` not yet recorded in its store, then mark the store complete.

    The one-plan case of :func:`tiler.engine.stream.run_stream`, without exports (see
    :func:`tiler.segment.run_segment` for the whole job).

    Args:
        plan: The job.
        executor: Where the blocks run (default: in this process); closed at the end.
        chunks: Output chunk shape; blocks must own whole chunks.
        pixels_hash: Identity of what the store holds; an existing store holding other pixels is refused.
        attrs: Store attributes (georeferencing, class names and colours, config).
        overwrite: Replace an existing store.
        on_record: Called with each block record as it arrives (progress).
        on_start: Called with (blocks to run, blocks in the plan) before running.

    Returns:
        The job result. The store's ``complete`` flag is set only when every block is recorded.

    Raises:
        TilerError: The store cannot be opened, a block failed, or a block has no record.
    """
    job = _PlanJob(StoreJob(plan, chunks=chunks, pixels_hash=pixels_hash, attrs=attrs, overwrite=overwrite))
    executor = executor if executor is not None else LocalExecutor()
    try:
        outcomes = run_stream(
            [job], executor,
            on_open=(lambda _job, work: on_start(len(work.pending), work.total)) if on_start else None,
            on_record=(lambda _job, record: on_record(record)) if on_record else None,
        )
        (outcome,) = list(outcomes)
    finally:
        executor.close()
    if outcome.error is not None:
        raise outcome.error
    return outcome.result  # type: ignore[no-any-return]
