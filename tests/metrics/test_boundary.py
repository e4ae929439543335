"""Boundary IoU / F1: hand-computed squares, the image-edge rule, chunked == whole image, widths."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from tiler.errors import ScoreError
from tiler.metrics import BoundaryWidth, WidthUnit, boundary_counts, boundary_counts_chunked


def blobs(shape: tuple[int, ...], k: int, seed: int) -> np.ndarray:
    """Smooth random label regions (so boundaries are real curves, not noise)."""
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.random((k, *shape)), sigma=(0, *([2.5] * len(shape))))
    return fields.argmax(axis=0).astype(np.uint8)


def test_shifted_square_by_hand() -> None:
    # truth: class 1 on rows 2-3, cols 2-3 of an 8x8 image of class 0; pred: the square one column right.
    truth = np.zeros((8, 8), np.uint8)
    truth[2:4, 2:4] = 1
    pred = np.zeros((8, 8), np.uint8)
    pred[2:4, 3:5] = 1
    c = boundary_counts(truth, pred, num_classes=2, width=1)
    # d=1: a 2x2 square is all band. G_d = cols 2-3, P_d = cols 3-4 -> |G&P| = 2, |G|P| = 6.
    assert (c.intersection[1], c.union[1]) == (2, 6)
    assert c.iou()[1] == pytest.approx(1 / 3)
    # contours = the squares; every contour pixel is within 1 of the other's -> precision = recall = 1.
    assert (c.pred_contour[1], c.pred_matched[1], c.truth_contour[1], c.truth_matched[1]) == (4, 4, 4, 4)
    assert c.f1()[1] == pytest.approx(1.0)


@pytest.mark.parametrize(("width", "band"), [pytest.param(1, 16, id="d=1"), pytest.param(2, 24, id="d=2")])
def test_image_edge_counts_as_boundary(width: int, band: int) -> None:
    # a uniform 5x5 image: the band is the frame of width d (zero padding outside, as Cheng et al.).
    labels = np.zeros((5, 5), np.uint8)
    c = boundary_counts(labels, labels, num_classes=1, width=width)
    assert c.truth_band[0] == band and c.pred_band[0] == band
    assert c.iou() == [1.0] and c.f1() == [1.0]


def test_perfect_prediction_scores_one_even_around_ignored_pixels() -> None:
    truth = blobs((40, 40), 3, seed=0)
    pred = truth.copy()
    truth[10:20, 5:30] = 255  # ignored in the truth, whatever the prediction says there
    c = boundary_counts(truth, pred, num_classes=3, width=3)
    assert all(v == 1.0 for v in c.iou() if v is not None)
    assert all(v == 1.0 for v in c.f1() if v is not None)


CASES = [
    pytest.param((60, 70), (7, 9), 3, id="2d-ragged-small-chunks"),
    pytest.param((60, 70), (20, 35), 4, id="2d-dividing"),
    pytest.param((60, 70), (60, 70), 2, id="2d-one-chunk"),
    pytest.param((61, 47), (13, 47), 6, id="2d-halo-wider-than-chunk"),
    pytest.param((20, 25, 30), (7, 9, 11), 2, id="3d-ragged"),
    pytest.param((20, 24, 30), (10, 12, 15), 1, id="3d-dividing"),
]


@pytest.mark.parametrize(("shape", "chunks", "width"), CASES)
def test_chunked_equals_whole_image(shape: tuple[int, ...], chunks: tuple[int, ...], width: int) -> None:
    truth = blobs(shape, 4, seed=1)
    pred = blobs(shape, 4, seed=2)
    rng = np.random.default_rng(3)
    truth[rng.random(shape) < 0.02] = 255
    pred[rng.random(shape) < 0.02] = 250  # prediction nodata
    valid = rng.random(shape) < 0.97
    kwargs = {"num_classes": 4, "width": width, "valid": valid, "pred_nodata": 250}
    whole = boundary_counts(truth, pred, **kwargs)
    t, p = da.from_array(truth, chunks=chunks), da.from_array(pred, chunks=chunks)
    chunked = boundary_counts_chunked(t, p, **kwargs)
    assert chunked.equals(whole)
    assert whole.intersection.sum() > 0 and whole.pred_matched.sum() > 0  # the case is not trivial


def test_boundary_iou_is_between_zero_and_one_and_drops_with_shift() -> None:
    truth = blobs((64, 64), 3, seed=4)
    near = np.roll(truth, 1, axis=1)
    far = np.roll(truth, 6, axis=1)
    iou_near = boundary_counts(truth, near, num_classes=3, width=2).iou()
    iou_far = boundary_counts(truth, far, num_classes=3, width=2).iou()
    for a, b in zip(iou_near, iou_far, strict=True):
        assert a is not None and b is not None and 0.0 <= b < a <= 1.0
    assert boundary_counts(truth, truth, num_classes=3, width=2).iou() == [1.0, 1.0, 1.0]  # the bounds are met
    swapped = np.where(truth == 0, 1, np.where(truth == 1, 0, truth))  # classes 0 and 1 trade places
    assert boundary_counts(truth, swapped, num_classes=3, width=2).iou()[:2] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("text", "shape", "pixels"),
    [
        pytest.param("5px", (100, 100), 5, id="pixels"),
        pytest.param("0.02", (300, 400), 10, id="fraction-of-diagonal-500"),
        pytest.param("0.001", (10, 10), 1, id="at-least-one-pixel"),
        pytest.param("0.02", (100, 200, 200), 6, id="3d-diagonal-300"),
    ],
)
def test_boundary_width_resolves_to_pixels(text: str, shape: tuple[int, ...], pixels: int) -> None:
    assert BoundaryWidth.parse(text).pixels(shape) == pixels


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: BoundaryWidth.parse("abc"), id="not-a-number"),
        pytest.param(lambda: BoundaryWidth(1.5, WidthUnit.DIAGONAL), id="fraction>1"),
        pytest.param(lambda: BoundaryWidth(2.5, WidthUnit.PIXELS), id="fractional-pixels"),
    ],
)
def test_bad_boundary_width_is_a_score_error(make: object) -> None:
    with pytest.raises(ScoreError, match=r"boundary width|--boundary-width"):
        make()  # type: ignore[operator]


def test_width_zero_pixels_is_rejected_by_the_counter() -> None:
    with pytest.raises(ScoreError, match=r"boundary width=0 must be whole pixels >= 1"):
        boundary_counts(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), num_classes=1, width=0)


def test_huge_label_is_reported_not_wrapped_into_a_class() -> None:
    # 2**32 + 1 would wrap to 1 in the int32 codes the boundary filters use: it must be an error instead.
    truth = np.zeros((4, 4), np.int64)
    pred = np.zeros((4, 4), np.int64)
    pred[2, 2] = 2**32 + 1
    with pytest.raises(ScoreError, match=r"prediction holds label value\(s\) \[4294967297\]"):
        boundary_counts(truth, pred, num_classes=2, width=1)
