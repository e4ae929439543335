"""Boundary scores per class: boundary IoU (Cheng et al. 2021) and boundary F1 (Csurka et al. 2013).

Both use the same square (2D) / cubic (3D) neighbourhood of radius ``d`` pixels (Chebyshev
distance), as Cheng et al.'s reference, which erodes with an iterated 3 x 3 kernel.

- *Boundary band* of a class mask ``M``: ``M`` minus its erosion by ``d``. Outside the image counts
  as "not the class" (zero padding, as in Cheng et al.'s reference), so class pixels within ``d``
  of the image edge are boundary pixels.
  Boundary IoU of class c: ``|G_d & P_d| / |G_d | P_d|`` (``G_d`` of the truth, ``P_d`` of the
  prediction; both bands lie inside their masks).
- *Contour* of a mask: its band of width 1. Boundary F1 of class c: precision = share of predicted
  contour pixels within ``d`` of a truth contour pixel, recall = share of truth contour pixels within
  ``d`` of a predicted one, ``F1 = 2PR / (P + R)``.

Pixels not scored (ignore index, truth nodata, valid mask) are set to "no class" in *both* maps
before the masks are formed, and are never counted; a prediction nodata pixel is "no class" in the
prediction. Computing on chunks reads each chunk with a halo of ``d + 1`` pixels, which is exactly
what the filters at the chunk's own pixels can see, so chunked counts equal whole-image counts.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiler.errors import ScoreError
from tiler.geometry import Window
from tiler.metrics.confusion import LabelRules, label_codes

DEFAULT_WIDTH_PIXELS = 3
"""The boundary band of every score by default (a job's ``scoring.boundary_width``, ``tiler score``): 3 pixels, the
band where blurred edges and tile seams show."""


class WidthUnit(enum.StrEnum):
    """The unit of a boundary width: pixels, or a fraction of the image diagonal."""

    PIXELS = "pixels"
    DIAGONAL = "diagonal"


@dataclass(frozen=True)
class BoundaryWidth:
    """The boundary band width ``d``, in pixels or as a fraction of the image diagonal.

    Attributes:
        value: The width (pixels, or a fraction in (0, 1]).
        unit: Its unit.

    """

    value: float
    unit: WidthUnit = WidthUnit.DIAGONAL

    def __post_init__(self) -> None:
        bad_pixels = self.unit is WidthUnit.PIXELS and (not float(self.value).is_integer() or self.value < 1)
        bad_fraction = self.unit is WidthUnit.DIAGONAL and not 0 < self.value <= 1
        if bad_pixels or bad_fraction:
            raise ScoreError(
                f"boundary width {self.value!r} {self.unit.value} is invalid; give whole pixels >= 1 "
                "(e.g. --boundary-width 5px) or a fraction of the diagonal in (0, 1] (e.g. 0.02)."
            )

    @classmethod
    def parse(cls, text: str) -> BoundaryWidth:
        """Parse ``"5px"`` (pixels) or ``"0.02"`` (fraction of the image diagonal)."""
        raw = text.strip().lower()
        try:
            if raw.endswith("px"):
                return cls(float(raw[:-2]), WidthUnit.PIXELS)
            return cls(float(raw), WidthUnit.DIAGONAL)
        except ValueError:
            raise ScoreError(
                f"--boundary-width {text!r} is not a number; give pixels as '5px' or a diagonal fraction "
                "as '0.02'."
            ) from None

    def pixels(self, shape: Sequence[int]) -> int:
        """``d`` in pixels for an image of ``shape``: ``max(1, round(fraction * diagonal))`` or the pixels."""
        if self.unit is WidthUnit.PIXELS:
            return int(self.value)
        diagonal = math.sqrt(sum(float(s) ** 2 for s in shape))
        return max(1, int(round(self.value * diagonal)))


@dataclass(frozen=True)
class BoundaryCounts:
    """Per-class boundary counts, each ``(K,)`` int64; sums exactly over chunks with ``+``.

    Attributes:
        intersection: ``|G_d & P_d|``.
        truth_band: ``|G_d|``.
        pred_band: ``|P_d|``.
        pred_contour: Predicted contour pixels.
        pred_matched: Predicted contour pixels within ``d`` of a truth contour pixel.
        truth_contour: Truth contour pixels.
        truth_matched: Truth contour pixels within ``d`` of a predicted contour pixel.

    """

    intersection: np.ndarray
    truth_band: np.ndarray
    pred_band: np.ndarray
    pred_contour: np.ndarray
    pred_matched: np.ndarray
    truth_contour: np.ndarray
    truth_matched: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> BoundaryCounts:
        """All-zero counts for ``num_classes`` classes."""
        return cls(*(np.zeros(num_classes, dtype=np.int64) for _ in range(7)))

    def __add__(self, other: BoundaryCounts) -> BoundaryCounts:
        return BoundaryCounts(*(a + b for a, b in zip(self._fields(), other._fields(), strict=True)))

    def _fields(self) -> tuple[np.ndarray, ...]:
        return (
            self.intersection,
            self.truth_band,
            self.pred_band,
            self.pred_contour,
            self.pred_matched,
            self.truth_contour,
            self.truth_matched,
        )

    def equals(self, other: BoundaryCounts) -> bool:
        """Whether every count is identical."""
        return all(np.array_equal(a, b) for a, b in zip(self._fields(), other._fields(), strict=True))

    @property
    def union(self) -> np.ndarray:
        """``|G_d | P_d|`` per class."""
        return self.truth_band + self.pred_band - self.intersection

    def iou(self) -> list[float | None]:
        """Boundary IoU per class; None where the class has no boundary in either map."""
        pairs = zip(self.intersection, self.union, strict=True)
        return [float(i) / float(u) if u > 0 else None for i, u in pairs]

    def f1(self) -> list[float | None]:
        """Boundary F1 per class; None where neither map has a contour of the class, 0 if only one has."""
        out: list[float | None] = []
        for pc, pm, tc, tm in zip(
            self.pred_contour, self.pred_matched, self.truth_contour, self.truth_matched, strict=True
        ):
            if pc == 0 and tc == 0:
                out.append(None)
                continue
            precision = pm / pc if pc else 0.0
            recall = tm / tc if tc else 0.0
            out.append(float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0)
        return out


def _band(codes: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose radius-``radius`` cube is not all their own code (outside the array differs).

    ``codes`` are ``0..K``; min and max filters with sentinels below / above every code meet only inside
    a uniform cube. Codes go to uint8 (shifted by one, sentinels 0 and 255) when they fit: the filters
    run 2-3x faster on bytes than on int32.
    """
    from scipy import ndimage  # here, not at import: the report path imports this module for its types

    size = 2 * radius + 1
    if int(codes.max(initial=0)) < 254:
        small = (codes + 1).astype(np.uint8)
        low_cval, high_cval = 0, 255
    else:
        small = codes.astype(np.int32, copy=False)
        low_cval, high_cval = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    low = ndimage.minimum_filter(small, size=size, mode="constant", cval=low_cval)
    high = ndimage.maximum_filter(small, size=size, mode="constant", cval=high_cval)
    return np.asarray(low != high)


def _window_counts(
    t_codes: np.ndarray, p_codes: np.ndarray, core: tuple[slice, ...], k: int, width: int
) -> BoundaryCounts:
    """Boundary counts of the ``core`` pixels of a (halo'd) window of codes; see the module docstring."""
    from scipy import ndimage

    t_core, p_core = t_codes[core], p_codes[core]
    t_band = _band(t_codes, width)[core] & (t_core < k)
    p_band = _band(p_codes, width)[core] & (p_core < k)
    both = t_band & p_band & (t_core == p_core)
    counts = BoundaryCounts.zeros(k)
    counts.intersection[:] = np.bincount(t_core[both], minlength=k + 1)[:k]
    counts.truth_band[:] = np.bincount(t_core[t_band], minlength=k + 1)[:k]
    counts.pred_band[:] = np.bincount(p_core[p_band], minlength=k + 1)[:k]
    t_contour = _band(t_codes, 1) & (t_codes < k)
    p_contour = _band(p_codes, 1) & (p_codes < k)
    size = 2 * width + 1
    t_classes = set(np.unique(t_codes[t_contour]).tolist())
    p_classes = set(np.unique(p_codes[p_contour]).tolist())
    for c in sorted(t_classes | p_classes):
        t_c = t_contour & (t_codes == c)
        p_c = p_contour & (p_codes == c)
        counts.truth_contour[c] = np.count_nonzero(t_c[core])
        counts.pred_contour[c] = np.count_nonzero(p_c[core])
        if c in t_classes and c in p_classes:
            near_t = ndimage.maximum_filter(t_c.view(np.uint8), size=size, mode="constant", cval=0)[core]
            near_p = ndimage.maximum_filter(p_c.view(np.uint8), size=size, mode="constant", cval=0)[core]
            counts.pred_matched[c] = np.count_nonzero(p_c[core] & near_t.astype(bool))
            counts.truth_matched[c] = np.count_nonzero(t_c[core] & near_p.astype(bool))
    return counts


def boundary_counts(
    truth: np.ndarray,
    pred: np.ndarray,
    *,
    num_classes: int,
    width: int,
    ignore_index: float | None = 255,
    valid: np.ndarray | None = None,
    truth_nodata: float | None = None,
    pred_nodata: float | None = None,
) -> BoundaryCounts:
    """Per-class boundary counts of two in-memory label maps ``(H, W)`` / ``(D, H, W)``.

    Args:
        truth: Truth labels.
        pred: Predicted labels, same shape.
        num_classes: ``K``.
        width: Band width / match tolerance ``d`` in pixels (>= 1); see :class:`BoundaryWidth`.
        ignore_index: Truth value never scored.
        valid: Optional boolean mask of scored pixels.
        truth_nodata: Truth nodata value (not scored).
        pred_nodata: Prediction nodata value ("no class" in the prediction).

    Returns:
        The counts; ``.iou()`` and ``.f1()`` give the scores.

    """
    rules = LabelRules(num_classes, ignore_index, truth_nodata, pred_nodata)
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ScoreError(f"truth shape {truth.shape} and prediction shape {pred.shape} differ; use one grid.")
    _check_width(width)
    mask = None if valid is None else np.asarray(valid)
    t_codes, p_codes = label_codes(truth, pred, mask, rules, dtype=np.int32)
    full = tuple(slice(None) for _ in truth.shape)
    return _window_counts(t_codes, p_codes, full, num_classes, width)


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int | np.integer) or width < 1:
        raise ScoreError(f"boundary width={width!r} must be whole pixels >= 1; see BoundaryWidth.pixels().")


