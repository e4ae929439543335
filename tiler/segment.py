"""The segment job: one input → tiled inference → output store → exports → score → report.

This is the product's main job; ``tiler run``, ``python -m pipelines.segment`` and the archive
pipeline all call :func:`run_segment`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiler.blend import Blender, BlendMode
from tiler.config import JobConfig, config_hash
from tiler.engine.job import JobResult, run_job
from tiler.engine.plan import ModelRef, Plan, ReaderRef
from tiler.errors import InputError, ModelError
from tiler.geometry import BlockPartition, PadMode, TileGrid

READER_FORMATS = {"auto": "auto", "geotiff": "raster", "nifti": "nifti", "zarr": "zarr", "slide": "auto"}
MODEL_FORMATS = {
    "auto": "auto", "checkpoint": "project", "state_dict": "state_dict", "monai": "monai", "torchscript": "torchscript",
    "smp": "smp", "onnx": "onnx",
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
        # nodata (rasters), tissue (slides) and threshold (volumes) are each format's own mask: "auto" there
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
        load["normalization"] = {k: v for k, v in m.normalization.model_dump(mode="json").items() if v is not None}
    if m.class_names is not None:
        load["class_names"] = list(m.class_names)
    if m.class_colors is not None:
        load["class_colors"] = [list(c) for c in m.class_colors]
    if m.onnx is not None:
        load["onnx"] = m.onnx.model_dump(mode="json", exclude_none=True)
    runner = {
        "device": m.device,
        "precision": m.precision,
        "batch_size": m.batch_size,
        "tta_flips": [tuple(axes) for axes in m.tta_flips],
        "threads": m.threads,
    }
    return ModelRef(m.weights, load, runner)


def build_plan(cfg: JobConfig) -> tuple[Plan, dict[str, Any]]:
    """Check the input against the model and build the plan; returns it with the store attributes.

    Opens the input's header and the model's checkpoint once on the driver (no pixels are read
    beyond the check that the input holds data).
    """
    from tiler.io import check_has_data
    from tiler.model import load_model

    ref = reader_ref(cfg)
    reader = ref.open()
    model = model_ref(cfg)
    loaded = load_model(model.weights, **dict(model.load))
    spec = loaded.spec
    if spec is not None and reader.channels != spec.in_channels:
        raise InputError(
            f"{cfg.input.path} gives {reader.channels} channel(s) but the model {cfg.model.weights} expects "
            f"{spec.in_channels}; select the bands it was trained on with input.bands (e.g. "
            f"{list(range(1, spec.in_channels + 1))})."
        )
    if spec is not None and spec.spatial_dims != len(reader.shape):
        raise ModelError(
            f"model {cfg.model.weights} is {spec.spatial_dims}D but {cfg.input.path} has spatial shape {reader.shape}; "
            f"use a {len(reader.shape)}D model."
        )
    if len(cfg.tiling.tile) != len(reader.shape):
        raise InputError(
            f"tiling.tile={list(cfg.tiling.tile)} has {len(cfg.tiling.tile)} axes but {cfg.input.path} has spatial "
            f"shape {reader.shape}; give one tile size per axis."
        )
    check_has_data(reader)
    plan = Plan(
        input=ref,
        model=model,
        grid=TileGrid(reader.shape, cfg.tiling.tile, cfg.tiling.overlap, PadMode(cfg.tiling.pad_mode)),
        partition=BlockPartition(reader.shape, cfg.tiling.block),
        blender=Blender(BlendMode(cfg.tiling.blend), cfg.tiling.sigma_scale),
        num_classes=loaded.num_classes,
        store_path=cfg.output.path,
        batch_size=cfg.model.batch_size,
        nodata_label=cfg.output.nodata_label,
        probabilities=cfg.output.probabilities,
        skip_empty=cfg.engine.skip_empty,
        background_label=cfg.output.background_label,
        truth=ReaderRef(cfg.scoring.truth) if cfg.scoring.truth else None,
        ignore_index=cfg.scoring.ignore_index if cfg.scoring.ignore_index is not None else -1,
    )
    attrs = {
        "georef": reader.georef.to_attrs(),
        "class_names": list(loaded.class_names),
        "class_colors": [list(c) for c in loaded.class_colors],
        "config": json.loads(cfg.model_dump_json()),
        "input": {"path": cfg.input.path, "shape": list(reader.shape), "channels": reader.channels,
                  "dtype": str(reader.dtype), "nodata": reader.nodata},
    }
    reader.close()
    return plan, attrs


def _engine(cfg: JobConfig, engine: str) -> Callable[..., None]:
    if engine == "local":
        from tiler.engine.job import run_blocks_local

        return run_blocks_local
    from tiler.engine.ray import RayOptions, make_runner

    e = cfg.engine
    return make_runner(
        RayOptions(
            address=e.address, actors=e.actors, gpus_per_actor=e.gpus_per_actor, cpus_per_actor=e.cpus_per_actor,
            threads=cfg.model.threads, max_in_flight=e.max_in_flight if e.prefetch else 1,
            max_restarts=e.max_restarts, max_task_retries=e.max_task_retries,
        )
    )


class Progress:
    """Blocks done, tiles/s and ETA on stderr (silent when ``quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.tiles = 0
        self.t0 = time.perf_counter()

    def start(self, pending: int, total: int) -> None:
        """Open the bar for ``pending`` of ``total`` blocks."""
        if self.quiet:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=pending, unit="block", file=sys.stderr, desc="blocks", dynamic_ncols=True)
        if pending < total:
            self.bar.write(f"resuming: {total - pending} of {total} blocks already done")

    def record(self, record: dict[str, Any]) -> None:
        """Advance by one finished block."""
        self.tiles += int(record["tiles_run"])
        if self.bar is not None:
            rate = self.tiles / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} tiles/s")
            self.bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


