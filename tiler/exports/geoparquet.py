"""The GeoParquet export: the same polygons as GeoParquet 1.1 in row groups (geopandas, DuckDB, QGIS)."""

from __future__ import annotations

from tiler.exports import polygons
from tiler.exports.base import ExportFormat

FORMAT = ExportFormat(
    name="geoparquet", dims=frozenset({2}), files={"geoparquet": ".parquet"},
    write=polygons.write_with("export_geoparquet"), settings=polygons.SETTINGS, polygons=True, why_not=polygons.WHY_NOT,
)
