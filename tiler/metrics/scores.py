"""Scores derived from a confusion matrix: frequency-weighted IoU (the headline), IoU, Dice, accuracies.

With ``n[truth, pred]``, ``t_i = sum_j n_ij`` (truth pixels of class i, "no prediction" included)
and ``p_i = sum_j n_ji`` (pixels predicted as i):

- ``IoU_i = n_ii / (t_i + p_i - n_ii)``; ``Dice_i = 2 n_ii / (t_i + p_i)``;
- ``FWIoU = sum_i (t_i / sum t) IoU_i`` (Long et al., FCN 2015);
- mean IoU and mean Dice over the classes present in the truth or the prediction (classes absent
  from both are listed in ``absent_classes`` and get None, never NaN);
- the same means over the *foreground* classes only (every class but the background, see
  :mod:`tiler.io.classes`), and the *worst class*: the foreground class with the lowest IoU, so a
  class the model misses is named beside a headline FWIoU that the large classes carry;
- pixel accuracy ``sum_i n_ii / sum t``; mean class accuracy over classes present in the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiler.errors import ScoreError
from tiler.io.classes import foreground_classes
from tiler.metrics.boundary import BoundaryCounts


def _ratio(num: np.ndarray, den: np.ndarray, present: np.ndarray) -> list[float | None]:
    return [float(n) / float(d) if p and d > 0 else None for n, d, p in zip(num, den, present, strict=True)]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


@dataclass(frozen=True)
class Scores:
    """Every score of one prediction against its truth; per-class lists hold None for absent classes.

    Attributes:
        num_classes: ``K``.
        class_names: One name per class.
        confusion_matrix: ``(K, K)`` int64 ``n[truth, pred]`` (or ``(K, K + 1)`` with "no prediction").
        fwiou: Frequency-weighted IoU, the headline.
        miou: Mean IoU over the classes present in truth or prediction.
        per_class_iou: IoU per class.
        dice: Mean Dice over the same classes as ``miou``.
        per_class_dice: Dice per class.
        pixel_accuracy: Correct / scored pixels.
        mean_class_accuracy: Mean recall over the classes present in the truth.
        per_class_accuracy: Recall per class (None where the class is absent from the truth).
        truth_pixels: ``t_i`` per class.
        pred_pixels: ``p_i`` per class.
        absent_classes: Classes in neither truth nor prediction (excluded from the means).
        ignored_pixels: Pixels excluded by the ignore index, nodata or the valid mask.
        scored_pixels: Pixels counted in the matrix.
        no_prediction_pixels: Scored pixels where the prediction held its nodata.
        boundary_width: Boundary band width ``d`` in pixels, None when boundary scores were not computed.
        boundary_iou: Boundary IoU per class (Cheng et al. 2021), or None.
        boundary_f1: Boundary F1 per class (Csurka et al. 2013), or None.
        mean_boundary_iou: Mean of ``boundary_iou`` over the classes that have one.
        mean_boundary_f1: Mean of ``boundary_f1`` over the classes that have one.
        foreground: The classes averaged in ``foreground_miou`` / ``foreground_dice`` (present ones only).
        foreground_miou: Mean IoU over the foreground classes present in truth or prediction, or None.
        foreground_dice: Mean Dice over the same classes, or None.
        worst_class: The foreground class with the lowest IoU (None when none is present).

    """

    num_classes: int
    class_names: tuple[str, ...]
    confusion_matrix: np.ndarray
    fwiou: float
    miou: float
    per_class_iou: tuple[float | None, ...]
    dice: float
    per_class_dice: tuple[float | None, ...]
    pixel_accuracy: float
    mean_class_accuracy: float
    per_class_accuracy: tuple[float | None, ...]
    truth_pixels: tuple[int, ...]
    pred_pixels: tuple[int, ...]
    absent_classes: tuple[int, ...]
    ignored_pixels: int
    scored_pixels: int
    no_prediction_pixels: int
    boundary_width: int | None = None
    boundary_iou: tuple[float | None, ...] | None = None
    boundary_f1: tuple[float | None, ...] | None = None
    mean_boundary_iou: float | None = None
    mean_boundary_f1: float | None = None
    foreground: tuple[int, ...] = ()
    foreground_miou: float | None = None
    foreground_dice: float | None = None
    worst_class: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_class_name(self) -> str | None:
        """The name of :attr:`worst_class`."""
        return None if self.worst_class is None else self.class_names[self.worst_class]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists and plain numbers; absent values are None, never NaN)."""
        out: dict[str, Any] = {
            "fwiou": self.fwiou,
            "miou": self.miou,
            "per_class_iou": list(self.per_class_iou),
            "dice": self.dice,
            "per_class_dice": list(self.per_class_dice),
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class_accuracy": list(self.per_class_accuracy),
            "boundary_width": self.boundary_width,
            "boundary_iou": None if self.boundary_iou is None else list(self.boundary_iou),
            "boundary_f1": None if self.boundary_f1 is None else list(self.boundary_f1),
            "mean_boundary_iou": self.mean_boundary_iou,
            "mean_boundary_f1": self.mean_boundary_f1,
            "foreground_classes": list(self.foreground),
            "foreground_miou": self.foreground_miou,
            "foreground_dice": self.foreground_dice,
            "worst_class": self.worst_class,
            "worst_class_name": self.worst_class_name,
            "worst_class_iou": None if self.worst_class is None else self.per_class_iou[self.worst_class],
            "confusion_matrix": self.confusion_matrix.tolist(),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "absent_classes": list(self.absent_classes),
            "truth_pixels": list(self.truth_pixels),
            "pred_pixels": list(self.pred_pixels),
            "ignored_pixels": self.ignored_pixels,
            "scored_pixels": self.scored_pixels,
            "no_prediction_pixels": self.no_prediction_pixels,
        }
        out.update(self.extra)
        return out


