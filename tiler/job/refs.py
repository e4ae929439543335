"""From a job's config to what the engine takes: the input's reader reference, the model's, and the executor.

Everything here is small and picklable, or builds something that is (:class:`~tiler.engine.plan.ReaderRef`,
:class:`~tiler.engine.plan.ModelRef`); the model itself is loaded in the workers, and on the driver only once per
process and version of its files, for what planning needs (:func:`model_facts`).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from tiler.config.schema import JobConfig
from tiler.config.sections import READER_FORMATS
from tiler.engine.executor import Executor
from tiler.engine.plan import ModelFacts, ModelRef, ReaderRef
from tiler.errors import ConfigError

__all__ = ["READER_FORMATS", "make_executor", "model_facts", "model_ref", "reader_ref"]


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
        # computes it as "auto"; body (volumes) only when asked; build_plan refuses a kind that is not the input
        # format's (mask_kind_problem)
        "mask": inp.mask if inp.mask in ("none", "body") else "auto",
        "threshold": inp.threshold,
        # rasterio sets GDAL_CACHEMAX through GDALSetCacheMax64, which needs an int
        "gdal_options": {k: int(v) if v.isdigit() else v for k, v in inp.gdal.env().items()},
    }
    if inp.series is not None:  # a DICOM folder's series (open_reader refuses it for other formats)
        options["series"] = inp.series
    if inp.assets is not None:  # a STAC item's assets stacked as bands (open_reader refuses them for other formats)
        options["assets"] = list(inp.assets)
    return ReaderRef(inp.path, options)


def model_ref(cfg: JobConfig) -> ModelRef:
    """The model of ``cfg`` as a picklable reference (loaded in each worker)."""
    m = cfg.model
    load: dict[str, Any] = {"format": m.format}  # model.format names a source of load_model (tiler.model.load)
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
    from tiler.model.fetch import local_weights
    from tiler.model.sources.detect import is_nnunet_folder  # imports torch and MONAI: only when a job plans

    local = local_weights(m.weights)  # a model in a bucket: this process's cached copy
    if m.format == "nnunet" or m.nnunet is not None or (m.format == "auto" and is_nnunet_folder(Path(local))):
        from tiler.model.sources.nnunet import job_options  # the input checked against the folder, its statistics

        load["nnunet"] = job_options(local, settings=m.nnunet.model_dump(mode="json") if m.nnunet else None,
                                     tiling=cfg.tiling.model_dump(mode="json"), tta_flips=m.tta_flips,
                                     probabilities=cfg.output.probabilities, input=reader_ref(cfg),
                                     region=cfg.input.region or "auto")  # fmt: skip
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
            env_vars=tuple(e.env_vars),
        )
    )
