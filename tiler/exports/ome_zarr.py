"""The OME-Zarr export: the input image pyramid with the labels under ``labels/classes`` (napari, OME tools)."""

from __future__ import annotations

from tiler.exports.base import ExportFormat, WriteContext


def _write(ctx: WriteContext) -> None:
    from tiler.io import ome_zarr

    ome_zarr.export_ome_zarr(ctx.store, ctx.path, reader=ctx.reader, before_move=ctx.before_move)


FORMAT = ExportFormat(name="ome-zarr", dims=frozenset({2, 3}), files={"ome-zarr": ".ome.zarr"}, write=_write)
