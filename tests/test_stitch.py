"""Blend weights and the stitcher: identity, partition invariance, receptive field, MONAI oracle, torch = numpy."""

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
from tiler.engine.work import DevicePredict, infer_block, prepare_block
from tiler.errors import GeometryError
from tiler.geometry import BlockPartition, TileGrid, Window
from tiler.model.checkpoint import LoadedModel
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ModelSpec
from tiler.stitch import BlockAccumulator, TorchBlockAccumulator, _argmax_channels, argmax_channels_tensor, labels_dtype

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


class _Numpy:
    """The numpy reference accumulator behind the torch one's interface (tensors in, numpy inside)."""

    def __init__(self, block: Window, num_classes: int) -> None:
        self.acc = BlockAccumulator(block, num_classes)
        self.sums, self.weights = self.acc.sums, self.acc.weights

    def add(self, tile: Window, probs: torch.Tensor, weights: torch.Tensor) -> None:
        self.acc.add(tile, probs.numpy(), weights.numpy())

    def finalize(self, **kwargs):  # type: ignore[no-untyped-def]
        return self.acc.finalize(**kwargs)


ACCUMULATORS = [pytest.param(_Numpy, id="numpy"), pytest.param(TorchBlockAccumulator, id="torch")]


@pytest.mark.parametrize("make", ACCUMULATORS)
def test_uncovered_pixels_get_nodata_label_not_nan(make) -> None:  # type: ignore[no-untyped-def]
    acc = make(Window((0, 0), (4, 4)), num_classes=2)
    probs = torch.zeros((2, 4, 2))
    probs[1] = 1.0
    acc.add(Window((0, 0), (4, 2)), probs, torch.ones((4, 2)))
    result = acc.finalize(nodata_label=7, probabilities="float32")
    assert result.probabilities is not None and not np.isnan(result.probabilities).any()
    assert (result.labels[:, :2] == 1).all() and (result.labels[:, 2:] == 7).all()
    assert (result.probabilities[:, :, 2:] == 0).all()
    assert result.covered.tolist() == [[True, True, False, False]] * 4


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


@pytest.mark.parametrize("make", ACCUMULATORS)
def test_many_classes_give_uint16_labels_and_quantised_probabilities(make) -> None:  # type: ignore[no-untyped-def]
    acc = make(Window((0, 0), (2, 2)), num_classes=300)
    probs = torch.zeros((300, 2, 2))
    probs[299] = 0.6
    probs[0] = 0.4
    acc.add(Window((0, 0), (2, 2)), probs, torch.ones((2, 2)))
    r8 = acc.finalize(probabilities="uint8")
    assert r8.labels.dtype == np.uint16 and (r8.labels == 299).all()
    assert r8.probabilities is not None and r8.probabilities.dtype == np.uint8
    assert r8.probabilities[299, 0, 0] == 153 and r8.probabilities[0, 0, 0] == 102
    r16 = acc.finalize(probabilities="float16")
    assert r16.probabilities is not None and r16.probabilities.dtype == np.float16
    assert r16.probabilities[299, 0, 0] == np.float16(0.6)


def test_torch_accumulator_applies_the_valid_mask_on_the_device() -> None:
    acc = TorchBlockAccumulator(Window((0, 0), (2, 3)), num_classes=2)
    probs = torch.tensor([[[0.2, 0.7, 0.9]] * 2, [[0.8, 0.3, 0.1]] * 2])
    acc.add(Window((0, 0), (2, 3)), probs, torch.ones((2, 3)))
    valid = np.array([[True, False, True], [True, True, True]])
    result = acc.finalize(nodata_label=9, valid=valid, invalid_label=0)
    assert result.labels.tolist() == [[1, 0, 0], [1, 0, 0]]
    result = acc.finalize(nodata_label=9, valid=torch.from_numpy(valid))
    assert result.labels.tolist() == [[1, 9, 0], [1, 0, 0]]


def test_torch_accumulator_refuses_predictions_of_the_wrong_shape() -> None:
    acc = TorchBlockAccumulator(Window((0, 0), (8, 8)), num_classes=3)
    with pytest.raises(GeometryError, match=r"expected \(3, 4, 4\) \(K, \*tile\)"):
        acc.add(Window((0, 0), (4, 4)), torch.zeros((3, 4, 5)), torch.ones((4, 4)))
    with pytest.raises(GeometryError, match=r"expected \(2, 3, \*tile\)"):
        acc.add_batch([Window((0, 0), (4, 4))] * 2, torch.zeros((2, 4, 4, 4)), [torch.ones((4, 4))] * 2)


