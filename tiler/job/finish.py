"""Finishing one input: its exports, score, reports and complete flag, as steps that run in worker processes.

After an input's last block is recorded, :func:`finish_input` (on a driver thread) hands out steps to a
:class:`~tiler.engine.finishing.Finisher`: one :func:`export_step` per export of the registry
(:mod:`tiler.exports`) and one :func:`score_step`, all at once, so a COG, its polygons and the score are
drawn side by side on the cluster's CPU workers; then :func:`report_step` writes the reports and marks the
store complete, last. Each step opens the store and the input itself and returns a small
:class:`StepResult`; the driver opens no output chunk and writes no output file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiler.config.identity import config_hash, export_settings, pixels_hash
from tiler.config.schema import JobConfig
from tiler.engine.finishing import Finisher
from tiler.engine.job import JobResult
from tiler.engine.plan import Plan
from tiler.exports import REGISTRY as EXPORTS
from tiler.exports import BeforeMove, DeliverContext, WriteContext
from tiler.io.objects import AnyPath, ObjectPath, as_path
from tiler.job.outputs import output_paths, output_stem
from tiler.job.timings import block_timings
from tiler.redact import redact

BANDS = 8
"""Bands of rows a block step (the polygons, the overview levels) is drawn in, each its own step and worker."""

FINISH_MODULES = (
    "tiler.job.finish", "tiler.io.store", "tiler.io.export", "tiler.io.overviews", "tiler.io.vector",
    "tiler.io.quicklook", "tiler.io.classes", "tiler.io.slide", "tiler.io.stac_item", "tiler.metrics.files",
    "tiler.metrics.report", "rasterio.features", "rasterio.warp", "shapely", "shapely.affinity", "pandas",
    "pyarrow.dataset", "pyarrow.parquet", "matplotlib.figure", "matplotlib.backends.backend_agg", "PIL.ImageDraw",
    "PIL.ImageFont", "PIL.JpegImagePlugin", "tifffile", "pystac",
)
"""Modules the steps of the common exports, scores and reports import (this one, and what its steps import when
they run): the finisher's ``preload``. The in-process engine's fork server imports them once, which spares each
finishing process about 0.6 s of CPU; on Ray the finisher's warm-up task imports them."""


@dataclass
class SegmentResult:
    """What a segment job produced.

    Attributes:
        store: The zarr output store.
        outputs: File role → path (cog, nifti, ome-zarr, quicklook, report_json, report_md, scores_json, ...).
        scores: The metrics dict (``fwiou``, ``miou``, ...) when truth was configured, else None.
        summary: Blocks, tiles, seconds, and where the time went (``stages``, ``finishing``).
    """

    store: str
    outputs: dict[str, str] = field(default_factory=dict)
    scores: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FinishTask:
    """What every finishing step of one input needs: small and picklable.

    Attributes:
        cfg: The job's configuration.
        plan: Its plan (the input and the store).
        job_hash: Its config hash, recorded with every export and with ``complete``.
        store_config: The redacted config the store records with ``complete``.
    """

    cfg: JobConfig
    plan: Plan
    job_hash: str
    store_config: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StepResult:
    """What one finishing step sends back to the driver.

    Attributes:
        step: The export's name, ``score`` or ``report``.
        outputs: File role → path of the files it wrote or kept.
        seconds: Its wall time.
        reused: Whether its files were kept from an earlier finishing (nothing drawn).
        worker: ``pid@host`` of the process that ran it.
        payload: The scores (for ``score``); what an export's delivery sent and the answer (for ``dicom-seg``
            with ``output.dicom.send``); else None.
    """

    step: str
    outputs: dict[str, str]
    seconds: float
    reused: bool = False
    worker: str = ""
    payload: Any = None


