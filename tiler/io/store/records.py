"""The store's record files read back typed: :class:`StoredBlock` for a block record, and when a record is sound.

A block record (``.tiler/blocks/<key>.json``, one per finished block) is the worker's
:class:`~tiler.engine.plan.BlockRecord` fields plus what the store adds: ``key``, ``chunks`` (the chunk files the
block wrote, relative to the store), ``chunk_digests`` (the digest of each of those files) and ``labels_digest``.
The JSON on disk is the one contract; this module is its one reader. A record is

* **unreadable** when its file is not a JSON object or names another block than its file name
  (:func:`read_record_files` skips it with a :class:`StoreWarning`, or lists it): its block counts as not done;
* **bad** when its fields are not of their types (:meth:`StoredBlock.from_json`) or do not fit the store (its
  window outside the output, off the chunk grid, not its block's window under the partition, chunk files that
  are not its window's: :func:`check_block`); both raise :class:`RecordError` with why;
* **sound** otherwise, and then trusted as far as its chunk files still match it (:mod:`.audit`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiler.errors import GeometryError, TilerError
from tiler.geometry import BlockPartition, Window
from tiler.io.objects import AnyPath
from tiler.io.store.layout import StoreGrid, read_json, safe_key

__all__ = [
    "RECORD_FIELDS", "RecordError", "StoreWarning", "StoredBlock", "block_position", "check_block", "infer_block",
    "read_record_files", "window_of",
]  # fmt: skip

RECORD_FIELDS: dict[str, str] = {
    "tiles_run": "int", "tiles_skipped": "int", "pid": "int", "class_counts": "ints", "confusion": "int rows",
    "started_at": "number", "finished_at": "number", "read_seconds": "number", "infer_seconds": "number",
    "stitch_seconds": "number", "write_seconds": "number", "assemble_seconds": "number", "idle_seconds": "number",
    "wait_seconds": "number",
}  # fmt: skip
"""The type of each field a block record may carry besides its window, chunks and digests."""

_KINDS = {
    "int": "a whole number", "number": "a number", "ints": "a list of whole numbers",
    "int rows": "a list of lists of whole numbers",
}  # fmt: skip


class StoreWarning(UserWarning):
    """A store file that could not be used (an unreadable record): its block or export counts as not done.

    Attributes:
        path: The file.
    """

    def __init__(self, message: str, path: AnyPath) -> None:
        super().__init__(message)
        self.path = path


class RecordError(TilerError, ValueError):
    """A block record that cannot be trusted as it reads; the message says why (a field, its value, the rule)."""


def _is(value: Any, kind: str) -> bool:
    """Whether the JSON ``value`` is of ``kind`` (a key of ``_KINDS``); never a boolean for a number."""
    if kind == "int":
        return type(value) is int
    if kind == "number":
        return type(value) in (int, float)
    if kind == "ints":
        return isinstance(value, list) and all(type(v) is int for v in value)
    return isinstance(value, list) and all(_is(row, "ints") for row in value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _window(data: Mapping[str, Any], ndim: int | None) -> Window | None:
    """The window ``start``/``stop`` name (None when neither is there), ``ndim`` whole numbers each when given."""
    start: Any = data.get("start")
    stop: Any = data.get("stop")
    if start is None and stop is None:
        return None
    if not (_is(start, "ints") and _is(stop, "ints") and len(start) == len(stop) == (ndim or len(start))):
        count = f"{ndim} " if ndim else ""
        raise RecordError(f"start={_short(start)} stop={_short(stop)} must be {count}whole numbers each")
    try:
        return Window(tuple(start), tuple(stop))
    except GeometryError as exc:
        raise RecordError(str(exc)) from None


@dataclass(frozen=True)
class StoredBlock:
    """A block record as the store keeps it, read back typed.

    Attributes:
        key: The block's key (``"0_1"`` for position (0, 1); a store written by hand may use any name).
        window: The pixels the block covers, or None for a record that names no window (hand-written, old).
        chunks: The chunk files it wrote, relative to the store (``labels/c/0/1``); None in records from before
            chunk lists (its window's files are then meant).
        chunk_digests: :func:`~tiler.io.store.chunks.chunk_file_digest` of each chunk file it wrote, or None.
        labels_digest: :func:`~tiler.io.store.chunks.labels_digest` of its labels ``(*window.shape)``, or None.
        class_counts: Pixels per class 0..K-1 in the block (nodata not counted), or None.
        fields: The whole record as stored, but its ``key`` (what :meth:`OutputStore.block_records` gives).

    >>> rec = StoredBlock.from_json({"key": "0_1", "start": [0, 64], "stop": [64, 128], "tiles_run": 9})
    >>> rec.window, rec.chunks, rec.fields["tiles_run"]
    (Window(start=(0, 64), stop=(64, 128)), None, 9)
    """

    key: str
    window: Window | None
    chunks: tuple[str, ...] | None = None
    chunk_digests: dict[str, str] | None = None
    labels_digest: str | None = None
    class_counts: tuple[int, ...] | None = None
    fields: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Any, *, key: str | None = None, ndim: int | None = None) -> StoredBlock:
        """Read a block record: the JSON object of its file, or that object without its ``key`` (then ``key``).

        Args:
            data: The record.
            key: The block's key when ``data`` has none (its file's name).
            ndim: The store's number of spatial axes, when known: the window must have as many.

        Raises:
            RecordError: ``data`` is not an object, names no key, or a field is not of its type (the window's
                ``start``/``stop``, ``chunks``, ``chunk_digests``, ``labels_digest``, :data:`RECORD_FIELDS`).

        """
        if not isinstance(data, Mapping):
            raise RecordError(f"a JSON {type(data).__name__}, not an object")
        key = data.get("key", key)
        if not isinstance(key, str):
            raise RecordError(f"key={_short(key)} must be the block's key (a string)")
        window = _window(data, ndim)
        chunks, digests, labels = data.get("chunks"), data.get("chunk_digests"), data.get("labels_digest")
        if chunks is not None and not (isinstance(chunks, list) and all(isinstance(c, str) for c in chunks)):
            raise RecordError(f"chunks={_short(chunks)} must be a list of chunk files")
        if digests is not None and not (
            isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())
        ):
            raise RecordError(f"chunk_digests={_short(digests)} must map chunk files of its window to digests")
        if "labels_digest" in data and not isinstance(labels, str):
            raise RecordError(f"labels_digest={_short(labels)} must be a digest string")
        for name, kind in RECORD_FIELDS.items():
            if name in data and not _is(data[name], kind):
                raise RecordError(f"{name}={_short(data[name])} must be {_KINDS[kind]}")
        counts = data.get("class_counts")
        return cls(
            key=key,
            window=window,
            chunks=tuple(chunks) if chunks is not None else None,
            chunk_digests=dict(digests) if digests is not None else None,
            labels_digest=labels,
            class_counts=tuple(counts) if counts is not None else None,
            fields={k: v for k, v in data.items() if k != "key"},
        )


def window_of(record: Mapping[str, Any] | StoredBlock) -> Window | None:
    """The window a block record covers, or None when it names none (or none that :class:`StoredBlock` reads)."""
    if isinstance(record, StoredBlock):
        return record.window
    try:
        return _window(record, None)
    except RecordError:
        return None


def block_position(key: str, ndim: int) -> tuple[int, ...] | None:
    """The per-axis position a block key names (``"1_2"`` -> ``(1, 2)``), or None when it names none."""
    parts = key.split("_")
    if len(parts) != ndim or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _fit_problem(key: str, window: Window, grid: StoreGrid, block: Sequence[int] | None) -> str | None:
    """Why ``window`` is not where record ``key`` may lie (outside, off the grid, not its block's), or None."""
    shape = grid.shape
    if not Window.from_shape(shape).contains(window):
        return f"its window start={window.start} stop={window.stop} lies outside the store's shape {shape}"
    if not grid.on_grid(window):
        return f"its window start={window.start} stop={window.stop} is not on the chunk grid {grid.write_unit}"
    if block is None:
        return None
    partition = BlockPartition(shape, tuple(block))
    position = block_position(key, len(shape))
    if position is None or any(p >= c for p, c in zip(position, partition.counts, strict=True)):
        return f"{key!r} is not a block of the partition into blocks of {partition.block}"
    expected = partition.window(position)
    if expected != window:
        return (
            f"its window start={window.start} stop={window.stop} is not block {key}'s (start="
            f"{expected.start} stop={expected.stop} for blocks of {partition.block})"
        )
    return None


def check_block(
    key: str, record: Mapping[str, Any] | StoredBlock, grid: StoreGrid, *, block: Sequence[int] | None = None
) -> StoredBlock:
    """Block record ``key`` read typed, when it is sound in the store of ``grid`` (no chunk file is opened).

    A sound record has a window (``start``/``stop``, one whole number per axis) inside the store on its chunk
    grid, and, when the partition's ``block`` shape is given, exactly the window of block ``key`` under it; its
    ``chunks`` are that window's chunk files, its ``chunk_digests`` name some of them, its ``labels_digest`` is
    a string, and each field of :data:`RECORD_FIELDS` it has is of its type. A record with no window is
    sound only while the partition is unknown (stores written by hand or by older tilers).

    Raises:
        RecordError: why the record cannot be trusted, e.g. ``"its window start=(0, 0) stop=(64, 64) is not block
            0_1's (start=(0, 64) stop=(64, 128) for blocks of (64, 64))"``.

    """
    rec = record if isinstance(record, StoredBlock) else StoredBlock.from_json(record, key=key, ndim=len(grid.shape))
    if rec.window is None:
        if block is not None:
            raise RecordError("it names no window (start/stop)")
        return rec
    if rec.window.ndim != len(grid.shape):
        raise RecordError(f"start={list(rec.window.start)} stop={list(rec.window.stop)} must be "
                          f"{len(grid.shape)} whole numbers each")
    why = _fit_problem(key, rec.window, grid, block)
    if why:
        raise RecordError(why)
    expected = grid.chunk_keys(rec.window)
    if rec.chunks is not None and list(rec.chunks) != expected:
        raise RecordError(f"chunks={_short(list(rec.chunks))} are not the chunk files of its window "
                          f"({_short(expected)})")
    if rec.chunk_digests is not None and not set(rec.chunk_digests) <= set(expected):
        raise RecordError(f"chunk_digests={_short(rec.chunk_digests)} must map chunk files of its window to digests")
    return rec


def infer_block(
    shape: Sequence[int], records: Mapping[str, Mapping[str, Any] | StoredBlock]
) -> tuple[int, ...] | None:
    """The block shape most records agree on per axis (block ``p`` starts at ``p * block``), or None."""
    votes: list[Counter[int]] = [Counter() for _ in shape]
    for key, rec in records.items():
        position, window = block_position(key, len(shape)), window_of(rec)
        if position is None or window is None or window.ndim != len(shape):
            continue
        for axis, (p, a, b, n) in enumerate(zip(position, window.start, window.stop, shape, strict=True)):
            if p > 0 and a > 0 and a % p == 0:
                votes[axis][a // p] += 1
            elif p == 0 and a == 0:
                votes[axis][min(b, n)] += 1
    if not all(votes):
        return None
    return tuple(v.most_common(1)[0][0] for v in votes)


def read_record_files(
    folder: AnyPath, kind: str, *, unreadable: list[tuple[AnyPath, str]] | None = None
) -> list[dict[str, Any]]:
    """The readable JSON records in ``folder``, each with its ``key`` (its file name when it keeps none).

    A file that is not a JSON object, or (``kind="block"``) names another block than its file name, is unreadable:
    it is warned about (:class:`StoreWarning`), or added to ``unreadable`` as ``(file, message)``. Files whose
    name starts with a dot are another process's records still being written (a temporary, then renamed).
    """
    out: list[dict[str, Any]] = []
    if not folder.is_dir():
        return out
    files: list[AnyPath] = sorted(folder.glob("*.json"), key=str)
    for file in files:
        if file.name.startswith("."):
            continue
        try:
            rec = read_json(file)
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
            key = rec.get("key", file.stem)
            if kind == "block" and (not isinstance(key, str) or safe_key(key) != file.stem):
                raise ValueError(f"it names block {key!r}, not {file.stem!r}")
        except (OSError, ValueError) as exc:
            message = (
                f"{kind} record {file} is unreadable ({exc}); that {kind} counts as not done and a rerun redoes it."
            )
            if unreadable is None:
                warnings.warn(StoreWarning(message, file), stacklevel=3)
            else:
                unreadable.append((file, message))
            continue
        rec.setdefault("key", file.stem)
        out.append(rec)
    return out