# ------------------------------------------------------------------ torch accumulator = numpy accumulator


@pytest.mark.parametrize("classes", [pytest.param(1, id="1"), pytest.param(6, id="6"), pytest.param(300, id="300")])
def test_torch_argmax_takes_the_first_maximum_like_the_numpy_one(classes: int) -> None:
    rng = np.random.default_rng(8)
    values = rng.integers(0, 3, size=(classes, 40, 30)).astype(np.float32)  # many ties
    values[:, 0, 0] = 2.0  # every channel tied
    expected = _argmax_channels(values, np.dtype(np.uint16))
    got = argmax_channels_tensor(torch.from_numpy(values), torch.int32).numpy()
    assert np.array_equal(got, expected) and got[0, 0] == 0


TORCH_VS_NUMPY = [
    pytest.param((70, 53), (16, 16), (6, 5), (32, 24), id="2d"),
    pytest.param((20, 23, 18), (8, 8, 8), (3, 2, 4), (16, 8, 10), id="3d"),
    pytest.param((9, 40), (16, 16), (4, 4), (9, 17), id="2d-axis-shorter-than-tile"),
]


@pytest.mark.parametrize(("shape", "tile", "overlap", "block"), TORCH_VS_NUMPY)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kept", [None, "float32", "float16", "uint8"])
def test_torch_accumulator_gives_the_numpy_accumulators_bits(shape, tile, overlap, block, mode, kept) -> None:  # type: ignore[no-untyped-def]
    """Same float32 operations in the same order: labels, probabilities and coverage are bit-identical."""
    grid = TileGrid(shape, tile, overlap)
    blender = Blender(mode)
    rng = np.random.default_rng(4)
    windows = list(BlockPartition(shape, block))
    for window in windows[:: max(1, len(windows) // 4)]:
        positions = grid.positions_intersecting(window)
        probs = rng.dirichlet(np.ones(5), size=(len(positions), *tile)).astype(np.float32)
        probs = np.moveaxis(probs, -1, 1)  # (N, C, *tile)
        ref = BlockAccumulator(window, 5)
        for pos, p in zip(positions, probs, strict=True):
            ref.add(grid.window(pos), p.copy(), blender.weights(grid, pos))
        acc = TorchBlockAccumulator(window, 5)
        for i in range(0, len(positions), 3):  # batches of 3, as a runner hands them over
            chunk = positions[i : i + 3]
            acc.add_batch(
                [grid.window(p) for p in chunk], torch.from_numpy(probs[i : i + 3].copy()),
                [blender.weights_on(grid, p, "cpu") for p in chunk], overwrite=True,
            )
        assert np.array_equal(acc.sums.numpy(), ref.sums) and np.array_equal(acc.weights.numpy(), ref.weights)
        expected = ref.finalize(nodata_label=200, probabilities=kept)
        got = acc.finalize(nodata_label=200, probabilities=kept, release=True)
        assert got.labels.dtype == expected.labels.dtype
        assert np.array_equal(got.labels, expected.labels) and np.array_equal(got.covered, expected.covered)
        if kept is None:
            assert got.probabilities is None and expected.probabilities is None
        else:
            assert got.probabilities is not None and expected.probabilities is not None
            assert got.probabilities.dtype == expected.probabilities.dtype
            assert np.array_equal(got.probabilities, expected.probabilities)


def test_device_weights_are_cached_per_device_and_equal_the_numpy_weights() -> None:
    grid = TileGrid((40, 40), (16, 16), (4, 4))
    for mode in BlendMode:
        blender = Blender(mode)
        for pos in [(0, 0), (1, 2), (2, 2)]:
            w = blender.weights_on(grid, pos, "cpu")
            assert w is blender.weights_on(grid, pos, torch.device("cpu"))
            assert w.dtype == torch.float32 and np.array_equal(w.numpy(), blender.weights(grid, pos))


# ------------------------------------------------------------------ the runner's device path through the engine


def _runner(ndim: int, **kwargs) -> TileRunner:  # type: ignore[no-untyped-def]
    net = conv_net(ndim, 2, 4)[:-1]  # logits: the runner applies the softmax
    spec = ModelSpec("UNet", ndim, 2, 4)
    model = LoadedModel(net, spec, Normalization("none"), tuple("abcd"), ((0, 0, 0),) * 4)
    return TileRunner(model, device="cpu", **kwargs)


@pytest.mark.parametrize(("shape", "tile", "overlap", "blocks"), PARTITION_CASES)
def test_runner_device_path_is_partition_invariant_and_equals_the_numpy_path(
    shape, tile, overlap, blocks, torch_threads  # type: ignore[no-untyped-def]
) -> None:
    ndim = len(shape)
    image = np.random.default_rng(5).random((2, *shape), dtype=np.float32)
    valid = np.ones(shape, dtype=bool)
    valid[: shape[0] // 3] = False
    grid = TileGrid(shape, tile, overlap)
    runner = _runner(ndim, batch_size=4)  # the job's one model.batch_size, as the engine passes it to both
    assert isinstance(runner, DevicePredict)
    net = conv_net(ndim, 2, 4)  # the same weights (seed 0) with the softmax inside, as a numpy function
    reference = run_in_memory(
        image, as_predict(net), grid=grid, block=blocks[0], blender=Blender("gaussian"), num_classes=4,
        mask=lambda w: valid[w.slices],
    )
    first = None
    for block in blocks:
        windows = list(BlockPartition(shape, block))
        labels, probs = run_in_memory(
            image, runner, grid=grid, block=block, blender=Blender("gaussian"), num_classes=4,
            mask=lambda w: valid[w.slices], order=windows[::-1], batch_size=4,
        )
        # against the numpy path (batches of 1 there): the model rounds differently at another batch size
        assert np.array_equal(labels, reference[0])
        np.testing.assert_allclose(probs, reference[1], rtol=0, atol=1e-6)
        # at one batch size every tile runs in a batch of exactly 4 whatever its block: the same bits
        first = first if first is not None else (labels, probs)
        assert np.array_equal(labels, first[0]) and np.array_equal(probs, first[1])


class _OOMAbove(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.batches = inner, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake, batch {x.shape[0]})")
        return self.inner(x)


def test_out_of_memory_back_off_keeps_every_tile_of_a_block(torch_threads) -> None:  # type: ignore[no-untyped-def]
    shape, tile, overlap = (70, 53), (16, 16), (6, 5)
    image = np.random.default_rng(6).random((2, *shape), dtype=np.float32)
    grid = TileGrid(shape, tile, overlap)
    window = Window((0, 0), (48, 53))
    plain = _runner(2, batch_size=8)
    flaky = _runner(2, batch_size=8)
    flaky.network = _OOMAbove(flaky.network, limit=2)
    results = []
    for runner in (plain, flaky):
        prepared = prepare_block(window, grid, read=lambda w: image[(slice(None), *w.slices)])
        results.append(
            infer_block(prepared, grid, predict=runner, blender=Blender("gaussian"), num_classes=4, batch_size=8,
                        probabilities="float32")
        )
    (expected, _), (got, stats) = results
    assert flaky.batch_size == 2 and stats.tiles_run == len(grid.positions_intersecting(window))
    # every tile ran exactly once (the block's last batch padded to 8 rows by copies of its last tile)
    assert sum(b for b in flaky.network.batches if b <= 2) == -(-stats.tiles_run // 8) * 8
    assert np.array_equal(got.labels, expected.labels)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")])
def test_read_only_numpy_predict_outputs_are_blended_without_being_modified(dtype: type) -> None:
    image = np.random.default_rng(7).random((2, 30, 40), dtype=np.float32)
    grid = TileGrid((30, 40), (16, 16), (4, 4))
    returned: list[tuple[np.ndarray, np.ndarray]] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        out = batch.astype(dtype)
        out.setflags(write=False)
        returned.append((out, out.copy()))
        return out

    _, probs = run_in_memory(image, predict, grid=grid, block=(16, 24), blender=Blender("gaussian"), num_classes=2)
    np.testing.assert_allclose(probs, image, rtol=0, atol=1e-6)
    assert len(returned) == 4  # one call per block (2 x 2 blocks of 6, 6, 4 and 4 tiles)
    assert all(np.array_equal(out, pristine) for out, pristine in returned)
