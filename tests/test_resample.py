"""Block-wise resampling equals nnU-Net v2's whole-array resampling, with nnunetv2's own functions as the oracle.

Tolerances (max abs difference over the assembled target, as a fraction of the data range):
order 0 bit-exact; float32 results within 1e-6 (float32 rounding of float64 values that differ in the
last bits; measured ≤ 3e-8); float64 results of orders ≥ 2 within 1e-9 (the prefilter truncated by the halo;
measured ≤ 6e-11), and ≥ 1e-3 off with the halo set to 0.
"""

from __future__ import annotations

import doctest
import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from nnunetv2.preprocessing.resampling.default_resampling import (
    compute_new_shape,
    determine_do_sep_z_and_axis,
    resample_data_or_seg_to_shape,
)

import tiler.resample as resample_module
from tiler.errors import ConfigError, GeometryError, InputError
from tiler.geometry import BlockPartition, Window
from tiler.resample import Resampling, merge_value_ranges, nnunet_target_shape, separate_axis

SHAPE = (20, 40, 36)

# --- the axis decision and the target shape --------------------------------------------------------------

SPACINGS = [
    pytest.param((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None, id="isotropic"),
    pytest.param((0.8, 0.8, 2.5), (1.0, 1.0, 1.0), None, id="0.8x0.8x2.5->iso"),
    pytest.param((2.5, 0.8, 0.8), (1.0, 1.0, 1.0), None, id="2.5x0.8x0.8->iso"),
    pytest.param((1.0, 1.0, 1.0), (2.5, 0.8, 0.8), None, id="iso->anisotropic-target"),
    pytest.param((3.0, 1.0, 1.0), (1.0, 1.0, 1.0), None, id="ratio-exactly-3-is-not-anisotropic"),
    pytest.param((3.0, 3.0, 3.0), (1.0, 1.0, 1.0), None, id="3-equal-axes"),
    pytest.param((5.0, 5.0, 1.0), (1.0, 1.0, 1.0), None, id="2-low-res-axes"),
    pytest.param((2.0, 1.0, 1.0), (1.0, 1.0, 1.0), True, id="forced-below-threshold"),
    pytest.param((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), True, id="forced-isotropic-3-low-res-axes"),
    pytest.param((5.0, 1.0, 1.0), (1.0, 1.0, 1.0), False, id="forced-off"),
    pytest.param((1.0, 1.0, 1.0), (1.0, 4.0, 1.0), True, id="forced-asks-current-spacing-only"),
]


@pytest.mark.parametrize(("first", "second", "force"), SPACINGS)
@pytest.mark.parametrize("swap", [False, True], ids=["(image, plans)", "(plans, image)"])
def test_shape_and_axis_decision_equal_nnunet(
    first: tuple[float, ...], second: tuple[float, ...], force: bool | None, swap: bool
) -> None:
    current, new = (second, first) if swap else (first, second)
    do_separate, axis = determine_do_sep_z_and_axis(force, current, new, 3)
    expected_axis = int(axis) if do_separate else None
    assert separate_axis(current, new, force_separate_z=force) == expected_axis
    rs = Resampling.nnunet(SHAPE, current, new, force_separate_z=force)
    assert rs.separate_axis == expected_axis
    assert rs.target_shape == tuple(int(n) for n in compute_new_shape(SHAPE, current, new))
    assert nnunet_target_shape(SHAPE, current, new) == rs.target_shape


def test_target_shape_rounds_half_to_even_like_nnunet() -> None:
    # 5 * 0.5 = 2.5 -> 2 and 7 * 0.5 = 3.5 -> 4 (Python's round), as compute_new_shape does
    assert nnunet_target_shape((5, 7), (0.5, 0.5), (1.0, 1.0)) == (2, 4)
    assert tuple(compute_new_shape((5, 7), (0.5, 0.5), (1.0, 1.0))) == (2, 4)


# --- block-wise == whole-array ---------------------------------------------------------------------------


def _data(channels: int, dtype: type = np.float32, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Noise with sharp steps, so cubic splines overshoot and skimage's clip matters; channels differ in range."""
    rng = np.random.default_rng(42)
    steps = (rng.random((channels, *shape)) > 0.7) * 10.0 + rng.standard_normal((channels, *shape))
    scale = np.arange(1, channels + 1).reshape(-1, *[1] * len(shape))
    return (steps * scale + 5 * (scale - 1)).astype(dtype)


def _irregular(shape: tuple[int, ...], seed: int = 0) -> Iterator[Window]:
    """A partition of ``shape`` cut at random places per axis (blocks of 1 to ~12 voxels, aligned to nothing)."""
    rng = np.random.default_rng(seed)
    cuts = []
    for n in shape:
        inner = np.unique(rng.integers(1, n, size=max(1, n // 6)))
        cuts.append([0, *inner.tolist(), n])
    for bounds in itertools.product(*[list(itertools.pairwise(c)) for c in cuts]):
        yield Window(tuple(b[0] for b in bounds), tuple(b[1] for b in bounds))


def _blocks(shape: tuple[int, ...], blocks: tuple[int, ...] | str) -> Iterator[Window]:
    return _irregular(shape) if blocks == "irregular" else iter(BlockPartition(shape, blocks))


def _blockwise(rs: Resampling, data: np.ndarray, blocks: tuple[int, ...] | str) -> np.ndarray:
    """Assemble the target from blocks, each computed from only its source window (halo included)."""
    value_range = rs.value_range(data)
    out = np.zeros((data.shape[0], *rs.target_shape), dtype=data.dtype)
    written = np.zeros(rs.target_shape, dtype=np.int32)
    for target in _blocks(rs.target_shape, blocks):
        source = rs.source_window(target)
        out[(slice(None), *target.slices)] = rs.apply(
            data[(slice(None), *source.slices)], source, target, value_range=value_range
        )
        written[target.slices] += 1
    assert (written == 1).all(), "the blocks must partition the target"
    return out


def _max_error(a: np.ndarray, b: np.ndarray, data: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / np.ptp(data.astype(np.float64)))


CASES = [  # current spacing, new spacing, order, order_z, force_separate_z, channels, expected separate axis
    pytest.param((1.0, 1.0, 1.0), (0.7, 1.3, 0.9), 3, 0, None, 1, None, id="iso-up-and-down-o3"),
    pytest.param((1.0, 1.0, 1.0), (1.6, 2.1, 1.3), 3, 0, None, 2, None, id="iso-down-o3-C2"),
    pytest.param((2.5, 0.8, 0.8), (1.0, 1.0, 1.0), 3, 0, None, 2, 0, id="preprocess-sep-z-o3/0-C2"),
    pytest.param((0.8, 0.8, 2.5), (1.0, 1.0, 1.0), 3, 1, None, 1, 2, id="preprocess-sep-last-axis-o3/1"),
    pytest.param((2.5, 0.8, 0.8), (1.0, 1.0, 1.0), 3, 0, False, 1, None, id="forced-no-sep-o3"),
    pytest.param((1.0, 1.0, 1.0), (2.5, 0.8, 0.8), 1, 0, None, 2, 0, id="export-sep-z-o1/0-C2"),
    pytest.param((3.5, 0.8, 0.8), (1.5, 0.6, 1.1), 1, 0, None, 1, 0, id="export-sep-z-o1/0-mixed"),
    pytest.param((1.0, 1.0, 1.0), (0.7, 1.3, 0.9), 1, 0, None, 1, None, id="iso-o1"),
    pytest.param((1.0, 1.0, 4.0), (1.0, 1.0, 1.0), 3, 3, None, 1, 2, id="sep-axis-with-order_z-3"),
    pytest.param((2.5, 0.8, 0.8), (1.0, 1.0, 1.0), 0, 0, None, 2, 0, id="sep-z-o0-C2"),
    pytest.param((1.0, 1.0, 1.0), (0.7, 1.3, 0.9), 0, 0, None, 1, None, id="iso-o0"),
]


@pytest.mark.parametrize(("current", "new", "order", "order_z", "force", "channels", "axis"), CASES)
@pytest.mark.parametrize("blocks", [(1, 64, 64), (64, 1, 13), "irregular"], ids=str)
def test_blocks_equal_nnunet_whole_array(
    current: tuple[float, ...],
    new: tuple[float, ...],
    order: int,
    order_z: int,
    force: bool | None,
    channels: int,
    axis: int | None,
    blocks: tuple[int, ...] | str,
) -> None:
    data = _data(channels)
    rs = Resampling.nnunet(SHAPE, current, new, order=order, order_z=order_z, force_separate_z=force)
    assert rs.separate_axis == axis
    expected = resample_data_or_seg_to_shape(
        data, rs.target_shape, current, new, order=order, order_z=order_z, force_separate_z=force
    )
    got = _blockwise(rs, data, blocks)
    if order == 0 and (axis is None or order_z == 0):
        np.testing.assert_array_equal(got, expected)
    else:
        assert _max_error(got, expected, data) <= 1e-6


def test_2d_image_equals_nnunet_on_a_one_slice_volume() -> None:
    # nnU-Net resamples a 2D image as a (C, 1, H, W) volume with spacing (999, y, x); tiler takes (C, H, W)
    data = _data(2, shape=(40, 36))
    rs = Resampling.nnunet((40, 36), (0.8, 0.8), (0.5, 1.1))
    assert rs.separate_axis is None and rs.target_shape == (64, 26)
    expected = resample_data_or_seg_to_shape(
        data[:, None], (1, *rs.target_shape), (999, 0.8, 0.8), (999, 0.5, 1.1), force_separate_z=None
    )
    got = _blockwise(rs, data, "irregular")
    assert _max_error(got, expected[:, 0], data) <= 1e-6


def test_integer_input_order_0_is_exact_and_keeps_the_dtype() -> None:
    data = np.random.default_rng(3).integers(0, 255, (1, *SHAPE)).astype(np.uint8)
    rs = Resampling.nnunet(SHAPE, (1.0, 1.0, 1.0), (0.7, 1.3, 0.9), order=0)
    expected = resample_data_or_seg_to_shape(
        data, rs.target_shape, (1.0, 1.0, 1.0), (0.7, 1.3, 0.9), order=0, force_separate_z=None
    )
    np.testing.assert_array_equal(_blockwise(rs, data, (7, 11, 5)), expected)


def test_order_0_rounds_half_coordinates_up() -> None:
    # halving 8 voxels puts target voxel o at source 2o + 0.5; scipy (and so nnU-Net) takes 2o + 1
    rs = Resampling((8,), (4,), order=0, separate_axis=None)
    src = np.arange(8.0)[None]
    assert rs.apply(src, Window((0,), (8,)), Window((0,), (4,)))[0].tolist() == [1.0, 3.0, 5.0, 7.0]


# --- halo, larger sources, identity, value range ---------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "new", "order_z"),
    [
        pytest.param((1.0, 1.0, 1.0), (0.7, 1.3, 0.9), 0, id="all-axes-o3"),
        pytest.param((1.0, 1.0, 4.0), (1.0, 1.0, 1.0), 3, id="separate-axis-order_z-3"),
    ],
)
def test_halo_makes_blocks_exact_and_no_halo_does_not(
    monkeypatch: pytest.MonkeyPatch, current: tuple[float, ...], new: tuple[float, ...], order_z: int
) -> None:
    data = _data(1, dtype=np.float64)  # float64 out: the truncation error is not hidden by float32 rounding
    rs = Resampling.nnunet(SHAPE, current, new, order=3, order_z=order_z)
    expected = resample_data_or_seg_to_shape(
        data, rs.target_shape, current, new, order=3, order_z=order_z, force_separate_z=None
    )
    assert _max_error(_blockwise(rs, data, (7, 11, 5)), expected, data) <= 1e-9
    monkeypatch.setattr(resample_module, "SPLINE_HALO", {order: 0 for order in resample_module.SPLINE_HALO})
    assert _max_error(_blockwise(rs, data, (7, 11, 5)), expected, data) >= 1e-3


def test_footprint_is_the_source_window_without_halo() -> None:
    rs = Resampling.nnunet(SHAPE, (1.0, 1.0, 1.0), (0.7, 1.3, 0.9), order=3)
    target = Window((10, 10, 10), (12, 15, 20))
    halo = resample_module.SPLINE_HALO[3]
    footprint, source = rs.footprint(target), rs.source_window(target)
    assert source.start == tuple(max(a - halo, 0) for a in footprint.start)
    assert source.stop == tuple(min(b + halo, n) for b, n in zip(footprint.stop, SHAPE, strict=True))
    linear = Resampling.nnunet(SHAPE, (1.0, 1.0, 1.0), (0.7, 1.3, 0.9), order=1)
    assert linear.footprint(target) == linear.source_window(target)


@pytest.mark.parametrize(("order", "order_z"), [(3, 0), (3, 3), (1, 0)], ids=["o3/0", "o3/3", "o1/0"])
def test_a_larger_source_gives_the_same_block(order: int, order_z: int) -> None:
    data = _data(2)
    rs = Resampling.nnunet(SHAPE, (2.5, 0.8, 0.8), (1.0, 1.0, 1.0), order=order, order_z=order_z)
    value_range = rs.value_range(data)
    target = Window((17, 5, 9), (23, 19, 10))
    source = rs.source_window(target)
    tight = rs.apply(data[(slice(None), *source.slices)], source, target, value_range=value_range)
    whole = rs.apply(data, Window.from_shape(SHAPE), target, value_range=value_range)
    np.testing.assert_array_equal(tight, whole)


def test_identity_returns_the_pixels_unchanged() -> None:
    data = np.random.default_rng(0).integers(-5, 5, (2, *SHAPE)).astype(np.int16)
    rs = Resampling.nnunet(SHAPE, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert rs.identity and not rs.needs_value_range
    target = Window((3, 4, 5), (9, 40, 6))
    assert rs.source_window(target) == target
    got = rs.apply(data, Window.from_shape(SHAPE), target)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, data[(slice(None), *target.slices)])
    assert resample_data_or_seg_to_shape(data, SHAPE, (1, 1, 1), (1, 1, 1)) is data


@pytest.mark.parametrize("axis_spacing", [(2.5, 0.8, 0.8), (1.0, 1.0, 1.0)], ids=["per-slice", "per-channel"])
def test_value_range_merged_over_windows_equals_the_whole(axis_spacing: tuple[float, ...]) -> None:
    data = _data(2)
    rs = Resampling.nnunet(SHAPE, axis_spacing, (1.0, 1.0, 1.0))
    merged = None
    for window in BlockPartition(SHAPE, (6, 15, 36)):
        part = rs.value_range(data[(slice(None), *window.slices)], window)
        merged = part if merged is None else merge_value_ranges(merged, part)
    assert merged is not None
    np.testing.assert_array_equal(merged, rs.value_range(data))
    assert merged.shape == (2, 2, rs.value_range_slices)
    assert rs.value_range_slices == (SHAPE[0] if rs.separate_axis == 0 else 1)


def test_the_clip_is_what_nnunet_does_and_is_required_for_order_3() -> None:
    data = _data(1)
    rs = Resampling.nnunet(SHAPE, (1.0, 1.0, 1.0), (0.7, 1.3, 0.9), order=3)
    whole, target = Window.from_shape(SHAPE), Window.from_shape(rs.target_shape)
    expected = resample_data_or_seg_to_shape(
        data, rs.target_shape, (1, 1, 1), (0.7, 1.3, 0.9), order=3, force_separate_z=None
    )
    with pytest.raises(InputError, match="pass value_range=Resampling.value_range"):
        rs.apply(data, whole, target)
    unclipped = np.stack([np.full((1, 1), -np.inf), np.full((1, 1), np.inf)])
    assert _max_error(rs.apply(data, whole, target, value_range=unclipped), expected, data) > 0.1
    assert _max_error(rs.apply(data, whole, target, value_range=rs.value_range(data)), expected, data) <= 1e-6
    # only the separate axis changes size: the order-3 in-plane resize is an identity and nothing overshoots
    z_only = Resampling.nnunet(SHAPE, (1.0, 1.0, 4.0), (1.0, 1.0, 1.0), order=3, order_z=3)
    assert z_only.separate_axis == 2 and not z_only.needs_value_range
    expected = resample_data_or_seg_to_shape(
        data, z_only.target_shape, (1, 1, 4), (1, 1, 1), order=3, order_z=3, force_separate_z=None
    )
    got = z_only.apply(data, whole, Window.from_shape(z_only.target_shape))
    assert _max_error(got, expected, data) <= 1e-6


# --- errors ----------------------------------------------------------------------------------------------


def test_errors_say_what_and_how_to_fix() -> None:
    rs = Resampling.nnunet(SHAPE, (1.0, 1.0, 1.0), (0.7, 1.3, 0.9), order=1)
    data = _data(1)
    target = Window((0, 0, 0), (5, 5, 5))
    with pytest.raises(GeometryError, match="does not contain .* read Resampling.source_window"):
        rs.apply(data[:, :2, :2, :2], Window((0, 0, 0), (2, 2, 2)), target)
    with pytest.raises(GeometryError, match=r"expected \(C, \*"):
        rs.apply(data[0], Window.from_shape(SHAPE), target)
    with pytest.raises(GeometryError, match="outside the target grid"):
        rs.source_window(Window((0, 0, 0), (5, 5, 500)))
    with pytest.raises(GeometryError, match="outside the source grid"):
        rs.value_range(data, Window((1, 0, 0), (21, 40, 36)))
    with pytest.raises(InputError, match=r"expected \(2, C, K\)"):
        rs.apply(data, Window.from_shape(SHAPE), target, value_range=np.zeros((2, 3, 1)))
    with pytest.raises(ConfigError, match="order=6 must be a spline order 0..5"):
        Resampling(SHAPE, SHAPE, order=6, separate_axis=None)
    with pytest.raises(ConfigError, match="separate_axis=3 is not an axis"):
        Resampling(SHAPE, SHAPE, order=3, separate_axis=3)
    with pytest.raises(GeometryError, match="empty shape"):
        nnunet_target_shape((1, 40, 36), (1.0, 1.0, 1.0), (5.0, 1.0, 1.0))


def test_docstring_examples_run() -> None:
    result = doctest.testmod(resample_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
