"""Two label maps from :mod:`tiler.io.labels` as dask arrays with one chunking, checked to lie on one grid.

io opens the files (:func:`tiler.io.labels.open_labels`) and compares georeferencing
(:meth:`tiler.io.base.Georef.same_grid`); this module only chooses dask chunks and words the score's errors.
"""

from __future__ import annotations

import math

import dask.array as da

from tiler.errors import ScoreError
from tiler.io.labels import LabelSource, open_labels

__all__ = ["LabelSource", "as_dask", "check_compatible", "open_labels"]

_TARGET_CHUNK_PIXELS = 4 * 1024 * 1024


def _axis_chunk(a: int, b: int, length: int, target: int) -> int:
    step = math.lcm(max(1, a), max(1, b))
    if step > 2 * target:
        step = max(1, a)
    return min(length, step * max(1, target // step))


def as_dask(truth: LabelSource, pred: LabelSource) -> tuple[da.Array, da.Array]:
    """Both maps as dask arrays with one chunking, aligned to both native block shapes where possible."""
    ndim = len(truth.shape)
    side = max(1, int(round(_TARGET_CHUNK_PIXELS ** (1.0 / ndim))))
    if ndim == 3:  # slabs: full planes when they fit
        plane = truth.shape[1] * truth.shape[2]
        depth = max(1, _TARGET_CHUNK_PIXELS // plane)
        targets = [depth, max(side, truth.shape[1]), max(side, truth.shape[2])]
    else:
        targets = [side] * ndim
    axes = zip(truth.block, pred.block, truth.shape, targets, strict=True)
    chunks = tuple(_axis_chunk(a, b, n, t) for a, b, n, t in axes)
    return (
        da.from_array(truth, chunks=chunks, lock=False, asarray=True, fancy=False, name=f"truth-{id(truth)}"),
        da.from_array(pred, chunks=chunks, lock=False, asarray=True, fancy=False, name=f"pred-{id(pred)}"),
    )


def check_compatible(pred: LabelSource, truth: LabelSource, *, tolerance: float = 1e-6) -> list[str]:
    """Raise ScoreError unless both maps have one shape and georeferencing; return notes on what was skipped.

    Rasters compare CRS and transform, volumes their affine, each within ``tolerance``.
    """
    if pred.shape != truth.shape:
        raise ScoreError(
            f"prediction {pred.path} has shape {pred.shape} but truth {truth.path} has shape {truth.shape}; "
            "score a prediction made on the truth's grid (resample one onto the other first)."
        )
    if pred.georef.crs_wkt and not truth.georef.crs_wkt and truth.georef.kind != "volume":
        crs = pred.georef.crs_wkt
        name = crs.split('"')[1] if crs.count('"') >= 2 else crs[:60]
        raise ScoreError(
            f"truth {truth.path} has no CRS but prediction {pred.path} is in {name}: tiler cannot tell that they "
            "cover the same ground; fix: write the truth with the prediction's CRS and transform (e.g. "
            "`rio edit-info --like PREDICTION TRUTH`), or score a truth made on the prediction's grid."
        )
    differences, notes = pred.georef.grid_differences(truth.georef, tolerance=tolerance)
    if differences:
        diff = differences[0]
        fix = (
            "reproject one onto the other's grid first"
            if diff.name == "CRS"
            else f"(tolerance {tolerance}); the maps are not on the same grid: resample one onto the other first"
        )
        raise ScoreError(
            f"prediction {pred.path} has {diff.name} {diff.this} but truth {truth.path} has {diff.name} "
            f"{diff.other}; {fix}."
        )
    return notes
