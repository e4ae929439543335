"""Polygons of the classes written for GIS and slide viewers: GeoJSON, GeoParquet, QuPath GeoJSON annotations.

The polygons come from :mod:`tiler.io.polygons` (drawn out of core, block row by block row, or joined from
several workers' bands), cut to features GDAL and QGIS open (:func:`~tiler.io.polygons.bounded`); its public
names are importable here too (its tunables, :data:`~tiler.io.polygons.VECTOR_BLOCK`,
:data:`~tiler.io.polygons.MAX_HOLES` and :data:`~tiler.io.polygons.MAX_VERTICES`, are read there).

Coordinates written: GeoJSON / GeoParquet in the raster's CRS (pixel coordinates when there is none);
QuPath in level-0 pixel coordinates of the slide. Every file is written atomically.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tiler.io.atomic import BeforeMove, atomic_file, atomic_path
from tiler.io.base import Georef, Reader
from tiler.io.classes import pixel_measure
from tiler.io.export_common import _georef_of
from tiler.io.objects import AnyPath, PathArg, as_path
from tiler.io.polygons import (
    VectorStats,
    band_rows,
    bounded,
    iter_band_polygons,
    iter_polygons,
    select_classes,
    subdivide,
    write_polygon_band,
)

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from tiler.io.store import OutputStore

__all__ = [
    "PARQUET_BATCH", "VectorStats", "band_rows", "bounded", "export_geojson", "export_geoparquet", "export_qupath",
    "iter_band_polygons", "iter_polygons", "level0_scale", "select_classes", "subdivide", "write_polygon_band",
]  # fmt: skip

PARQUET_BATCH = 4096


# -- coordinates ---------------------------------------------------------------------------------------------
def _world(poly: Polygon, matrix: Sequence[float]) -> Polygon:
    """``poly`` through the affine ``[a, b, d, e, xoff, yoff]`` (shapely's order), rings counter-clockwise."""
    from shapely import affinity
    from shapely.geometry.polygon import orient

    return orient(affinity.affine_transform(poly, list(matrix)), sign=1.0)


def _crs_matrix(georef: Georef) -> list[float]:
    """Pixel (col, row) -> CRS for a georeferenced raster; identity (pixel coordinates) otherwise."""
    if georef.kind == "raster" and georef.transform is not None:
        a, b, c, d, e, f = georef.transform[:6]
        return [a, b, d, e, c, f]
    return [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def _hex(color: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in color[:3]))


class _Feature:
    """Properties shared by the GIS writers: class id and name, colour, pixels and area in real units."""

    def __init__(self, store: OutputStore, georef: Georef) -> None:
        self.names = store.class_names
        self.colors = store.class_colors
        measure = pixel_measure(georef)
        # a geographic CRS's pixel size varies by row: polygon areas are left to the GIS there
        self.area_key = None if measure.size is None or measure.unit == "px" else measure.unit
        self.pixel_size = measure.size or 0.0

    def properties(self, k: int, pixels: float) -> dict[str, Any]:
        props: dict[str, Any] = {
            "class_id": k, "class_name": self.names[k], "color": _hex(self.colors[k]), "pixels": float(pixels)
        }
        if self.area_key is not None:
            props[f"area_{self.area_key}"] = float(pixels * self.pixel_size)
        return props


def _geojson_crs(georef: Georef) -> dict[str, Any] | None:
    """The (pre-RFC 7946) ``crs`` member GDAL and QGIS read, when the CRS has an authority code."""
    if georef.kind != "raster" or not georef.crs_wkt:
        return None
    from rasterio.crs import CRS

    auth = CRS.from_wkt(georef.crs_wkt).to_authority()
    if auth is None:
        return None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:{auth[0]}::{auth[1]}"}}


def export_geojson(
    store: OutputStore,
    out_path: PathArg,
    *,
    reference: Reader | Georef | None = None,
    classes: Sequence[str] | None = None,
    min_pixels: float = 0,
    stats: VectorStats | None = None,
    before_move: BeforeMove | None = None,
    polygons: Iterable[tuple[int, Polygon]] | None = None,
) -> AnyPath:
    """Write the class polygons as a GeoJSON FeatureCollection in the raster's CRS, streamed feature by feature.

    A CRS with an authority code is named in the ``crs`` member (what GDAL/QGIS read; RFC 7946 readers assume
    WGS 84, so reproject with ``ogr2ogr -t_srs EPSG:4326`` for web maps). Properties: ``class_id``,
    ``class_name``, ``color``, ``pixels`` and the area (``area_m2`` for projected rasters).
    ``before_move(tmp, final)`` is called with the complete file just before it is moved in. ``polygons``: drawn
    already (:func:`iter_band_polygons`), else drawn here from the store.
    """
    out_path = as_path(out_path)
    georef = _georef_of(store, reference)
    matrix = _crs_matrix(georef)
    feature = _Feature(store, georef)
    header: dict[str, Any] = {"type": "FeatureCollection", "name": out_path.name.split(".")[0]}
    crs = _geojson_crs(georef)
    if crs is not None:
        header["crs"] = crs
    if polygons is None:
        polygons = iter_polygons(store, select_classes(store, classes), min_pixels=min_pixels, stats=stats)
    polygons = bounded(polygons, min_hole_pixels=min_pixels)
    with atomic_file(out_path, "w", before_move=before_move) as f:
        f.write(json.dumps(header)[:-1] + ', "features": [\n')
        for n, (k, poly) in enumerate(polygons):
            geometry = _world(poly, matrix).__geo_interface__
            item = {"type": "Feature", "properties": feature.properties(k, poly.area), "geometry": geometry}
            f.write((",\n" if n else "") + json.dumps(item))
        f.write("\n]}\n")
    return out_path


def _projjson(georef: Georef) -> dict[str, Any] | None:
    if georef.kind != "raster" or not georef.crs_wkt:
        return None
    from rasterio.crs import CRS

    return dict(CRS.from_wkt(georef.crs_wkt).to_dict(projjson=True))


def export_geoparquet(
    store: OutputStore,
    out_path: PathArg,
    *,
    reference: Reader | Georef | None = None,
    classes: Sequence[str] | None = None,
    min_pixels: float = 0,
    stats: VectorStats | None = None,
    before_move: BeforeMove | None = None,
    polygons: Iterable[tuple[int, Polygon]] | None = None,
) -> AnyPath:
    """Write the class polygons as GeoParquet 1.1 (WKB, the raster's CRS as PROJJSON), in row groups.

    Columns: ``class_id``, ``class_name``, ``color``, ``pixels``, the area when known (``area_m2``) and
    ``geometry``. Rows are written :data:`PARQUET_BATCH` at a time, so memory stays bounded.
    ``before_move(tmp, final)`` is called with the complete file just before it is moved in. ``polygons``: drawn
    already (:func:`iter_band_polygons`), else drawn here from the store.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    out_path = as_path(out_path)
    georef = _georef_of(store, reference)
    matrix = _crs_matrix(georef)
    feature = _Feature(store, georef)
    fields = [
        pa.field("class_id", pa.int32()), pa.field("class_name", pa.string()), pa.field("color", pa.string()),
        pa.field("pixels", pa.float64()),
    ]
    if feature.area_key is not None:
        fields.append(pa.field(f"area_{feature.area_key}", pa.float64()))
    fields.append(pa.field("geometry", pa.binary()))
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": _projjson(georef)}},
    }
    schema = pa.schema(fields, metadata={b"geo": json.dumps(geo).encode()})
    if polygons is None:
        polygons = iter_polygons(store, select_classes(store, classes), min_pixels=min_pixels, stats=stats)
    polygons = bounded(polygons, min_hole_pixels=min_pixels)
    with (
        atomic_path(out_path, what="write the GeoParquet", before_move=before_move) as tmp,
        pq.ParquetWriter(tmp, schema) as writer,
    ):
        rows: list[dict[str, Any]] = []
        geoms: list[Any] = []

        def flush() -> None:
            columns = {name: [r[name] for r in rows] for name in schema.names if name != "geometry"}
            columns["geometry"] = list(shapely.to_wkb(geoms))
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            rows.clear()
            geoms.clear()

        for k, poly in polygons:
            rows.append(feature.properties(k, poly.area))
            geoms.append(_world(poly, matrix))
            if len(rows) >= PARQUET_BATCH:
                flush()
        if rows:
            flush()
    return out_path


# -- QuPath ----------------------------------------------------------------------------------------------
def level0_scale(store: OutputStore, reference: Reader | None) -> tuple[float, float]:
    """``(sx, sy)`` from the output's pixels to the slide's level-0 pixels (1, 1 for a level-0 output).

    From the reader's pyramid: OpenSlide's level downsample, else level 0's size over the read level's.
    """
    if reference is None:
        return 1.0, 1.0
    level = int(getattr(reference, "level", 0) or 0)
    downsamples = getattr(reference, "downsamples", None)
    if downsamples is not None:
        return float(downsamples[level]), float(downsamples[level])
    shapes = getattr(reference, "level_shapes", None)
    if shapes:
        (h0, w0), (h, w) = shapes[0], shapes[level]
        return w0 / w, h0 / h
    return 1.0, 1.0


def export_qupath(
    store: OutputStore,
    out_path: PathArg,
    *,
    reference: Reader | None = None,
    classes: Sequence[str] | None = None,
    min_pixels: float = 0,
    stats: VectorStats | None = None,
    before_move: BeforeMove | None = None,
    polygons: Iterable[tuple[int, Polygon]] | None = None,
) -> AnyPath:
    """Write the class polygons as GeoJSON annotations QuPath imports (File > Import objects, or drag the file).

    A FeatureCollection in level-0 pixel coordinates of the slide (``reference``, the reader the output was
    made from, gives the level's downsample); each feature is ``{"type": "Feature", "id", "geometry",
    "properties": {"objectType": "annotation", "classification": {"name", "color": [r, g, b]}}}``.
    ``before_move(tmp, final)`` is called with the complete file just before it is moved in. ``polygons``: drawn
    already (:func:`iter_band_polygons`), else drawn here from the store.
    """
    out_path = as_path(out_path)
    sx, sy = level0_scale(store, reference)
    matrix = [sx, 0.0, 0.0, sy, 0.0, 0.0]
    names, colors = store.class_names, store.class_colors
    if polygons is None:
        polygons = iter_polygons(store, select_classes(store, classes), min_pixels=min_pixels, stats=stats)
    polygons = bounded(polygons, min_hole_pixels=min_pixels)
    from shapely import affinity

    with atomic_file(out_path, "w", before_move=before_move) as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for n, (k, poly) in enumerate(polygons):
            item = {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": affinity.affine_transform(poly, matrix).__geo_interface__,
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": names[k], "color": [int(v) for v in colors[k][:3]]},
                },
            }
            f.write((",\n" if n else "") + json.dumps(item))
        f.write("\n]}\n")
    return out_path
