"""The segment job: input → tiled inference → output store → exports → score → report → complete.

This is the product's main job. :func:`run_many` streams the jobs of many inputs through one pool of
model workers (the archive pipeline uses it); :func:`run_segment` (``tiler run``,
``python -m pipelines.segment``) is its one-input case. What they are made of lives in :mod:`tiler.job`: the
references (:mod:`~tiler.job.refs`), the plan (:mod:`~tiler.job.plan`), the outputs (:mod:`~tiler.job.outputs`),
the finishing (:mod:`~tiler.job.finish`) and the progress bar (:mod:`~tiler.job.progress`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tiler.config.identity import config_hash, pixels_hash
from tiler.config.schema import JobConfig
from tiler.engine.executor import Executor
from tiler.engine.job import StoreJob
from tiler.engine.plan import block_key
from tiler.engine.stream import Outcome, Work, run_stream
from tiler.errors import EngineError
from tiler.job.finish import FINISH_MODULES, SegmentResult
from tiler.job.plan import plan_job
from tiler.job.progress import Progress
from tiler.job.refs import make_executor, model_ref
from tiler.redact import redact

if TYPE_CHECKING:
    from tiler.engine.finishing import Finisher
    from tiler.engine.plan import ModelFacts, ModelRef, Plan

__all__ = ["SegmentJob", "SegmentResult", "run_many", "run_segment"]


class SegmentJob:
    """One input's whole job as a stream job: plan and lock on :meth:`open`; exports, score, report on :meth:`finish`.

    ``complete`` is written last, after every block is recorded and every export, score and report is in place.
    The store is resumed under the same :func:`~tiler.config.identity.pixels_hash`; when it is complete under
    another :func:`~tiler.config.identity.config_hash` (only exports, polygon settings or scoring differ),
    :meth:`open` clears ``complete`` and finds no block to run, and :meth:`finish` finishes it again: the
    exports now asked for, the new scores, the reports, then ``complete`` with this job's hash.

    Args:
        cfg: The validated job configuration.
        overwrite: Replace an output store that holds another configuration's result.
    """

    def __init__(self, cfg: JobConfig, *, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.name = redact(cfg.input.path)
        self.overwrite = overwrite
        self.plan: Plan | None = None
        self.planned: dict[str, Any] = {}
        self.store_job: StoreJob | None = None
        self._opening: Any = None
        self.facts_from: Callable[[ModelRef], ModelFacts | None] | None = None  # set by run_many: the pool's
        self.finisher: Finisher | None = None  # set by run_many: where the finishing steps run
        self.ran: set[str] = set()  # keys of the blocks this run computes

    def open_early(self) -> None:
        """Start :meth:`open` on a thread now (the first input is planned while the worker pool starts)."""
        import threading
        from concurrent.futures import Future

        opening: Future[Work] = Future()

        def plan() -> None:
            try:
                opening.set_result(self._open())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever calls open()
                opening.set_exception(exc)

        self._opening = opening
        threading.Thread(target=plan, name="tiler-plan", daemon=True).start()

    def open(self) -> Work:
        """Build the plan, create or resume the store under its lock; the blocks still to run."""
        opening, self._opening = self._opening, None
        return opening.result() if opening is not None else self._open()

    def _open(self) -> Work:
        plan, attrs = plan_job(self.cfg, self.facts_from)
        self.plan = plan
        self.planned = dict(attrs["plan"])
        self.store_job = StoreJob(
            plan, chunks=self.cfg.output.chunks, pixels_hash=pixels_hash(self.cfg), job_hash=config_hash(self.cfg),
            attrs=attrs, overwrite=self.overwrite,
        )
        work = self.store_job.open()
        self.ran = {block_key(p) for p in work.pending}
        return work

    def describe(self, work: Work) -> str:
        """One line on what this input asks before its work starts: size, blocks, tiles, memory per worker."""
        p = self.planned
        todo = f", {len(work.pending)} to run" if len(work.pending) != work.total else ""
        return (f"{self.name}: {p['pixels'] / 1e6:.1f} Mpx, {p['blocks']} blocks{todo}, {p['tiles']} tiles, "
                f"about {p['memory_per_actor_mb']} MB per worker")

    def finish(self) -> SegmentResult:
        """Check the blocks, then finish on the finisher's workers: exports and score, reports, ``complete`` last."""
        from tiler.job.finish import FinishTask, finish_input

        if self.plan is None or self.store_job is None or self.finisher is None:
            raise EngineError(f"{self.name}: finish() before open() (or without a finisher)")
        job = self.store_job.result()
        task = FinishTask(self.cfg, self.plan, self.store_job.job_hash, (self.store_job.attrs or {}).get("config"))
        return finish_input(task, job, self.finisher, ran=self.ran)

    def close(self) -> None:
        """Release the store's lock."""
        if self.store_job is not None:
            self.store_job.release()


