"""Tile geometry: the grid rule, coverage, crop interiors, block partition, bad geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tiler.errors import GeometryError, TilerError
from tiler.geometry import BlockPartition, TileGrid, Window, axis_starts

MAX_TILES = 4000  # keeps each example to milliseconds (a 300x300 image with 1-px tiles would be 90000 tiles)


@st.composite
def grids(draw: st.DrawFn, *, limit2d: int = 300, limit3d: int = 60, max_tile: int = 64) -> TileGrid:
    ndim = draw(st.sampled_from([2, 3]))
    limit = limit2d if ndim == 2 else limit3d
    shape = tuple(draw(st.integers(1, limit)) for _ in range(ndim))
    tile = tuple(draw(st.integers(1, max_tile)) for _ in range(ndim))
    overlap = tuple(draw(st.integers(0, t - 1)) for t in tile)
    grid = TileGrid(shape, tile, overlap)
    assume(len(grid) <= MAX_TILES)
    return grid


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        pytest.param(10, 4, 1, (0, 3, 6), id="last-flush"),
        pytest.param(9, 4, 1, (0, 3, 5), id="last-moved-back"),
        pytest.param(4, 4, 0, (0,), id="exact"),
        pytest.param(3, 8, 2, (0,), id="shorter-than-tile"),
        pytest.param(256, 64, 16, (0, 48, 96, 144, 192), id="even"),
        pytest.param(1, 1, 0, (0,), id="one-pixel"),
    ],
)
def test_axis_starts_table(length: int, tile: int, overlap: int, expected: tuple[int, ...]) -> None:
    assert axis_starts(length, tile, overlap) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(grids())
def test_tiles_cover_every_pixel_and_stay_in_padded_image(grid: TileGrid) -> None:
    hits = np.zeros(grid.shape, dtype=np.int32)
    windows = list(grid)
    assert len(windows) == len(grid)
    padded = Window.from_shape(grid.padded_shape)
    for w in windows:
        assert padded.contains(w)
        assert w.shape == grid.tile
        clipped = w.clip(grid.shape)
        assert clipped is not None
        hits[clipped.slices] += 1
    assert hits.min() >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(grids())
def test_crop_interiors_cover_every_pixel_exactly_once(grid: TileGrid) -> None:
    hits = np.zeros(grid.shape, dtype=np.int32)
    for pos in grid.positions():
        inner = grid.interior(pos)
        assert grid.window(pos).contains(inner)
        hits[inner.slices] += 1
    assert (hits == 1).all()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(grids(limit2d=120, limit3d=30, max_tile=32), st.data())
def test_block_tiles_are_exactly_the_intersecting_ones_in_global_order(grid: TileGrid, data: st.DataObject) -> None:
    # the oracle checks every (block, tile) pair: keep blocks x tiles small
    block = tuple(data.draw(st.integers(max(1, n // 8), 128)) for n in grid.shape)
    every = list(grid.positions())
    for window in BlockPartition(grid.shape, block):
        found = grid.positions_intersecting(window)
        expected = [p for p in every if grid.window(p).intersection(window) is not None]
        assert found == expected
        assert [grid.index_of(p) for p in found] == sorted(grid.index_of(p) for p in found)


def test_block_partition_tiles_the_image_once() -> None:
    part = BlockPartition((100, 70), (32, 32))
    hits = np.zeros((100, 70), dtype=np.int32)
    for w in part:
        hits[w.slices] += 1
    assert (hits == 1).all()
    assert len(part) == 4 * 3 == len(list(part))


def test_window_algebra() -> None:
    a = Window((0, 0), (10, 10))
    b = Window((5, 8), (15, 20))
    assert a.intersection(b) == Window((5, 8), (10, 10))
    assert a.intersection(Window((10, 0), (12, 5))) is None
    assert b.relative_to(a) == b
    assert Window((5, 8), (10, 10)).relative_to(b) == Window((0, 0), (5, 2))
    assert a.union_bounds(b) == Window((0, 0), (15, 20))
    assert hash(a) == hash(Window((0, 0), (10, 10)))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(
            lambda: TileGrid((64, 64), (16, 16), (16, 0)), r"overlap=\(16, 0\).*smaller than tile", id="overlap>=tile"
        ),
        pytest.param(lambda: TileGrid((64, 64), (16, 16), (20, 20)), r"overlap=\(20, 20\)", id="overlap>tile"),
        pytest.param(lambda: TileGrid((64, 64), (0, 16), (0, 0)), r"tile=\(0, 16\).*at least 1", id="zero-tile"),
        pytest.param(lambda: TileGrid((64, -3), (16, 16), (0, 0)), r"image shape=\(64, -3\)", id="negative-shape"),
        pytest.param(
            lambda: TileGrid((64, 64), (16, 16, 16), (0, 0, 0)),
            r"tile=.*3 axes but the image has 2",
            id="dims-mismatch",
        ),
        pytest.param(lambda: TileGrid((64, 64), (16, 16), (-1, 0)), r"overlap=\(-1, 0\)", id="negative-overlap"),
        pytest.param(lambda: TileGrid((64,), (16,), (0,)), r"2D \(H, W\) or 3D", id="1d-image"),
        pytest.param(lambda: TileGrid((64, 64), (16.5, 16), (0, 0)), r"whole pixel counts", id="fractional-tile"),
        pytest.param(lambda: Window((0, 5), (4, 5)), r"empty or inverted", id="empty-window"),
        pytest.param(lambda: Window((0, 0), (4, 4, 4)), r"same, non-zero number of axes", id="window-dims"),
        pytest.param(lambda: BlockPartition((64, 64), (0, 8)), r"block=\(0, 8\)", id="zero-block"),
        pytest.param(
            lambda: BlockPartition((64, 64), (48, 48)).check_aligned((32, 32)),
            r"multiple of the output chunk",
            id="unaligned-block",
        ),
    ],
)
def test_bad_geometry_raises_project_error(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GeometryError, match=match) as info:
        make()
    assert isinstance(info.value, TilerError) and isinstance(info.value, ValueError)
