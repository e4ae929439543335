"""The block worker: one model, and the inputs and stores of the plans it has been handed.

No Ray here. The in-process executor holds one :class:`ModelWorker`; each Ray actor wraps one. A
model worker loads its model once and keeps a few inputs open (one :class:`BlockWorker` per plan),
so a block of any input that uses its model can be sent to it, in any order. Called from several
threads, it is a staged pipeline: reader threads read and assemble the next blocks, one thread at a
time infers, writer threads write and record the blocks already inferred (see :class:`ModelWorker`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tiler.engine.plan import BlockRecord, ModelFacts, ModelRef, Plan, block_key
from tiler.engine.stages import Stages
from tiler.engine.work import BlockStats, Predict, PreparedBlock, assemble_block, infer_block, prepare_block
from tiler.errors import EngineError, InputError
from tiler.geometry import Shape, Window

if TYPE_CHECKING:
    from tiler.metrics.confusion import LabelRangeError
    from tiler.stitch import BlockResult

OPEN_INPUTS = 4
"""Inputs (readers and output stores) a model worker keeps open at once."""


class ReaderCopies:
    """Copies of one input reader, each read by one thread at a time.

    A rasterio dataset (a GDAL handle) and a tifffile handle must not be read from two threads at once;
    OpenSlide, nibabel and zarr may be, but one rule for every format is simpler and costs only an open.
    A copy is ``copy.copy`` of the first reader: what was learnt of the file is kept, the open handle is
    dropped (:meth:`tiler.io.base.Reader.__getstate__`) and opened again on its first read. There are never
    more copies than threads that read at once.

    Args:
        reader: The opened input (a :class:`tiler.io.base.Reader`).
    """

    def __init__(self, reader: Any) -> None:
        self._all = [reader]
        self._idle = [reader]
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """A reader no other thread is using, for as long as the ``with`` block runs."""
        with self._lock:
            if self._idle:
                reader = self._idle.pop()
            else:
                reader = copy.copy(self._all[0])
                self._all.append(reader)
        try:
            yield reader
        finally:
            with self._lock:
                self._idle.append(reader)

    def __len__(self) -> int:
        return len(self._all)

    def close(self) -> None:
        """Close every copy's file handle."""
        with self._lock:
            for reader in self._all:
                close = getattr(reader, "close", None)
                if close is not None:
                    close()


