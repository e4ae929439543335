"""Blend weights and the stitcher: identity, partition invariance, receptive field, MONAI oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.inferers import sliding_window_inference

from tests.conftest import as_predict, conv_net
from tiler.blend import Blender, BlendMode, window_weights
from tiler.engine.local import run_in_memory
from tiler.geometry import BlockPartition, TileGrid, Window
from tiler.stitch import BlockAccumulator, labels_dtype

MODES = [pytest.param(m, id=m.value) for m in BlendMode]


def identity(batch: np.ndarray) -> np.ndarray:
    return batch.astype(np.float32)


# Two 1 x 4 tiles of a 1 x 6 image, overlapping on columns 2 and 3; the first tile predicts 1 everywhere, the
# second 3 (TorchIO's aggregator tests, one table per blend). Weights per tile column, T = 4:
#   gaussian exp(-x² / 2σ²), σ = 0.5, x = ±1.5, ±0.5:  0.011109, 0.606531, 0.606531, 0.011109
#   hann sin²(π (i + ½) / 4):                            0.146447, 0.853553, 0.853553, 0.146447
#   crop: the tiles meet at column (0 + 2 + 4) // 2 = 3
# Column 2 = (1 · w[2] + 3 · w[0]) / (w[2] + w[0]), column 3 = (1 · w[3] + 3 · w[1]) / (w[3] + w[1]).
BLEND_TABLES = [
    pytest.param(BlendMode.CONSTANT, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0], id="constant"),
    pytest.param(BlendMode.CROP, [1.0, 1.0, 1.0, 3.0, 3.0, 3.0], id="crop"),
    pytest.param(BlendMode.HANN, [1.0, 1.0, 1.292893, 2.707107, 3.0, 3.0], id="hann"),
    pytest.param(BlendMode.GAUSSIAN, [1.0, 1.0, 1.035972, 2.964028, 3.0, 3.0], id="gaussian"),
]


@pytest.mark.parametrize(("mode", "expected"), BLEND_TABLES)
def test_two_constant_tiles_blend_to_the_literal_table(mode: BlendMode, expected: list[float]) -> None:
    grid = TileGrid((1, 6), (1, 4), (0, 2))
    acc = BlockAccumulator(Window((0, 0), (1, 6)), num_classes=1)
    for position, value in zip(grid.positions(), (1.0, 3.0), strict=True):
        tile = grid.window(position)
        acc.add(tile, np.full((1, *tile.shape), value, np.float32), Blender(mode).weights(grid, position))
    result = acc.finalize(probabilities="float32")
    assert result.probabilities is not None
    np.testing.assert_allclose(result.probabilities[0, 0], expected, rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.data())
@pytest.mark.parametrize("mode", MODES)
def test_identity_model_returns_the_input_for_every_grid(mode: BlendMode, data: st.DataObject) -> None:
    """Every blend is a weighted mean, so an identity model gives back the input (the tables above tell modes apart)."""
    ndim = data.draw(st.sampled_from([2, 3]))
    shape = tuple(data.draw(st.integers(1, 40 if ndim == 2 else 14)) for _ in range(ndim))
    tile = tuple(data.draw(st.integers(1, 16)) for _ in range(ndim))
    overlap = tuple(data.draw(st.integers(0, t - 1)) for t in tile)
    block = tuple(data.draw(st.integers(1, 24)) for _ in range(ndim))
    image = np.random.default_rng(ndim).random((2, *shape), dtype=np.float32)
    grid = TileGrid(shape, tile, overlap)
    _, probs = run_in_memory(image, identity, grid=grid, block=block, blender=Blender(mode), num_classes=2)
    np.testing.assert_allclose(probs, image, rtol=0, atol=1e-6)


def test_weights_are_float32_cached_and_positive() -> None:
    for mode in (BlendMode.GAUSSIAN, BlendMode.HANN, BlendMode.CONSTANT):
        w = window_weights(mode, (32, 48))
        assert w.dtype == np.float32 and w.shape == (32, 48)
        assert w.min() > 0
        assert window_weights(mode, (32, 48)) is w
    g = window_weights(BlendMode.GAUSSIAN, (33, 33))
    assert g[16, 16] == g.max() == 1.0 and g[0, 0] == pytest.approx(1e-3)


PARTITION_CASES = [
    pytest.param((70, 53), (16, 16), (6, 5), [(16, 16), (32, 48), (70, 53)], id="2d"),
    pytest.param((20, 23, 18), (8, 8, 8), (3, 2, 4), [(8, 8, 8), (16, 8, 24), (20, 23, 18)], id="3d"),
]


@pytest.mark.parametrize(("shape", "tile", "overlap", "blocks"), PARTITION_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_partition_invariance(shape, tile, overlap, blocks, mode: BlendMode, torch_threads) -> None:  # type: ignore[no-untyped-def]
    ndim = len(shape)
    rng = np.random.default_rng(1)
    image = rng.random((2, *shape), dtype=np.float32)
    valid = np.ones(shape, dtype=bool)
    valid[: shape[0] // 3] = False  # a nodata band: its tiles are skipped
    grid = TileGrid(shape, tile, overlap)
    predict = as_predict(conv_net(ndim, 2, 4))
    outputs = []
    for block in blocks:
        windows = list(BlockPartition(shape, block))
        for order in (windows, windows[::-1][1::2] + windows[::-1][0::2]):
            outputs.append(
                run_in_memory(
                    image, predict, grid=grid, block=block, blender=Blender(mode), num_classes=4,
                    mask=lambda w: valid[w.slices], order=order,
                )
            )
    labels0, probs0 = outputs[0]
    assert (labels0 == 255).any() and (labels0 != 255).any()
    for labels, probs in outputs[1:]:
        assert np.array_equal(labels, labels0)
        np.testing.assert_allclose(probs, probs0, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [
        pytest.param((61, 75), (24, 24), (6, 8), id="2d"),
        pytest.param((21, 26, 19), (12, 12, 12), (6, 6, 7), id="3d"),
    ],
)
def test_crop_blend_matches_whole_image_beyond_receptive_field(shape, tile, overlap, torch_threads) -> None:  # type: ignore[no-untyped-def]
    ndim = len(shape)
    net = conv_net(ndim, 1, 3, layers=3)  # receptive-field radius 3; overlap >= 6
    image = np.random.default_rng(2).random((1, *shape), dtype=np.float32)
    grid = TileGrid(shape, tile, overlap)
    _, probs = run_in_memory(image, as_predict(net), grid=grid, block=shape, blender=Blender("crop"), num_classes=3)
    with torch.inference_mode():
        whole = net(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_allclose(probs, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "roi", "fraction", "mode"),
    [
        pytest.param((97, 130), (32, 32), 0.25, "gaussian", id="2d-gaussian"),
        pytest.param((97, 130), (32, 24), 0.5, "constant", id="2d-constant"),
        pytest.param((30, 41, 35), (16, 16, 16), 0.25, "gaussian", id="3d-gaussian"),
        pytest.param((30, 41, 35), (16, 12, 16), 0.5, "constant", id="3d-constant"),
    ],
)
def test_matches_monai_sliding_window_inference(shape, roi, fraction, mode, torch_threads) -> None:  # type: ignore[no-untyped-def]
    ndim = len(shape)
    net = conv_net(ndim, 2, 3, layers=2, seed=3)
    image = np.random.default_rng(3).random((2, *shape), dtype=np.float32)
    with torch.inference_mode():
        expected = sliding_window_inference(
            torch.from_numpy(image)[None], roi, 4, net, overlap=fraction, mode=mode, sigma_scale=0.125
        )[0].numpy()
    # MONAI steps int(roi * (1 - overlap)) pixels; in our units that is an overlap of roi - step pixels.
    overlap = tuple(r - int(r * (1 - fraction)) for r in roi)
    grid = TileGrid(shape, roi, overlap)
    _, probs = run_in_memory(
        image, as_predict(net), grid=grid, block=(16,) * ndim, blender=Blender(mode), num_classes=3
    )
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)


def test_uncovered_pixels_get_nodata_label_not_nan() -> None:
    acc = BlockAccumulator(Window((0, 0), (4, 4)), num_classes=2)
    probs = np.zeros((2, 4, 2), dtype=np.float32)
    probs[1] = 1.0
    acc.add(Window((0, 0), (4, 2)), probs, np.ones((4, 2), dtype=np.float32))
    result = acc.finalize(nodata_label=7, probabilities="float32")
    assert result.probabilities is not None and not np.isnan(result.probabilities).any()
    assert (result.labels[:, :2] == 1).all() and (result.labels[:, 2:] == 7).all()
    assert (result.probabilities[:, :, 2:] == 0).all()


def test_weight_sums_neither_wrap_nor_overflow() -> None:
    acc = BlockAccumulator(Window((0, 0), (1, 1)), num_classes=2)
    probs = np.array([0.25, 0.75], np.float32).reshape(2, 1, 1)
    for _ in range(300):  # a uint8 count wraps at 256; float16 sums of these weights pass 65504 and become inf
        acc.add(Window((0, 0), (1, 1)), probs.copy(), np.full((1, 1), 1000.0, np.float32))
    assert acc.weights.shape == (1, 1) and acc.weights[0, 0] == 300_000.0  # one Σw per pixel, exact
    assert acc.sums[:, 0, 0].tolist() == [75_000.0, 225_000.0]
    result = acc.finalize(probabilities="float32")
    assert result.probabilities is not None and result.probabilities[:, 0, 0].tolist() == [0.25, 0.75]
    assert result.labels[0, 0] == 1


@pytest.mark.parametrize(
    ("classes", "nodata", "dtype"),
    [
        pytest.param(6, 255, np.uint8, id="few-classes"),
        pytest.param(255, 255, np.uint8, id="255-classes"),
        pytest.param(300, 255, np.uint16, id="many-classes"),
        pytest.param(3, 1000, np.uint16, id="big-nodata"),
    ],
)
def test_label_dtype(classes: int, nodata: int, dtype: type) -> None:
    assert labels_dtype(classes, nodata) == np.dtype(dtype)


def test_many_classes_give_uint16_labels_and_quantised_probabilities() -> None:
    acc = BlockAccumulator(Window((0, 0), (2, 2)), num_classes=300)
    probs = np.zeros((300, 2, 2), dtype=np.float32)
    probs[299] = 0.6
    probs[0] = 0.4
    acc.add(Window((0, 0), (2, 2)), probs, np.ones((2, 2), dtype=np.float32))
    r8 = acc.finalize(probabilities="uint8")
    assert r8.labels.dtype == np.uint16 and (r8.labels == 299).all()
    assert r8.probabilities is not None and r8.probabilities.dtype == np.uint8
    assert r8.probabilities[299, 0, 0] == 153 and r8.probabilities[0, 0, 0] == 102
    r16 = acc.finalize(probabilities="float16")
    assert r16.probabilities is not None and r16.probabilities.dtype == np.float16
