"""The block worker: one model, and the inputs and stores of the plans it has been handed.

No Ray here. The in-process executor holds one :class:`ModelWorker`; each Ray actor wraps one. A
model worker loads its model once and keeps a few inputs open (one :class:`BlockWorker` per plan),
so a block of any input that uses its model can be sent to it, in any order.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from tiler.engine.plan import BlockRecord, ModelFacts, ModelRef, Plan, block_key
from tiler.engine.work import Predict, PreparedBlock, infer_block, prepare_block
from tiler.errors import InputError
from tiler.geometry import Shape

if TYPE_CHECKING:
    from tiler.metrics.confusion import LabelRangeError

OPEN_INPUTS = 4
"""Inputs (readers and output stores) a model worker keeps open at once."""


class BlockWorker:
    """Processes blocks of one plan: read → skip → infer → blend → write chunks → record.

    Args:
        plan: The job.
        predict: The model's predict function; None loads ``plan.model`` here.
        threads: torch intra-op threads for a CPU runner when the model is loaded here.
    """

    def __init__(self, plan: Plan, *, predict: Predict | None = None, threads: int | None = None) -> None:
        from tiler.io.labels import open_labels
        from tiler.io.store import OutputStore

        self.plan = plan
        self.reader = plan.input.open()
        self.predict = predict if predict is not None else plan.model(threads)
        self.store = OutputStore.open(plan.store_path)
        # the truth is opened as tiler.metrics.score_paths opens it (one band, its own nodata), so both count alike
        self.truth = open_labels(plan.truth.path) if plan.truth is not None else None

    def prepare(self, position: Shape) -> PreparedBlock:
        """Read the input region covering every tile of the block at ``position``."""
        return prepare_block(
            self.plan.window(position), self.plan.grid, read=self.reader.read,
            read_masked=self.reader.read_masked, skip_empty=self.plan.skip_empty,
        )

    def finish(self, position: Shape, prepared: PreparedBlock) -> BlockRecord:
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
        confusion = self._confusion(result.labels, prepared) if self.truth is not None else None
        record = BlockRecord(
            block=block_key(position),
            start=result.window.start,
            stop=result.window.stop,
            tiles_run=stats.tiles_run,
            tiles_skipped=stats.tiles_skipped,
            started_at=prepared.started_at,
            finished_at=time.time(),
            read_seconds=round(stats.read_seconds, 4),
            infer_seconds=round(stats.infer_seconds, 4),
            stitch_seconds=round(stats.stitch_seconds, 4),
            write_seconds=round(write_seconds, 4),
            pid=os.getpid(),
            class_counts=tuple(class_counts(result.labels, plan.num_classes)),
            confusion=tuple(tuple(int(v) for v in row) for row in confusion) if confusion is not None else None,
            scored_against=plan.scoring_key if confusion is not None else None,
        )
        self.store.record_block(record.block, record.to_json())
        return record

    def run(self, position: Shape) -> BlockRecord:
        """Process one block start to finish."""
        return self.finish(position, self.prepare(position))

    def close(self) -> None:
        """Close the input files this worker opened."""
        for reader in (self.reader, self.truth):
            close = getattr(reader, "close", None)
            if close is not None:
                close()

    def _confusion(self, labels: np.ndarray, prepared: PreparedBlock) -> np.ndarray:
        from tiler.metrics.confusion import LabelRangeError, confusion_matrix

        assert self.truth is not None
        # the rule of tiler.metrics.score_paths on the finished files: every pixel is scored unless the truth
        # ignores it (ignore_index or its nodata); pixels where the input is nodata hold the stored label
        # (nodata: a missed pixel, or background_label) and count like any other
        try:
            return confusion_matrix(
                self.truth.read(prepared.block), labels, num_classes=self.plan.score_classes or self.plan.num_classes,
                ignore_index=self.plan.ignore_index, truth_nodata=self.truth.nodata, pred_nodata=self.plan.nodata_label,
            )
        except LabelRangeError as exc:
            if exc.role != "truth":
                raise
            raise truth_out_of_range(self.truth.path, exc) from exc


def truth_out_of_range(path: str, exc: LabelRangeError) -> InputError:
    """The job's error for truth labels outside ``[0, K)``: the truth file, the values and the scoring keys to set."""
    if exc.top >= exc.num_classes:
        fix = (
            f"set scoring.num_classes to {exc.top + 1} if the truth has that many classes, or set "
            "scoring.ignore_index (or the truth file's nodata) to the value that means 'not labelled'"
        )
    else:
        fix = "truth labels are whole numbers in [0, num_classes): set scoring.ignore_index to the void label"
    return InputError(
        f"scoring.truth {path} holds label value(s) {exc.values} outside [0, num_classes={exc.num_classes}) "
        f"where it is scored; fix: {fix}"
    )


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Pixels per class 0..K-1 of a block's labels (nodata and any label >= K are not counted).

    >>> class_counts(np.array([[0, 1], [1, 255]], np.uint8), 3)
    [1, 2, 0]
    """
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    return [int(v) for v in counts[:num_classes]]


class ModelWorker:
    """One loaded model serving blocks of many plans; reads overlap inference when called from two threads.

    Reading the next block (under ``read_lock``) runs while the model infers the current one (under
    ``infer_lock``). The most recently used :data:`OPEN_INPUTS` plans keep their files open.

    Args:
        model: The model every plan handed to :meth:`run` must use.
        threads: torch intra-op threads for a CPU runner.
    """

    def __init__(self, model: ModelRef, *, threads: int | None = None) -> None:
        self.model = model
        self.predict = model(threads)
        loaded = getattr(self.predict, "model", None)  # a TileRunner's LoadedModel
        self.facts: ModelFacts | None = ModelFacts.of(loaded) if loaded is not None else None
        self.read_lock = threading.Lock()
        self.infer_lock = threading.Lock()
        self._lock = threading.Lock()
        self._workers: OrderedDict[str, BlockWorker] = OrderedDict()

    def worker(self, plan: Plan) -> BlockWorker:
        """The block worker of ``plan`` (opened on first use, least recently used one closed past the cap)."""
        if plan.model != self.model:
            raise ValueError(f"plan for {plan.store_path} uses another model than this worker's {self.model.weights}")
        with self._lock:
            worker = self._workers.get(plan.store_path)
            if worker is not None and worker.plan != plan:
                self._workers.pop(plan.store_path).close()
                worker = None
            if worker is None:
                worker = BlockWorker(plan, predict=self.predict)
                self._workers[plan.store_path] = worker
                while len(self._workers) > OPEN_INPUTS:
                    self._workers.popitem(last=False)[1].close()
            self._workers.move_to_end(plan.store_path)
            return worker

    def run(self, plan: Plan, position: Shape) -> BlockRecord:
        """Read, infer, write and record one block of ``plan``."""
        worker = self.worker(plan)
        with self.read_lock:
            prepared = worker.prepare(position)
        with self.infer_lock:
            return worker.finish(position, prepared)

    def close(self) -> None:
        """Close every open input."""
        with self._lock:
            while self._workers:
                self._workers.popitem()[1].close()