def _chunk_task(
    truth: np.ndarray,
    pred: np.ndarray,
    valid: np.ndarray | None,
    core: tuple[slice, ...],
    rules: LabelRules,
    width: int,
) -> BoundaryCounts:
    t_codes, p_codes = label_codes(truth, pred, valid, rules, dtype=np.int32)
    return _window_counts(t_codes, p_codes, core, rules.num_classes, width)


def _chunk_windows(chunks: tuple[tuple[int, ...], ...]) -> list[Window]:
    edges = [np.concatenate([[0], np.cumsum(c)]).astype(int).tolist() for c in chunks]
    ranges = [list(zip(e[:-1], e[1:], strict=True)) for e in edges]
    return [Window(tuple(a for a, _ in r), tuple(b for _, b in r)) for r in itertools.product(*ranges)]


def boundary_counts_chunked(
    truth: Any,
    pred: Any,
    *,
    num_classes: int,
    width: int,
    ignore_index: float | None = 255,
    valid: Any | None = None,
    truth_nodata: float | None = None,
    pred_nodata: float | None = None,
    chunks: Any | None = None,
) -> BoundaryCounts:
    """:func:`boundary_counts` out of core: each chunk is read with a ``width + 1`` halo; counts are summed.

    Args:
        truth: Truth labels: a dask array or anything ``dask.array.from_array`` accepts.
        pred: Predicted labels, same shape.
        num_classes: ``K``.
        width: ``d`` in pixels (>= 1).
        ignore_index: Truth value never scored.
        valid: Optional boolean mask (array-like of the same shape).
        truth_nodata: Truth nodata value.
        pred_nodata: Prediction nodata value.
        chunks: Optional dask chunk spec for the cores (default: the truth's chunks).

    Returns:
        Exactly the whole-image counts.

    """
    import dask  # here, not at import: dask (and the xarray/pandas it pulls in) costs seconds to import
    import dask.array as da

    rules = LabelRules(num_classes, ignore_index, truth_nodata, pred_nodata)
    _check_width(width)
    if tuple(truth.shape) != tuple(pred.shape):
        raise ScoreError(
            f"truth shape {tuple(truth.shape)} and prediction shape {tuple(pred.shape)} differ; use one grid."
        )
    t = truth if isinstance(truth, da.Array) else da.from_array(truth, chunks="auto")
    if chunks is not None:
        t = t.rechunk(chunks)
    p = pred if isinstance(pred, da.Array) else da.from_array(pred, chunks=t.chunks)
    v = valid if valid is None or isinstance(valid, da.Array) else da.from_array(valid, chunks=t.chunks)
    halo = width + 1
    tasks = []
    for core in _chunk_windows(t.chunks):
        start = tuple(max(0, a - halo) for a in core.start)
        stop = tuple(min(n, b + halo) for n, b in zip(t.shape, core.stop, strict=True))
        outer = Window(start, stop)
        local = core.relative_to(outer).slices
        sl = outer.slices
        tasks.append(
            dask.delayed(_chunk_task)(t[sl], p[sl], None if v is None else v[sl], local, rules, width)
        )
    total = BoundaryCounts.zeros(num_classes)
    for part in dask.compute(*tasks):
        total = total + part
    return total
