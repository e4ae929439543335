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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiler.blend import Blender, BlendMode
from tiler.config.files import check_files
from tiler.config.identity import config_hash, export_settings, pixels_hash
from tiler.config.schema import JobConfig
from tiler.engine.executor import Executor
from tiler.engine.job import JobResult, StoreJob
from tiler.engine.plan import BlockRecord, ModelFacts, ModelRef, Plan, ReaderRef
from tiler.engine.stream import Outcome, Work, run_stream
from tiler.errors import ConfigError, InputError, ModelError
from tiler.geometry import BlockPartition, PadMode, StepRule, TileGrid
from tiler.paths import local_realpath
from tiler.redact import redact, redacted_config_dict

READER_FORMATS = {"auto": "auto", "geotiff": "raster", "nifti": "nifti", "zarr": "zarr", "slide": "auto"}
MODEL_FORMATS = {
    "auto": "auto", "checkpoint": "project", "state_dict": "state_dict", "monai": "monai", "torchscript": "torchscript",
    "smp": "smp", "onnx": "onnx", "nnunet": "nnunet",
}  # fmt: skip


@dataclass
class SegmentResult:
    """What a segment job produced.

    Attributes:
        store: The zarr output store.
        outputs: Export name → path (cog, nifti, ome-zarr, quicklook, report_json, report_md, scores_json).
        scores: The metrics dict (``fwiou``, ``miou``, ...) when truth was configured, else None.
        summary: Blocks, tiles and seconds of the run.
    """

    store: str
    outputs: dict[str, str] = field(default_factory=dict)
    scores: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


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
def _facts(weights: str, load: str, size: int, mtime_ns: int) -> ModelFacts:
    from tiler.model import load_model

    return ModelFacts.of(load_model(weights, **json.loads(load)))


def model_facts(model: ModelRef) -> ModelFacts:
    """Load ``model`` once per process (per file version) and keep what planning needs."""
    try:
        st = os.stat(model.weights)
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = -1, -1  # load_model names the missing file
    return _facts(model.weights, json.dumps(dict(model.load), sort_keys=True, default=list), size, mtime)