def _check_matrix(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[1] not in (cm.shape[0], cm.shape[0] + 1) or cm.shape[0] < 1:
        raise ScoreError(
            f"confusion matrix shape {cm.shape} is not (K, K) or (K, K + 1); build it with confusion_matrix()"
        )
    if cm.dtype.kind not in "iu" or (cm < 0).any():
        raise ScoreError(f"confusion matrix must hold non-negative integer counts; got dtype {cm.dtype}.")
    return cm.astype(np.int64, copy=False)


def scores_from_confusion(
    cm: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    ignored_pixels: int = 0,
    boundary: BoundaryCounts | None = None,
    boundary_width: int | None = None,
    background: Sequence[int] | None = None,
) -> Scores:
    """All scores from a confusion matrix ``n[truth, pred]``.

    Args:
        cm: ``(K, K)`` int64 counts, or ``(K, K + 1)`` whose last column counts "no prediction".
        class_names: Optional name per class (default ``"0" .. "K-1"``).
        ignored_pixels: Pixels excluded from ``cm`` (reported, and named in the all-ignored error).
        boundary: Optional boundary counts to turn into boundary IoU / F1.
        boundary_width: The band width in pixels used for ``boundary``.
        background: Classes left out of the foreground means (default: a class named ``background``).

    Returns:
        The scores.

    Raises:
        ScoreError: The matrix is malformed, names do not match ``K``, or nothing was scored.

    """
    cm = _check_matrix(cm)
    k = cm.shape[0]
    names = tuple(str(i) for i in range(k)) if class_names is None else tuple(class_names)
    if len(names) != k:
        raise ScoreError(f"class_names has {len(names)} names but num_classes={k}; give one name per class.")
    total = int(cm.sum())
    if total == 0:
        raise ScoreError(
            f"all {ignored_pixels} pixels are ignored (ignore index, truth nodata or valid mask): nothing to "
            "score; check ignore_index/nodata (--ignore-index) and that the truth overlaps the prediction."
        )
    diag = np.diag(cm[:, :k]).astype(np.int64)
    t = cm.sum(axis=1)
    p = cm[:, :k].sum(axis=0)
    present = (t + p) > 0
    iou = _ratio(diag, t + p - diag, present)
    dice = _ratio(2 * diag, t + p, present)
    acc = _ratio(diag, t, t > 0)
    fwiou = float(sum((t[i] / total) * v for i, v in enumerate(iou) if v is not None))
    if background is None:
        background = [i for i in range(k) if i not in foreground_classes(names)]
    fg = tuple(i for i in range(k) if i not in set(background) and iou[i] is not None)
    worst = min(fg, key=lambda i: (iou[i], i)) if fg else None
    b_iou = b_f1 = None
    if boundary is not None:
        b_iou, b_f1 = tuple(boundary.iou()), tuple(boundary.f1())
    return Scores(
        num_classes=k,
        class_names=names,
        confusion_matrix=cm,
        fwiou=fwiou,
        miou=_mean(iou) or 0.0,
        per_class_iou=tuple(iou),
        dice=_mean(dice) or 0.0,
        per_class_dice=tuple(dice),
        pixel_accuracy=float(diag.sum()) / total,
        mean_class_accuracy=_mean(acc) or 0.0,
        per_class_accuracy=tuple(acc),
        truth_pixels=tuple(int(v) for v in t),
        pred_pixels=tuple(int(v) for v in p),
        absent_classes=tuple(int(i) for i in np.flatnonzero(~present)),
        ignored_pixels=int(ignored_pixels),
        scored_pixels=total,
        no_prediction_pixels=int(cm[:, k:].sum()),
        boundary_width=boundary_width if boundary is not None else None,
        boundary_iou=b_iou,
        boundary_f1=b_f1,
        mean_boundary_iou=None if b_iou is None else _mean(b_iou),
        mean_boundary_f1=None if b_f1 is None else _mean(b_f1),
        foreground=fg,
        foreground_miou=_mean([iou[i] for i in fg]),
        foreground_dice=_mean([dice[i] for i in fg]),
        worst_class=worst,
    )
