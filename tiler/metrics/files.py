"""Scoring label maps on disk: :func:`score_paths` reads a prediction and its truth chunk by chunk and scores them.

The library form of ``tiler score`` (the segment job and :func:`tiler.score` call it). Files are opened by
:func:`tiler.io.labels.open_labels`; the counts and scores come from :mod:`tiler.metrics.confusion`,
:mod:`tiler.metrics.boundary` and :mod:`tiler.metrics.scores`.
"""

from __future__ import annotations

import time
from typing import Any

import dask.array as da
import numpy as np

from tiler.errors import ScoreError
from tiler.metrics._sources import LabelSource, as_dask, check_compatible, open_labels
from tiler.metrics.boundary import BoundaryWidth, boundary_counts_chunked
from tiler.metrics.confusion import count_pixels_chunked
from tiler.metrics.scores import Scores, scores_from_confusion

__all__ = ["DEFAULT_WIDTH", "infer_num_classes", "score_paths"]

DEFAULT_WIDTH = BoundaryWidth(0.02)


def _max_label(array: da.Array, skip: list[float | None]) -> int:
    kept = array.astype(np.int64)
    for value in skip:
        if value is not None:
            kept = da.where(array == value, -1, kept)
    return int(kept.max().compute())


def infer_num_classes(truth: da.Array, pred: da.Array, *, ignore_index: float | None,
                      truth_nodata: float | None, pred_nodata: float | None) -> int:
    """``K`` = 1 + the largest label in either map, skipping the ignore index and both nodata values."""
    top = max(_max_label(truth, [ignore_index, truth_nodata]), _max_label(pred, [pred_nodata, ignore_index]))
    if top < 0:
        raise ScoreError("no label values left after ignore_index/nodata; pass --num-classes N explicitly.")
    return top + 1


def score_paths(
    pred_path: str,
    truth_path: str,
    *,
    num_classes: int | None = None,
    ignore_index: float | None = 255,
    boundary_width: BoundaryWidth | None = DEFAULT_WIDTH,
) -> tuple[Scores, dict[str, Any]]:
    """Score the label map at ``pred_path`` against ``truth_path`` without loading either whole.

    Args:
        pred_path: Prediction: GeoTIFF, NIfTI, zarr array or the engine's output store.
        truth_path: Truth, any of the same formats, on the same grid.
        num_classes: ``K``; None = the engine store's ``num_classes``, else 1 + the largest label seen.
        ignore_index: Truth value never scored.
        boundary_width: Band width for the boundary scores; None skips them.

    Returns:
        ``(scores, details)``: details holds file names, nodata values, notes and timings for the report.

    Raises:
        ScoreError: Shapes or georeferencing differ, labels are out of range, or nothing is left to score.

    """
    pred, truth = open_labels(pred_path), open_labels(truth_path)
    notes = check_compatible(pred, truth)
    t, p = as_dask(truth, pred)
    started = time.perf_counter()
    if num_classes is None:
        num_classes = _stored_num_classes(pred) or _stored_num_classes(truth) or infer_num_classes(
            t, p, ignore_index=ignore_index, truth_nodata=truth.nodata, pred_nodata=pred.nodata
        )
    rules: dict[str, Any] = {"num_classes": num_classes, "ignore_index": ignore_index,
                             "truth_nodata": truth.nodata, "pred_nodata": pred.nodata}
    try:
        counts = count_pixels_chunked(t, p, **rules)
    except ScoreError as exc:
        raise ScoreError(f"scoring {pred.path} against {truth.path}: {exc}") from exc
    counted = time.perf_counter()
    boundary = width = None
    if boundary_width is not None and counts.scored > 0:
        width = boundary_width.pixels(truth.shape)
        boundary = boundary_counts_chunked(t, p, width=width, **rules)
    # the prediction's names, else the truth's (an exported COG or NIfTI carries them beside it)
    names = next((n for n in (pred.class_names, truth.class_names) if n and len(n) == num_classes), None)
    scores = scores_from_confusion(
        counts.confusion, class_names=names, ignored_pixels=counts.ignored, boundary=boundary,
        boundary_width=width,
    )
    pixels = int(np.prod(truth.shape))
    details = {
        "prediction": pred.path,
        "truth": truth.path,
        "shape": list(truth.shape),
        "ignore_index": ignore_index,
        "truth_nodata": truth.nodata,
        "prediction_nodata": pred.nodata,
        "notes": notes,
        "seconds_confusion": counted - started,
        "seconds_boundary": time.perf_counter() - counted,
        "mpixel_per_s_confusion": pixels / max(counted - started, 1e-9) / 1e6,
    }
    return scores, details


def _stored_num_classes(source: LabelSource) -> int | None:
    """``K`` a label map declares: a store's own, or its class names' (a COG's categories, a NIfTI's label table)."""
    return source.num_classes or (len(source.class_names) if source.class_names else None)
