"""Polygon exports checked with the GIS tools: geopandas/shapely for GeoJSON and GeoParquet, QuPath's schema.

The oracle is ``rasterio.features.shapes`` of the whole small raster at once: polygons built block by block
and dissolved across block borders must be exactly those polygons (none cut at a block edge, holes kept).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio.features
from rasterio.crs import CRS
from scipy import ndimage
from shapely.geometry import shape

from tests.io.array_reader import ArrayReader
from tiler.errors import OutputError
from tiler.geometry import BlockPartition
from tiler.io import polygons, vector
from tiler.io.base import Georef
from tiler.io.store import OutputStore
from tiler.io.vector import VectorStats, export_geojson, export_geoparquet, export_qupath, iter_polygons

CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0)  # 10 m pixels
NAMES = ["background", "forest", "water"]
COLORS = [[0, 0, 0], [30, 140, 40], [20, 80, 220]]


def _labels(shape=(300, 420), *, sigma=5.0, seed=0):
    """Smooth blobs of 3 classes (many with holes), and a nodata corner."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), sigma)
    labels = np.digitize(noise, np.quantile(noise, [0.4, 0.7])).astype(np.uint8)
    labels[:37, :53] = 255
    return labels


def _store(path, labels, *, kind="raster", chunks=(32, 32), **georef):
    if kind == "raster":
        georef = {"crs_wkt": CRS_UTM.to_wkt(), "transform": TRANSFORM} | georef
    store = OutputStore.create(
        path, shape=labels.shape, num_classes=3, chunks=chunks, pixels_hash="c",
        attrs={"georef": Georef(kind=kind, **georef), "class_names": NAMES, "class_colors": COLORS},
    )
    for block in BlockPartition(store.shape, store.chunks):
        store.write_block(block, labels[block.slices])
    return store


def _whole(labels, classes, min_pixels=0):
    """The oracle: (class, polygon) of the whole raster polygonized at once."""
    mask = np.isin(labels, classes)
    out = [(int(v), shape(g)) for g, v in rasterio.features.shapes(labels, mask=mask, connectivity=4)]
    return [(k, p) for k, p in out if p.area >= min_pixels]


def _same(mine, oracle):
    def key(item):
        k, p = item
        return (k, round(p.area, 6), tuple(round(b, 6) for b in p.bounds))

    mine, oracle = sorted(mine, key=key), sorted(oracle, key=key)
    assert len(mine) == len(oracle)
    for (k1, p1), (k2, p2) in zip(mine, oracle, strict=True):
        assert k1 == k2 and p1.equals(p2), (k1, p1.bounds)


@pytest.mark.parametrize(
    "block",
    [pytest.param((32, 32), id="chunk-blocks"), pytest.param((64, 96), id="uneven"),
     pytest.param((300, 420), id="one-block")],
)
def test_block_polygons_equal_the_whole_raster_polygons(tmp_path, block):
    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels)
    stats = VectorStats()
    mine = list(iter_polygons(store, [0, 1, 2], block=block, stats=stats))
    _same(mine, _whole(labels, [0, 1, 2]))
    assert all(p.is_valid for _, p in mine)
    assert sum(len(p.interiors) for _, p in mine) > 10  # holes kept
    if block != (300, 420):
        assert stats.merged_pieces > 20  # polygons crossing block borders were dissolved


def test_only_border_polygons_of_the_current_block_row_are_kept(tmp_path):
    labels = _labels((512, 256), sigma=1.5, seed=2)  # many small regions
    store = _store(tmp_path / "s.zarr", labels)
    stats = VectorStats()
    n = sum(1 for _ in iter_polygons(store, [0, 1, 2], block=(32, 64), stats=stats))  # 16 block rows
    assert n > 1000 and stats.border_polygons > 500
    assert stats.peak_pending < stats.border_polygons / 5  # never all of them at once


def test_geojson_in_the_raster_crs_with_areas_matching_the_label_map(tmp_path, monkeypatch):
    import geopandas as gpd

    monkeypatch.setattr(polygons, "VECTOR_BLOCK", 64)
    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels)
    out = export_geojson(store, tmp_path / "p.geojson", classes=["forest", "water"])
    gdf = gpd.read_file(out)
    assert CRS.from_user_input(gdf.crs) == CRS_UTM
    assert gdf.geometry.is_valid.all() and set(gdf.geom_type) == {"Polygon"}
    assert len(gdf) == len(_whole(labels, [1, 2]))
    for k, name in ((1, "forest"), (2, "water")):
        mine = gdf[gdf.class_name == name]
        expected = (labels == k).sum() * 100.0  # 10 m x 10 m pixels
        assert mine.geometry.area.sum() == pytest.approx(expected, rel=0.005)
        assert mine.area_m2.sum() == pytest.approx(expected, rel=1e-9) and (mine.class_id == k).all()
    # the polygons lie where the pixels are: the map's bounds
    left, top = TRANSFORM[2], TRANSFORM[5]
    minx, miny, maxx, maxy = gdf.total_bounds
    assert left <= minx and maxx <= left + 420 * 10 and top - 300 * 10 <= miny and maxy <= top


