"""The STAC export: a STAC 1.1 Item per output (``X.stac.json``) describing the labels and the files beside them.

Drawn for 2D GDAL rasters (a volume or a slide has no footprint on the Earth). The Item's assets are the store
(``X.zarr``, ``application/vnd+zarr``) and every file the job's other exports and its reports write: the label COG
as the ``labels`` asset when ``cog`` is exported too (what stackstac, odc-stac, TiTiler and QGIS open; without it the
store is the only label asset), the quicklook as ``thumbnail``, the polygons, the reports as ``metadata``. Layout
and fields: :mod:`tiler.io.stac`.

The Item names the other files by path only, so it is drawn beside them rather than after them; the job writes
every export, then the reports, then ``complete``, so each file it names is in place once the store is complete.
``output.exports`` is one of its settings: a finishing that exports other files draws the Item again, and so does
one under another config hash (the Item records it as ``tiler:config_hash``).
"""

from __future__ import annotations

from tiler.exports.base import REPORT_FILES, ExportFormat, WriteContext
from tiler.io.objects import AnyPath

SUFFIX = ".stac.json"

REPORTS = {role: REPORT_FILES[role] for role in ("report_json", "report_md")}
"""The reports every finishing writes before ``complete`` (the scores' files only with a truth)."""


def listed_files(item: AnyPath, exports: list[str]) -> dict[str, AnyPath]:
    """File role → path of what the Item lists beside the store: every file of ``exports`` but itself, the reports.

    >>> sorted(listed_files(Path("/out/a.stac.json"), ["cog", "stac"]).items())[0]
    ('cog', PosixPath('/out/a.cog.tif'))
    """
    from tiler.exports import REGISTRY  # the registry lists this module: looked up when an Item is drawn

    base = item.with_name(item.name[: -len(SUFFIX)])
    files: dict[str, AnyPath] = {}
    for name in exports:
        if name != FORMAT.name and name in REGISTRY:
            files.update(REGISTRY[name].paths(base))
    files.update({role: base.with_name(base.name + suffix) for role, suffix in REPORTS.items()})
    return files


def _write(ctx: WriteContext) -> None:
    from tiler.io.stac import write_stac_item

    item = ctx.path
    exports = list(ctx.settings.get("exports") or [])
    write_stac_item(ctx.store, item, item_id=item.name[: -len(SUFFIX)], files=listed_files(item, exports),
                    reader=ctx.reader, before_move=ctx.before_move, config_hash=ctx.job_hash)  # fmt: skip


FORMAT = ExportFormat(
    name="stac", dims=frozenset({2}), files={"stac": SUFFIX}, write=_write, settings=("exports",),
    why_not="a STAC Item places a 2D raster on the Earth and a volume has no such footprint: use nifti or ome-zarr",
    inputs=frozenset({"raster"}), names_job=True,
    why_not_input="a STAC Item places the labels on the Earth, and this input is not a GDAL raster (GeoTIFF and "
    "the like); fix: remove stac from output.exports, or give a georeferenced raster as input.path",
)
