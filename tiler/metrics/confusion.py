"""Confusion matrices of label maps, in memory (numpy) and out of core (dask), with the ignore rules.

Convention: ``n[truth, pred]``, int64. A truth pixel is *ignored* (not counted anywhere) when it
equals ``ignore_index``, equals the truth's nodata, or lies outside the ``valid`` mask. A
prediction pixel equal to the prediction's own nodata is a wrong "no prediction": it is counted in
an extra last column ``n[:, K]`` (present only when ``pred_nodata`` is given), so it adds to the
truth class's count but to no predicted class. Any other value outside ``[0, K)`` at a scored pixel
is an error, never silently dropped. Counts are int64 and labels are cast to int64 (or a 16-bit
pair index for byte labels) before ``truth * n + pred``, so nothing wraps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tiler.errors import ScoreError

if TYPE_CHECKING:
    import dask.array as da

_BYTE_BINS = 256 * 256
_SLICE = 1 << 18


@dataclass(frozen=True)
class LabelRules:
    """What counts as a class, what is ignored, and what means "no prediction".

    Attributes:
        num_classes: ``K``; classes are the labels ``0 .. K-1``.
        ignore_index: Truth value that is never scored (default 255); None for none.
        truth_nodata: The truth file's nodata value (ignored like ``ignore_index``); None for none.
        pred_nodata: The prediction file's nodata value: a wrong "no prediction"; None for none.

    """

    num_classes: int
    ignore_index: float | None = 255
    truth_nodata: float | None = None
    pred_nodata: float | None = None

    def __post_init__(self) -> None:
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ScoreError(f"num_classes={k!r} must be a whole number >= 1; pass --num-classes N.")

    @property
    def columns(self) -> int:
        """Number of prediction columns: ``K``, plus one "no prediction" column with a pred nodata."""
        return self.num_classes + (1 if self.pred_nodata is not None else 0)


@dataclass(frozen=True)
class PixelCounts:
    """A confusion matrix plus the number of ignored pixels; sums exactly over blocks with ``+``.

    Attributes:
        confusion: ``(K, K)`` int64, or ``(K, K + 1)`` whose last column counts "no prediction".
        ignored: Pixels excluded by ``ignore_index``, the truth's nodata or the valid mask.

    """

    confusion: np.ndarray
    ignored: int

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.confusion + other.confusion, self.ignored + other.ignored)

    @property
    def scored(self) -> int:
        """Pixels that were scored (every count in the matrix)."""
        return int(self.confusion.sum())


def _equals(values: np.ndarray, target: float | None) -> np.ndarray:
    """Elementwise ``values == target`` (bool array) where a NaN target matches NaN; all False for None."""
    if target is None:
        return np.zeros(values.shape, dtype=bool)
    if isinstance(target, float) and math.isnan(target):
        return np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, dtype=bool)
    return np.asarray(values == target)


class LabelRangeError(ScoreError):
    """Label values outside ``[0, K)`` at scored pixels, in the truth or the prediction.

    The message words the fix as ``tiler score`` flags; a caller with other knobs (the segment job's
    ``scoring`` keys) reads the attributes and words its own.

    Attributes:
        role: ``"truth"`` or ``"prediction"``.
        values: The offending values (the distinct ones among the first 20 found), sorted.
        num_classes: ``K`` of the rules that refused them.
        top: The largest offending value that is a whole number >= 0, or -1.
    """

    def __init__(
        self, message: str, *, role: str = "", values: list[float] | None = None, num_classes: int = 0, top: int = -1
    ) -> None:
        super().__init__(message)
        self.role = role
        self.values = list(values or [])
        self.num_classes = num_classes
        self.top = top


def _out_of_range_error(role: str, values: np.ndarray, rules: LabelRules) -> LabelRangeError:
    """Build the error for label values outside ``[0, K)`` at scored pixels, naming them and the fix."""
    nan = values.dtype.kind == "f" and bool(np.isnan(values).any())
    numbers = values[~np.isnan(values)] if nan else values
    shown = sorted({float(v) if not float(v).is_integer() else int(v) for v in numbers[:20]})
    shown += [float("nan")] if nan else []  # once: NaN equals nothing, so a set keeps every one
    top = max((int(v) for v in values if np.isfinite(v) and v >= 0), default=-1)
    if role == "prediction":
        hint = (
            f"pass --num-classes {top + 1} (num_classes={top + 1}) if the model has that many classes, or "
            "declare the value as the prediction's nodata"
            if top >= rules.num_classes
            else "labels must be whole numbers in [0, num_classes)"
        )
    else:
        hint = (
            f"pass --num-classes {top + 1} (num_classes={top + 1}), or --ignore-index V for a void label"
            if top >= rules.num_classes
            else "set --ignore-index or the truth's nodata to the void label"
        )
    return LabelRangeError(
        f"the {role} holds label value(s) {shown} outside [0, num_classes={rules.num_classes}) at scored "
        f"pixels; {hint}.",
        role=role, values=shown, num_classes=rules.num_classes, top=top,
    )


def label_codes(
    truth: np.ndarray,
    pred: np.ndarray,
    valid: np.ndarray | None,
    rules: LabelRules,
    *,
    dtype: type = np.int64,
) -> tuple[np.ndarray, np.ndarray]:
    """Map both label maps to codes ``0..K-1`` (a class) or ``K`` (not scored / no prediction).

    Pixels ignored in the truth get code ``K`` in *both* maps; a prediction nodata pixel gets ``K``
    in the prediction only.

    Args:
        truth: Truth labels, any shape ``(H, W)`` / ``(D, H, W)``.
        pred: Predicted labels, same shape.
        valid: Optional boolean mask, same shape; False pixels are ignored.
        rules: The label rules.
        dtype: Integer dtype of the codes (must hold ``K``).

    Returns:
        ``(truth_codes, pred_codes)``, arrays of ``dtype`` and the input shape.

    Raises:
        ScoreError: A scored pixel holds a label outside ``[0, K)`` (or a non-whole float).

    """
    k = rules.num_classes
    keep = ~(_equals(truth, rules.ignore_index) | _equals(truth, rules.truth_nodata))
    if valid is not None:
        keep = keep & valid.astype(bool, copy=False)
    no_pred = _equals(pred, rules.pred_nodata)
    t_codes, t_bad = _to_codes(truth, k, dtype)
    p_codes, p_bad = _to_codes(pred, k, dtype)
    if (t_bad & keep).any():
        raise _out_of_range_error("truth", truth[t_bad & keep], rules)
    if (p_bad & keep & ~no_pred).any():
        raise _out_of_range_error("prediction", pred[p_bad & keep & ~no_pred], rules)
    t_codes[~keep] = k
    p_codes[~keep | no_pred] = k
    return t_codes, p_codes


def _to_codes(labels: np.ndarray, k: int, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Labels as integer codes (out-of-range values become ``k``) and the mask of out-of-range values."""
    if labels.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~((labels >= 0) & (labels < k) & (labels == np.floor(labels)))
        return np.where(bad, k, labels).astype(dtype), bad
    bad = labels >= k if labels.dtype.kind == "u" else (labels < 0) | (labels >= k)
    codes: np.ndarray = labels.astype(dtype)  # values that wrap here are out of range, overwritten next
    codes[bad] = k
    return codes, bad