def output_paths(store: str) -> dict[str, Path]:
    """Where each export of ``store`` goes: beside it, named from its stem."""
    path = Path(store)
    base = path.with_name(path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name)
    return {
        "cog": base.with_name(base.name + ".cog.tif"),
        "nifti": base.with_name(base.name + ".nii.gz"),
        "ome-zarr": base.with_name(base.name + ".ome.zarr"),
        "quicklook": base.with_name(base.name + ".quicklook.png"),
        "scores_json": base.with_name(base.name + ".scores.json"),
        "report_json": base.with_name(base.name + ".report.json"),
        "report_md": base.with_name(base.name + ".report.md"),
    }


def _export(cfg: JobConfig, plan: Plan, paths: dict[str, Path]) -> dict[str, str]:
    from tiler.io.export import export_cog, export_nifti, export_ome_zarr, write_quicklook
    from tiler.io.store import OutputStore

    store = OutputStore.open(plan.store_path, mode="r")
    done: dict[str, str] = {}
    for name in cfg.output.exports:
        if name == "cog":
            done[name] = str(export_cog(store, paths["cog"]))
        elif name == "nifti":
            done[name] = str(export_nifti(store, paths["nifti"]))
        elif name == "ome-zarr":
            done[name] = str(export_ome_zarr(store, paths["ome-zarr"]))
    reader = plan.input.open()
    overlay = reader if len(reader.shape) == 2 else None
    done["quicklook"] = str(write_quicklook(store, paths["quicklook"], reader=overlay))
    reader.close()
    return done


def _score(cfg: JobConfig, plan: Plan, result: JobResult, paths: dict[str, Path]) -> dict[str, Any] | None:
    """Full report from the store against the truth; the engine's per-block matrix must agree with it."""
    if cfg.scoring.truth is None:
        return None
    from tiler.metrics.cli import score_paths
    from tiler.metrics.report import chart_paths, plot_confusion, plot_per_class, write_json

    scores, details = score_paths(
        plan.store_path, cfg.scoring.truth, num_classes=plan.num_classes,
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
    payload = {"config_hash": config_hash(cfg), "store": result.store, "outputs": result.outputs,
               "summary": result.summary, "scores": result.scores}
    paths["report_json"].write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"# tiler report: {Path(cfg.input.path).name}", "", f"- input: `{cfg.input.path}`",
             f"- output store: `{result.store}`", f"- config hash: `{payload['config_hash']}`", ""]
    s = result.summary
    lines += ["| blocks | resumed | tiles run | tiles skipped | seconds | tiles/s |", "|---|---|---|---|---|---|",
              f"| {s['blocks_total']} | {s['blocks_resumed']} | {s['tiles_run']} | {s['tiles_skipped']} | "
              f"{s['seconds']} | {s['tiles_per_second']} |", ""]
    if result.scores is not None:
        sc = result.scores
        headline = f"**FWIoU {sc['fwiou']:.4f}** · mIoU {sc['miou']:.4f} · pixel accuracy {sc['pixel_accuracy']:.4f}"
        lines += [headline, "", "| class | IoU | Dice |", "|---|---|---|"]
        for name, iou, dice in zip(sc["class_names"], sc["per_class_iou"], sc["per_class_dice"], strict=False):
            fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"| {name} | {fmt(iou)} | {fmt(dice)} |")
        lines.append("")
    lines += ["## Outputs", ""] + [f"- {k}: `{v}`" for k, v in result.outputs.items()]
    paths["report_md"].write_text("\n".join(lines) + "\n")


def run_segment(cfg: JobConfig, *, overwrite: bool = False, quiet: bool = False, engine: str = "ray") -> SegmentResult:
    """Run one segment job end to end.

    Args:
        cfg: The validated job configuration.
        overwrite: Replace an output store that holds another configuration's result.
        quiet: No progress bar or summary print.
        engine: ``"ray"`` (joins ``RAY_ADDRESS`` or starts an embedded local Ray) or ``"local"`` (in-process).

    Returns:
        Paths of the store and exports, the scores, and the run summary.
    """
    plan, attrs = build_plan(cfg)
    progress = Progress(quiet)
    try:
        job = run_job(
            plan, run_blocks=_engine(cfg, engine), chunks=cfg.output.chunks, config_hash=config_hash(cfg),
            attrs=attrs, overwrite=overwrite, on_record=progress.record, on_start=progress.start,
        )
    finally:
        progress.close()
    paths = output_paths(plan.store_path)
    result = SegmentResult(store=plan.store_path, summary=job.summary())
    result.outputs = _export(cfg, plan, paths)
    result.scores = _score(cfg, plan, job, paths)
    if result.scores is not None:
        result.outputs["scores_json"] = str(paths["scores_json"])
    result.outputs["report_json"] = str(paths["report_json"])
    result.outputs["report_md"] = str(paths["report_md"])
    _report(cfg, result, paths)
    if not quiet:
        s = result.summary
        print(f"done: {s['blocks_total']} blocks ({s['blocks_resumed']} resumed), {s['tiles_run']} tiles run, "
              f"{s['tiles_skipped']} skipped, {s['seconds']} s", file=sys.stderr)
        if result.scores is not None:
            print(f"FWIoU {result.scores['fwiou']:.4f}  mIoU {result.scores['miou']:.4f}", file=sys.stderr)
        for name, path in result.outputs.items():
            print(f"{name}: {path}", file=sys.stderr)
    return result