def _worker() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def drawn_already(task: FinishTask, name: str) -> bool:
    """Whether export ``name`` is on disk from an earlier finishing of this store, drawn with the same settings.

    Its records (the main file and every sidecar) must name these paths, be in force (not being replaced) and
    carry the settings the task asks for; the files must still be there. Reads small JSON records only.
    """
    from tiler.io.store import OutputStore

    paths = EXPORTS[name].paths(output_stem(task.plan.store_path))
    settings = export_settings(task.cfg, name)
    store = OutputStore.open(task.plan.store_path, mode="r")
    records = store.export_records()
    recorded = store.exports_done(records)
    names_job = EXPORTS[name].names_job  # a file naming the config hash is drawn again under another one
    return all(
        recorded.get(f) == str(p) and records[f].get("settings", {}) == settings
        and (not names_job or records[f].get("job_hash") == task.job_hash)
        for f, p in paths.items()
    )


def export_step(task: FinishTask, name: str, parts: tuple[str, ...] = (), overviews: str | None = None) -> StepResult:
    """Write export ``name`` beside the store (or keep the one an earlier finishing drew the same way); record it.

    An export already recorded by an earlier run of this store and drawn with the same settings
    (:func:`drawn_already`) is not written again: the store's pixels are the same, so the file is too. One to be
    written again has its records retired first (:meth:`~tiler.io.store.OutputStore.retire_exports`), so a step
    killed half-way never keeps a file it was replacing; each file's intent (path and digest) is recorded before
    it is moved into place, so a rerun recognises a file moved but not yet recorded. Every file is recorded with
    the task's ``job_hash``. ``parts``: the polygon band files of a polygon export (:func:`polygon_band_step`);
    ``overviews``: the folder of the map's mode levels (:func:`overview_band_step`).
    """
    from tiler.io.store import OutputStore

    t0 = time.perf_counter()
    export = EXPORTS[name]
    paths = export.paths(output_stem(task.plan.store_path))
    settings = export_settings(task.cfg, name)
    reused = drawn_already(task, name)
    store = OutputStore.open(task.plan.store_path)
    if not reused:
        store.retire_exports(list(paths))
        reader = task.plan.input.open()
        try:
            export.write(WriteContext(store, paths, reader, settings, before_move=store.intent_recorder(),
                                      parts=parts, overviews=overviews, job_hash=task.job_hash))
        finally:
            reader.close()
    for role, path in paths.items():  # recorded once the export and its sidecars are all in place
        store.record_export(role, path, job_hash=task.job_hash, settings=settings)
    outputs = {role: str(path) for role, path in paths.items()}
    delivered = None
    if export.deliver is not None:  # sent on only once written and recorded: a failed send keeps the files
        delivered = export.deliver(DeliverContext(store, paths, task.cfg.output.model_dump(mode="json"), task.job_hash))
    return StepResult(name, outputs, time.perf_counter() - t0, reused=reused, worker=_worker(),
                      payload=dict(delivered) if delivered is not None else None)


def polygon_bands(task: FinishTask) -> list[tuple[tuple[int, int], str]]:
    """The row bands an input's polygons are drawn in, each with the file its worker writes (inside the store)."""
    from tiler.io.vector import band_rows

    folder = as_path(task.plan.store_path) / ".tiler" / "polygons"
    rows = band_rows(task.plan.partition.shape[0], task.cfg.output.chunks[0], BANDS)
    return [((a, b), str(folder / f"rows-{a:09d}-{b:09d}.parquet")) for a, b in rows]


def overview_bands(task: FinishTask) -> list[tuple[tuple[int, int], str]]:
    """The row bands a 2D map's mode overview levels are drawn in, each with the folder its worker writes into.

    Empty for a volume, or a map too small to have levels. Bands start on whole cells of the coarsest level.
    """
    from tiler.io.overviews import band_unit, level_shapes
    from tiler.io.vector import band_rows

    shape = task.plan.partition.shape
    levels = level_shapes(shape) if len(shape) == 2 else []
    if not levels:
        return []
    unit = band_unit(task.cfg.output.chunks[0], len(levels))
    rows = band_rows(shape[0], unit, BANDS)
    folder = str(as_path(task.plan.store_path) / ".tiler" / f"overviews-{len(rows)}x{unit}")
    return [(band, folder) for band in rows]