def test_geoparquet_reads_back_with_its_crs(tmp_path, monkeypatch):
    import geopandas as gpd
    import pyarrow.parquet as pq

    monkeypatch.setattr(polygons, "VECTOR_BLOCK", 64)
    monkeypatch.setattr(vector, "PARQUET_BATCH", 50)  # several row groups
    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels)
    out = export_geoparquet(store, tmp_path / "p.parquet")
    meta = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert meta["version"] == "1.1.0" and meta["columns"]["geometry"]["encoding"] == "WKB"
    assert pq.ParquetFile(out).num_row_groups > 1
    gdf = gpd.read_parquet(out)
    assert CRS.from_user_input(gdf.crs) == CRS_UTM
    assert set(gdf.class_name) == {"forest", "water"}  # background left out by default
    assert len(gdf) == len(_whole(labels, [1, 2])) and gdf.geometry.is_valid.all()
    assert gdf[gdf.class_id == 2].geometry.area.sum() == pytest.approx((labels == 2).sum() * 100.0, rel=0.005)


def test_small_polygons_are_left_out_after_merging(tmp_path):
    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels)
    mine = list(iter_polygons(store, [1, 2], min_pixels=40, block=(32, 32)))
    _same(mine, _whole(labels, [1, 2], min_pixels=40))
    assert len(mine) < len(_whole(labels, [1, 2]))


def test_unknown_polygon_class_names_the_classes(tmp_path):
    store = _store(tmp_path / "s.zarr", _labels((64, 64)))
    with pytest.raises(OutputError, match=r"output\.polygon_classes names \['trees'\].*forest"):
        export_geojson(store, tmp_path / "p.geojson", classes=["trees"])
    assert not (tmp_path / "p.geojson").exists()


