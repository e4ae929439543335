"""``tiler inspect``: what an input is, and what a job over it would do and cost.

Named ``describe`` so as not to shadow the standard library's ``inspect``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiler.geometry import Window


def _nodata_share(reader: Any, step: int = 2048) -> float | None:
    """Share of pixels outside the valid-data mask (None when the reader has no mask)."""
    from tiler.io.base import scan_windows

    invalid = total = 0
    for window in scan_windows(reader.shape, step):
        mask = reader.valid_mask(window)
        if mask is None:
            return None
        invalid += int(mask.size - np.count_nonzero(mask))
        total += mask.size
    return invalid / total if total else None


def _model_part(cfg: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(classes, memory per actor, plan, plan attributes)`` from the job's own plan.

    That is :func:`~tiler.job.plan.build_plan`'s; when it cannot be made, the first two say why not and there is no
    plan and no attributes.
    """
    from tiler.errors import TilerError
    from tiler.job.plan import build_plan
    from tiler.job.refs import model_facts, model_ref

    try:
        model_facts(model_ref(cfg))  # loaded once per process and file version: build_plan reuses it
    except TilerError as exc:
        why = f"needs the model, which cannot be loaded: {str(exc).splitlines()[0]}"
        return why, why, None, {}
    try:
        plan, attrs = build_plan(cfg)
    except TilerError as exc:
        why = f"the job would be refused: {str(exc).splitlines()[0]}"
        return why, why, None, {}
    return plan.num_classes, f"{attrs['plan']['memory_per_actor_mb']} MiB", plan, attrs["plan"]


def _plan(path: str, config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The plan of ``config`` over ``path``, read as the job reads it (its level or mpp, bands, mask, region).

    The job's own :func:`~tiler.job.plan.build_plan` when the model loads (its region and resampling too), else
    the geometry of its tiling alone.
    """
    from tiler.config.loading import load_config
    from tiler.job.plan import plan_geometry
    from tiler.job.refs import reader_ref

    cfg = load_config(config, [*overrides, f"input.path={path}"])
    classes, memory, plan, planned = _model_part(cfg)
    reader = reader_ref(cfg).open()
    try:
        grid, part = (plan.grid, plan.partition) if plan is not None else plan_geometry(cfg, reader.shape)
        skipped = 0
        full = Window.from_shape(reader.shape)
        on_input = plan is None or plan.grid_map is None  # a resampled job's tiles lie on the model's grid
        valid = reader.valid_mask(full) if on_input and math.prod(reader.shape) <= 64 * 2**20 else None
        if valid is not None and cfg.engine.skip_empty:
            for tile in grid:
                inside = tile.intersection(grid.extent)
                skipped += inside is not None and not bool(valid[inside.slices].any())
        read_as = f"{reader.shape} x {reader.channels} channel(s)"
        if reader.georef.mpp:
            read_as += f" at {reader.georef.mpp:g} mpp"
    finally:
        reader.close()
    per_block = [len(grid.positions_intersecting(w)) for w in part] if on_input else None
    step = tuple(t - o for t, o in zip(grid.tile, grid.overlap, strict=True))
    out: dict[str, Any] = {"job reads": read_as}
    if planned.get("region") is not None:
        out["region of interest"] = " x ".join(f"{a}:{b}" for a, b in zip(*planned["region"], strict=True))
    if planned.get("resampled") is not None:
        r = planned["resampled"]
        out["resampled"] = f"{r.get('spacing')} -> {r.get('target_spacing')} mm: model grid {r['model_shape']}"
    out.update({
        "tile / overlap": f"{grid.tile} / {grid.overlap} px (step {step}, rule {grid.rule.value})",
        "tiles": f"{len(grid)} ({' x '.join(map(str, grid.counts))})",
        "blocks": f"{len(part)} of {part.block} px ({' x '.join(map(str, part.counts))})",
        "tile runs (per block)": f"{sum(per_block)} (tiles on block borders run once per block they touch)"
        if per_block is not None else "on the model's grid (each block runs the tiles its resampled window needs)",
        "tiles skipped (mask)": skipped if valid is not None else "not computed (input too large to scan here)"
        if on_input else "not computed (the tiles lie on the model's grid)",
        "classes": classes,
        "memory per actor (est.)": memory,
    })
    return out


def describe(path: str, *, config: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A dict describing ``path`` (and the plan of ``config``, with ``overrides``, over it)."""
    from tiler.io import open_reader

    reader = open_reader(path)
    g = reader.georef
    info: dict[str, Any] = {
        "path": reader.path,
        "format": reader.format,
        "shape": reader.shape,
        "channels": reader.channels,
        "dtype": str(reader.dtype),
        "nodata": reader.nodata,
        "georef": g.kind,
    }
    if g.crs_wkt:
        info["crs"] = g.crs_wkt.split("[")[1].split(",")[0].strip('"') if "[" in g.crs_wkt else g.crs_wkt
    if g.transform:
        info["transform"] = g.transform
    if g.spacing:
        info["spacing"] = g.spacing
    if g.mpp:
        info["mpp"] = g.mpp
    share = _nodata_share(reader)
    info["nodata share"] = "no mask" if share is None else f"{share:.1%}"
    reader.close()
    if config is not None:
        info.update(_plan(path, config, overrides))
    return info
