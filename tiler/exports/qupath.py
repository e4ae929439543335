"""The QuPath export: one annotation per region in level-0 pixels, with its classification (slides)."""

from __future__ import annotations

from tiler.exports import polygons
from tiler.exports.base import ExportFormat

FORMAT = ExportFormat(
    name="qupath", dims=frozenset({2}), files={"qupath": ".qupath.geojson"},
    write=polygons.write_with("export_qupath"), settings=polygons.SETTINGS, polygons=True,
    why_not="QuPath annotations are 2D: use nifti or ome-zarr for a volume",
)
