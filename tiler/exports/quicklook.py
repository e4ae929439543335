"""The quicklook: a PNG of the labels over the input (a volume's three middle slices), with a legend."""

from __future__ import annotations

from tiler.exports.base import ExportFormat, WriteContext


def _write(ctx: WriteContext) -> None:
    from tiler.io import quicklook

    quicklook.write_quicklook(
        ctx.store, ctx.path, reader=ctx.reader, before_move=ctx.before_move, overviews=ctx.overviews
    )


FORMAT = ExportFormat(
    name="quicklook", dims=frozenset({2, 3}), files={"quicklook": ".quicklook.png"}, write=_write, overviews=True
)
