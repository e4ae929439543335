"""Scoring: confusion matrices (in memory and out of core), FWIoU and the other scores, boundary scores.

Convention: the confusion matrix is ``n[truth, pred]``, int64. See :mod:`tiler.metrics.confusion`
for the ignore rules, :mod:`tiler.metrics.scores` for the formulas and :mod:`tiler.metrics.boundary`
for boundary IoU / F1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiler.lazy import lazy_names

_LAZY: dict[str, str] = {
    "BoundaryCounts": "tiler.metrics.boundary",
    "BoundaryWidth": "tiler.metrics.boundary",
    "WidthUnit": "tiler.metrics.boundary",
    "boundary_counts": "tiler.metrics.boundary",
    "boundary_counts_chunked": "tiler.metrics.boundary",
    "LabelRules": "tiler.metrics.confusion",
    "PixelCounts": "tiler.metrics.confusion",
    "confusion_matrix": "tiler.metrics.confusion",
    "confusion_matrix_chunked": "tiler.metrics.confusion",
    "count_pixels": "tiler.metrics.confusion",
    "count_pixels_chunked": "tiler.metrics.confusion",
    "Scores": "tiler.metrics.scores",
    "scores_from_confusion": "tiler.metrics.scores",
}

__all__ = [
    "BoundaryCounts",
    "BoundaryWidth",
    "LabelRules",
    "PixelCounts",
    "Scores",
    "WidthUnit",
    "boundary_counts",
    "boundary_counts_chunked",
    "confusion_matrix",
    "confusion_matrix_chunked",
    "count_pixels",
    "count_pixels_chunked",
    "scores_from_confusion",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


if TYPE_CHECKING:
    from tiler.metrics.boundary import (
        BoundaryCounts,
        BoundaryWidth,
        WidthUnit,
        boundary_counts,
        boundary_counts_chunked,
    )
    from tiler.metrics.confusion import (
        LabelRules,
        PixelCounts,
        confusion_matrix,
        confusion_matrix_chunked,
        count_pixels,
        count_pixels_chunked,
    )
    from tiler.metrics.scores import Scores, scores_from_confusion
