"""Polygons of the classes drawn out of core from a 2D label map, and joined across workers' bands.

How the polygons are made (:func:`iter_polygons`): the label map is read block row by block row (blocks of
whole chunks, about 2048 pixels a side); ``rasterio.features.shapes`` (GDAL's polygonize, 4-connected, holes
kept) turns each block into polygons in pixel coordinates (x = column, y = row, pixel corners on whole
numbers). A polygon that touches no block border inside the image is whole and is written at once. One that
touches a border is kept; when a block row is done, the kept polygons of each class are dissolved
(``shapely.unary_union``) and every piece that does not reach down into the next block row is whole and
written. So no polygon is ever cut at a block edge, and memory holds only the polygons that cross the
current block row's borders (plus any that span many rows), never the whole map.

Several workers draw one map side by side (:func:`band_rows`, :func:`write_polygon_band`): each takes a band
of block rows and keeps the pieces reaching its band's edges apart; :func:`iter_band_polygons` joins them
with the same dissolve, so the polygons are the same as one worker's. :func:`bounded` cuts the features the
writers (:mod:`tiler.io.vector`) write to sizes GDAL and QGIS open.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tiler.errors import OutputError
from tiler.geometry import Window
from tiler.io.atomic import atomic_path
from tiler.io.classes import foreground_classes
from tiler.io.objects import AnyPath, PathArg, as_path

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from tiler.io.store import OutputStore

VECTOR_BLOCK = 2048
MAX_HOLES = 1000
"""Most holes one written feature has: a region with more is written as several features (:func:`bounded`)."""
MAX_VERTICES = 100_000
"""Most vertices one written feature has (GDAL refuses a GeoJSON object past its size limit; QGIS slows down)."""


@dataclass
class VectorStats:
    """What one vectorisation did: polygons written, border polygons merged, and the most kept in memory at once."""

    polygons: int = 0
    border_polygons: int = 0
    dropped_small: int = 0
    merged_pieces: int = 0
    peak_pending: int = 0
    peak_pending_vertices: int = 0


def select_classes(store: OutputStore, names: Sequence[str] | None) -> tuple[int, ...]:
    """Class indices to vectorise: ``names`` (class names of the store), or every class but the background.

    Raises:
        OutputError: a name that is not a class of the store (listing the classes).

    """
    all_names = store.class_names
    if names is None:
        return foreground_classes(all_names)
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise OutputError(
            f"output.polygon_classes names {unknown}, which are not classes of {store.path} ({all_names}); "
            f"list some of {all_names}, or null for every class but the background."
        )
    return tuple(all_names.index(n) for n in names)


def _pieces(geom: Any) -> Iterator[Polygon]:
    from shapely.geometry import MultiPolygon, Polygon

    if isinstance(geom, Polygon):
        if not geom.is_empty:
            yield geom
    elif isinstance(geom, MultiPolygon) or hasattr(geom, "geoms"):
        for part in geom.geoms:
            yield from _pieces(part)


def iter_polygons(
    store: OutputStore,
    classes: Sequence[int],
    *,
    min_pixels: float = 0,
    block: Sequence[int] | None = None,
    stats: VectorStats | None = None,
    rows: tuple[int, int] | None = None,
    open_pieces: list[tuple[int, Polygon]] | None = None,
) -> Iterator[tuple[int, Polygon]]:
    """Yield ``(class, polygon)`` for every 4-connected region of ``classes``, in pixel coordinates.

    Args:
        store: A 2D output store.
        classes: The classes to vectorise.
        min_pixels: Regions smaller than this many pixels (holes excluded) are left out.
        block: Block shape (rows, cols); default about :data:`VECTOR_BLOCK` in whole write units.
        stats: Filled with counts and the peak number of kept border polygons.
        rows: Only this band of rows ``[start, stop)`` (one worker's share); default the whole map.
        open_pieces: With ``rows``: receives the pieces that reach the band's top or bottom edge inside the
            map (they may go on in the next band; :func:`merge_open_pieces` joins them); required then.

    Yields:
        ``(k, polygon)``: x = column, y = row (the top-left corner of pixel (r, c) is (c, r)).

    """
    import rasterio.features
    import shapely
    from affine import Affine
    from shapely.geometry import shape as to_shape

    if len(store.shape) != 2:
        raise OutputError(f"polygons need a 2D output; {store.path} has shape {store.shape}.")
    stats = stats if stats is not None else VectorStats()
    h, w = store.shape
    bh, bw = tuple(block) if block is not None else tuple(max(u, (VECTOR_BLOCK // u) * u) for u in store.write_unit)
    wanted = np.asarray(sorted(set(classes)), dtype=np.int64)
    top, bottom = rows if rows is not None else (0, h)
    if rows is not None and open_pieces is None:
        raise ValueError("iter_polygons(rows=...) needs open_pieces to hand the band's edge pieces back")
    pending: dict[int, list[Polygon]] = defaultdict(list)
    for r0 in range(top, bottom, bh):
        r1 = min(r0 + bh, bottom)
        for c0 in range(0, w, bw):
            c1 = min(c0 + bw, w)
            labels = store.read(Window((r0, c0), (r1, c1)))
            mask = np.isin(labels, wanted)
            if not mask.any():
                continue
            for geom, value in rasterio.features.shapes(
                labels, mask=mask, connectivity=4, transform=Affine.translation(c0, r0)
            ):
                poly = to_shape(geom)
                minx, miny, maxx, maxy = poly.bounds
                if (c0 > 0 and minx == c0) or (c1 < w and maxx == c1) or (r0 > 0 and miny == r0) or (
                    r1 < h and maxy == r1
                ):
                    pending[int(value)].append(poly)
                    stats.border_polygons += 1
                elif poly.area >= min_pixels:
                    stats.polygons += 1
                    yield int(value), poly
                else:
                    stats.dropped_small += 1
        stats.peak_pending = max(stats.peak_pending, sum(len(v) for v in pending.values()))
        stats.peak_pending_vertices = max(
            stats.peak_pending_vertices, sum(int(shapely.get_num_coordinates(v).sum()) for v in pending.values())
        )
        for k in sorted(pending):
            kept: list[Polygon] = []
            for piece in _dissolve(pending[k]):
                if r1 < bottom and piece.bounds[3] == r1:
                    kept.append(piece)  # reaches into the next block row: not whole yet
                elif open_pieces is not None and (
                    (r1 == bottom < h and piece.bounds[3] == r1) or (top > 0 and piece.bounds[1] == top)
                ):
                    open_pieces.append((k, piece))  # goes on in the band above or below: joined later
                elif piece.area >= min_pixels:
                    stats.polygons += 1
                    stats.merged_pieces += 1
                    yield k, piece.simplify(0)  # drop the vertices left on former block borders
                else:
                    stats.dropped_small += 1
            pending[k] = kept


def _dissolve(polygons: list[Polygon]) -> Iterator[Polygon]:
    """The union of ``polygons`` as separate polygons; only groups that touch are unioned (an STRtree finds them)."""
    import shapely

    if len(polygons) < 2:
        yield from polygons
        return
    tree = shapely.STRtree(polygons)
    left, right = tree.query(polygons, predicate="intersects")
    parent = list(range(len(polygons)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[Polygon]] = defaultdict(list)
    for i, poly in enumerate(polygons):
        groups[root(i)].append(poly)
    for group in groups.values():
        if len(group) == 1:
            yield group[0]
        else:
            yield from _pieces(shapely.unary_union(group))


# -- features GDAL and QGIS open: holes and vertices bounded per feature --------------------------------------
def _complexity(poly: Polygon) -> tuple[int, int]:
    import shapely

    return len(poly.interiors), int(shapely.get_num_coordinates(poly))


def subdivide(poly: Polygon, *, max_holes: int = MAX_HOLES, max_vertices: int = MAX_VERTICES) -> Iterator[Polygon]:
    """``poly`` as pieces with at most ``max_holes`` holes and ``max_vertices`` vertices each.

    PostGIS's ``ST_Subdivide`` rule: cut in two across the longer side of its bounds (on a whole pixel, ``poly``
    being in pixel coordinates) until each piece fits. The pieces tile ``poly`` exactly (their union is ``poly``,
    they overlap only on the cut lines), so areas and pixel counts add up. A polygon within both limits is yielded
    as it is.
    """
    import shapely
    from shapely.geometry import box

    holes, vertices = _complexity(poly)
    if holes <= max_holes and vertices <= max_vertices:
        yield poly
        return
    minx, miny, maxx, maxy = poly.bounds
    if max(maxx - minx, maxy - miny) < 2:
        yield poly  # a pixel: nothing left to cut
        return
    if maxx - minx >= maxy - miny:
        cut = float(np.floor((minx + maxx) / 2))
        halves = (box(minx, miny, cut, maxy), box(cut, miny, maxx, maxy))
    else:
        cut = float(np.floor((miny + maxy) / 2))
        halves = (box(minx, miny, maxx, cut), box(minx, cut, maxx, maxy))
    for half in halves:
        for piece in _pieces(shapely.intersection(poly, half)):
            yield from subdivide(piece, max_holes=max_holes, max_vertices=max_vertices)


def bounded(
    polygons: Iterable[tuple[int, Polygon]], *, min_hole_pixels: float = 0
) -> Iterator[tuple[int, Polygon]]:
    """The features to write for ``polygons``: no hole below ``min_hole_pixels``, no feature past the limits.

    Holes smaller than ``min_hole_pixels`` are filled, then each region with more than :data:`MAX_HOLES` holes or
    :data:`MAX_VERTICES` vertices is cut into pieces that have fewer (:func:`subdivide`). A hole is a region of
    other classes; one below ``output.min_polygon_pixels`` is a region the export leaves out anyway, so it is
    filled rather than kept as a ring. A slide's stroma can otherwise hold hundreds of thousands of holes in one
    feature, which GDAL refuses to open ("GeoJSON object too complex") and QGIS cannot draw.
    """
    from shapely.geometry import Polygon

    for k, poly in polygons:
        if min_hole_pixels > 0 and poly.interiors:
            kept = [ring for ring in poly.interiors if Polygon(ring).area >= min_hole_pixels]
            if len(kept) != len(poly.interiors):
                poly = Polygon(poly.exterior, kept)
        for piece in subdivide(poly, max_holes=MAX_HOLES, max_vertices=MAX_VERTICES):
            yield k, piece


# -- bands: the polygons drawn by several workers, joined by a small step ------------------------------------
def band_rows(height: int, unit: int, bands: int) -> list[tuple[int, int]]:
    """Split ``height`` rows into at most ``bands`` bands of whole write units (``unit`` rows each).

    >>> band_rows(10_000, 512, 4)
    [(0, 2560), (2560, 5120), (5120, 7680), (7680, 10000)]
    """
    units = -(-height // unit)
    per = -(-units // max(1, bands))
    return [(a * unit, min((a + per) * unit, height)) for a in range(0, units, per)]


def write_polygon_band(
    store: OutputStore,
    out_path: PathArg,
    *,
    rows: tuple[int, int],
    classes: Sequence[str] | None = None,
    min_pixels: float = 0,
) -> AnyPath:
    """Draw the polygons of one band of rows and write them to ``out_path`` (Parquet: class, WKB, open).

    The whole polygons of the band are kept as they are; the pieces reaching the band's top or bottom edge are
    marked open, for :func:`iter_band_polygons` to join with the neighbouring bands' pieces.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    opened: list[tuple[int, Polygon]] = []
    whole = list(iter_polygons(store, select_classes(store, classes), min_pixels=min_pixels, rows=rows,
                               open_pieces=opened))
    parts = whole + opened
    table = pa.table({
        "class_id": pa.array([k for k, _ in parts], pa.int32()),
        "wkb": pa.array(list(shapely.to_wkb([p for _, p in parts])) if parts else [], pa.binary()),
        "open": pa.array([False] * len(whole) + [True] * len(opened), pa.bool_()),
    })
    out_path = as_path(out_path)
    with atomic_path(out_path, what="write a polygon band") as tmp:
        pq.write_table(table, tmp)
    return out_path


def iter_band_polygons(
    paths: Sequence[str | os.PathLike[str]], *, min_pixels: float = 0
) -> Iterator[tuple[int, Polygon]]:
    """The polygons of the bands in ``paths`` (from :func:`write_polygon_band`), with the open pieces joined.

    Yields every whole polygon band by band, then the open pieces of each class dissolved across bands (only
    those that touch are unioned), with the pieces smaller than ``min_pixels`` left out: the same polygons as
    :func:`iter_polygons` over the whole map, in another order.
    """
    import pyarrow.parquet as pq
    import shapely

    opened: dict[int, list[Polygon]] = defaultdict(list)
    for path in paths:
        table = pq.read_table(path).to_pydict()
        geoms = shapely.from_wkb(table["wkb"]) if table["wkb"] else []
        for k, geom, is_open in zip(table["class_id"], geoms, table["open"], strict=True):
            if is_open:
                opened[int(k)].append(geom)
            else:
                yield int(k), geom
    for k in sorted(opened):
        for piece in _dissolve(opened[k]):
            if piece.area >= min_pixels:
                yield k, piece.simplify(0)
