"""The block worker: opens input, model and store once, then processes blocks one call at a time.

No Ray here. The in-process engine calls it directly; each Ray actor wraps one.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from tiler.engine.plan import Plan, block_key
from tiler.engine.work import PreparedBlock, infer_block, prepare_block
from tiler.geometry import Shape


class BlockWorker:
    """Processes blocks of one plan: read → skip → infer → blend → write chunks → record.

    Args:
        plan: The job.
        threads: torch intra-op threads for a CPU runner (None: the runner's default).
    """

    def __init__(self, plan: Plan, *, threads: int | None = None) -> None:
        from tiler.io.store import OutputStore

        self.plan = plan
        self.reader = plan.input.open()
        self.predict = plan.model(threads)
        self.store = OutputStore.open(plan.store_path)
        self.truth = plan.truth.open() if plan.truth is not None else None

    def prepare(self, position: Shape) -> PreparedBlock:
        """Read the input region covering every tile of the block at ``position``."""
        return prepare_block(
            self.plan.window(position), self.plan.grid, read=self.reader.read,
            read_masked=self.reader.read_masked, skip_empty=self.plan.skip_empty,
        )

    def finish(self, position: Shape, prepared: PreparedBlock) -> dict[str, Any]:
        """Infer, blend, write the block's chunks and record it; returns the small block record."""
        plan = self.plan
        result, stats = infer_block(
            prepared, plan.grid, predict=self.predict, blender=plan.blender, num_classes=plan.num_classes,
            batch_size=plan.batch_size, nodata_label=plan.nodata_label, probabilities=plan.probabilities,
            mask_labels=plan.mask_labels, background_label=plan.background_label,
        )
        t0 = time.perf_counter()
        self.store.write_block(result.window, result.labels, result.probabilities)
        write_seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "block": block_key(position),
            "started_at": prepared.started_at,
            "finished_at": time.time(),
            "start": list(result.window.start),
            "stop": list(result.window.stop),
            "tiles_run": stats.tiles_run,
            "tiles_skipped": stats.tiles_skipped,
            "read_seconds": round(stats.read_seconds, 4),
            "infer_seconds": round(stats.infer_seconds, 4),
            "stitch_seconds": round(stats.stitch_seconds, 4),
            "write_seconds": round(write_seconds, 4),
            "pid": os.getpid(),
        }
        if self.truth is not None:
            record["confusion"] = self._confusion(result.labels, prepared).tolist()
        self.store.record_block(record["block"], record)
        return record

    def run(self, position: Shape) -> dict[str, Any]:
        """Process one block start to finish."""
        return self.finish(position, self.prepare(position))

    def _confusion(self, labels: np.ndarray, prepared: PreparedBlock) -> np.ndarray:
        from tiler.metrics.confusion import confusion_matrix

        assert self.truth is not None
        truth = self.truth.read(prepared.block)[0]
        return confusion_matrix(
            truth, labels, num_classes=self.plan.num_classes, ignore_index=self.plan.ignore_index,
            valid=prepared.valid, pred_nodata=self.plan.nodata_label,
        )
