"""Scoring: confusion matrices (in memory and out of core), FWIoU and the other scores, boundary scores.

Convention: the confusion matrix is ``n[truth, pred]``, int64. See :mod:`tiler.metrics.confusion`
for the ignore rules, :mod:`tiler.metrics.scores` for the formulas and :mod:`tiler.metrics.boundary`
for boundary IoU / F1.
"""

from __future__ import annotations

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
