"""The store's chunks: how they are encoded, read back checked, written aligned, and digested.

Every chunk carries a crc32c checksum of its compressed bytes, so a flipped bit is an error on read, never a wrong
pixel; every chunk a block covers is written even when it holds only the fill value, so a missing chunk file always
means a lost chunk (never "nodata"); a block writes whole stored files only (chunks, or shards when sharded), so no
two writers share one. Two digests vouch for what a block wrote: :func:`labels_digest` of its decoded labels and
:func:`chunk_file_digest` of each chunk file as stored.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.codecs

from tiler.errors import OutputError
from tiler.geometry import Window
from tiler.io.objects import AnyPath, ObjectPath, PathArg, as_path
from tiler.io.store.layout import ArrayGrid, StoreGrid, selection_bounds

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

__all__ = [
    "ARRAY_CONFIG", "chunk_codecs", "check_aligned", "chunk_file_digest", "corrupt_chunk_error", "labels_digest",
    "missing_files", "read_checked", "stored_labels_digest", "write_window",
]  # fmt: skip

ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
"""How the store's arrays are opened: every written chunk is stored, even one equal to the fill value."""


def chunk_codecs() -> tuple[Any, ...]:
    """Chunk compressors: zstd, then a crc32c checksum of the compressed bytes (checked on every read)."""
    return (zarr.codecs.ZstdCodec(level=0), zarr.codecs.Crc32cCodec())


def labels_digest(labels: np.ndarray, dtype: np.dtype | str) -> str:
    """The digest a block record keeps of its labels ``(*window.shape)``: crc32 of the C-order little-endian bytes.

    >>> labels_digest(np.zeros((2, 2), np.uint8), "uint8")
    'crc32:2144df1c'
    """
    data = np.ascontiguousarray(labels, dtype=np.dtype(dtype).newbyteorder("<"))
    return f"crc32:{zlib.crc32(data.tobytes()):08x}"


def chunk_file_digest(path: PathArg) -> str | None:
    """The digest a block record keeps of a chunk file: crc32 of its bytes as stored; None when there is no file.

    The bytes as stored (compressed, with their checksum), so two chunks differ whenever their pixels do, and a
    chunk file swapped for another block's (valid, checksummed) one is told apart without decoding it. A file
    that cannot be read gets a digest no record keeps (``unreadable: ...``). An object in a bucket is named by
    its ETag (``etag:...``, one HEAD, no download): the version of the object the block wrote, which any rewrite
    or swap changes.
    """
    crc = 0
    where = as_path(path)
    try:
        if isinstance(where, ObjectPath):
            meta = where.head()
            return None if meta is None else f"etag:{str(meta.get('e_tag')).strip(chr(34))}"
        with open(where, "rb") as f:
            while data := f.read(1 << 20):
                crc = zlib.crc32(data, crc)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return f"crc32:{crc:08x}"


def missing_files(store: AnyPath, keys: Sequence[str]) -> list[str]:
    """Those of ``keys`` (paths relative to the store at ``store``) with no file on disk; no decoding."""
    return [key for key in keys if not (store / key).is_file()]


# -- checked reads -----------------------------------------------------------------------------------------
def corrupt_chunk_error(store: AnyPath, key: str, reason: str) -> OutputError:
    """The OutputError for an unreadable chunk ``key`` (relative to the store at ``store``), with the fix."""
    reason = " ".join(reason.split())
    return OutputError(
        f"chunk {key} of output store {store} is corrupt or missing ({reason}); its pixels cannot be "
        f"trusted. Run `tiler verify {store}` to list every bad chunk, then rerun the job to recompute them."
    )