class BlockWorker:
    """Processes blocks of one plan: read → skip → assemble → infer → blend → write chunks → record.

    :meth:`read` may run on several threads at once (each borrows its own reader copy), :meth:`infer` on
    one thread at a time (the model), :meth:`write` on several (a block owns whole chunks and its record).

    Args:
        plan: The job.
        predict: The model's predict function; None loads ``plan.model`` here.
        threads: torch intra-op threads for a CPU runner when the model is loaded here.
    """

    def __init__(self, plan: Plan, *, predict: Predict | None = None, threads: int | None = None) -> None:
        from tiler.io.labels import open_labels
        from tiler.io.store import OutputStore

        self.plan = plan
        self.readers = ReaderCopies(plan.input.open())
        self.predict = predict if predict is not None else plan.model(threads)
        self.store = OutputStore.open(plan.store_path)
        # the truth is opened as tiler.metrics.score_paths opens it (one band, its own nodata), so both count
        # alike; a label source reads through one handle per thread
        self.truth = open_labels(plan.truth.path) if plan.truth is not None else None
        self._range: np.ndarray | None = None

    def read(self, position: Shape) -> PreparedBlock:
        """Read the input region covering every tile of the block at ``position`` and cut the model's batches."""
        plan = self.plan
        with self.readers.borrow() as reader:
            if plan.grid_map is not None:
                from tiler.engine.resampled import prepare_resampled

                prepared = prepare_resampled(
                    plan.window(position), plan.grid, plan.grid_map, read=reader.read, normalize=self._normalize,
                    value_range=self._value_range(),
                )
            else:
                prepared = prepare_block(
                    plan.window(position), plan.grid, read=reader.read, read_masked=reader.read_masked,
                    skip_empty=plan.skip_empty,
                )
        return assemble_block(prepared, plan.grid, batch_size=plan.batch_size, predict=self.predict)

    def infer(self, prepared: PreparedBlock) -> tuple[BlockResult, BlockStats]:
        """Run the model over the block's batches and blend them (one caller at a time: the model's thread)."""
        plan, gmap = self.plan, self.plan.grid_map
        result, stats = infer_block(
            prepared, plan.grid, predict=self.predict, blender=plan.blender, num_classes=plan.num_classes,
            batch_size=plan.batch_size, nodata_label=plan.nodata_label,
            probabilities="float32" if gmap is not None else plan.probabilities,
            mask_labels=plan.mask_labels, background_label=plan.background_label,
        )
        if gmap is not None:
            from tiler.engine.resampled import finish_resampled

            t0 = time.perf_counter()
            result = finish_resampled(
                result, prepared.destination, gmap, num_classes=plan.num_classes, nodata_label=plan.nodata_label,
                background_label=plan.background_label if plan.background_label is not None else plan.nodata_label,
                probabilities=plan.probabilities,
            )
            stats.stitch_seconds += time.perf_counter() - t0
        return result, stats

    def _normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw pixels ``(C, *S)`` normalised as the model normalises its tiles: float32 ``(C, *S)``."""
        normalization = getattr(getattr(self.predict, "model", None), "normalization", None)
        if normalization is None:
            raise EngineError(f"{self.plan.input.path}: a resampled job needs a tile runner's model normalisation")
        out = np.empty((1, *raw.shape), dtype=np.float32)
        normalization.apply(raw[None], spatial_dims=raw.ndim - 1, out=out)
        return out[0]

    def _value_range(self) -> np.ndarray | None:
        """The grid map's raw value range normalised (``(2, C, K)`` float64), once per worker; None if none."""
        gmap = self.plan.grid_map
        if gmap is None or gmap.value_range is None:
            return None
        if self._range is None:  # the model's normalisation is per voxel and channel: it maps minima to minima
            raw = np.asarray(gmap.value_range, dtype=np.float64)  # (2, C, K)
            channels = raw.shape[1]
            flat = self._normalize(raw.transpose(1, 0, 2).reshape(channels, -1))  # (C, 2K)
            self._range = flat.reshape(channels, 2, -1).transpose(1, 0, 2).astype(np.float64)
        return self._range

    def write(
        self, position: Shape, result: BlockResult, stats: BlockStats, *, started_at: float, idle: float = 0.0,
        wait: float = 0.0,
    ) -> BlockRecord:
        """Write the block's chunks, score and count it, and record it; returns the small block record.

        Args:
            position: The block's position in the plan's partition.
            result: The finalised block from :meth:`infer`.
            stats: Its counts and stage seconds.
            started_at: Unix time its read began.
            idle: Seconds the inference stage sat idle before this block (see :class:`BlockRecord`).
            wait: Seconds the block, read, waited for the inference stage.
        """
        plan = self.plan
        t0 = time.perf_counter()
        self.store.write_block(result.window, result.labels, result.probabilities)
        write_seconds = time.perf_counter() - t0
        confusion = self._confusion(result.labels, result.window) if self.truth is not None else None
        record = BlockRecord(
            block=block_key(position),
            start=result.window.start,
            stop=result.window.stop,
            tiles_run=stats.tiles_run,
            tiles_skipped=stats.tiles_skipped,
            started_at=started_at,
            finished_at=time.time(),
            read_seconds=round(stats.read_seconds, 4),
            infer_seconds=round(stats.infer_seconds, 4),
            stitch_seconds=round(stats.stitch_seconds, 4),
            write_seconds=round(write_seconds, 4),
            assemble_seconds=round(stats.assemble_seconds, 4),
            idle_seconds=round(idle, 4),
            wait_seconds=round(wait, 4),
            pid=os.getpid(),
            class_counts=tuple(class_counts(result.labels, plan.num_classes)),
            confusion=tuple(tuple(int(v) for v in row) for row in confusion) if confusion is not None else None,
            scored_against=plan.scoring_key if confusion is not None else None,
        )
        self.store.record_block(record.block, record.to_json())
        return record

    def run(self, position: Shape) -> BlockRecord:
        """Process one block start to finish on this thread."""
        prepared = self.read(position)
        result, stats = self.infer(prepared)
        return self.write(position, result, stats, started_at=prepared.started_at)

    def close(self) -> None:
        """Close the input files this worker opened."""
        self.readers.close()
        close = getattr(self.truth, "close", None)
        if close is not None:
            close()

    def _confusion(self, labels: np.ndarray, block: Window) -> np.ndarray:
        from tiler.metrics.confusion import LabelRangeError, confusion_matrix

        assert self.truth is not None
        # the rule of tiler.metrics.score_paths on the finished files: every pixel is scored unless the truth
        # ignores it (ignore_index or its nodata); pixels where the input is nodata hold the stored label
        # (nodata: a missed pixel, or background_label) and count like any other
        try:
            return confusion_matrix(
                self.truth.read(block), labels, num_classes=self.plan.score_classes or self.plan.num_classes,
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
    """One loaded model serving blocks of many plans: a staged pipeline when :meth:`run` is called from threads.

    Each call of :meth:`run` takes its block through three stages, bounded so memory stays flat:

    * read: up to ``stages.readers`` calls at once decode their block's input region and cut it into the
      model's batches (normalised, pinned on CUDA), each with its own reader copy;
    * infer: one call at a time (``infer_lock``) runs the model and blends the block on the device;
    * write: up to ``stages.writers`` calls at once write the block's chunks, count and score it, and record
      it, while the next block infers. A block owns whole chunks, so two writers never share one.

    ``stages.depth`` concurrent calls keep every stage busy. The most recently used :data:`OPEN_INPUTS`
    plans keep their files open (a plan some call is using is never closed under it).

    Args:
        model: The model every plan handed to :meth:`run` must use.
        threads: torch intra-op threads for a CPU runner.
        stages: Reader and writer threads (default one each).
    """

    def __init__(self, model: ModelRef, *, threads: int | None = None, stages: Stages | None = None) -> None:
        self.model = model
        self.stages = stages or Stages()
        self.predict = model(threads)
        loaded = getattr(self.predict, "model", None)  # a TileRunner's LoadedModel
        self.facts: ModelFacts | None = ModelFacts.of(loaded) if loaded is not None else None
        self.infer_lock = threading.Lock()
        self._reading = threading.BoundedSemaphore(self.stages.readers)
        self._writing = threading.BoundedSemaphore(self.stages.writers)
        self._infer_ended: float | None = None  # perf_counter when the last inference ended (under infer_lock)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._workers: OrderedDict[str, BlockWorker] = OrderedDict()
        self._users: dict[BlockWorker, int] = {}  # block workers some call is using, and how many calls
        self._retired: list[BlockWorker] = []  # replaced while in use: closed when their last call ends

    def _acquire(self, plan: Plan) -> BlockWorker:
        """The block worker of ``plan`` for one call (opened on first use); give it back with :meth:`_release`."""
        if plan.model != self.model:
            raise ValueError(f"plan for {plan.store_path} uses another model than this worker's {self.model.weights}")
        with self._lock:
            worker = self._workers.get(plan.store_path)
            if worker is not None and worker.plan != plan:
                self._retired.append(self._workers.pop(plan.store_path))
                worker = None
            if worker is None:
                worker = BlockWorker(plan, predict=self.predict)
                self._workers[plan.store_path] = worker
            self._workers.move_to_end(plan.store_path)
            self._users[worker] = self._users.get(worker, 0) + 1
            self._trim()
            return worker

    def _release(self, worker: BlockWorker) -> None:
        with self._lock:
            self._users[worker] -= 1
            if not self._users[worker]:
                del self._users[worker]
            self._trim()

    def _trim(self) -> None:
        """Close retired workers and the least recently used ones past :data:`OPEN_INPUTS` that no call uses."""
        for worker in [w for w in self._retired if w not in self._users]:
            self._retired.remove(worker)
            worker.close()
        unused = [key for key, w in self._workers.items() if w not in self._users]
        for key in unused[: max(0, len(self._workers) - OPEN_INPUTS)]:
            self._workers.pop(key).close()

    def _check_running(self) -> None:
        if self._stopped.is_set():
            raise EngineError("the model worker was closed while the block was in flight; it was abandoned")

    def run(self, plan: Plan, position: Shape) -> BlockRecord:
        """Read, infer, write and record one block of ``plan``, each stage beside other calls' (see the class)."""
        worker = self._acquire(plan)
        try:
            with self._reading:
                self._check_running()
                prepared = worker.read(position)
            ready = time.perf_counter()
            with self.infer_lock:
                self._check_running()
                began = time.perf_counter()
                idle = 0.0 if self._infer_ended is None else max(0.0, began - self._infer_ended)
                try:
                    result, stats = worker.infer(prepared)
                finally:
                    self._infer_ended = time.perf_counter()
            started_at = prepared.started_at
            del prepared  # its batches are done with: only the result goes on to the writer
            with self._writing:
                self._check_running()
                return worker.write(position, result, stats, started_at=started_at, idle=idle, wait=began - ready)
        finally:
            self._release(worker)

    def stop(self) -> None:
        """Make calls still in flight give up at their next stage (their blocks fail as abandoned)."""
        self._stopped.set()

    def close(self) -> None:
        """Stop, and close every open input (call when no :meth:`run` is in flight)."""
        self.stop()
        with self._lock:
            while self._workers:
                self._workers.popitem()[1].close()
            while self._retired:
                self._retired.pop().close()
