"""The output store opened as xarray/rioxarray users open zarr: dimension names, coordinates, the CRS, nodata."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import xarray as xr

from tiler.geometry import Window
from tiler.io import open_reader
from tiler.io.base import Georef
from tiler.io.scenes_files import write_satellite
from tiler.io.store import TRANSFORM_ORDER, OutputStore


def _open(path, **kwargs):
    return xr.open_zarr(path, **kwargs)


def test_raster_store_gives_xarray_the_inputs_crs_and_pixel_centres(tmp_path, stand_in):
    import rioxarray  # noqa: F401  (registers .rio)

    scene = stand_in((120, 150), channels=2, dtype=np.uint16, image_nodata=0)
    write_satellite(scene, tmp_path / "img.tif", tmp_path / "truth.tif", block=64)
    reader = open_reader(tmp_path / "img.tif")
    store = OutputStore.create(
        tmp_path / "out.zarr", shape=reader.shape, num_classes=3, chunks=(64, 64), pixels_hash="c",
        attrs={"georef": reader.georef}, probabilities="float16",
    )
    labels = scene.read(Window.from_shape(scene.shape))[1]
    store.write_block(Window((0, 0), reader.shape), labels, np.zeros((3, *reader.shape), np.float32))
    ds = _open(store.path)
    assert ds["labels"].dims == ("y", "x") and ds["probabilities"].dims == ("c", "y", "x")
    with rasterio.open(reader.path) as src:
        xs, _ = rasterio.transform.xy(src.transform, np.zeros(src.width), np.arange(src.width))
        _, ys = rasterio.transform.xy(src.transform, np.arange(src.height), np.zeros(src.height))
        assert np.allclose(ds["x"].values, xs) and np.allclose(ds["y"].values, ys)
        assert ds["labels"].rio.crs == src.crs == ds.rio.crs
        assert ds["labels"].rio.transform() == src.transform
    raw = _open(store.path, mask_and_scale=False)["labels"]
    assert raw.dtype == np.uint8 and np.array_equal(raw.values, labels)
    masked = np.where(labels == store.nodata_label, np.nan, labels)  # labels' _FillValue: nodata masked by default
    assert np.array_equal(ds["labels"].values, masked, equal_nan=True) and np.isnan(masked).any()
    assert "spatial_ref" in ds["labels"].coords
    assert store.attrs["georef_transform_order"] == TRANSFORM_ORDER
    a, b, c, d, e, f = store.georef.transform
    assert ds["spatial_ref"].attrs["GeoTransform"].split() == [repr(v) for v in (c, a, b, f, d, e)]


@pytest.mark.parametrize(
    ("georef", "shape", "expected"),
    [
        pytest.param(Georef(kind="slide", mpp=0.25), (40, 60), {"x": 0.25 * (np.arange(60) + 0.5)}, id="slide-um"),
        pytest.param(
            Georef(kind="volume", spacing=(3.0, 0.5, 0.7)), (8, 10, 12), {"z": 3.0 * np.arange(8),
                                                                         "x": 0.7 * np.arange(12)}, id="volume-mm",
        ),
    ],
)
def test_slide_and_volume_stores_have_physical_coordinates(tmp_path, georef, shape, expected):
    store = OutputStore.create(
        tmp_path / "s.zarr", shape=shape, num_classes=2, chunks=shape, pixels_hash="c", attrs={"georef": georef}
    )
    ds = _open(store.path)
    assert ds["labels"].dims == ("z", "y", "x")[-len(shape):]
    for name, values in expected.items():
        assert np.allclose(ds[name].values, values)
        assert ds[name].attrs["units"] == ("micrometer" if georef.kind == "slide" else "millimeter")
    assert "spatial_ref" not in ds


def test_a_store_without_georeferencing_has_positions_only(tmp_path):
    store = OutputStore.create(tmp_path / "s.zarr", shape=(20, 30), num_classes=2, chunks=(20, 30), pixels_hash="c")
    ds = _open(store.path)
    assert ds["labels"].dims == ("y", "x") and not ds.coords  # nothing claimed that is not known


@pytest.mark.parametrize(
    ("num_classes", "nodata_label", "dtype"),
    [
        pytest.param(3, 255, np.uint8, id="uint8-255"),
        pytest.param(3, 0, np.uint8, id="uint8-0"),
        pytest.param(300, 1000, np.uint16, id="uint16-1000"),
    ],
)
def test_open_zarr_gives_no_warning_and_rio_nodata_is_the_nodata_label(tmp_path, num_classes, nodata_label, dtype):
    import rioxarray  # noqa: F401  (registers .rio)

    store = OutputStore.create(
        tmp_path / "s.zarr", shape=(40, 60), num_classes=num_classes, chunks=(20, 30), pixels_hash="c",
        nodata_label=nodata_label, probabilities="float16", attrs={"georef": Georef(kind="slide", mpp=0.5)},
    )
    store.record_block("0_0", {"tiles_run": 1}, Window((0, 0), (20, 30)))  # the .tiler folder is there, not zarr's
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the consolidated-metadata RuntimeWarning, zarr's ".tiler" warning: none
        ds = xr.open_zarr(store.path)
        raw = xr.open_zarr(store.path, mask_and_scale=False)
    assert raw["labels"].dtype == dtype and raw["labels"].rio.nodata == nodata_label == store.nodata_label
    assert ds["labels"].rio.encoded_nodata == nodata_label and np.isnan(ds["labels"].rio.nodata)
    assert np.isnan(ds["labels"].values).all()  # nothing written yet: every pixel is nodata
    assert "_FillValue" not in raw["probabilities"].attrs  # a probability of 0 is not nodata
    labels_meta = json.loads((store.path / "labels" / "zarr.json").read_text())
    assert labels_meta["fill_value"] == labels_meta["attributes"]["_FillValue"] == nodata_label  # one nodata value


def test_the_consolidated_metadata_is_the_arrays_own_and_survives_attribute_rewrites(tmp_path):
    store = OutputStore.create(tmp_path / "s.zarr", shape=(20, 30), num_classes=2, chunks=(20, 30), pixels_hash="c")
    store.mark_complete({"blocks_total": 0})
    meta = json.loads((store.path / "zarr.json").read_text())
    consolidated = meta["consolidated_metadata"]["metadata"]
    assert meta["attributes"]["complete"] is True and sorted(consolidated) == ["labels"]
    assert consolidated["labels"] == json.loads((store.path / "labels" / "zarr.json").read_text())