def read_checked(
    store: AnyPath, arr: zarr.Array, grid: ArrayGrid, selection: Window | Sequence[slice], *, files_kept: bool
) -> np.ndarray:
    """Read spatial ``selection`` (a window, or one slice per spatial axis, steps allowed) of ``arr``.

    Args:
        store: The store's folder (for the chunk files and the messages).
        arr: The array, labels ``(*shape)`` or probabilities ``(K, *shape)``.
        grid: Its grid of stored files.
        selection: What to read of the spatial axes.
        files_kept: Whether every chunk file of the selection must exist (a complete store written with
            checksums): a missing one is then an error, never the fill value.

    Returns:
        ``(*sel)`` for labels, ``(K, *sel)`` for probabilities.

    Raises:
        OutputError: a chunk fails its checksum or cannot be decoded, or (``files_kept``) a chunk file is missing;
            the message names the chunk and the store.

    """
    slices = selection.slices if isinstance(selection, Window) else tuple(selection)
    lead = (slice(None),) * (len(grid.shape) - len(slices))
    bounds = selection_bounds(slices, grid.shape[len(lead) :])
    if files_kept:
        missing = missing_files(store, grid.keys(bounds))
        if missing:
            raise corrupt_chunk_error(store, missing[0], "the chunk file is missing")
    try:
        return np.asarray(arr[(*lead, *slices)])
    except (ValueError, RuntimeError, OSError) as exc:
        key = _find_bad_chunk(arr, grid, bounds) or f"{grid.name} chunk in {bounds}"
        raise corrupt_chunk_error(store, key, str(exc)) from exc


def _find_bad_chunk(arr: zarr.Array, grid: ArrayGrid, bounds: Window) -> str | None:
    """The first stored file within ``bounds`` that cannot be decoded, or None."""
    for key, window in grid.files(bounds):
        try:
            arr[grid.selection(window)]
        except (ValueError, RuntimeError, OSError):
            return key
    return None


def stored_labels_digest(read: Callable[[Window], np.ndarray], window: Window, *, step: int, dtype: Any) -> str:
    """:func:`labels_digest` of the labels ``read(window)`` gives, read in slabs of ``step`` rows (bounded memory).

    Raises:
        OutputError: a chunk of the window is corrupt (whatever ``read`` raises).

    """
    little = np.dtype(dtype).newbyteorder("<")
    crc = 0
    for a in range(window.start[0], window.stop[0], step):
        b = min(a + step, window.stop[0])
        slab = Window((a, *window.start[1:]), (b, *window.stop[1:]))
        crc = zlib.crc32(np.ascontiguousarray(read(slab), dtype=little).tobytes(), crc)
    return f"crc32:{crc:08x}"


# -- aligned writes ----------------------------------------------------------------------------------------
def check_aligned(store: AnyPath, grid: StoreGrid, window: Window) -> None:
    """Raise OutputError unless ``window`` lies in the output and covers whole write units of ``grid``."""
    unit, shape = grid.write_unit, grid.shape
    if window.ndim != len(shape) or not Window.from_shape(shape).contains(window):
        raise OutputError(f"block window {window} lies outside output {store} of shape {shape}.")
    if not grid.on_grid(window):
        raise OutputError(
            f"block window start={window.start} stop={window.stop} is not aligned to the chunk grid "
            f"{unit} of {store}; two writers could share a chunk. "
            f"Use blocks that are whole multiples of {unit}."
        )


def write_window(
    store: AnyPath,
    window: Window,
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    *,
    arrays: tuple[zarr.Array, zarr.Array | None],
) -> str:
    """Overwrite exactly the (aligned) ``window`` of the store's arrays; return the written labels' digest.

    Args:
        store: The store's folder (for the messages).
        window: The block, aligned to the write unit (:func:`check_aligned`).
        labels: ``(*window.shape)`` labels, cast to the labels' dtype.
        probabilities: ``(K, *window.shape)`` or None; floats in [0, 1] are scaled by 255 for a uint8 array.
        arrays: The labels and the probabilities array (None when the store keeps none).

    Raises:
        OutputError: ``labels`` or ``probabilities`` do not have the window's shape.

    """
    lab, probs = arrays
    if tuple(labels.shape) != window.shape:
        raise OutputError(f"labels of shape {labels.shape} do not match block {window} of {store}.")
    data = labels.astype(lab.dtype, copy=False)
    lab[window.slices] = data
    if probabilities is not None and probs is not None:
        k = probs.shape[0]
        if tuple(probabilities.shape) != (k, *window.shape):
            raise OutputError(
                f"probabilities of shape {probabilities.shape} do not match (K={k}, *{window.shape}) for {store}."
            )
        if probs.dtype == np.uint8 and probabilities.dtype != np.uint8:
            probabilities = np.clip(np.rint(probabilities * 255), 0, 255)
        probs[(slice(None), *window.slices)] = probabilities.astype(probs.dtype, copy=False)
    return labels_digest(data, lab.dtype)
