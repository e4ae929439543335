"""Mode overview levels of a stored 2D label map, drawn band by band by several workers and read back whole.

Level ``k`` halves level ``k - 1`` (level 0 is the stored map): each pixel is the most frequent valid class of
its 2×2 cell (the smallest class on a tie; nodata only where the whole cell is nodata). Levels are made while
the larger side exceeds :data:`OVERVIEW_BLOCK`, as GDAL's COG driver makes its own. A worker draws the levels
of one band of rows (:func:`write_overview_band`; bands start on multiples of ``2**levels`` rows, so every cell
lies in one band) into ``<folder>/level-<k>/rows-<a>-<b>.npy``; the COG export hands them to GDAL as the
source's overviews and the quicklook reads a level instead of the full map (:func:`level_rows`).

>>> mode_2x(np.array([[1, 1, 0, 255], [2, 1, 255, 255]], np.uint8), nodata=255)
array([[1, 0]], dtype=uint8)
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tiler.geometry import Window
from tiler.io.atomic import atomic_path
from tiler.io.objects import AnyPath, ObjectPath, as_path

if TYPE_CHECKING:
    from tiler.io.store import OutputStore

OVERVIEW_BLOCK = 512
"""Levels are made while the map's larger side exceeds this (the COG's block size)."""
READ_ROWS = 2048
"""Rows of the stored map a band worker reads at once (rounded up to a whole number of level cells)."""


def level_shapes(shape: Sequence[int], block: int = OVERVIEW_BLOCK) -> list[tuple[int, int]]:
    """Shapes of the overview levels 1, 2, ... of a ``(H, W)`` map.

    >>> level_shapes((2048, 1500))
    [(1024, 750), (512, 375)]
    """
    h, w = int(shape[0]), int(shape[1])
    out = []
    while max(h, w) > block:
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def mode_2x(labels: np.ndarray, *, nodata: int) -> np.ndarray:
    """The most frequent valid class of each 2×2 cell of ``labels`` ``(H, W)`` → ``(ceil(H/2), ceil(W/2))``.

    Each of a cell's four values counts the valid values equal to it (six comparisons a cell, no sort); the
    highest count wins, the smaller class on a tie; a cell with no valid value is nodata.
    """
    h, w = labels.shape
    padded = np.full((h + h % 2, w + w % 2), nodata, dtype=labels.dtype)
    padded[:h, :w] = labels
    values = [padded[0::2, 0::2], padded[0::2, 1::2], padded[1::2, 0::2], padded[1::2, 1::2]]
    valid = [v != nodata for v in values]
    counts = [valid[i].astype(np.uint8) for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            same = (values[i] == values[j]) & valid[i] & valid[j]
            counts[i] += same
            counts[j] += same
    best, best_count = values[0].copy(), counts[0]
    for value, count in zip(values[1:], counts[1:], strict=True):
        better = (count > best_count) | ((count == best_count) & (count > 0) & (value < best))
        best = np.where(better, value, best)
        best_count = np.where(better, count, best_count)
    return np.where(best_count > 0, best, nodata).astype(labels.dtype)


def band_unit(chunk_rows: int, levels: int) -> int:
    """Rows a band must be a multiple of: whole chunks and whole cells of the coarsest level.

    >>> band_unit(512, 3), band_unit(200, 4)
    (512, 400)
    """
    return math.lcm(int(chunk_rows), 2**levels)


def write_overview_band(store: OutputStore, folder: str | os.PathLike[str], *, rows: tuple[int, int]) -> None:
    """Draw every overview level of the rows ``[a, b)`` of ``store``'s 2D labels into ``folder``.

    ``a`` must be a multiple of ``2**levels`` (see :func:`band_unit`). Memory holds :data:`READ_ROWS` rows of
    the map at a time and the band's levels.
    """
    shapes = level_shapes(store.shape)
    if not shapes:
        return
    levels = len(shapes)
    a, b = rows
    w = store.shape[1]
    step = band_unit(READ_ROWS, levels)
    parts: list[list[np.ndarray]] = [[] for _ in shapes]
    for r0 in range(a, b, step):
        current = store.read(Window((r0, 0), (min(r0 + step, b), w)))
        for k in range(levels):
            current = mode_2x(current, nodata=store.nodata_label)
            parts[k].append(current)
    for k, pieces in enumerate(parts, start=1):
        out = as_path(folder) / f"level-{k}" / f"rows-{a >> k:09d}.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, what="write an overview band") as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(pieces, axis=0))


def level_rows(folder: str | os.PathLike[str], level: int, shape: tuple[int, int]) -> Iterator[np.ndarray]:
    """The rows of overview ``level`` (of ``shape``) band after band, each band read from its file."""
    files: list[AnyPath] = sorted((as_path(folder) / f"level-{level}").glob("rows-*.npy"), key=str)
    seen = 0
    for file in files:
        band = np.load(io.BytesIO(file.read_bytes())) if isinstance(file, ObjectPath) else np.load(file, mmap_mode="r")
        seen += band.shape[0]
        yield band
    if seen != shape[0] or not files:
        raise ValueError(f"overview level {level} in {folder} has {seen} rows, not {shape[0]}: a band is missing")


def read_level(
    folder: str | os.PathLike[str], level: int, shape: tuple[int, int], *,
    rows: np.ndarray | None = None, cols: np.ndarray | None = None,
) -> np.ndarray:
    """Overview ``level`` (of ``shape``), or only its ``rows`` and ``cols`` (sorted indices): only those are read."""
    wanted = np.arange(shape[0]) if rows is None else np.asarray(rows)
    columns = np.arange(shape[1]) if cols is None else np.asarray(cols)
    picked, start = [], 0
    for band in level_rows(folder, level, shape):
        inside = wanted[(wanted >= start) & (wanted < start + band.shape[0])] - start
        picked.append(np.asarray(band[inside][:, columns]))
        start += band.shape[0]
    return np.concatenate(picked, axis=0)


def _strips(folder: str | os.PathLike[str], level: int, shape: tuple[int, int], rows: int) -> Iterator[np.ndarray]:
    """Level ``level`` as strips of ``rows`` rows (the last one shorter), read across its band files."""
    pending: list[np.ndarray] = []
    held = 0
    for band in level_rows(folder, level, shape):
        start = 0
        while start < band.shape[0]:
            take = min(rows - held, band.shape[0] - start)
            pending.append(np.asarray(band[start : start + take]))
            held, start = held + take, start + take
            if held == rows:
                yield np.concatenate(pending, axis=0)
                pending, held = [], 0
    if pending:
        yield np.concatenate(pending, axis=0)


def _tiles(folder: str | os.PathLike[str], level: int, shape: tuple[int, int], tile: int) -> Iterator[np.ndarray]:
    """Level ``level`` as ``tile``² tiles in row-major order (edge tiles padded), as a tiled TIFF page wants them."""
    for strip in _strips(folder, level, shape, tile):
        for c in range(0, shape[1], tile):
            out = np.zeros((tile, tile), dtype=strip.dtype)
            part = strip[:, c : c + tile]
            out[: part.shape[0], : part.shape[1]] = part
            yield out


def write_ovr(folder: str | os.PathLike[str], shape: Sequence[int], ovr_path: str | os.PathLike[str],
              *, dtype: np.dtype | str = "uint8") -> int:
    """Write the levels as a GDAL external overview file (``<source>.ovr``: one tiled TIFF page per level).

    Streamed tile by tile from the band files: memory holds one strip of 256 rows of a level. Returns the
    number of levels written.
    """
    import tifffile

    shapes = level_shapes(shape)
    with tifffile.TiffWriter(ovr_path, bigtiff=True) as tif:
        for k, level_shape in enumerate(shapes, start=1):
            tif.write(_tiles(folder, k, level_shape, 256), shape=level_shape, dtype=np.dtype(dtype),
                      tile=(256, 256), photometric="minisblack", compression="zlib")
    return len(shapes)