def build_plan(
    cfg: JobConfig, facts_from: Callable[[ModelRef], ModelFacts | None] | None = None
) -> tuple[Plan, dict[str, Any]]:
    """Check the input against the model and build the plan; returns it with the store attributes.

    Opens the input's header on the driver (no pixels are read beyond the check that the input holds
    data). What the plan needs of the model comes from ``facts_from`` (an executor's workers, which load
    it anyway: the driver then never imports torch), else the model is loaded here once per process and
    file version (:func:`model_facts`).
    """
    from tiler.engine.budget import check_memory, estimate_actor_memory
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
        model = model_ref(cfg)
        facts = (facts_from(model) if facts_from is not None else None) or model_facts(model)
        if facts.in_channels is not None and reader.channels != facts.in_channels:
            raise InputError(
                f"{cfg.input.path} gives {reader.channels} channel(s) but the model {cfg.model.weights} expects "
                f"{facts.in_channels}; select the bands it was trained on with input.bands (e.g. "
                f"{list(range(1, facts.in_channels + 1))})."
            )
        if facts.spatial_dims is not None and facts.spatial_dims != len(reader.shape):
            raise ModelError(
                f"model {cfg.model.weights} is {facts.spatial_dims}D but {cfg.input.path} has spatial shape "
                f"{reader.shape}; use a {len(reader.shape)}D model."
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
        memory = estimate_actor_memory(
            cfg.tiling.tile, cfg.tiling.block, channels=reader.channels, itemsize=reader.dtype.itemsize,
            classes=facts.num_classes, parameters=facts.parameters, batch_size=cfg.model.batch_size,
            tta_passes=len(cfg.model.tta_flips), shape=reader.shape,
        )
        check_memory(memory, actors=_actors_here(cfg))  # before anything allocates
        check_has_data(reader)
        plan = Plan(
            input=ref,
            model=model,
            grid=TileGrid(reader.shape, cfg.tiling.tile, cfg.tiling.overlap, PadMode(cfg.tiling.pad_mode),
                          StepRule(cfg.tiling.rule)),
            partition=BlockPartition(reader.shape, cfg.tiling.block),
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
    """The executor of ``cfg``'s engine section: ``ray`` (an actor pool) or ``local`` (this process)."""
    if engine == "local":
        from tiler.engine.executor import LocalExecutor

        return LocalExecutor(threads=cfg.model.threads)
    if engine != "ray":
        raise ConfigError(f"engine: {engine!r} is not an engine; fix: use ray or local")
    from tiler.engine.ray import RayExecutor, RayOptions

    e = cfg.engine
    return RayExecutor(
        RayOptions(
            address=e.address, actors=e.actors, gpus_per_actor=e.gpus_per_actor, cpus_per_actor=e.cpus_per_actor,
            threads=cfg.model.threads, max_in_flight=e.max_in_flight if e.prefetch else 1,
            max_restarts=e.max_restarts, max_task_retries=e.max_task_retries,
        )
    )


class Progress:
    """One bar over every block of the run on stderr, with inputs done / failed and tiles/s (silent when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.tiles = 0
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
        """Advance by one finished block."""
        self.tiles += record.tiles_run
        if self.bar is not None:
            rate = self.tiles / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"inputs {self.done} done, {self.failed} failed · {rate:.1f} tiles/s")
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


def output_paths(store: str) -> dict[str, Path]:
    """Where each export of ``store`` goes: beside it, named from its stem (sidecars included)."""
    from tiler.io.export import aux_path, label_table_paths

    path = Path(store)
    base = path.with_name(path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name)

    def named(suffix: str) -> Path:
        return base.with_name(base.name + suffix)

    nifti = named(".nii.gz")
    tables = label_table_paths(nifti)
    return {
        "cog": named(".cog.tif"),
        "cog_aux": aux_path(named(".cog.tif")),
        "nifti": nifti,
        "nifti_ctbl": tables["ctbl"],
        "nifti_itksnap": tables["itksnap"],
        "ome-zarr": named(".ome.zarr"),
        "geojson": named(".geojson"),
        "geoparquet": named(".parquet"),
        "qupath": named(".qupath.geojson"),
        "quicklook": named(".quicklook.png"),
        "scores_json": named(".scores.json"),
        "report_json": named(".report.json"),
        "report_md": named(".report.md"),
    }


RAY_WORKING_COPY = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"
"""Where Ray unpacks ``ray job submit --working-dir`` for a job (a temporary copy, deleted later)."""

SIDECARS = {"cog": ("cog_aux",), "nifti": ("nifti_ctbl", "nifti_itksnap")}
"""Files an export writes beside its main file (recorded in the store with it)."""


def _zarr_root(path: str) -> str:
    """The outermost zarr hierarchy holding ``path`` (an array inside a store belongs to the whole store)."""
    root, here = path, os.path.dirname(path)
    while here != os.path.dirname(here) and any(
        os.path.exists(os.path.join(here, name)) for name in ("zarr.json", ".zgroup", ".zarray")
    ):
        root, here = here, os.path.dirname(here)
    return root


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_paths(cfg: JobConfig) -> None:
    """Refuse, before anything is written, outputs that would touch an input or a file tiler did not make.

    The store and every file written beside it (exports, quicklook, reports, scores) must not be, contain or
    lie inside the input or the truth; an existing file at one of those paths must be one this store
    recorded writing (an earlier run of it), never a user's file.

    Raises:
        ConfigError: naming the key, the path it would overwrite and the fix.
    """
    from tiler.io.store import OutputStore

    if RAY_WORKING_COPY in os.path.realpath(cfg.output.path):
        raise ConfigError(
            f"output.path: {cfg.output.path} lies inside Ray's temporary copy of `ray job submit --working-dir`, "
            "which Ray deletes after the job (the outputs would vanish); fix: give the config as an absolute path "
            "on storage the cluster sees (e.g. `python -m pipelines.segment $PWD/configs/x.yaml`) or set an "
            "absolute output.path with --set output.path=/data/out/x.zarr"
        )
    weights = cfg.model.weights
    if RAY_WORKING_COPY in os.path.realpath(weights) and not os.path.exists(weights):
        raise ConfigError(
            f"model.weights: {weights} is not in Ray's copy of --working-dir: `ray job submit` skips files that "
            ".gitignore excludes (models/, demo-output/); fix: give an absolute path the cluster can read"
        )
    protected = {k: _zarr_root(p) for k, p in (("input.path", local_realpath(cfg.input.path)),
                                                ("scoring.truth", local_realpath(cfg.scoring.truth))) if p is not None}
    store = cfg.output.path
    paths = output_paths(store)
    targets = {"output.path": store, **{f"output.exports ({name}, beside output.path)": str(path)
                                        for name, path in paths.items()}}
    made: set[str] = set()
    if OutputStore.is_tiler_store(store):
        records = OutputStore.open(store, mode="r").export_records().values()
        made = {os.path.realpath(r.get("path", "")) for r in records}
    for key, target in targets.items():
        real = os.path.realpath(target)
        for what, source in protected.items():
            if _inside(real, source) or _inside(source, real):
                raise ConfigError(
                    f"{key}: {target} would overwrite {what} {source} (or lie inside it); fix: set output.path to "
                    "another folder or name, e.g. --set output.path=<folder>/<name>.zarr"
                )
        if key != "output.path" and os.path.lexists(target) and real not in made:
            raise ConfigError(
                f"{key}: {target} already exists and was not written by the store {store}; tiler never replaces a "
                "file it did not make. Fix: move that file away, or set output.path to another name"
            )


def _export(cfg: JobConfig, plan: Plan, paths: dict[str, Path], job_hash: str) -> dict[str, str]:
    """Write every configured export (cog, nifti, ome-zarr, quicklook) beside the store, each recorded when in place.

    An export already recorded by an earlier run of this store (with its sidecars, all still on disk) and
    drawn with the same settings (:func:`~tiler.config.identity.export_settings`: the polygon settings) is not
    written again: the store's pixels are the same, so the file is too. One to be written again has its
    records retired first (:meth:`~tiler.io.store.OutputStore.retire_exports`), so a job killed half-way
    never keeps a file it was replacing. Every export returned is recorded
    with ``job_hash``, the finishing that lists it; exports this job does not ask for are left on disk with
    the records of the finishing that made them, and are not returned. Writers take ``(store, path,
    reader)``; the reader is the job's input, open for the whole step (the OME-Zarr image, the QuPath
    level-0 scale and the quicklook read it).
    """
    from tiler.io.export import export_cog, export_nifti, export_ome_zarr, write_quicklook
    from tiler.io.store import OutputStore
    from tiler.io.vector import export_geojson, export_geoparquet, export_qupath

    out = cfg.output
    classes = list(out.polygon_classes) if out.polygon_classes is not None else None
    minimum = out.min_polygon_pixels
    writers: dict[str, Any] = {
        "cog": lambda store, path, reader: export_cog(store, path, reference=reader),
        "nifti": lambda store, path, reader: export_nifti(store, path, reference=reader),
        "ome-zarr": lambda store, path, reader: export_ome_zarr(store, path, reader=reader),
        "geojson": lambda store, path, reader: export_geojson(
            store, path, reference=reader, classes=classes, min_pixels=minimum
        ),
        "geoparquet": lambda store, path, reader: export_geoparquet(
            store, path, reference=reader, classes=classes, min_pixels=minimum
        ),
        "qupath": lambda store, path, reader: export_qupath(
            store, path, reference=reader, classes=classes, min_pixels=minimum
        ),
    }
    store = OutputStore.open(plan.store_path)
    records = store.export_records()
    recorded = store.exports_done(records)
    done: dict[str, str] = {}
    reader = plan.input.open()
    try:
        for name in out.exports:
            if name not in writers:
                continue
            files = (name, *SIDECARS.get(name, ()))
            settings = export_settings(cfg, name)
            if all(recorded.get(f) == str(paths[f]) and records[f].get("settings", {}) == settings for f in files):
                done.update({f: recorded[f] for f in files})
            else:
                store.retire_exports(files)
                writers[name](store, paths[name], reader)
                done.update({f: str(paths[f]) for f in files})
            for f in files:  # recorded once the export and its sidecars are all in place
                store.record_export(f, done[f], job_hash=job_hash, settings=settings)
        if "quicklook" in out.exports:
            done["quicklook"] = str(write_quicklook(store, paths["quicklook"], reader=reader))
            store.record_export("quicklook", done["quicklook"], job_hash=job_hash)
    finally:
        reader.close()
    return done


def _score(cfg: JobConfig, plan: Plan, result: JobResult, paths: dict[str, Path]) -> dict[str, Any] | None:
    """Full report from the store against the truth; the engine's per-block matrix must agree with it."""
    if cfg.scoring.truth is None:
        return None
    from tiler.metrics.files import score_paths
    from tiler.metrics.report import chart_paths, plot_confusion, plot_per_class, write_json

    scores, details = score_paths(
        plan.store_path, cfg.scoring.truth, num_classes=plan.score_classes or plan.num_classes,
        ignore_index=cfg.scoring.ignore_index, boundary_width=cfg.scoring.boundary(),
    )
    payload = scores.to_dict()
    if result.confusion is not None:
        from tiler.metrics.scores import scores_from_confusion

        engine_scores = scores_from_confusion(result.confusion, ignored_pixels=0)
        payload["engine_fwiou"] = engine_scores.fwiou
    payload["details"] = details
    write_json(payload, paths["scores_json"])
    heatmap, bars = chart_paths(paths["scores_json"])
    plot_confusion(scores, heatmap)
    plot_per_class(scores, bars)
    return payload


def _report(cfg: JobConfig, result: SegmentResult, paths: dict[str, Path]) -> None:
    """Write the run's report as JSON and Markdown: blocks and tiles, class areas in real units, scores, outputs."""
    from tiler.io.atomic import write_bytes_atomic
    from tiler.io.classes import class_areas
    from tiler.io.store import OutputStore
    from tiler.metrics.report import area_lines, score_lines

    areas = class_areas(OutputStore.open(result.store, mode="r"))
    payload = {"config_hash": config_hash(cfg), "pixels_hash": pixels_hash(cfg), "store": result.store,
               "outputs": result.outputs, "summary": result.summary, "areas": areas, "scores": result.scores}
    write_bytes_atomic(paths["report_json"], (json.dumps(payload, indent=2, default=str) + "\n").encode())
    lines = [f"# tiler report: {redact(Path(cfg.input.path).name)}", "", f"- input: `{redact(cfg.input.path)}`",
             f"- output store: `{result.store}`", f"- config hash: `{payload['config_hash']}` (pixels hash "
             f"`{payload['pixels_hash']}`)", ""]
    s = result.summary
    lines += ["| blocks | resumed | tiles run | tiles skipped | seconds | tiles/s |", "|---|---|---|---|---|---|",
              f"| {s['blocks_total']} | {s['blocks_resumed']} | {s['tiles_run']} | {s['tiles_skipped']} | "
              f"{s['seconds']} | {s['tiles_per_second']} |", ""]
    lines += ["## Areas", "", *area_lines(areas), ""]
    if result.scores is not None:
        lines += ["## Scores", "", *score_lines(result.scores), ""]
    lines += ["## Outputs", ""] + [f"- {k}: `{v}`" for k, v in result.outputs.items()]
    write_bytes_atomic(paths["report_md"], ("\n".join(lines) + "\n").encode())


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
        return self.store_job.open()

    def describe(self, work: Work) -> str:
        """One line on what this input asks before its work starts: size, blocks, tiles, memory per worker."""
        p = self.planned
        todo = f", {len(work.pending)} to run" if len(work.pending) != work.total else ""
        return (f"{self.name}: {p['pixels'] / 1e6:.1f} Mpx, {p['blocks']} blocks{todo}, {p['tiles']} tiles, "
                f"about {p['memory_per_actor_mb']} MB per worker")

    def finish(self) -> SegmentResult:
        """Check the blocks, write exports, score and report, then mark the store complete."""
        assert self.plan is not None and self.store_job is not None
        cfg, plan, job_hash = self.cfg, self.plan, self.store_job.job_hash
        job = self.store_job.result()
        paths = output_paths(plan.store_path)
        result = SegmentResult(store=plan.store_path, summary=job.summary())
        result.outputs = _export(cfg, plan, paths, job_hash)
        result.scores = _score(cfg, plan, job, paths)
        if result.scores is not None:
            result.outputs["scores_json"] = str(paths["scores_json"])
        result.outputs["report_json"] = str(paths["report_json"])
        result.outputs["report_md"] = str(paths["report_md"])
        _report(cfg, result, paths)
        for name in ("scores_json", "report_json", "report_md"):
            if name in result.outputs:
                self.store_job.store.record_export(name, result.outputs[name], job_hash=job_hash)
        self.store_job.complete(result.summary)
        return result

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
    are opened ``lookahead`` at a time ahead of the pool and finished on ``finishers`` threads.

    Args:
        jobs: The jobs, consumed lazily.
        engine: ``"ray"`` (joins ``RAY_ADDRESS`` or starts an embedded local Ray) or ``"local"`` (in-process).
        executor: Use this executor instead of one built from the first job's config (not closed here).
        progress: The bar to advance (None: none).
        lookahead: Inputs planned ahead of the pool.
        finishers: Threads writing exports, scores and reports.

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
    first.facts_from = facts_from
    if own:  # the driver plans the first input while the workers start and load the model
        first.open_early()
        try:
            pool.start(model_ref(first.cfg))
        except BaseException:
            first._opening.exception()  # let the planning thread end, then drop what it took
            first.close()
            pool.close()
            raise

    def chained() -> Iterator[SegmentJob]:
        yield first
        for job in source:
            job.facts_from = facts_from
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
