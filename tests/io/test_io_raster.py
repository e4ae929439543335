"""Raster reader: windowed and boundless reads, bands, georeferencing, valid masks, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

from tests.shared_data import SHARED_DATA
from tiler.errors import InputError
from tiler.geometry import Window
from tiler.io import open_reader
from tiler.io.raster import RasterReader

DATA = str(SHARED_DATA)

RGB = f"{DATA}/RGB.byte.tif"


@pytest.fixture(scope="module")
def rgb_full():
    with rasterio.open(RGB) as src:
        return src.read()


def test_detects_raster_and_keeps_dtype_crs_transform():
    reader = open_reader(RGB)
    with rasterio.open(RGB) as src:
        assert isinstance(reader, RasterReader)
        assert reader.shape == (src.height, src.width) == (718, 791)
        assert reader.channels == 3 and reader.dtype == np.uint8 and reader.nodata == 0.0
        assert reader.georef.kind == "raster"
        assert rasterio.crs.CRS.from_wkt(reader.georef.crs_wkt) == src.crs
        assert Affine(*reader.georef.transform) == src.transform


@pytest.mark.parametrize(
    "start,stop",
    [
        pytest.param((0, 0), (64, 64), id="corner"),
        pytest.param((100, 250), (357, 300), id="interior"),
        pytest.param((700, 780), (718, 791), id="far-edge"),
    ],
)
def test_windowed_read_equals_slice_of_full_read(rgb_full, start, stop):
    window = Window(start, stop)
    assert np.array_equal(open_reader(RGB).read(window), rgb_full[(slice(None), *window.slices)])


@pytest.mark.parametrize(
    "start,stop",
    [
        pytest.param((-10, -20), (30, 40), id="before-origin"),
        pytest.param((700, 770), (750, 830), id="past-end"),
        pytest.param((800, 900), (810, 910), id="wholly-outside"),
    ],
)
def test_boundless_read_pads_with_nodata(rgb_full, start, stop):
    window = Window(start, stop)
    out = open_reader(RGB).read(window)
    assert out.shape == (3, *window.shape)
    expected = np.zeros_like(out)
    inside = window.clip((718, 791))
    if inside is not None:
        expected[(slice(None), *inside.relative_to(window).slices)] = rgb_full[(slice(None), *inside.slices)]
    assert np.array_equal(out, expected)
    mask = open_reader(RGB).valid_mask(window)
    keep = np.zeros(window.shape, bool)
    if inside is not None:
        keep[inside.relative_to(window).slices] = True
    assert not mask[~keep].any()


def test_band_selection_is_one_based(rgb_full):
    window = Window((200, 200), (260, 290))
    out = open_reader(RGB, bands=[3, 1]).read(window)
    assert out.shape == (2, 60, 90)
    assert np.array_equal(out, rgb_full[[2, 0]][(slice(None), *window.slices)])


def test_bad_band_raises():
    with pytest.raises(InputError, match=r"bands=\[4\].*has 3 band"):
        open_reader(RGB, bands=[4])


def test_landsat_valid_mask_is_about_two_thirds(rgb_full):
    reader = open_reader(RGB)
    mask = reader.valid_mask(Window.from_shape(reader.shape))
    assert 0.6 < mask.mean() < 0.72
    assert np.array_equal(mask, (rgb_full != 0).any(axis=0))


def test_reader_pickles_and_reopens(rgb_full):
    reader = open_reader(RGB, gdal_options={"GDAL_CACHEMAX": 64})
    window = Window((300, 300), (340, 380))
    reader.read(window)  # opens the handle; pickling must drop it
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    assert np.array_equal(clone.read(window), rgb_full[(slice(None), *window.slices)])
    clone.close()


def test_gdal_virtual_path_is_passed_through_untouched():
    data = np.arange(64 * 48, dtype=np.uint16).reshape(1, 64, 48)
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=48,
            height=64,
            count=1,
            dtype="uint16",
            crs="EPSG:32633",
            transform=Affine(10, 0, 0, 0, -10, 0),
        ) as dst:
            dst.write(data)
        assert mem.name.startswith("/vsimem/")
        reader = open_reader(mem.name)
        assert reader.path == mem.name
        assert np.array_equal(reader.read(Window((5, 6), (20, 30))), data[:, 5:20, 6:30])
        reader.close()


def _write(path, data, **extra):
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": str(data.dtype),
        "crs": "EPSG:32633",
        "transform": Affine(10, 0, 500000, 0, -10, 5000000),
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_nan_pixels_are_invalid(tmp_path):
    data = np.ones((2, 20, 30), np.float32)
    data[0, 3:5, 4:9] = np.nan
    data[1, 10, 10] = np.nan
    _write(tmp_path / "nan.tif", data)
    mask = open_reader(tmp_path / "nan.tif").valid_mask(Window((0, 0), (20, 30)))
    expected = np.ones((20, 30), bool)
    expected[3:5, 4:9] = False
    expected[10, 10] = False
    assert np.array_equal(mask, expected)


def test_no_mask_means_none(tmp_path):
    _write(tmp_path / "plain.tif", np.ones((1, 8, 8), np.uint8))
    assert open_reader(tmp_path / "plain.tif").valid_mask(Window((0, 0), (8, 8))) is None


def test_float_raster_extreme_nodata_smaller_than_tile():
    reader = open_reader(f"{DATA}/float_raster_with_nodata.tif")
    assert reader.shape == (12, 13) and reader.dtype == np.float32
    window = Window((-10, -10), (54, 54))
    out = reader.read(window)
    mask = reader.valid_mask(window)
    assert out.shape == (1, 64, 64) and mask.shape == (64, 64)
    assert not mask[:10].any() and not mask[:, :10].any() and not mask[22:].any()
    assert 0 < mask.sum() < 12 * 13
    assert np.all(out[0][~mask] == np.float32(reader.nodata))


@pytest.mark.parametrize(
    "window",
    [
        pytest.param(((0, 0), (256, 256)), id="corner-collar"),
        pytest.param(((300, 200), (500, 600)), id="interior"),
        pytest.param(((400, 500), (800, 900)), id="boundless"),
    ],
)
def test_read_masked_equals_read_and_gdal_dataset_mask(window) -> None:  # type: ignore[no-untyped-def]
    from tiler.geometry import Window
    from tiler.io import open_reader

    reader = open_reader(f"{DATA}/RGB.byte.tif")
    w = Window(*window)
    pixels, valid = reader.read_masked(w)
    assert reader._mask_from_pixels  # the shortcut is what is under test
    assert np.array_equal(pixels, reader.read(w))
    expected = reader.valid_mask(w)
    assert valid is not None and expected is not None
    assert np.array_equal(valid, expected)
    assert not valid[reader.shape[0] - w.start[0] :].any() and not valid[:, reader.shape[1] - w.start[1] :].any()


def _write_multiband(path, pixels: np.ndarray, *, overviews: bool) -> None:  # noqa: ANN001
    c, h, w = pixels.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=c, dtype=pixels.dtype, tiled=True,
        blockxsize=256, blockysize=256, crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000),
    ) as dst:
        dst.write(pixels)
        if overviews:
            dst.build_overviews([2, 4, 8], rasterio.enums.Resampling.nearest)


def test_a_sampled_read_without_overviews_is_every_step_th_pixel(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 4000, (3, 1000, 900), dtype=np.uint16)
    _write_multiband(tmp_path / "plain.tif", pixels, overviews=False)
    reader = open_reader(tmp_path / "plain.tif")
    for step in (1, 3, 4, 7):
        assert np.array_equal(reader.read_sampled(step), pixels[:, ::step, ::step])


def test_a_sampled_read_of_a_raster_with_overviews_reads_an_overview_not_the_full_resolution(tmp_path, monkeypatch):
    pixels = np.random.default_rng(2).integers(0, 4000, (3, 1024, 1024), dtype=np.uint16)
    _write_multiband(tmp_path / "ovr.tif", pixels, overviews=True)
    reader = open_reader(tmp_path / "ovr.tif")
    with rasterio.open(tmp_path / "ovr.tif") as src:
        overview = src.read(out_shape=(3, 256, 256))  # GDAL's own choice for that size: the x4 overview

    def refuse(self, window):  # noqa: ANN001, ANN202
        raise AssertionError(f"read the full resolution at {window}")

    monkeypatch.setattr(RasterReader, "_read_inside", refuse)
    got = reader.read_sampled(4)
    assert got.shape == (3, 256, 256) and got.dtype == np.uint16
    assert np.array_equal(got, overview)
    # every overview pixel is a full-resolution pixel of its 4 x 4 cell (nearest), never a blend
    cells = pixels.reshape(3, 256, 4, 256, 4)
    assert np.all((cells == got[:, :, None, :, None]).any(axis=(2, 4)))