def overview_band_step(task: FinishTask, rows: tuple[int, int], folder: str) -> StepResult:
    """Draw every mode overview level of one band of rows into ``folder``: the block step of the COG and quicklook."""
    from tiler.io.overviews import write_overview_band
    from tiler.io.store import OutputStore

    t0 = time.perf_counter()
    write_overview_band(OutputStore.open(task.plan.store_path, mode="r"), folder, rows=rows)
    return StepResult(f"overviews {rows[0]}:{rows[1]}", {}, time.perf_counter() - t0, worker=_worker())


def polygon_band_step(task: FinishTask, rows: tuple[int, int], path: str) -> StepResult:
    """Draw the polygons of one band of rows into ``path``: the block step every polygon export of the input shares."""
    from tiler.io.store import OutputStore
    from tiler.io.vector import write_polygon_band

    t0 = time.perf_counter()
    settings = task.cfg.output
    as_path(path).parent.mkdir(parents=True, exist_ok=True)
    write_polygon_band(OutputStore.open(task.plan.store_path, mode="r"), path, rows=rows,
                       classes=list(settings.polygon_classes) if settings.polygon_classes is not None else None,
                       min_pixels=settings.min_polygon_pixels)
    return StepResult(f"polygons {rows[0]}:{rows[1]}", {}, time.perf_counter() - t0, worker=_worker())


def score_step(task: FinishTask, engine_confusion: Any = None) -> StepResult:
    """Score the store against the truth (every chunk read, out of core); write the scores JSON and its charts.

    ``engine_confusion``: the blocks' confusion matrix summed by the engine, reported as ``engine_fwiou`` beside
    the full score (the two must agree).
    """
    from tiler.io.store import OutputStore
    from tiler.metrics.files import score_paths
    from tiler.metrics.report import plot_confusion, plot_per_class, write_json

    t0 = time.perf_counter()
    cfg, plan = task.cfg, task.plan
    assert cfg.scoring.truth is not None
    scores, details = score_paths(
        plan.store_path, cfg.scoring.truth, num_classes=plan.score_classes or plan.num_classes,
        ignore_index=cfg.scoring.ignore_index, boundary_width=cfg.scoring.boundary(),
    )
    payload = scores.to_dict()
    if engine_confusion is not None:
        from tiler.metrics.scores import scores_from_confusion

        payload["engine_fwiou"] = scores_from_confusion(engine_confusion, ignored_pixels=0).fwiou
    payload["details"] = details
    paths = output_paths(plan.store_path)
    files = {role: paths[role] for role in ("scores_json", "scores_confusion", "scores_per_class")}
    store = OutputStore.open(plan.store_path)
    store.retire_exports(list(files))
    recorder = store.intent_recorder()
    write_json(payload, files["scores_json"], before_move=recorder)
    plot_confusion(scores, files["scores_confusion"], before_move=recorder)
    plot_per_class(scores, files["scores_per_class"], before_move=recorder)
    for role, path in files.items():
        store.record_export(role, path, job_hash=task.job_hash)
    outputs = {role: str(path) for role, path in files.items()}
    return StepResult("score", outputs, time.perf_counter() - t0, worker=_worker(), payload=payload)


def report_step(task: FinishTask, result: SegmentResult) -> StepResult:
    """Write the reports (JSON and Markdown), record them, and mark the store complete: the input's last step."""
    from tiler.io.store import OutputStore

    t0 = time.perf_counter()
    paths = output_paths(task.plan.store_path)
    result.outputs["report_json"] = str(paths["report_json"])
    result.outputs["report_md"] = str(paths["report_md"])
    store = OutputStore.open(task.plan.store_path)
    store.retire_exports(["report_json", "report_md"])
    write_reports(task.cfg, result, paths, before_move=store.intent_recorder())
    for role in ("report_json", "report_md"):
        store.record_export(role, result.outputs[role], job_hash=task.job_hash)
    store.mark_complete(result.summary, job_hash=task.job_hash,
                        attrs={"config": task.store_config} if task.store_config else None)
    state = as_path(task.plan.store_path) / ".tiler"
    for drawn in (state / "polygons", *state.glob("overviews-*")):  # the block steps' bands, drawn into the exports
        if isinstance(drawn, ObjectPath):
            drawn.remove_tree()
        else:
            shutil.rmtree(drawn, ignore_errors=True)
    outputs = {role: result.outputs[role] for role in ("report_json", "report_md")}
    return StepResult("report", outputs, time.perf_counter() - t0, worker=_worker())


