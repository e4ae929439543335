"""Planning one input: the tile grid and blocks over the input as the job reads it, checked against the model.

:func:`build_plan` is the one place a job is planned (``tiler run``, the archive and ``tiler inspect`` call it):
the input's header and the model's facts are checked against each other, the truth's grid against the input's,
and the memory an actor needs against the machine, before anything is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from tiler.blend import Blender, BlendMode
from tiler.config.files import check_files
from tiler.config.schema import JobConfig
from tiler.engine.executor import Stages
from tiler.engine.plan import GridMap, ModelFacts, ModelRef, Plan, ReaderRef
from tiler.errors import ConfigError, InputError, ModelError
from tiler.exports import REGISTRY as EXPORTS
from tiler.geometry import BlockPartition, PadMode, StepRule, TileGrid, Window
from tiler.job.outputs import check_output_paths
from tiler.job.refs import model_facts, model_ref, reader_ref
from tiler.redact import redact, redacted_config_dict

__all__ = ["build_plan", "check_truth", "plan_geometry", "plan_job", "plan_region"]


def plan_geometry(
    cfg: JobConfig, shape: Sequence[int], region: Window | None = None
) -> tuple[TileGrid, BlockPartition]:
    """The tile grid and the block partition of ``cfg`` over an input of spatial ``shape`` (as the job reads it).

    The one rule :func:`build_plan` and ``tiler inspect`` share: tile, overlap, padding and step rule of
    ``tiling`` over the region of interest ``region`` (:func:`plan_region`; None: the whole image), blocks of
    ``tiling.block`` over the whole image.
    """
    t, shape = cfg.tiling, tuple(shape)
    grid = TileGrid(shape, t.tile, t.overlap, PadMode(t.pad_mode), StepRule(t.rule), region=region)
    return grid, BlockPartition(shape, t.block)


def plan_region(cfg: JobConfig, shape: Sequence[int], model: ModelRef) -> Window | None:
    """The region of interest ``input.region`` names in an input of spatial ``shape``, or None for all of it.

    ``auto`` is the region the model's source defines (an nnU-Net model's non-zero crop box, measured by
    :func:`tiler.model.sources.nnunet.job_options`); a box ``[[start, stop], ...]`` must lie inside the image.

    Raises:
        ConfigError: ``auto`` for a model that defines no region.
        InputError: A box outside the image.
    """
    region = cfg.input.region
    crop = (model.load.get("nnunet") or {}).get("crop")
    if crop is not None:  # an nnU-Net model's region: auto, or the box the job gives (checked there)
        region = crop
    elif region == "auto":
        if "nnunet" in model.load:
            return None  # the non-zero box is the whole image
        raise ConfigError(
            f"input.region: auto, but the model {cfg.model.weights} defines no region of interest (an nnU-Net "
            "results folder defines its non-zero crop box); fix: give [[start, stop], ...] per axis, or null"
        )
    if region is None:
        return None
    from tiler.io.base import region_window

    window = region_window(region, shape, cfg.input.path)
    return None if window == Window.from_shape(tuple(shape)) else window


def check_truth(reader: Any, truth: str) -> None:
    """Raise unless the truth ``truth`` is a label map on the input's grid: shape, CRS, transform or affine.

    Raises:
        ScoreError: naming both files, the property that differs and the fix.
        ReadError: the truth cannot be opened.
    """
    from tiler.io.labels import open_labels
    from tiler.metrics._sources import check_compatible

    check_compatible(reader, open_labels(truth))


def plan_grid_map(model: ModelRef, shape: Sequence[int], region: Window | None) -> GridMap | None:
    """The model grid of a model that runs on a resampled crop (an nnU-Net configuration at another spacing).

    None when the model runs on the input's own grid. The resampling is nnU-Net's, each way
    (:func:`tiler.model.sources.nnunet.job.forward_resampling`, :func:`~.back_resampling`).
    """
    resample = (model.load.get("nnunet") or {}).get("resample")
    if resample is None:
        return None
    from tiler.model.sources.nnunet.job import back_resampling, forward_resampling

    crop = region if region is not None else Window.from_shape(tuple(shape))
    forward = forward_resampling(resample, crop.shape)
    value_range = (
        tuple(tuple(tuple(float(v) for v in k) for k in c) for c in resample["range"]) if "range" in resample else None
    )
    spacing = (tuple(resample["spacing"]), tuple(resample["target"]))
    return GridMap(crop, forward, back_resampling(resample, forward), value_range, spacing)


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
    from tiler.label_rules import check_nodata_label

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
        region = plan_region(cfg, reader.shape, model)
        grid_map = plan_grid_map(model, reader.shape, region)
        block, tiled = tuple(cfg.tiling.block), tuple(reader.shape)
        if grid_map is not None:  # a block blends its window of the model grid: the block scaled by the zoom
            tiled = grid_map.model_shape
            block = tuple(min(m, math.ceil(b * m / c) + 2)
                          for b, m, c in zip(block, tiled, grid_map.crop.shape, strict=True))  # fmt: skip
        memory = estimate_actor_memory(
            cfg.tiling.tile, block, channels=reader.channels, itemsize=4 if grid_map else reader.dtype.itemsize,
            classes=facts.num_classes, parameters=facts.parameters, batch_size=cfg.model.batch_size,
            tta_passes=len(cfg.model.tta_flips), shape=tiled, overlap=cfg.tiling.overlap,
            readers=stages.readers, writers=stages.writers,
        )
        check_memory(memory, actors=_actors_here(cfg))  # before anything allocates
        try:
            check_has_data(reader)
        except InputError as exc:
            if cfg.input.mask != "body":
                raise
            threshold = cfg.input.threshold if cfg.input.threshold is not None else -500
            raise InputError(
                f"{cfg.input.path}: input.mask: body found no body: no voxel is above {threshold:g} (input.threshold, "
                "in HU) in one component; fix: check that this is a CT in Hounsfield units (a rescaled series, not raw "
                "stored values), set input.threshold for this scanner, or use input.mask: auto"
            ) from exc
        if cfg.scoring.truth is not None:  # its grid checked now, not after every block has run
            check_truth(reader, cfg.scoring.truth)
        if grid_map is None:
            grid, partition = plan_geometry(cfg, reader.shape, region)
        else:  # the tiles lie on the model's grid, the blocks and the store on the input's
            grid, _ = plan_geometry(cfg, grid_map.model_shape)
            partition = BlockPartition(tuple(reader.shape), cfg.tiling.block)
        background = cfg.output.background_label
        if background is None and (cfg.input.mask == "body" or region is not None and "nnunet" in model.load):
            background = 0  # outside the body, or outside nnU-Net's crop (which it labels 0), is background
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
            background_label=background,
            truth=ReaderRef(cfg.scoring.truth) if cfg.scoring.truth else None,
            ignore_index=cfg.scoring.ignore_index if cfg.scoring.ignore_index is not None else -1,
            score_classes=score_classes,
            grid_map=grid_map,
        )
        attrs = {
            "georef": reader.georef.to_attrs(),
            "class_names": list(facts.class_names),
            "class_colors": [list(c) for c in facts.class_colors],
            "config": redacted_config_dict(cfg),  # no credentials or URL signatures in outputs
            "input": {"path": redact(cfg.input.path), "shape": list(reader.shape), "channels": reader.channels,
                      "dtype": str(reader.dtype), "nodata": reader.nodata},
            "plan": {"pixels": math.prod(reader.shape), "blocks": len(plan.partition), "tiles": len(plan.grid),
                     "region": [list(region.start), list(region.stop)] if region is not None else None,
                     "resampled": grid_map.describe() if grid_map is not None else None,
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


def plan_job(
    cfg: JobConfig, facts_from: Callable[[ModelRef], ModelFacts | None] | None = None
) -> tuple[Plan, dict[str, Any]]:
    """Everything a job checks before it writes anything, then its plan (:func:`build_plan`).

    Every file it reads exists (one message for all that are missing), and none of its outputs would touch an
    input or a file tiler did not write (:func:`~tiler.job.outputs.check_output_paths`).
    """
    check_files(cfg)
    check_output_paths(cfg)
    return build_plan(cfg, facts_from)
