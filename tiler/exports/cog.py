"""The COG export: a Cloud-Optimised GeoTIFF of the labels with ``mode`` overviews, class names in ``.aux.xml``."""

from __future__ import annotations

from tiler.exports.base import ExportFormat, WriteContext


def _write(ctx: WriteContext) -> None:
    from tiler.io import export

    export.export_cog(ctx.store, ctx.path, reference=ctx.reader, before_move=ctx.before_move, overviews=ctx.overviews)


FORMAT = ExportFormat(
    name="cog",
    dims=frozenset({2}),
    files={"cog": ".cog.tif", "cog_aux": ".cog.tif.aux.xml"},
    write=_write,
    overviews=True,
    why_not="a COG holds a 2D raster: use nifti or ome-zarr for a volume",
)