def _counts_generic(
    truth: np.ndarray, pred: np.ndarray, valid: np.ndarray | None, rules: LabelRules
) -> np.ndarray:
    """Flat ``K * columns + 1`` counts (confusion, then ignored) of one block, any label dtypes."""
    k, cols = rules.num_classes, rules.columns
    t_codes, p_codes = label_codes(truth, pred, valid, rules)
    kept = t_codes < k
    index = t_codes[kept] * cols + np.minimum(p_codes[kept], cols - 1)
    out = np.zeros(k * cols + 1, dtype=np.int64)
    out[:-1] = np.bincount(index, minlength=k * cols)
    out[-1] = t_codes.size - index.size
    return out


def _is_byte(dtype: np.dtype) -> bool:
    return dtype.kind in "ui" and dtype.itemsize == 1


def _counts_bytes(truth: np.ndarray, pred: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Joint histogram (65536 + 1) of raw byte values of one block; the last entry counts masked pixels.

    The fast path for 8-bit labels: a uint16 pair index ``truth << 8 | pred`` and ``np.bincount``;
    ignore rules and range checks are applied later to the 256 x 256 table (:func:`_fold_bytes`).
    The block is counted in slices of :data:`_SLICE` pixels so that the index (and the intp copy
    ``np.bincount`` makes of it) stay in cache: about 1.4x faster than one whole-block bincount.
    """
    t = truth.view(np.uint8).reshape(-1)
    p = pred.view(np.uint8).reshape(-1)
    mask = None if valid is None else np.broadcast_to(valid.astype(bool, copy=False), truth.shape).reshape(-1)
    out = np.zeros(_BYTE_BINS + 1, dtype=np.int64)
    index = np.empty(min(_SLICE, t.size), dtype=np.uint16)
    for start in range(0, t.size, _SLICE):
        stop = min(t.size, start + _SLICE)
        part = index[: stop - start]
        np.left_shift(t[start:stop], 8, out=part, dtype=np.uint16)
        np.bitwise_or(part, p[start:stop], out=part)
        kept = part if mask is None else part[mask[start:stop]]
        out[:-1] += np.bincount(kept, minlength=_BYTE_BINS)
        out[-1] += (stop - start) - kept.size
    return out


def _fold_bytes(raw: np.ndarray, t_dtype: np.dtype, p_dtype: np.dtype, rules: LabelRules) -> PixelCounts:
    """Turn a raw 256 x 256 byte-pair histogram into the confusion matrix under ``rules``."""
    k, cols = rules.num_classes, rules.columns
    table = raw[:-1].reshape(256, 256)
    t_values = np.arange(256, dtype=np.uint8).view(t_dtype).astype(np.float64)
    p_values = np.arange(256, dtype=np.uint8).view(p_dtype).astype(np.float64)
    t_ignored = _equals(t_values, rules.ignore_index) | _equals(t_values, rules.truth_nodata)
    p_nodata = _equals(p_values, rules.pred_nodata)
    t_class = (t_values >= 0) & (t_values < k) & ~t_ignored
    p_class = (p_values >= 0) & (p_values < k) & ~p_nodata
    kept_rows = table[~t_ignored]
    t_bad = ~t_ignored & ~t_class & (table.sum(axis=1) > 0)
    if t_bad.any():
        raise _out_of_range_error("truth", t_values[t_bad], rules)
    p_bad = ~p_class & ~p_nodata & (kept_rows.sum(axis=0) > 0)
    if p_bad.any():
        raise _out_of_range_error("prediction", p_values[p_bad], rules)
    t_index = np.flatnonzero(t_class)
    p_index = np.flatnonzero(p_class)
    confusion = np.zeros((k, cols), dtype=np.int64)
    rows = table[t_index]
    t_labels, p_labels = t_values[t_index].astype(np.int64), p_values[p_index].astype(np.int64)
    confusion[np.ix_(t_labels, p_labels)] = rows[:, p_index]
    if rules.pred_nodata is not None:
        confusion[t_labels, k] = rows[:, p_nodata].sum(axis=1)
    ignored = int(table[t_ignored].sum()) + int(raw[-1])
    return PixelCounts(confusion, ignored)


def _unflatten(flat: np.ndarray, rules: LabelRules) -> PixelCounts:
    k, cols = rules.num_classes, rules.columns
    return PixelCounts(flat[:-1].reshape(k, cols).copy(), int(flat[-1]))


def _check_shapes(truth: Any, pred: Any, valid: Any) -> None:
    if tuple(truth.shape) != tuple(pred.shape):
        raise ScoreError(
            f"truth shape {tuple(truth.shape)} and prediction shape {tuple(pred.shape)} differ; score a "
            "prediction made on the same grid as its truth (same rows, cols[, slices])."
        )
    if valid is not None and tuple(valid.shape) != tuple(truth.shape):
        raise ScoreError(
            f"valid mask shape {tuple(valid.shape)} differs from the label shape {tuple(truth.shape)}; "
            "give a mask of the image's shape."
        )


def count_pixels(
    truth: np.ndarray,
    pred: np.ndarray,
    *,
    num_classes: int,
    ignore_index: float | None = 255,
    valid: np.ndarray | None = None,
    truth_nodata: float | None = None,
    pred_nodata: float | None = None,
) -> PixelCounts:
    """Confusion matrix and ignored-pixel count of two in-memory label maps.

    Args:
        truth: Truth labels ``(H, W)`` or ``(D, H, W)``.
        pred: Predicted labels, same shape.
        num_classes: ``K``.
        ignore_index: Truth value never scored (None for none).
        valid: Optional boolean mask of scored pixels, same shape.
        truth_nodata: Truth nodata value (ignored).
        pred_nodata: Prediction nodata value (a wrong "no prediction", extra last column).

    Returns:
        The counts; ``confusion`` is ``(K, K)``, or ``(K, K + 1)`` when ``pred_nodata`` is given.

    Raises:
        ScoreError: Shapes differ, or a scored pixel holds a label outside ``[0, K)``.

    """
    rules = LabelRules(num_classes, ignore_index, truth_nodata, pred_nodata)
    truth, pred = np.asarray(truth), np.asarray(pred)
    valid = None if valid is None else np.asarray(valid)
    _check_shapes(truth, pred, valid)
    if _is_byte(truth.dtype) and _is_byte(pred.dtype):
        return _fold_bytes(_counts_bytes(truth, pred, valid), truth.dtype, pred.dtype, rules)
    return _unflatten(_counts_generic(truth, pred, valid, rules), rules)


def confusion_matrix(
    truth: np.ndarray,
    pred: np.ndarray,
    *,
    num_classes: int,
    ignore_index: float | None = 255,
    valid: np.ndarray | None = None,
    truth_nodata: float | None = None,
    pred_nodata: float | None = None,
) -> np.ndarray:
    """Count the confusion matrix ``n[truth, pred]`` (int64) of two in-memory label maps.

    Summing the matrices of disjoint blocks gives the matrix of their union exactly.
    See :func:`count_pixels` for the arguments.

    Returns:
        ``(K, K)`` int64, or ``(K, K + 1)`` with a "no prediction" column when ``pred_nodata`` is given.

    """
    return count_pixels(
        truth,
        pred,
        num_classes=num_classes,
        ignore_index=ignore_index,
        valid=valid,
        truth_nodata=truth_nodata,
        pred_nodata=pred_nodata,
    ).confusion


def _block_kernel(*blocks: np.ndarray, rules: LabelRules, fast: bool, ndim: int) -> np.ndarray:
    """Per-chunk counts, shaped ``(1,) * ndim + (bins,)`` so that dask can sum them."""
    truth, pred = blocks[0], blocks[1]
    valid = blocks[2] if len(blocks) > 2 else None
    flat = _counts_bytes(truth, pred, valid) if fast else _counts_generic(truth, pred, valid, rules)
    return flat.reshape((1,) * ndim + (-1,))


def _as_dask(array: Any, chunks: Any) -> da.Array:
    import dask.array as da  # here, not at import: dask (and the xarray/pandas it pulls in) costs seconds

    if isinstance(array, da.Array):
        return array if chunks is None else array.rechunk(chunks)
    return da.from_array(array, chunks=chunks if chunks is not None else "auto")


def count_pixels_chunked(
    truth: Any,
    pred: Any,
    *,
    num_classes: int,
    ignore_index: float | None = 255,
    valid: Any | None = None,
    truth_nodata: float | None = None,
    pred_nodata: float | None = None,
    chunks: Any | None = None,
) -> PixelCounts:
    """:func:`count_pixels` out of core: one bincount per chunk, summed by dask; never loads the image.

    Args:
        truth: Truth labels: a dask array, or anything ``dask.array.from_array`` accepts (zarr, numpy).
        pred: Predicted labels, same shape; rechunked to the truth's chunks when they differ.
        num_classes: ``K``.
        ignore_index: Truth value never scored (None for none).
        valid: Optional boolean mask (array-like of the same shape).
        truth_nodata: Truth nodata value (ignored).
        pred_nodata: Prediction nodata value (a wrong "no prediction").
        chunks: Optional chunking to impose on all inputs (dask chunk spec).

    Returns:
        The same counts as :func:`count_pixels` on the whole image, exactly.

    """
    rules = LabelRules(num_classes, ignore_index, truth_nodata, pred_nodata)
    _check_shapes(truth, pred, valid)
    t = _as_dask(truth, chunks)
    p = _as_dask(pred, t.chunks)
    arrays = [t, p] if valid is None else [t, p, _as_dask(valid, t.chunks)]
    fast = _is_byte(t.dtype) and _is_byte(p.dtype)
    bins = _BYTE_BINS + 1 if fast else rules.num_classes * rules.columns + 1
    import dask.array as da

    per_chunk = da.map_blocks(
        _block_kernel,
        *arrays,
        rules=rules,
        fast=fast,
        ndim=t.ndim,
        dtype=np.int64,
        chunks=tuple((1,) * len(c) for c in t.chunks) + ((bins,),),
        new_axis=t.ndim,
        meta=np.empty((0,) * (t.ndim + 1), dtype=np.int64),
    )
    flat = per_chunk.sum(axis=tuple(range(t.ndim)), dtype=np.int64).compute()
    if fast:
        return _fold_bytes(flat, t.dtype, p.dtype, rules)
    return _unflatten(flat, rules)


def confusion_matrix_chunked(
    truth: Any,
    pred: Any,
    *,
    num_classes: int,
    ignore_index: float | None = 255,
    valid: Any | None = None,
    truth_nodata: float | None = None,
    pred_nodata: float | None = None,
    chunks: Any | None = None,
) -> np.ndarray:
    """Count the confusion matrix of two chunked label maps (dask, zarr, numpy).

    See :func:`count_pixels_chunked` for the arguments.

    Returns:
        ``(K, K)`` int64, or ``(K, K + 1)`` with a "no prediction" column when ``pred_nodata`` is given.

    """
    return count_pixels_chunked(
        truth,
        pred,
        num_classes=num_classes,
        ignore_index=ignore_index,
        valid=valid,
        truth_nodata=truth_nodata,
        pred_nodata=pred_nodata,
        chunks=chunks,
    ).confusion
