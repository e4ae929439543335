"""Scores from a confusion matrix: hand-computed literals, scikit-learn as oracle, absent classes, no NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from tiler.errors import ScoreError
from tiler.metrics import confusion_matrix, scores_from_confusion

# The 4x4 example of test_confusion.py: n[truth, pred] = [[3, 1, 0], [0, 4, 1], [1, 1, 3]]
# t = (4, 5, 5), p = (4, 6, 4), total 14, diagonal (3, 4, 3).
# IoU = 3/(4+4-3) = 3/5, 4/(5+6-4) = 4/7, 3/(5+4-3) = 1/2
# FWIoU = 4/14 * 3/5 + 5/14 * 4/7 + 5/14 * 1/2 = (168 + 200 + 175) / 980 = 543/980
# mIoU = (3/5 + 4/7 + 1/2) / 3 = (117/70) / 3 = 39/70
# Dice = 6/8, 8/11, 6/9; pixel accuracy = 10/14; mean class accuracy = (3/4 + 4/5 + 3/5) / 3 = 43/60
CM = np.array([[3, 1, 0], [0, 4, 1], [1, 1, 3]], dtype=np.int64)


def test_hand_computed_scores() -> None:
    s = scores_from_confusion(CM, ignored_pixels=2)
    assert s.fwiou == pytest.approx(543 / 980, abs=1e-12)
    assert s.per_class_iou == pytest.approx((3 / 5, 4 / 7, 1 / 2), abs=1e-12)
    assert s.miou == pytest.approx(39 / 70, abs=1e-12)
    assert s.per_class_dice == pytest.approx((6 / 8, 8 / 11, 6 / 9), abs=1e-12)
    assert s.dice == pytest.approx((6 / 8 + 8 / 11 + 6 / 9) / 3, abs=1e-12)
    assert s.pixel_accuracy == pytest.approx(10 / 14, abs=1e-12)
    assert s.mean_class_accuracy == pytest.approx(43 / 60, abs=1e-12)
    assert s.ignored_pixels == 2 and s.scored_pixels == 14
    assert s.absent_classes == ()


@pytest.mark.parametrize(
    ("k", "seed"),
    [pytest.param(2, 0, id="K=2"), pytest.param(5, 1, id="K=5"), pytest.param(13, 2, id="K=13")],
)
def test_fwiou_and_iou_match_sklearn(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, (80, 70)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.5, truth, rng.integers(0, k, truth.shape)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.15] = 255
    s = scores_from_confusion(confusion_matrix(truth, pred, num_classes=k))
    kept = truth != 255
    t, p = truth[kept], pred[kept]
    labels = list(range(k))
    assert s.fwiou == pytest.approx(jaccard_score(t, p, labels=labels, average="weighted"), abs=1e-12)
    expected = jaccard_score(t, p, labels=labels, average=None)
    assert s.per_class_iou == pytest.approx(tuple(expected), abs=1e-12)
    assert s.miou == pytest.approx(jaccard_score(t, p, labels=labels, average="macro"), abs=1e-12)


def test_absent_classes_are_excluded_and_listed_never_nan() -> None:
    # class 1 is in neither map; class 2 only predicted (IoU 0, counts in the means)
    cm = np.array([[5, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=np.int64)
    s = scores_from_confusion(cm, class_names=["bg", "road", "roof"])
    assert s.absent_classes == (1,)
    assert s.per_class_iou == (5 / 6, None, 0.0)
    assert s.miou == pytest.approx((5 / 6 + 0.0) / 2)
    assert s.per_class_accuracy == (5 / 6, None, None)
    assert s.mean_class_accuracy == pytest.approx(5 / 6)
    text = json.dumps(s.to_dict(), allow_nan=False)
    assert "NaN" not in text and json.loads(text)["class_names"] == ["bg", "road", "roof"]


def test_no_prediction_column_counts_against_the_truth_class() -> None:
    cm = np.array([[2, 0, 2], [0, 4, 0]], dtype=np.int64)  # 2 truth-0 pixels had no prediction
    s = scores_from_confusion(cm)
    assert s.per_class_iou == pytest.approx((2 / 4, 1.0))
    assert s.pixel_accuracy == pytest.approx(6 / 8)
    assert s.no_prediction_pixels == 2


def test_all_ignored_is_a_score_error_not_nan() -> None:
    truth = np.full((4, 4), 255, dtype=np.uint8)
    cm = confusion_matrix(truth, np.zeros((4, 4), np.uint8), num_classes=3)
    with pytest.raises(ScoreError, match=r"all 16 pixels are ignored .*nothing to score; check ignore_index"):
        scores_from_confusion(cm, ignored_pixels=16)


@pytest.mark.parametrize(
    ("cm", "message"),
    [
        pytest.param(np.zeros((3, 5), np.int64), r"shape \(3, 5\) is not \(K, K\)", id="shape"),
        pytest.param(np.full((2, 2), 0.5), r"non-negative integer counts", id="float"),
    ],
)
def test_malformed_matrix_is_a_score_error(cm: np.ndarray, message: str) -> None:
    with pytest.raises(ScoreError, match=message):
        scores_from_confusion(cm)


def test_class_names_must_match_k() -> None:
    with pytest.raises(ScoreError, match=r"class_names has 2 names but num_classes=3"):
        scores_from_confusion(CM, class_names=["a", "b"])


def test_dice_and_accuracies_by_hand() -> None:
    s = scores_from_confusion(CM)  # rows 4, 5, 5 (truth); columns 4, 6, 4 (prediction); 14 pixels
    assert s.per_class_dice == pytest.approx((6 / 8, 8 / 11, 6 / 9), abs=1e-12)  # 2 TP / (row + column)
    assert s.dice == pytest.approx((6 / 8 + 8 / 11 + 6 / 9) / 3, abs=1e-12)
    assert s.per_class_accuracy == pytest.approx((3 / 4, 4 / 5, 3 / 5), abs=1e-12)  # TP / row
    assert s.mean_class_accuracy == pytest.approx((3 / 4 + 4 / 5 + 3 / 5) / 3, abs=1e-12)
    assert s.pixel_accuracy == pytest.approx(10 / 14, abs=1e-12)
    assert all(isinstance(v, float) and math.isfinite(v) for v in (s.fwiou, s.miou, s.dice))
