"""Confusion matrices: a hand-computed table, scikit-learn as oracle, chunked == in memory, ignore rules."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from tiler.errors import ScoreError
from tiler.metrics import confusion_matrix, confusion_matrix_chunked, count_pixels, count_pixels_chunked
from tiler.metrics.confusion import LabelRangeError

# truth (255 = ignore)      pred
#  0 0 1 1                   0 1 1 1
#  0 0 1 1                   0 0 1 2
#  2 2 2 1                   2 2 1 1
#  2 2 255 255               0 2 2 0
TRUTH_4X4 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 1], [2, 2, 255, 255]], dtype=np.uint8)
PRED_4X4 = np.array([[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 1, 1], [0, 2, 2, 0]], dtype=np.uint8)
# By hand, n[truth, pred] over the 14 kept pixels:
#  truth 0 at (0,0)(0,1)(1,0)(1,1) -> pred 0,1,0,0          -> [3, 1, 0]
#  truth 1 at (0,2)(0,3)(1,2)(1,3)(2,3) -> pred 1,1,1,2,1   -> [0, 4, 1]
#  truth 2 at (2,0)(2,1)(2,2)(3,0)(3,1) -> pred 2,2,1,0,2   -> [1, 1, 3]
CM_4X4 = np.array([[3, 1, 0], [0, 4, 1], [1, 1, 3]], dtype=np.int64)


def random_labels(
    shape: tuple[int, ...], k: int, seed: int, *, ignore_share: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, shape).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, k, shape)).astype(np.uint8)
    truth[rng.random(shape) < ignore_share] = 255
    return truth, pred


def sk_matrix(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    kept = truth != 255
    return sk_confusion_matrix(truth[kept], pred[kept], labels=list(range(k)))


def test_hand_computed_4x4_confusion_matrix() -> None:
    cm = confusion_matrix(TRUTH_4X4, PRED_4X4, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM_4X4)
    assert count_pixels(TRUTH_4X4, PRED_4X4, num_classes=3).ignored == 2


@pytest.mark.parametrize("k", [pytest.param(k, id=f"K={k}") for k in (2, 5, 11, 40)])
@pytest.mark.parametrize(
    "dtypes",
    [pytest.param((np.uint8, np.uint8), id="bytes"), pytest.param((np.int32, np.uint16), id="wide")],
)
def test_matches_sklearn_on_random_maps(k: int, dtypes: tuple[type, type]) -> None:
    truth, pred = random_labels((61, 47), k, seed=k)
    cm = confusion_matrix(truth.astype(dtypes[0]), pred.astype(dtypes[1]), num_classes=k)
    np.testing.assert_array_equal(cm, sk_matrix(truth, pred, k))


def test_uint8_products_do_not_wrap() -> None:
    # truth * K reaches 19 * 20 = 380 > 255: a uint8 index would wrap.
    truth, pred = random_labels((50, 50), 20, seed=3, ignore_share=0.0)
    expected = sk_matrix(truth, pred, 20)
    np.testing.assert_array_equal(confusion_matrix(truth, pred, num_classes=20), expected)
    chunked = confusion_matrix_chunked(truth, pred, num_classes=20, chunks=(7, 9))
    np.testing.assert_array_equal(chunked, expected)


def test_all_256_byte_classes_without_ignore_index() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    pred = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    cm = confusion_matrix(truth, pred, num_classes=256, ignore_index=None)
    expected = sk_confusion_matrix(truth.ravel(), pred.ravel(), labels=list(range(256)))
    np.testing.assert_array_equal(cm, expected)


CHUNKED_CASES = [
    pytest.param((37, 53), (8, 8), id="2d-ragged"),
    pytest.param((37, 53), (37, 53), id="2d-one-chunk"),
    pytest.param((40, 50), (10, 25), id="2d-dividing"),
    pytest.param((9, 20, 23), (3, 5, 7), id="3d-ragged"),
    pytest.param((8, 20, 24), (4, 10, 12), id="3d-dividing"),
]


@pytest.mark.parametrize(("shape", "chunks"), CHUNKED_CASES)
@pytest.mark.parametrize("dtype", [pytest.param(np.uint8, id="uint8"), pytest.param(np.int16, id="int16"),
                                   pytest.param(np.float32, id="float32")])
def test_chunked_equals_in_memory(shape: tuple[int, ...], chunks: tuple[int, ...], dtype: type) -> None:
    truth, pred = random_labels(shape, 6, seed=len(shape))
    rng = np.random.default_rng(9)
    valid = rng.random(shape) < 0.9
    pred[rng.random(shape) < 0.05] = 254  # the prediction's nodata
    t, p = truth.astype(dtype), pred.astype(dtype)
    kwargs = {"num_classes": 6, "valid": valid, "pred_nodata": 254}
    whole = count_pixels(t, p, **kwargs)
    chunked = count_pixels_chunked(da.from_array(t, chunks=chunks), da.from_array(p, chunks=chunks), **kwargs)
    np.testing.assert_array_equal(chunked.confusion, whole.confusion)
    assert chunked.ignored == whole.ignored
    assert whole.scored + whole.ignored == truth.size


def test_chunked_accepts_mismatched_chunks_and_plain_numpy() -> None:
    truth, pred = random_labels((33, 35), 4, seed=1)
    expected = confusion_matrix(truth, pred, num_classes=4)
    t, p = da.from_array(truth, chunks=(5, 6)), da.from_array(pred, chunks=(11, 4))
    got = confusion_matrix_chunked(t, p, num_classes=4)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(confusion_matrix_chunked(truth, pred, num_classes=4), expected)


@pytest.mark.parametrize("block", [pytest.param((16, 16), id="16"), pytest.param((10, 7), id="10x7-ragged")])
def test_per_block_matrices_sum_to_the_whole(block: tuple[int, int]) -> None:
    truth, pred = random_labels((45, 38), 5, seed=7)
    total = np.zeros((5, 5), dtype=np.int64)
    for r in range(0, 45, block[0]):
        for c in range(0, 38, block[1]):
            sl = (slice(r, r + block[0]), slice(c, c + block[1]))
            total += confusion_matrix(truth[sl], pred[sl], num_classes=5)
    np.testing.assert_array_equal(total, confusion_matrix(truth, pred, num_classes=5))


def test_ignore_rules_truth_nodata_and_valid_mask() -> None:
    truth = np.array([[0, 1, 9], [1, 255, 0]], dtype=np.uint8)  # 9 = truth nodata, 255 = ignore
    pred = np.array([[0, 0, 1], [1, 1, 3]], dtype=np.uint8)
    valid = np.array([[True, True, True], [True, True, False]])  # drops (1, 2): its pred 3 is not scored
    counts = count_pixels(truth, pred, num_classes=2, truth_nodata=9, valid=valid)
    np.testing.assert_array_equal(counts.confusion, [[1, 0], [1, 1]])
    assert counts.ignored == 3


def test_prediction_nodata_is_a_wrong_no_prediction() -> None:
    truth = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 200, 1, 200]], dtype=np.uint8)
    cm = confusion_matrix(truth, pred, num_classes=2, pred_nodata=200)
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 1, 1]])


@pytest.mark.parametrize("dtype", [pytest.param(np.uint8, id="bytes"), pytest.param(np.int64, id="wide")])
def test_prediction_label_beyond_num_classes_names_value_and_fix(dtype: type) -> None:
    truth = np.zeros((3, 3), dtype=dtype)
    pred = np.zeros((3, 3), dtype=dtype)
    pred[1, 1] = 7
    with pytest.raises(ScoreError, match=r"prediction holds label value\(s\) \[7\].*--num-classes 8"):
        confusion_matrix(truth, pred, num_classes=3)


def test_truth_label_beyond_num_classes_is_an_error() -> None:
    truth = np.full((2, 2), 5, dtype=np.uint8)
    with pytest.raises(ScoreError, match=r"truth holds label value\(s\) \[5\].*--num-classes 6"):
        confusion_matrix_chunked(truth, np.zeros((2, 2), np.uint8), num_classes=3)


def test_a_label_range_error_carries_its_facts_across_processes() -> None:
    truth = np.array([[0, 5], [7, 255]], dtype=np.uint8)
    with pytest.raises(LabelRangeError) as caught:
        confusion_matrix(truth, np.zeros((2, 2), np.uint8), num_classes=3)
    again = pickle.loads(pickle.dumps(caught.value))  # a Ray actor's error reaches the driver pickled
    assert isinstance(again, ScoreError) and str(again) == str(caught.value)
    assert (again.role, again.values, again.num_classes, again.top) == ("truth", [5, 7], 3, 7)


def test_shape_mismatch_is_a_score_error() -> None:
    with pytest.raises(ScoreError, match=r"truth shape \(4, 4\) and prediction shape \(4, 5\) differ"):
        confusion_matrix(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), num_classes=2)


def test_bad_num_classes_is_a_score_error() -> None:
    with pytest.raises(ScoreError, match=r"num_classes=0 must be a whole number >= 1"):
        confusion_matrix(TRUTH_4X4, PRED_4X4, num_classes=0)


def test_block_larger_than_one_counting_slice_matches_sklearn() -> None:
    # 600 x 500 = 300000 pixels: more than one 2**18-pixel slice of the byte fast path, with a valid mask.
    truth, pred = random_labels((600, 500), 7, seed=11)
    valid = np.random.default_rng(12).random(truth.shape) < 0.8
    counts = count_pixels(truth, pred, num_classes=7, valid=valid)
    kept = (truth != 255) & valid
    np.testing.assert_array_equal(counts.confusion, sk_confusion_matrix(truth[kept], pred[kept], labels=list(range(7))))
    assert counts.ignored == truth.size - int(kept.sum())
