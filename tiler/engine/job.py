"""Running a plan as a job: output store, job lock, resume from block records, and the complete flag.

The engine that executes the blocks (in-process or Ray) is chosen by the caller; everything about
what "done" means lives here, once.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiler.engine.plan import Plan, block_key
from tiler.engine.worker import BlockWorker
from tiler.errors import EngineError, TilerError
from tiler.geometry import Shape

OnRecord = Callable[[dict[str, Any]], None]
RunBlocks = Callable[[Plan, Sequence[Shape], OnRecord], None]


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
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

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


def run_blocks_local(plan: Plan, positions: Sequence[Shape], on_record: OnRecord) -> None:
    """The in-process engine: one worker in this process runs the blocks in order."""
    if not positions:
        return
    worker = BlockWorker(plan)
    for position in positions:
        try:
            record = worker.run(position)
        except TilerError as exc:
            raise EngineError(
                f"block {block_key(position)} (window {plan.window(position)}) failed: {exc}"
            ) from exc
        on_record(record)


def _sum_confusion(records: Mapping[str, Mapping[str, Any]]) -> np.ndarray | None:
    matrices = [np.asarray(r["confusion"], dtype=np.int64) for r in records.values() if r.get("confusion") is not None]
    return np.sum(matrices, axis=0) if matrices else None


def run_job(
    plan: Plan,
    *,
    run_blocks: RunBlocks = run_blocks_local,
    chunks: Sequence[int],
    config_hash: str,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    on_record: OnRecord | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> JobResult:
    """Run every block of ``plan`` not yet recorded in its store, then mark the store complete.

    Args:
        plan: The job.
        run_blocks: The engine: runs the given blocks and reports each record.
        chunks: Output chunk shape; blocks must own whole chunks.
        config_hash: Hash of the configuration; an existing store with another hash is refused.
        attrs: Store attributes (georeferencing, class names and colours, config).
        overwrite: Replace an existing store.
        on_record: Called with each block record as it arrives (progress).
        on_start: Called with (blocks to run, blocks in the plan) before running.

    Returns:
        The job result. The store's ``complete`` flag is set only when every block is recorded.
    """
    from tiler.io.store import OutputStore

    plan.partition.check_aligned(chunks)
    t0 = time.perf_counter()
    store = OutputStore.create(
        plan.store_path, shape=plan.grid.shape, num_classes=plan.num_classes, chunks=chunks,
        nodata_label=plan.nodata_label, probabilities=plan.probabilities, attrs=attrs,
        config_hash=config_hash, overwrite=overwrite,
    )
    store.acquire_lock(f"tiler job pid {os.getpid()} on {socket.gethostname()}")
    try:
        done = store.block_records()
        positions = plan.positions()
        pending = [p for p in positions if block_key(p) not in done]
        if on_start is not None:
            on_start(len(pending), len(positions))
        run_blocks(plan, pending, on_record or (lambda record: None))
        records = store.block_records()
        missing = [block_key(p) for p in positions if block_key(p) not in records]
        if missing:
            raise EngineError(
                f"{len(missing)} block(s) of {plan.store_path} have no record after the run (first: {missing[0]}); "
                f"the output is not marked complete. Run the job again to finish them."
            )
        result = JobResult(
            store_path=plan.store_path,
            blocks_total=len(positions),
            blocks_run=len(pending),
            tiles_run=sum(int(r["tiles_run"]) for r in records.values()),
            tiles_skipped=sum(int(r["tiles_skipped"]) for r in records.values()),
            seconds=time.perf_counter() - t0,
            confusion=_sum_confusion(records),
            records=records,
        )
        if result.tiles_run == 0:
            raise EngineError(
                f"every tile of {plan.input.path} was skipped: its valid-data mask is empty, so there is nothing "
                f"to segment. Check the input's nodata value or mask setting (input.mask=none disables skipping)."
            )
        store.mark_complete(result.summary())
        return result
    finally:
        store.release_lock()