QUPATH_SCHEMA = {  # what QuPath's GeoJSON import reads: features with a geometry and a classification
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "geometry", "properties"],
                "properties": {
                    "type": {"const": "Feature"},
                    "geometry": {
                        "type": "object",
                        "required": ["type", "coordinates"],
                        "properties": {"type": {"enum": ["Polygon", "MultiPolygon"]}},
                    },
                    "properties": {
                        "type": "object",
                        "required": ["objectType", "classification"],
                        "properties": {
                            "objectType": {"enum": ["annotation", "detection"]},
                            "classification": {
                                "type": "object",
                                "required": ["name", "color"],
                                "properties": {
                                    "name": {"type": "string", "minLength": 1},
                                    "color": {
                                        "type": "array", "minItems": 3, "maxItems": 3,
                                        "items": {"type": "integer", "minimum": 0, "maximum": 255},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize(
    "pyramid",
    [pytest.param({"level": 1, "level_shapes": [(600, 840), (300, 420)]}, id="tiff-level-1"),
     pytest.param({"level": 2, "downsamples": [1.0, 2.0, 4.0]}, id="openslide-level-2"),
     pytest.param({}, id="level-0")],
)
def test_qupath_annotations_in_level0_pixels(tmp_path, pyramid):
    import jsonschema

    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels, kind="slide", mpp=0.5)
    reader = ArrayReader(np.zeros((3, *labels.shape), np.uint8), georef=store.georef, **pyramid)
    out = export_qupath(store, tmp_path / "p.qupath.geojson", reference=reader)
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, QUPATH_SCHEMA)
    scale = {"tiff-level-1": 2.0, "openslide-level-2": 4.0}.get(
        "tiff-level-1" if pyramid.get("level") == 1 else "openslide-level-2" if pyramid else "", 1.0
    )
    oracle = _whole(labels, [1, 2])
    assert len(doc["features"]) == len(oracle)
    by_class = {}
    for feature in doc["features"]:
        c = feature["properties"]["classification"]
        by_class.setdefault(c["name"], []).append(shape(feature["geometry"]))
        assert c["color"] == COLORS[NAMES.index(c["name"])]
    assert set(by_class) == {"forest", "water"}
    for k, name in ((1, "forest"), (2, "water")):
        assert sum(p.area for p in by_class[name]) == pytest.approx((labels == k).sum() * scale**2)
    right = max(p.bounds[2] for ps in by_class.values() for p in ps)
    assert right <= 420 * scale and right > 400 * scale


@pytest.mark.parametrize(
    ("bands", "min_pixels"),
    [pytest.param(2, 0, id="2-bands"), pytest.param(5, 0, id="5-bands"), pytest.param(10, 0, id="one-unit-bands"),
     pytest.param(5, 40, id="5-bands-min-pixels")],
)
def test_polygons_drawn_band_by_band_by_several_workers_equal_the_whole_raster_polygons(tmp_path, monkeypatch,
                                                                                       bands, min_pixels):
    monkeypatch.setattr(polygons, "VECTOR_BLOCK", 64)
    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels)
    rows = vector.band_rows(labels.shape[0], 32, bands)
    assert rows[0][0] == 0 and rows[-1][1] == labels.shape[0] and len(rows) > 1
    files = [vector.write_polygon_band(store, tmp_path / f"band{i}.parquet", rows=r, classes=["forest", "water"],
                                       min_pixels=min_pixels) for i, r in enumerate(rows)]
    mine = list(vector.iter_band_polygons(files, min_pixels=min_pixels))
    _same(mine, _whole(labels, [1, 2], min_pixels))
    assert all(p.is_valid for _, p in mine)


def test_a_band_without_somewhere_to_hand_its_edge_pieces_is_refused(tmp_path):
    store = _store(tmp_path / "s.zarr", _labels())
    with pytest.raises(ValueError, match="open_pieces"):
        list(iter_polygons(store, [1], rows=(0, 64)))


def test_geojson_from_band_files_equals_the_geojson_drawn_in_one_pass(tmp_path):
    labels = _labels()
    store = _store(tmp_path / "s.zarr", labels)
    whole = json.loads(export_geojson(store, tmp_path / "whole.geojson").read_text())["features"]
    files = [vector.write_polygon_band(store, tmp_path / f"b{i}.parquet", rows=r)
             for i, r in enumerate(vector.band_rows(labels.shape[0], 32, 4))]
    banded = json.loads(export_geojson(store, tmp_path / "banded.geojson",
                                       polygons=vector.iter_band_polygons(files)).read_text())["features"]

    def key(feature):
        p = shape(feature["geometry"])
        return (feature["properties"]["class_id"], round(p.area, 3), tuple(round(b, 3) for b in p.bounds))

    assert sorted(map(key, banded)) == sorted(map(key, whole)) and len(whole) > 20


def _speckled(shape=(200, 240), spacing=4):
    """One forest region holding a water speck every ``spacing`` pixels: hundreds of holes in one polygon."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[10:-10, 10:-10] = 1
    labels[12:-12:spacing, 12:-12:spacing] = 2
    return labels


def test_a_region_with_too_many_holes_is_written_as_pieces_gdal_opens_that_tile_it_exactly(
    tmp_path, monkeypatch
) -> None:
    import pyogrio
    import shapely

    labels = _speckled()
    store = _store(tmp_path / "s.zarr", labels)
    (forest,) = [p for k, p in _whole(labels, [1])]
    assert len(forest.interiors) > 2000  # the oracle: one polygon, thousands of holes
    monkeypatch.setattr(polygons, "MAX_HOLES", 100)
    monkeypatch.setattr(polygons, "MAX_VERTICES", 5000)
    path = export_geojson(store, tmp_path / "f.geojson", classes=["forest"])
    frame = pyogrio.read_dataframe(path)  # GDAL's own reader
    pieces = list(frame.geometry)
    assert len(pieces) > 1 and frame["class_name"].eq("forest").all()
    assert all(len(p.interiors) <= 100 and shapely.get_num_coordinates(p) <= 5000 for p in pieces)
    # the pieces tile the region: same area, same shape, pixel counts adding up
    world = shapely.affinity.affine_transform(forest, [10.0, 0.0, 0.0, -10.0, 500000.0, 4100000.0])
    assert shapely.union_all(pieces).symmetric_difference(world).area == pytest.approx(0, abs=1e-6)
    assert frame["pixels"].sum() == pytest.approx(forest.area)


def test_holes_below_min_polygon_pixels_are_filled_not_kept_as_rings(tmp_path) -> None:
    labels = _speckled(spacing=6)
    labels[60:70, 60:70] = 2  # one big lake stays a hole
    store = _store(tmp_path / "s.zarr", labels)
    path = export_geojson(store, tmp_path / "f.geojson", classes=["forest"], min_pixels=4)
    features = json.loads(path.read_text())["features"]
    (forest,) = [shape(f["geometry"]) for f in features]
    assert len(forest.interiors) == 1  # the 1-pixel specks are filled; the 100-pixel lake is a hole
    assert forest.area == pytest.approx((180 * 220 - 100) * 100.0)  # 10 m pixels
