"""What the three polygon exports share: the settings they are drawn with and how a writer is called.

Finishing draws an input's polygons once for all its polygon exports, in bands of rows on as many workers
(:data:`tiler.job.finish.BANDS`, :func:`tiler.io.vector.write_polygon_band`); each export then streams them from
the band files, joining the pieces that cross band edges (:func:`tiler.io.vector.iter_band_polygons`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tiler.exports.base import WriteContext

SETTINGS = ("min_polygon_pixels", "polygon_classes")
"""``output`` keys every polygon export is drawn with (they enter the config hash)."""

WHY_NOT = "polygons are drawn on 2D label maps: use nifti or ome-zarr"


def write_with(function: str) -> Callable[[WriteContext], None]:
    """A writer calling ``tiler.io.vector.<function>`` with the polygon settings (looked up when it runs)."""

    def write(ctx: WriteContext) -> None:
        from tiler.io import vector

        classes = ctx.settings.get("polygon_classes")
        minimum = ctx.settings.get("min_polygon_pixels", 0)
        drawn = vector.iter_band_polygons(ctx.parts, min_pixels=minimum) if ctx.parts else None
        writer: Any = getattr(vector, function)
        writer(ctx.store, ctx.path, reference=ctx.reader, classes=list(classes) if classes is not None else None,
               min_pixels=minimum, before_move=ctx.before_move, polygons=drawn)

    return write
