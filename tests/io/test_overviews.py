"""Mode overview levels drawn band by band by several workers: exact modes, band-invariant, fed to the COG."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.io.test_export_viewers import _store
from tiler.io import overviews
from tiler.io.export import export_cog, write_quicklook
from tiler.io.store import OutputStore
from tiler.io.vector import band_rows

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
NODATA = 255


def _oracle(labels: np.ndarray) -> np.ndarray:
    """Mode of each 2x2 cell by counting, written out the slow way: smallest class on a tie, nodata if all nodata."""
    h, w = labels.shape
    out = np.full((-(-h // 2), -(-w // 2)), NODATA, np.uint8)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            cell = [int(v) for v in labels[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].ravel() if v != NODATA]
            if cell:
                counts = Counter(cell)
                out[r, c] = min(counts, key=lambda k: (-counts[k], k))
    return out


@pytest.mark.parametrize("shape", [pytest.param((6, 8), id="even"), pytest.param((7, 9), id="odd")])
def test_each_overview_pixel_is_the_most_frequent_valid_class_of_its_cell(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.choice(np.array([0, 1, 2, NODATA], np.uint8), size=shape, p=[0.3, 0.3, 0.2, 0.2])
        assert np.array_equal(overviews.mode_2x(labels, nodata=NODATA), _oracle(labels))


def _labels(shape: tuple[int, int] = (1300, 1100)) -> np.ndarray:
    rng = np.random.default_rng(5)
    cells = rng.integers(0, 3, (shape[0] // 8 + 1, shape[1] // 8 + 1)).astype(np.uint8)
    labels = np.kron(cells, np.ones((8, 8), np.uint8))[: shape[0], : shape[1]].copy()
    labels[rng.random(shape) < 0.1] = 1  # noise, so the modes are not just the cells
    labels[:100, :150] = NODATA
    return labels


def _draw(store: OutputStore, folder: Path, bands: int) -> list[tuple[int, int]]:
    levels = len(overviews.level_shapes(store.shape))
    rows = band_rows(store.shape[0], overviews.band_unit(store.chunks[0], levels), bands)
    for band in rows:
        overviews.write_overview_band(store, folder, rows=band)
    return rows


def test_levels_drawn_in_bands_by_several_workers_equal_the_levels_of_the_whole_map(tmp_path: Path) -> None:
    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels, chunks=(64, 64))
    shapes = overviews.level_shapes(store.shape)
    assert shapes == [(650, 550), (325, 275)]
    assert len(_draw(store, tmp_path / "bands", 4)) > 1
    expected = labels
    for k, shape in enumerate(shapes, start=1):
        expected = _oracle(expected) if k == 1 else overviews.mode_2x(expected, nodata=NODATA)
        assert np.array_equal(overviews.read_level(tmp_path / "bands", k, shape), expected), k


def test_a_missing_band_is_an_error_not_a_short_level(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr", _labels(), chunks=(64, 64))
    rows = _draw(store, tmp_path / "bands", 4)
    next((tmp_path / "bands" / "level-1").glob("*.npy")).unlink()
    with pytest.raises(ValueError, match="a band is missing"):
        overviews.read_level(tmp_path / "bands", 1, overviews.level_shapes(store.shape)[0])
    assert len(rows) == 4


def test_the_cog_takes_the_stored_levels_as_its_overviews_and_stays_a_valid_cog(tmp_path: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels, chunks=(64, 64))
    _draw(store, tmp_path / "bands", 3)
    out = export_cog(store, tmp_path / "m.tif", overviews=tmp_path / "bands")
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    with rasterio.open(out) as cog:
        assert np.array_equal(cog.read(1), labels) and cog.overviews(1)[0] == 2
    with rasterio.open(out, overview_level=0) as level1:
        assert np.array_equal(level1.read(1), overviews.read_level(tmp_path / "bands", 1, (650, 550)))
    assert not list(tmp_path.glob(".tiler-tmp-*"))  # the source and its .ovr are gone


def test_the_quicklook_reads_a_stored_level_and_never_the_full_map(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = _store(tmp_path / "s.zarr", _labels((2600, 2200)), chunks=(128, 128))
    _draw(store, tmp_path / "bands", 3)
    plain = write_quicklook(store, tmp_path / "plain.png", max_size=900)  # a step of 3: level 1 serves it

    def no_full_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the quicklook read the full-resolution map")

    monkeypatch.setattr(OutputStore, "read", no_full_read)
    from_levels = write_quicklook(store, tmp_path / "levels.png", max_size=900, overviews=tmp_path / "bands")
    from PIL import Image

    assert Image.open(from_levels).size == Image.open(plain).size


@pytest.mark.parametrize("step", [2, 3, 7])
def test_a_sampled_level_reads_every_step_th_row_across_band_boundaries(tmp_path: Path, step: int) -> None:
    store = _store(tmp_path / "s.zarr", _labels(), chunks=(64, 64))
    _draw(store, tmp_path / "bands", 5)
    whole = overviews.read_level(tmp_path / "bands", 1, (650, 550))
    rows, cols = np.arange(0, 650, step), np.arange(0, 550, step)
    assert np.array_equal(overviews.read_level(tmp_path / "bands", 1, (650, 550), rows=rows, cols=cols),
                          whole[::step, ::step])
