"""Areas in real units: a pixel's size from the georeferencing, per-class counts summed from block records."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rasterio.crs import CRS

from tiler.engine.worker import class_counts
from tiler.geometry import BlockPartition, Window
from tiler.io.base import Georef
from tiler.io.classes import class_areas, foreground_classes, is_background, pixel_measure
from tiler.io.store import OutputStore

W = Window((0, 0), (10, 10))


@pytest.mark.parametrize(
    ("georef", "unit", "size"),
    [
        pytest.param(Georef("raster", CRS.from_epsg(32633).to_wkt(), (10, 0, 5e5, 0, -10, 4e6)), "m2", 100.0,
                     id="utm-10m"),
        pytest.param(Georef("raster", CRS.from_epsg(2263).to_wkt(), (2, 0, 0, 0, -2, 0)), "m2",
                     4 * (1200 / 3937) ** 2, id="us-survey-feet"),
        pytest.param(Georef("slide", mpp=0.5), "mm2", 0.25e-6, id="slide-mpp"),
        pytest.param(Georef("volume", spacing=(2.0, 0.5, 0.5)), "mm3", 0.5, id="volume-spacing"),
        pytest.param(Georef("volume", affine=((0, 0, -1.5, 0), (0, 0.8, 0, 0), (0.8, 0, 0, 0), (0, 0, 0, 1))),
                     "mm3", 0.96, id="volume-oblique-affine"),
        pytest.param(Georef("raster", None, (1, 0, 0, 0, -1, 0)), "px", 1.0, id="no-crs"),
        pytest.param(Georef(), "px", 1.0, id="nothing"),
    ],
)
def test_pixel_size_in_real_units(georef, unit, size):
    measure = pixel_measure(georef)
    assert measure.unit == unit
    assert measure.pixel_size(W) == pytest.approx(size, rel=1e-9)


def test_geographic_pixels_shrink_towards_the_poles_like_the_ellipsoid():
    from pyproj import Geod

    georef = Georef("raster", CRS.from_epsg(4326).to_wkt(), (1.0, 0, 10.0, 0, -1.0, 61.0))  # 1-degree pixels
    measure = pixel_measure(georef)
    geod = Geod(ellps="WGS84")
    for row in (0, 30, 60):  # latitudes 61..60, 31..30, 1..0
        top = 61.0 - row
        steps = np.linspace(10, 11, 200)  # edges along parallels (a pixel's edges), not geodesics
        lons = [*steps, *steps[::-1]]
        lats = [top] * len(steps) + [top - 1] * len(steps)
        area, _ = geod.polygon_area_perimeter(lons, lats)
        assert measure.pixel_size(Window((row, 0), (row + 1, 1))) == pytest.approx(abs(area), rel=1e-6)


def test_background_rule():
    assert is_background("Background") and not is_background("bg")
    assert foreground_classes(["water", "forest"]) == (0, 1)
    assert foreground_classes(["background", "stroma", "nuclei"]) == (1, 2)


def _store(path, labels, georef):
    store = OutputStore.create(
        path, shape=labels.shape, num_classes=3, chunks=(16, 16), pixels_hash="c",
        attrs={"georef": georef, "class_names": ["background", "liver", "lesion"]},
    )
    for i, block in enumerate(BlockPartition(store.shape, (32, 32))):
        store.write_block(block, labels[block.slices])
        record = {"start": list(block.start), "stop": list(block.stop), "tiles_run": 1}
        if i % 3:  # every third record as written before blocks carried counts: recounted from the store
            record["class_counts"] = class_counts(labels[block.slices], 3)
        store.record_block(f"b{i}", record)
    return store


def test_class_areas_sum_the_block_counts(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (70, 90)).astype(np.uint8)
    labels[:5] = 255
    store = _store(tmp_path / "s.zarr", labels, Georef("slide", mpp=2.0))
    areas = class_areas(store)
    assert areas["unit"] == "mm2" and areas["units"] == ["mm2"]
    assert [c["pixels"] for c in areas["classes"]] == [int((labels == k).sum()) for k in range(3)]
    assert [c["mm2"] for c in areas["classes"]] == pytest.approx([(labels == k).sum() * 4e-6 for k in range(3)])
    assert areas["nodata_pixels"] == 5 * 90 and areas["total_pixels"] == 70 * 90
    assert areas["blocks_recounted"] == math.ceil(len(list(BlockPartition((70, 90), (32, 32)))) / 3)
    assert [c["name"] for c in areas["classes"]] == ["background", "liver", "lesion"]


def test_volume_areas_in_mm3_and_ml(tmp_path):
    labels = np.zeros((4, 40, 40), np.uint8)
    labels[:, :10, :10] = 2  # 400 voxels of 2 mm^3
    store = OutputStore.create(
        tmp_path / "v.zarr", shape=labels.shape, num_classes=3, chunks=(4, 40, 40), pixels_hash="c",
        attrs={"georef": Georef("volume", spacing=(2.0, 1.0, 1.0))},
    )
    window = Window((0, 0, 0), labels.shape)
    store.write_block(window, labels)
    store.record_block("b", {"start": [0, 0, 0], "stop": list(labels.shape), "class_counts": class_counts(labels, 3)})
    lesion = class_areas(store)["classes"][2]
    assert lesion["mm3"] == 800.0 and lesion["ml"] == pytest.approx(0.8)


def test_block_class_counts_leave_out_nodata():
    labels = np.array([[0, 1, 1], [2, 255, 255]], np.uint8)
    assert class_counts(labels, 3) == [1, 2, 1]
    assert class_counts(labels.astype(np.uint16) * 0 + 7, 3) == [0, 0, 0]
