"""``tiler inspect``: what an input is, and what a job over it would do and cost."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiler.geometry import BlockPartition, PadMode, TileGrid, Window


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


def _model_facts(cfg: Any) -> tuple[int, int] | str:
    """``(classes, parameters)`` of the job's model, or why it cannot be loaded (a missing checkpoint, ...)."""
    from tiler.errors import TilerError
    from tiler.labels import check_nodata_label
    from tiler.model import load_model
    from tiler.segment import model_ref

    ref = model_ref(cfg)
    try:
        loaded = load_model(ref.weights, **dict(ref.load))
    except TilerError as exc:
        first = str(exc).splitlines()[0]
        return f"needs the model, which cannot be loaded: {first}"
    check_nodata_label(loaded.num_classes, cfg.output.nodata_label, source=ref.weights)
    return loaded.num_classes, sum(p.numel() for p in loaded.network.parameters())


def _plan(reader: Any, config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The plan of ``config`` over ``reader``; the parts that need the model say so when it cannot be loaded."""
    from tiler.config.loading import load_config
    from tiler.engine.budget import estimate_actor_memory

    cfg = load_config(config, [*overrides, f"input.path={reader.path}"])
    grid = TileGrid(reader.shape, cfg.tiling.tile, cfg.tiling.overlap, PadMode(cfg.tiling.pad_mode))
    part = BlockPartition(reader.shape, cfg.tiling.block)
    skipped = 0
    full = Window.from_shape(reader.shape)
    valid = reader.valid_mask(full) if math.prod(reader.shape) <= 64 * 2**20 else None
    if valid is not None and cfg.engine.skip_empty:
        for tile in grid:
            inside = tile.clip(grid.shape)
            skipped += inside is not None and not bool(valid[inside.slices].any())
    facts = _model_facts(cfg)
    classes: Any
    if isinstance(facts, str):
        classes = memory = facts
    else:
        classes, params = facts
        total = estimate_actor_memory(
            grid.tile, part.block, channels=reader.channels, itemsize=reader.dtype.itemsize, classes=classes,
            parameters=params, batch_size=cfg.model.batch_size, tta_passes=len(cfg.model.tta_flips),
            shape=reader.shape,
        ).total
        memory = f"{total / 2**20:.0f} MiB"
    per_block = [len(grid.positions_intersecting(w)) for w in part]
    step = tuple(t - o for t, o in zip(grid.tile, grid.overlap, strict=True))
    return {
        "tile / overlap": f"{grid.tile} / {grid.overlap} px (step {step})",
        "tiles": f"{len(grid)} ({' x '.join(map(str, grid.counts))})",
        "blocks": f"{len(part)} of {part.block} px ({' x '.join(map(str, part.counts))})",
        "tile runs (per block)": f"{sum(per_block)} (tiles on block borders run once per block they touch)",
        "tiles skipped (mask)": skipped if valid is not None else "not computed (input too large to scan here)",
        "classes": classes,
        "memory per actor (est.)": memory,
    }


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
    if config is not None:
        info.update(_plan(reader, config, overrides))
    reader.close()
    return info