def write_reports(
    cfg: JobConfig, result: SegmentResult, paths: Mapping[str, AnyPath], *, before_move: BeforeMove | None = None
) -> None:
    """Write the run's report as JSON and Markdown: blocks, tiles, where the time went, areas, scores, outputs.

    ``before_move(tmp, final)``: called for each file once complete, before it takes its name.
    """
    from tiler.io.atomic import write_bytes_atomic
    from tiler.io.classes import class_areas
    from tiler.io.store import OutputStore
    from tiler.job.timings import timing_lines
    from tiler.metrics.report import area_lines, score_lines

    store = OutputStore.open(result.store, mode="r")
    areas = class_areas(store)
    planned = store.attrs.get("plan") or {}
    read = {k: planned[k] for k in ("region", "resampled") if planned.get(k) is not None}
    payload = {"config_hash": config_hash(cfg), "pixels_hash": pixels_hash(cfg), "store": result.store,
               "outputs": result.outputs, "summary": result.summary, "areas": areas, "scores": result.scores,
               **({"read": read} if read else {})}
    write_bytes_atomic(paths["report_json"], (json.dumps(payload, indent=2, default=str) + "\n").encode(),
                       before_move=before_move)
    lines = [f"# tiler report: {redact(Path(cfg.input.path).name)}", "", f"- input: `{redact(cfg.input.path)}`",
             f"- output store: `{result.store}`", f"- config hash: `{payload['config_hash']}` (pixels hash "
             f"`{payload['pixels_hash']}`)", ""]
    s = result.summary
    lines += ["| blocks | resumed | tiles run | tiles skipped | seconds | tiles/s |", "|---|---|---|---|---|---|",
              f"| {s['blocks_total']} | {s['blocks_resumed']} | {s['tiles_run']} | {s['tiles_skipped']} | "
              f"{s['seconds']} | {s['tiles_per_second']} |", ""]
    lines += [*_read_lines(read), "## Where the time went", "", *timing_lines(s), ""]
    lines += ["## Areas", "", *area_lines(areas), ""]
    if result.scores is not None:
        lines += ["## Scores", "", *score_lines(result.scores), ""]
    lines += ["## Outputs", ""] + [f"- {k}: `{v}`" for k, v in result.outputs.items()]
    write_bytes_atomic(paths["report_md"], ("\n".join(lines) + "\n").encode(), before_move=before_move)


def _read_lines(read: Mapping[str, Any]) -> list[str]:
    """The report's lines on what the model saw: the region of interest, and what was resampled."""
    if not read:
        return []
    lines = ["## What the model saw", ""]
    region = read.get("region")
    if region is not None:
        box = ", ".join(f"{a}:{b}" for a, b in zip(*region, strict=True))
        lines.append(f"- region of interest: [{box}] (everything outside it got the background label)")
    resampled = read.get("resampled")
    if resampled is not None:
        spacing = " × ".join(f"{v:g}" for v in resampled.get("spacing", []))
        target = " × ".join(f"{v:g}" for v in resampled.get("target_spacing", []))
        axis = resampled.get("separate_axis")
        lines.append(
            f"- resampled from {spacing} mm to the model's {target} mm (grid {resampled['model_shape']}, "
            f"spline order {resampled['order']}"
            + (f", axis {axis} on its own at order {resampled.get('order_z', 0)}" if axis is not None else "")
            + f"), and the model's outputs back onto the input's grid (order {resampled['back_order']})"
        )
    return [*lines, ""]


