"""The segment job: input → tiled inference → output store → exports → score → report → complete.

This is the product's main job. :func:`run_many` streams the jobs of many inputs through one pool of
model workers (the archive pipeline uses it); :func:`run_segment` (``tiler run``,
``python -m pipelines.segment``) is its one-input case.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tiler.blend import Blender, BlendMode
from tiler.config.files import check_files
from tiler.config.identity import config_hash, pixels_hash
from tiler.config.schema import JobConfig
from tiler.engine.executor import Executor, Stages
from tiler.engine.finishing import Finisher
from tiler.engine.job import StoreJob
from tiler.engine.plan import BlockRecord, ModelFacts, ModelRef, Plan, ReaderRef, block_key
from tiler.engine.stream import Outcome, Work, run_stream
from tiler.errors import ConfigError, EngineError, InputError, ModelError
from tiler.exports import REGISTRY as EXPORTS
from tiler.geometry import BlockPartition, PadMode, StepRule, TileGrid
from tiler.job.finish import SegmentResult
from tiler.job.outputs import RAY_WORKING_COPY, check_output_paths, output_paths
from tiler.redact import redact, redacted_config_dict

__all__ = [
    "RAY_WORKING_COPY", "Progress", "SegmentJob", "SegmentResult", "build_plan", "check_output_paths",
    "make_executor", "model_facts", "model_ref", "output_paths", "plan_geometry", "reader_ref", "run_many",
    "run_segment",
]  # fmt: skip

READER_FORMATS = {
    "auto": "auto", "geotiff": "raster", "nifti": "nifti", "zarr": "zarr", "slide": "auto", "dicom": "dicom",
}  # fmt: skip
MODEL_FORMATS = {
    "auto": "auto", "checkpoint": "project", "state_dict": "state_dict", "monai": "monai", "torchscript": "torchscript",
    "smp": "smp", "onnx": "onnx", "nnunet": "nnunet",
}  # fmt: skip


def reader_ref(cfg: JobConfig) -> ReaderRef:
    """The input of ``cfg`` as a picklable reader reference."""
    inp = cfg.input
    options: dict[str, Any] = {
        "format": READER_FORMATS[inp.format],
        "bands": list(inp.bands) if inp.bands else None,
        "channels_from_4d": inp.channels_from_4d,
        "level": inp.level,
        "mpp": inp.mpp,
        # nodata (rasters), tissue (slides) and threshold (volumes) are each format's own mask, so the reader
        # computes it as "auto"; build_plan refuses a kind that is not the input format's (mask_kind_problem)
        "mask": "none" if inp.mask == "none" else "auto",
        "threshold": inp.threshold,
        # rasterio sets GDAL_CACHEMAX through GDALSetCacheMax64, which needs an int
        "gdal_options": {k: int(v) if v.isdigit() else v for k, v in inp.gdal.env().items()},
    }
    if inp.series is not None:  # a DICOM folder's series (open_reader refuses it for other formats)
        options["series"] = inp.series
    return ReaderRef(inp.path, options)


def model_ref(cfg: JobConfig) -> ModelRef:
    """The model of ``cfg`` as a picklable reference (loaded in each worker)."""
    m = cfg.model
    load: dict[str, Any] = {"format": MODEL_FORMATS[m.format]}
    if m.spec is not None:
        load["spec"] = m.spec.model_dump(mode="json")
    if m.normalization is not None:
        load["normalization"] = m.normalization.build().to_dict()
    if m.class_names is not None:
        load["class_names"] = list(m.class_names)
    if m.class_colors is not None:
        load["class_colors"] = [list(c) for c in m.class_colors]
    if m.onnx is not None:
        load["onnx"] = m.onnx.model_dump(mode="json", exclude_none=True)
    from tiler.model.sources.detect import is_nnunet_folder  # imports torch and MONAI: only when a job plans

    if m.format == "nnunet" or m.nnunet is not None or (m.format == "auto" and is_nnunet_folder(Path(m.weights))):
        from tiler.model.sources.nnunet import job_options  # the input checked against the folder, its statistics

        load["nnunet"] = job_options(m.weights, settings=m.nnunet.model_dump(mode="json") if m.nnunet else None,
                                     tiling=cfg.tiling.model_dump(mode="json"), tta_flips=m.tta_flips,
                                     probabilities=cfg.output.probabilities, input=reader_ref(cfg))  # fmt: skip
    runner = {
        "device": m.device,
        "precision": m.precision,
        "batch_size": m.batch_size,
        "tta_flips": [tuple(axes) for axes in m.tta_flips],
        "threads": m.threads,
    }
    return ModelRef(m.weights, load, runner)


@functools.lru_cache(maxsize=8)
def _facts(weights: str, load: str, versions: tuple[tuple[str, int, int], ...]) -> ModelFacts:
    from tiler.model import load_model

    return ModelFacts.of(load_model(weights, **json.loads(load)))


def _versions(weights: str, load: dict[str, Any]) -> tuple[tuple[str, int, int], ...]:
    """``(file, size, mtime)`` of every file the model reads (a folder's weights and configs, an ONNX's data)."""
    from tiler.model.sources.manifest import model_files

    nnunet = load.get("nnunet") or {}
    try:
        files = model_files(weights, format=str(load.get("format", "auto")), nnunet_folds=nnunet.get("folds"),
                            nnunet_checkpoint=nnunet.get("checkpoint") or "checkpoint_final.pth")
    except Exception:  # noqa: BLE001 - an unreadable package: load_model names what is wrong with it
        files = None
    out = []
    for path in files or [Path(weights)]:
        try:
            st = os.stat(path)
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), -1, -1))  # load_model names the missing file
    return tuple(out)


def model_facts(model: ModelRef) -> ModelFacts:
    """Load ``model`` once per process (per version of every file it reads) and keep what planning needs."""
    load = dict(model.load)
    return _facts(model.weights, json.dumps(load, sort_keys=True, default=list), _versions(model.weights, load))


def plan_geometry(cfg: JobConfig, shape: Sequence[int]) -> tuple[TileGrid, BlockPartition]:
    """The tile grid and the block partition of ``cfg`` over an input of spatial ``shape`` (as the job reads it).

    The one rule :func:`build_plan` and ``tiler inspect`` share: tile, overlap, padding and step rule of
    ``tiling``, blocks of ``tiling.block``.
    """
    t, shape = cfg.tiling, tuple(shape)
    grid = TileGrid(shape, t.tile, t.overlap, PadMode(t.pad_mode), StepRule(t.rule))
    return grid, BlockPartition(shape, t.block)


def check_truth(reader: Any, truth: str) -> None:
    """Raise unless the truth ``truth`` is a label map on the input's grid: shape, CRS, transform or affine.

    Raises:
        ScoreError: naming both files, the property that differs and the fix.
        ReadError: the truth cannot be opened.
    """
    from tiler.io.labels import open_labels
    from tiler.metrics._sources import check_compatible

    check_compatible(reader, open_labels(truth))


def build_plan(
    cfg: JobConfig, facts_from: Callable[[ModelRef], ModelFacts | None] | None = None
) -> tuple[Plan, dict[str, Any]]:
    """Check the input against the model and build the plan; returns it with the store attributes.

    Opens the input's header on the driver (no pixels are read beyond the check that the input holds
    data). What the plan needs of the model comes from ``facts_from`` (an executor's workers, which load
    it anyway: the driver then never imports torch), else the model is loaded here once per process and
    file version (:func:`model_facts`).
    """
    from tiler.engine.budget import check_in_flight, check_memory, estimate_actor_memory
    from tiler.io import check_has_data
    from tiler.io.masks import mask_kind_problem
    from tiler.labels import check_nodata_label

    ref = reader_ref(cfg)
    reader = ref.open()
    try:
        mask_problem = mask_kind_problem(cfg.input.mask, reader.format, threshold=cfg.input.threshold)
        if mask_problem is not None:
            raise InputError(
                f"input.mask / input.threshold: {mask_problem} ({cfg.input.path}); fix: set input.mask to auto "
                "(the input's own mask) or none, and input.threshold only for volumes"
            )
        for name in cfg.output.exports:
            export_problem = EXPORTS[name].input_problem(reader.format)
            if export_problem is not None:
                raise InputError(f"output.exports: {name} for {cfg.input.path}: {export_problem}")
        model = model_ref(cfg)
        facts = (facts_from(model) if facts_from is not None else None) or model_facts(model)
        if facts.spatial_dims is not None and facts.spatial_dims != len(reader.shape):
            raise ModelError(
                f"model {cfg.model.weights} is {facts.spatial_dims}D but {cfg.input.path} has spatial shape "
                f"{reader.shape}; use a {len(reader.shape)}D model."
            )
        if facts.in_channels is not None and reader.channels != facts.in_channels:
            raise InputError(
                f"{cfg.input.path} gives {reader.channels} channel(s) but the model {cfg.model.weights} expects "
                f"{facts.in_channels}; select the bands it was trained on with input.bands (e.g. "
                f"{list(range(1, facts.in_channels + 1))})."
            )
        if len(cfg.tiling.tile) != len(reader.shape):
            raise InputError(
                f"tiling.tile={list(cfg.tiling.tile)} has {len(cfg.tiling.tile)} axes but {cfg.input.path} has "
                f"spatial shape {reader.shape}; give one tile size per axis."
            )
        check_nodata_label(facts.num_classes, cfg.output.nodata_label, source=str(cfg.model.weights))
        score_classes = cfg.scoring.num_classes
        if score_classes is not None and score_classes < facts.num_classes:
            raise ConfigError(
                f"scoring.num_classes={score_classes} but the model {cfg.model.weights} predicts {facts.num_classes} "
                f"classes (labels 0..{facts.num_classes - 1}); fix: set scoring.num_classes to at least "
                f"{facts.num_classes}, or null to score the model's classes"
            )
        stages = Stages.sized(cfg.engine.readers, cfg.engine.writers, cpus=cfg.engine.cpus_per_actor)
        check_in_flight(cfg.engine.max_in_flight, depth=stages.depth)  # each queued call is an actor thread
        memory = estimate_actor_memory(
            cfg.tiling.tile, cfg.tiling.block, channels=reader.channels, itemsize=reader.dtype.itemsize,
            classes=facts.num_classes, parameters=facts.parameters, batch_size=cfg.model.batch_size,
            tta_passes=len(cfg.model.tta_flips), shape=reader.shape, overlap=cfg.tiling.overlap,
            readers=stages.readers, writers=stages.writers,
        )
        check_memory(memory, actors=_actors_here(cfg))  # before anything allocates
        check_has_data(reader)
        if cfg.scoring.truth is not None:  # its grid checked now, not after every block has run
            check_truth(reader, cfg.scoring.truth)
        grid, partition = plan_geometry(cfg, reader.shape)
        plan = Plan(
            input=ref,
            model=model,
            grid=grid,
            partition=partition,
            blender=Blender(BlendMode(cfg.tiling.blend), cfg.tiling.sigma_scale),
            num_classes=facts.num_classes,
            store_path=cfg.output.path,
            batch_size=cfg.model.batch_size,
            nodata_label=cfg.output.nodata_label,
            probabilities=cfg.output.probabilities,
            skip_empty=cfg.engine.skip_empty,
            background_label=cfg.output.background_label,
            truth=ReaderRef(cfg.scoring.truth) if cfg.scoring.truth else None,
            ignore_index=cfg.scoring.ignore_index if cfg.scoring.ignore_index is not None else -1,
            score_classes=score_classes,
        )
        attrs = {
            "georef": reader.georef.to_attrs(),
            "class_names": list(facts.class_names),
            "class_colors": [list(c) for c in facts.class_colors],
            "config": redacted_config_dict(cfg),  # no credentials or URL signatures in outputs
            "input": {"path": redact(cfg.input.path), "shape": list(reader.shape), "channels": reader.channels,
                      "dtype": str(reader.dtype), "nodata": reader.nodata},
            "plan": {"pixels": math.prod(reader.shape), "blocks": len(plan.partition), "tiles": len(plan.grid),
                     "memory_per_actor_mb": round(memory.total / 2**20)},
        }
    finally:
        reader.close()
    return plan, attrs


def _actors_here(cfg: JobConfig) -> int:
    """Model workers that will share this machine's memory: one in-process, or the embedded pool's size."""
    e = cfg.engine
    if (e.address or os.environ.get("RAY_ADDRESS")) not in (None, "", "local"):
        return 1  # a cluster's actors are spread over its nodes: check one actor against this machine
    return e.actors or max(1, int((os.cpu_count() or 1) / e.cpus_per_actor))


def make_executor(cfg: JobConfig, engine: str = "ray") -> Executor:
    """The executor of ``cfg``'s engine section: ``ray`` (an actor pool) or ``local`` (this process).

    Either way each model worker is a pipeline of ``engine.readers`` reader and ``engine.writers`` writer
    threads around its model; ``engine.prefetch: false`` runs one block at a time instead.
    """
    e = cfg.engine
    if engine == "local":
        from tiler.engine.executor import LocalExecutor

        return LocalExecutor(
            threads=cfg.model.threads, readers=e.readers, writers=e.writers, depth=None if e.prefetch else 1
        )
    if engine != "ray":
        raise ConfigError(f"engine: {engine!r} is not an engine; fix: use ray or local")
    from tiler.engine.ray import RayExecutor, RayOptions

    return RayExecutor(
        RayOptions(
            address=e.address, actors=e.actors, gpus_per_actor=e.gpus_per_actor, cpus_per_actor=e.cpus_per_actor,
            threads=cfg.model.threads, max_in_flight=e.max_in_flight if e.prefetch else 1,
            max_restarts=e.max_restarts, max_task_retries=e.max_task_retries, readers=e.readers, writers=e.writers,
        )
    )


class Progress:
    """One bar over every block of the run on stderr, with inputs done / failed and tiles/s (silent when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.tiles = 0
        self.pixels = 0
        self.idle = 0.0  # seconds the model workers' inference stage sat idle, and busy (infer + stitch)
        self.busy = 0.0
        self.done = 0
        self.failed = 0
        self.t0 = time.perf_counter()

    def opened(self, job: Any, work: Work) -> None:
        """Add an opened input's pending blocks to the bar."""
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="block", file=sys.stderr, desc="blocks", dynamic_ncols=True)
        self.bar.total += len(work.pending)
        self.bar.refresh()
        describe = getattr(job, "describe", None)
        if describe is not None:
            self.write(describe(work))
        if getattr(getattr(job, "store_job", None), "refinishing", False):
            self.write(f"{job.name}: the store holds these pixels, finished with other exports or scoring: "
                       f"finishing it again ({len(work.pending)} of {work.total} blocks to run)")
        elif len(work.pending) < work.total:
            self.write(f"{job.name}: resuming, {work.total - len(work.pending)} of {work.total} blocks already done")

    def record(self, job: Any, record: BlockRecord) -> None:
        """Advance by one finished block; the postfix says inputs done, tiles/s, Mpx/s and the model's idle share."""
        self.tiles += record.tiles_run
        self.pixels += math.prod(b - a for a, b in zip(record.start, record.stop, strict=True))
        self.idle += record.idle_seconds
        self.busy += record.infer_seconds + record.stitch_seconds
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            idle = self.idle / (self.idle + self.busy) if self.idle + self.busy > 0 else 0.0
            self.bar.set_postfix_str(f"inputs {self.done} done, {self.failed} failed · {self.tiles / elapsed:.1f} "
                                     f"tiles/s · {self.pixels / 1e6 / elapsed:.2f} Mpx/s · model idle {idle:.0%}")
            self.bar.update(1)

    def ended(self, ok: bool) -> None:
        """Count a finished or failed input."""
        if ok:
            self.done += 1
        else:
            self.failed += 1

    def write(self, line: str) -> None:
        """A line above the bar (or plain stderr when there is no bar yet)."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
        check_files(self.cfg)  # every missing input file in one message, before anything is opened
        check_output_paths(self.cfg)
        plan, attrs = build_plan(self.cfg, self.facts_from)
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
    finisher = pool.finisher(finishers)
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
