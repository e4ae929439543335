"""The GeoJSON export: polygons per class in the raster's CRS (QGIS, GDAL)."""

from __future__ import annotations

from tiler.exports import polygons
from tiler.exports.base import ExportFormat

FORMAT = ExportFormat(
    name="geojson", dims=frozenset({2}), files={"geojson": ".geojson"}, write=polygons.write_with("export_geojson"),
    settings=polygons.SETTINGS, polygons=True, why_not=polygons.WHY_NOT,
)