def finish_input(task: FinishTask, job: JobResult, finisher: Finisher, *, ran: set[str]) -> SegmentResult:
    """Finish one input on ``finisher``'s workers: exports and score side by side, then the reports and ``complete``.

    Runs on a driver thread, which only submits steps and waits for them.

    Args:
        task: The input's finishing task.
        job: Its block phase (records, confusion, seconds).
        finisher: Where the steps run.
        ran: Keys of the blocks this run computed (their stage timings go into the summary).

    Raises:
        TilerError: The first step that failed (after every step of this input has ended).
    """
    t0 = time.perf_counter()
    exports = task.cfg.output.exports
    levels = overview_bands(task)
    from_polygons = [n for n in exports if EXPORTS[n].polygons and not drawn_already(task, n)]
    from_levels = [n for n in exports if EXPORTS[n].overviews and levels and not drawn_already(task, n)]
    steps: dict[str, Future[StepResult]] = {
        name: finisher.submit(export_step, task, name) for name in exports if name not in from_polygons + from_levels
    }
    if task.cfg.scoring.truth is not None:
        steps["score"] = finisher.submit(score_step, task, job.confusion)
    # the block steps, each once for every export drawn from it: bands of rows on as many workers
    polygon_parts = polygon_bands(task) if from_polygons else []
    polygon_steps = {f"polygons {rows[0]}:{rows[1]}": finisher.submit(polygon_band_step, task, rows, path)
                     for rows, path in polygon_parts}
    level_steps = {f"overviews {rows[0]}:{rows[1]}": finisher.submit(overview_band_step, task, rows, folder)
                   for rows, folder in (levels if from_levels else [])}
    # each export drawn from a block step starts as soon as that step's bands are all drawn, whichever is first
    parts = tuple(path for _, path in polygon_parts)
    folder = levels[0][1] if levels else None
    waiting = [(polygon_steps, from_polygons, parts, None), (level_steps, from_levels, (), folder)]
    while waiting:
        ready = [w for w in waiting if all(f.done() for f in w[0].values())]
        if not ready:
            wait([f for group, *_ in waiting for f in group.values()], return_when=FIRST_COMPLETED)
            continue
        for entry in ready:
            waiting.remove(entry)
            group, names, drawn, where = entry
            steps.update(group)
            if all(f.exception() is None for f in group.values()):
                steps.update({name: finisher.submit(export_step, task, name, drawn, where) for name in names})
    wait(list(steps.values()))
    errors = [f.exception() for f in steps.values() if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    done = {name: f.result() for name, f in steps.items()}
    result = SegmentResult(store=task.plan.store_path, summary=job.summary())
    for step in done.values():
        result.outputs.update(step.outputs)
    result.scores = done["score"].payload if "score" in done else None
    summary = result.summary
    summary["blocks_seconds"] = summary["seconds"]
    summary.update(block_timings([r for k, r in job.records.items() if k in ran], summary["blocks_seconds"]))
    summary["finishing"] = {
        name: {"seconds": round(s.seconds, 3), "reused": s.reused, "worker": s.worker,
               **({"delivered": s.payload} if name in EXPORTS and s.payload is not None else {})}
        for name, s in done.items() if " " not in name
    }
    for block_step in ("polygons", "overviews"):  # one line each: seconds summed over the bands, every worker
        drew = [s for name, s in done.items() if name.startswith(block_step + " ")]
        if drew:
            summary["finishing"][block_step] = {
                "seconds": round(sum(s.seconds for s in drew), 3), "reused": False, "bands": len(drew),
                "worker": ", ".join(sorted({s.worker for s in drew})),
            }
    summary["finish_seconds"] = round(time.perf_counter() - t0, 3)
    summary["seconds"] = round(summary["blocks_seconds"] + summary["finish_seconds"], 3)
    report = finisher.submit(report_step, task, result).result()
    result.outputs.update(report.outputs)
    summary["finishing"]["report"] = {"seconds": round(report.seconds, 3), "reused": False, "worker": report.worker}
    return result