def run_many(
    jobs: Iterable[SegmentJob],
    *,
    engine: str = "ray",
    executor: Executor | None = None,
    progress: Progress | None = None,
    lookahead: int = 2,
    finishers: int = 2,
) -> Iterator[Outcome]:
    """Stream many inputs' jobs through one pool of model workers; yield each job's outcome as it ends.

    The pool is started once, from the first job's engine and model settings (every job must use the
    same model: a job with another model waits for the pool to drain, then the pool restarts). Inputs
    are opened ``lookahead`` at a time ahead of the pool; each one whose blocks are done is finished by the
    pool's finisher (:meth:`~tiler.engine.executor.Executor.finisher`: Ray tasks on CPU workers, or worker
    processes for the in-process engine), at most ``finishers`` inputs at once.

    Args:
        jobs: The jobs, consumed lazily.
        engine: ``"ray"`` (joins ``RAY_ADDRESS`` or starts an embedded local Ray) or ``"local"`` (in-process).
        executor: Use this executor instead of one built from the first job's config (not closed here).
        progress: The bar to advance (None: none).
        lookahead: Inputs planned ahead of the pool.
        finishers: Inputs finished at once (and worker processes of the in-process engine's finisher); no new
            input is opened while twice as many wait to be finished.

    Yields:
        :class:`~tiler.engine.stream.Outcome` per job: ``result`` is its :class:`SegmentResult`, or ``error``.
    """
    source = iter(jobs)
    first = next(source, None)
    if first is None:
        return
    own = executor is None
    pool = executor if executor is not None else make_executor(first.cfg, engine)
    facts_from = getattr(pool, "facts", None)
    finisher = pool.finisher(finishers, FINISH_MODULES)
    first.facts_from, first.finisher = facts_from, finisher
    if own:  # the driver plans the first input while the workers start and load the model
        first.open_early()
        try:
            pool.start(model_ref(first.cfg))
            finisher.warm()  # its imports overlap the first blocks
        except BaseException:
            first._opening.exception()  # let the planning thread end, then drop what it took
            first.close()
            pool.close()
            finisher.close()
            raise

    def chained() -> Iterator[SegmentJob]:
        yield first
        for job in source:
            job.facts_from, job.finisher = facts_from, finisher
            yield job

    try:
        for outcome in run_stream(
            chained(), pool, lookahead=lookahead, finishers=finishers,
            on_open=progress.opened if progress is not None else None,
            on_record=progress.record if progress is not None else None,
        ):
            if progress is not None:
                progress.ended(outcome.ok)
            yield outcome
    finally:
        finisher.close()
        if own:
            pool.close()


def run_segment(cfg: JobConfig, *, overwrite: bool = False, quiet: bool = False, engine: str = "ray") -> SegmentResult:
    """Run one segment job end to end: the one-input case of :func:`run_many`.

    Args:
        cfg: The validated job configuration.
        overwrite: Replace an output store that holds another configuration's result.
        quiet: No progress bar or summary print.
        engine: ``"ray"`` (joins ``RAY_ADDRESS`` or starts an embedded local Ray) or ``"local"`` (in-process).

    Returns:
        Paths of the store and exports, the scores, and the run summary.

    Raises:
        TilerError: The job failed (the message names the input, the block or export, and the fix).
    """
    progress = Progress(quiet)
    try:
        (outcome,) = list(run_many([SegmentJob(cfg, overwrite=overwrite)], engine=engine, progress=progress))
    finally:
        progress.close()
    if outcome.error is not None:
        raise outcome.error
    result: SegmentResult = outcome.result
    if not quiet:
        s = result.summary
        print(f"done: {s['blocks_total']} blocks ({s['blocks_resumed']} resumed), {s['tiles_run']} tiles run, "
              f"{s['tiles_skipped']} skipped, {s['seconds']} s", file=sys.stderr)
        if result.scores is not None:
            print(f"FWIoU {result.scores['fwiou']:.4f}  mIoU {result.scores['miou']:.4f}", file=sys.stderr)
        for name, path in result.outputs.items():
            print(f"{name}: {path}", file=sys.stderr)
    return result
