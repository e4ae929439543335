"""The output store: one zarr v3 group holding labels, optional probabilities, georeferencing and job state.

Layout of ``<parent>/``::

    .<name>.lock                  the job lock (exclusive create), holding owner, pid, host, time; taken with
                                  :func:`store_lock` before the store exists and held until exports are done
    <name>/zarr.json              group attributes: ``tiler_store`` marker, georef, class names/colours,
                                  ``pixels_hash`` (what the arrays hold), ``block_shape`` (the partition the
                                  block records follow), version, and, once finished,
                                  ``complete`` with ``job_hash`` (the config hash of the finishing that wrote
                                  the exports and reports) and that finishing's ``config`` (rewritten atomically)
    <name>/labels/                uint8, or uint16 when a class or the nodata label passes 255 (*shape), fill
                                  value = nodata label (:func:`tiler.stitch.labels_dtype`, the one rule)
    <name>/probabilities/         optional (K, *shape), chunks (K, *chunks)
    <name>/x, y (, z)             pixel-centre coordinates per spatial axis (CRS units for rasters, µm for
                                  slides, mm for volumes), and ``spatial_ref`` (CRS WKT and GDAL GeoTransform)
                                  for georeferenced rasters: what xarray and rioxarray read
    <name>/.tiler/blocks/<key>.json   one record per finished block: its window, the chunk files it wrote, the
                                  digest of each of those files and a digest of its labels (atomic JSON)
    <name>/.tiler/exports/<n>.json    one record per finished export: its path, the ``job_hash`` of the finishing
                                  that last listed it, the ``settings`` it was drawn with (polygon settings),
                                  the ``digest`` of its content and the ``pid`` and ``host`` that recorded it
    <name>/.tiler/intents/<f>.json    one record per export file about to be moved into place (its final path and
                                  the digest of the complete temporary), written just before the move and
                                  removed once the export is recorded: a job killed in between still knows
                                  the file as its own (:meth:`OutputStore.wrote`)

The store proves itself: every chunk carries a crc32c checksum (a flipped bit is an error on read, never a wrong
pixel), every chunk a block covers is written even when it holds only the fill value (so a missing chunk file always
means a lost chunk), and :meth:`OutputStore.check_blocks` finds recorded blocks whose chunks are gone, and
:meth:`OutputStore.audit_blocks` also those whose chunk files are not the ones they wrote (a valid chunk of another
block swapped in) or whose record does not match its block. ``complete`` is believed only while every block of the
partition has a sound record (:attr:`OutputStore.complete`), and metadata declaring shapes no job writes is refused
on open (:func:`check_store_metadata`). The whole group is built under a temporary name and renamed into place, so a
store either exists with all its metadata or not at all. Block records are separate files because zarr attribute
updates from several processes would race. The ``complete`` attribute is written last, by
:meth:`OutputStore.mark_complete`, and cleared first, by :meth:`OutputStore.clear_complete`, when a job with the
same pixels but another finishing (exports, scores) finishes the store again.
(zarr 3.1's LocalStore itself writes each chunk file to a temporary name and renames it, so a killed block
write leaves whole chunks, old or new; the block has no record yet and is recomputed.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import stat
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
import zarr.codecs

import tiler
from tiler.errors import GeometryError, OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.atomic import (
    atomic_dir,
    clean_temporaries,
    content_digest,
    output_error,
    pid_alive,
    write_json_atomic,
)
from tiler.io.base import Georef
from tiler.io.lock import acquire_store_lock, check_not_locked, lock_path_for, release_store_lock, store_lock
from tiler.labels import labels_dtype
from tiler.palette import default_colors

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

__all__ = [
    "IntentRecorder", "OutputStore", "StoreWarning", "check_store_metadata", "chunk_file_digest", "labels_digest",
    "lock_path_for", "pid_alive", "store_lock",
]

PROBABILITY_DTYPES = {"float16": np.float16, "uint8": np.uint8, "float32": np.float32}
STATE_DIR = ".tiler"
STORE_MARKER = "tiler_store"
STORE_FORMAT = 1
_ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
MAX_STORED_FILES = 10**8
"""Most chunk (shard) files one array of a store may declare: more is metadata no real store has."""
MAX_UNIT_BYTES = 2**34
"""Largest decoded chunk (shard) one array of a store may declare, in bytes: verify reads one at a time."""
BLOCK_SHAPE = "block_shape"
"""Group attribute: the block shape of the partition the store's block records follow."""
RECORD_FIELDS: dict[str, str] = {
    "tiles_run": "int", "tiles_skipped": "int", "pid": "int", "class_counts": "ints", "confusion": "int rows",
    "started_at": "number", "finished_at": "number", "read_seconds": "number", "infer_seconds": "number",
    "stitch_seconds": "number", "write_seconds": "number", "assemble_seconds": "number", "idle_seconds": "number",
    "wait_seconds": "number",
}  # fmt: skip
"""The type of each field a block record may carry besides its window, chunks and digests."""


class StoreWarning(UserWarning):
    """A store file that could not be used (an unreadable block record): the block counts as not done.

    Attributes:
        path: The file.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _safe_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(key))


def _codecs() -> tuple[Any, ...]:
    """Chunk compressors: zstd, then a crc32c checksum of the compressed bytes (checked on every read)."""
    return (zarr.codecs.ZstdCodec(level=0), zarr.codecs.Crc32cCodec())


def _read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def _ints(value: Any) -> tuple[int, ...] | None:
    """``value`` as whole numbers of at least 1 (JSON integers, never booleans or floats), else None."""
    if not isinstance(value, list) or not all(type(v) is int and v >= 1 for v in value):
        return None
    return tuple(value)


def _bad_metadata(file: Path, field: str, value: Any, why: str) -> OutputError:
    """The one-line OutputError for a metadata ``field`` of ``file`` holding ``value`` (shortened), with the fix."""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return OutputError(
        f"{file}: {field}={shown} {why}; the store's metadata is damaged or was edited by hand. Fix: rerun the job "
        "with --overwrite to rebuild the store (or restore that file from a backup)."
    )


def _array_geometry(file: Path) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The shape and stored-file shape (the shard when sharded, else the chunk) an array's ``zarr.json`` declares.

    None when there is no such file (zarr names what is missing). What no real store declares is refused before
    zarr allocates anything or anyone walks the chunk grid: shapes and chunk shapes that are not whole numbers of
    at least 1, more than :data:`MAX_STORED_FILES` chunk files, a chunk over :data:`MAX_UNIT_BYTES` decoded.

    Raises:
        OutputError: one line naming ``file``, the field, its value and the fix.

    """
    try:
        meta = _read_json(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _bad_metadata(file, "contents", str(exc), "cannot be read as JSON") from None
    if not isinstance(meta, dict):
        raise _bad_metadata(file, "contents", meta, "is not a JSON object")
    shape = _ints(meta.get("shape"))
    if shape is None or not 1 <= len(shape) <= 4:
        raise _bad_metadata(file, "shape", meta.get("shape"), "must be 1 to 4 whole numbers, each at least 1")
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    raw = config.get("chunk_shape") if isinstance(config, dict) else None
    unit = _ints(raw)
    if unit is None or len(unit) != len(shape):
        raise _bad_metadata(file, "chunk_grid.configuration.chunk_shape", raw,
                            f"must be {len(shape)} whole numbers of at least 1 (one per axis of shape {list(shape)})")
    codecs = meta.get("codecs")
    for codec in codecs if isinstance(codecs, list) else []:
        if isinstance(codec, dict) and codec.get("name") == "sharding_indexed":
            sharding = codec.get("configuration")
            inner_raw = sharding.get("chunk_shape") if isinstance(sharding, dict) else None
            inner = _ints(inner_raw)
            if inner is None or len(inner) != len(unit) or any(u % c for u, c in zip(unit, inner, strict=True)):
                raise _bad_metadata(file, "sharding_indexed chunk_shape", inner_raw,
                                    f"must be whole numbers of at least 1 dividing the shard shape {list(unit)}")
            if math.prod(u // c for u, c in zip(unit, inner, strict=True)) > 2**20:
                raise _bad_metadata(file, "sharding_indexed chunk_shape", inner_raw,
                                    f"cuts each shard {list(unit)} into more than 2**20 chunks")
    files = math.prod(-(-n // u) for n, u in zip(shape, unit, strict=True))
    if files > MAX_STORED_FILES:
        raise _bad_metadata(file, "shape", list(shape), f"with chunks {list(unit)} makes {files:.3g} chunk files "
                            f"(a store holds at most {MAX_STORED_FILES:.0e})")
    try:
        itemsize = np.dtype(str(meta.get("data_type"))).itemsize
    except TypeError:
        itemsize = 8
    size = math.prod(unit) * itemsize
    if size > MAX_UNIT_BYTES:
        raise _bad_metadata(file, "chunk_grid.configuration.chunk_shape", list(unit),
                            f"makes chunks of {size:.3g} bytes (at most {MAX_UNIT_BYTES / 2**30:.0f} GiB)")
    return shape, unit


def check_store_metadata(path: str | os.PathLike[str]) -> None:
    """Refuse a store whose metadata no job writes, before zarr or anything else reads its arrays.

    Checks the labels' and probabilities' ``zarr.json`` (see :func:`_array_geometry`), that the probabilities are
    ``(K, *shape)`` chunked ``(K, *chunks)`` like the labels, and the group's ``num_classes``, ``nodata_label``
    and ``block_shape``.

    Raises:
        OutputError: one line naming the file, the field, its value and the fix.

    """
    path = Path(path)
    labels_file, probs_file = path / "labels" / "zarr.json", path / "probabilities" / "zarr.json"
    labels = _array_geometry(labels_file)
    if labels is None:
        return
    shape, unit = labels
    if len(shape) not in (2, 3):
        raise _bad_metadata(labels_file, "shape", list(shape), "must have 2 or 3 axes (an image or a volume)")
    probs = _array_geometry(probs_file)
    if probs is not None and (probs[0][1:] != shape or probs[1][1:] != unit or probs[1][0] != probs[0][0]):
        raise _bad_metadata(probs_file, "shape", [list(probs[0]), list(probs[1])],
                            f"must be (K, *{list(shape)}) chunked (K, *{list(unit)}) like the labels")
    try:
        meta = _read_json(path / "zarr.json")
    except (OSError, ValueError):
        return  # is_tiler_store has refused it already
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    attrs = attrs if isinstance(attrs, dict) else {}
    for key, low in (("num_classes", 1), ("nodata_label", 0)):
        value = attrs.get(key)
        if value is not None and (type(value) is not int or not low <= value <= 65535):
            raise _bad_metadata(path / "zarr.json", f"attributes.{key}", value,
                                f"must be a whole number from {low} to 65535")
    block = attrs.get(BLOCK_SHAPE)
    if block is not None and (_ints(block) is None or len(block) != len(shape)):
        raise _bad_metadata(path / "zarr.json", f"attributes.{BLOCK_SHAPE}", block,
                            f"must be {len(shape)} whole numbers, each at least 1 (the job's tiling.block)")


def finished_job_hash(path: str | os.PathLike[str]) -> str | None:
    """The config hash of the job that finished the store at ``path``; None if it is not complete (or absent).

    Reads the group's and the labels' ``zarr.json`` and lists the block records' folder (cheap enough to check
    every input an archive skips as done): a ``complete`` flag over a block with no record file (set by hand on a
    partial store) is not believed. A complete store from before the pixels/config split answers with its legacy
    ``config_hash``.
    """
    try:
        meta = _read_json(Path(path) / "zarr.json")
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    if not isinstance(attrs, dict) or not attrs.get("complete", False) or not _every_block_listed(Path(path), attrs):
        return None
    job = attrs.get("job_hash")
    if job is None and attrs.get("pixels_hash") is None:
        job = attrs.get("config_hash")
    return str(job) if job is not None else None


def _every_block_listed(path: Path, attrs: Mapping[str, Any]) -> bool:
    """Whether every block of the store's partition has a record file (names only); True when it keeps none."""
    block = _ints(attrs.get(BLOCK_SHAPE))
    if block is None:
        return True
    try:
        geometry = _array_geometry(path / "labels" / "zarr.json")
        names = set(os.listdir(path / STATE_DIR / "blocks"))
    except (OutputError, OSError):
        return False
    if geometry is None or len(geometry[0]) != len(block):
        return False
    partition = BlockPartition(geometry[0], block)
    return all(f"{'_'.join(map(str, p))}.json" in names for p in partition.positions())


def labels_digest(labels: np.ndarray, dtype: np.dtype | str) -> str:
    """The digest a block record keeps of its labels: crc32 of the C-order little-endian bytes.

    >>> labels_digest(np.zeros((2, 2), np.uint8), "uint8")
    'crc32:2144df1c'
    """
    data = np.ascontiguousarray(labels, dtype=np.dtype(dtype).newbyteorder("<"))
    return f"crc32:{zlib.crc32(data.tobytes()):08x}"


class OutputStore:
    """A zarr v3 output store; create it with :meth:`create`, re-open it with :meth:`open`."""

    def __init__(self, path: str | os.PathLike[str], group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group
        self._digests: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {}

    # -- lifecycle ------------------------------------------------------------------------------------
    @staticmethod
    def is_tiler_store(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a tiler store, judged by its own metadata (one small JSON read, no zarr).

        Stores carry the ``tiler_store`` marker; stores written before it are recognised by their (legacy)
        ``config_hash``, tiler version and labels array.
        """
        path = Path(path)
        try:
            meta = _read_json(path / "zarr.json")
        except (OSError, ValueError):
            return False
        if not isinstance(meta, dict) or meta.get("node_type") != "group":
            return False
        attrs = meta.get("attributes")
        if not isinstance(attrs, dict):
            return False
        if attrs.get(STORE_MARKER) == STORE_FORMAT:
            return True
        return "config_hash" in attrs and "tiler_version" in attrs and (path / "labels" / "zarr.json").is_file()

    @staticmethod
    def _not_a_store(path: Path, detail: str = "") -> OutputError:
        what = "is not a tiler output store" if not detail else f"is not a readable tiler output store ({detail})"
        return OutputError(
            f"{path} exists and {what}: no tiler metadata in {path / 'zarr.json'}. It was left untouched; "
            f"choose another output path, or remove it by hand if it is yours to delete."
        )

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        shape: Sequence[int],
        num_classes: int,
        chunks: Sequence[int],
        nodata_label: int = 255,
        probabilities: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        pixels_hash: str,
        job_hash: str | None = None,
        overwrite: bool = False,
        shards: Sequence[int] | None = None,
        block: Sequence[int] | None = None,
    ) -> OutputStore:
        """Create the store, or re-open it for resume when it holds the same pixels (:meth:`holds_pixels_of`).

        The whole group (arrays and every attribute) is built under a temporary name beside ``path`` and renamed
        into place, so a killed creation leaves no half store. Take :func:`store_lock` first when several jobs
        may target the same path.

        Args:
            path: Store directory.
            shape: Spatial output shape (H, W) or (D, H, W).
            num_classes: Number of classes K.
            chunks: Chunk shape per spatial axis.
            nodata_label: Label of pixels with no prediction (the labels' fill value). The labels' dtype is
                :func:`tiler.stitch.labels_dtype` of ``num_classes`` and this label: uint8 when every class and
                the nodata label fit in a byte, else uint16.
            probabilities: None (no probabilities), ``"float16"``, ``"uint8"`` (x255) or ``"float32"``.
            attrs: Extra group attributes: ``georef`` (a :class:`Georef` or its attrs), ``class_names``,
                ``class_colors``, ``config``...
            pixels_hash: Identity of what the arrays hold (:func:`tiler.config.pixels_hash`); a store holding
                other pixels is refused.
            job_hash: The job's config hash (:func:`tiler.config.config_hash`): a store written before the pixels
                hash existed recorded it as its identity, and is resumed when it matches.
            overwrite: Replace an existing tiler store (never anything else: a folder that is not a tiler store
                is refused whatever this says).
            shards: Optional shard shape per spatial axis (a multiple of ``chunks``).
            block: The block shape of the job's partition (``tiling.block``), kept as ``block_shape`` (also when an
                existing store is resumed) so :meth:`audit_blocks`, :meth:`incomplete_reason` and ``tiler verify``
                know which window each block record must cover.

        Raises:
            OutputError: unwritable path, a path holding something that is not a tiler store, a store holding
                other pixels (without ``overwrite``), a store locked by a live job, or a store that
                appeared at ``path`` while this one was being built.

        """
        path = Path(path)
        shape = tuple(int(n) for n in shape)
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != len(shape):
            raise OutputError(f"chunks={chunks} must have one value per axis of shape={shape} (output {path}).")
        if block is not None and (len(tuple(block)) != len(shape) or any(int(b) < 1 for b in block)):
            raise OutputError(f"block={tuple(block)} must have one value of at least 1 per axis of shape={shape} "
                              f"(output {path}).")
        if probabilities is not None and probabilities not in PROBABILITY_DTYPES:
            raise OutputError(
                f"probabilities={probabilities!r} for output {path}; use None or one of {sorted(PROBABILITY_DTYPES)}."
            )
        replace = False
        if os.path.lexists(path):
            if not cls.is_tiler_store(path):
                raise cls._not_a_store(path)
            if not overwrite:
                existing = cls.open(path)
                if not existing.holds_pixels_of(pixels_hash, job_hash):
                    raise OutputError(
                        f"output {path} already holds the result of another job (pixels hash "
                        f"{existing.pixels_hash}, this job {pixels_hash}: the input, model, tiling or output "
                        f"layout differ); pass --overwrite to replace it or choose another output path."
                    )
                if existing._attr("pixels_hash") is None:  # a store from before the split: name its two hashes
                    finished = existing.job_hash
                    existing._update_attrs({"pixels_hash": pixels_hash, **({"job_hash": finished} if finished else {})})
                if block is not None and existing._attr(BLOCK_SHAPE) != [int(b) for b in block]:
                    existing._update_attrs({BLOCK_SHAPE: [int(b) for b in block]})
                return existing
            check_not_locked(path)
            replace = True
        try:
            dtype = labels_dtype(int(num_classes), int(nodata_label))
        except GeometryError as exc:
            raise OutputError(f"output {path}: {exc}") from None
        meta = dict(attrs or {})
        georef = meta.get("georef")
        if isinstance(georef, Georef):
            meta["georef"] = georef.to_attrs()
        meta.update(
            {STORE_MARKER: STORE_FORMAT},
            pixels_hash=pixels_hash,
            num_classes=int(num_classes),
            nodata_label=int(nodata_label),
            tiler_version=tiler.__version__,
            complete=False,
            **({BLOCK_SHAPE: [int(b) for b in block]} if block is not None else {}),
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(path, exc, what="write the output store at") from exc
        clean_temporaries(path.parent)
        with atomic_dir(path, replace=replace, what="write the output store at") as tmp:
            _build_group(
                tmp, meta, shape=shape, chunks=chunks, shards=shards, dtype=dtype, nodata_label=int(nodata_label),
                num_classes=int(num_classes), probabilities=probabilities,
            )
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: Literal["r", "r+"] = "r+") -> OutputStore:
        """Open an existing store (``mode="r"`` for read-only consumers such as exports).

        Raises:
            OutputError: ``path`` is missing or is not a tiler store, or its metadata declares shapes no job writes
                (:func:`check_store_metadata`).

        """
        path = Path(path)
        if not os.path.lexists(path):
            raise OutputError(f"output store {path} does not exist; run the job that writes it first.")
        if not cls.is_tiler_store(path):
            raise cls._not_a_store(path)
        check_store_metadata(path)  # before zarr allocates anything or anyone walks the chunk grid
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
            if "labels" not in group:
                raise cls._not_a_store(path, "no labels array")
        except OutputError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise cls._not_a_store(path, str(exc)) from exc
        return cls(path, group)

    # -- properties ------------------------------------------------------------------------------------
    def _attr(self, key: str, default: Any = None) -> Any:
        return self.group.attrs.get(key, default)

    @property
    def attrs(self) -> dict[str, Any]:
        """The group attributes (a fresh copy)."""
        return dict(self.group.attrs)

    @property
    def labels(self) -> zarr.Array:
        """The labels array (*shape); every written chunk is stored, even one equal to the fill value."""
        return self.group["labels"].with_config(_ARRAY_CONFIG)  # type: ignore[union-attr,return-value]

    @property
    def probabilities(self) -> zarr.Array | None:
        """The probabilities array (K, *shape), or None."""
        if "probabilities" not in self.group:
            return None
        return self.group["probabilities"].with_config(_ARRAY_CONFIG)  # type: ignore[union-attr,return-value]

    def arrays(self) -> dict[str, zarr.Array]:
        """The store's arrays by name: ``labels`` and, when stored, ``probabilities``."""
        probs = self.probabilities
        return {"labels": self.labels, **({"probabilities": probs} if probs is not None else {})}

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial output shape."""
        return tuple(self.labels.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Chunk shape per spatial axis."""
        return tuple(self.labels.chunks)

    @property
    def write_unit(self) -> tuple[int, ...]:
        """The smallest independently writable box: the shard shape when sharded, else the chunk shape."""
        shards = getattr(self.labels, "shards", None)
        return tuple(shards) if shards else self.chunks

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return int(self._attr("num_classes"))

    @property
    def nodata_label(self) -> int:
        """The label of pixels without prediction."""
        return int(self._attr("nodata_label"))

    @property
    def pixels_hash(self) -> str:
        """The identity of what the arrays hold (a store from before the split keeps its ``config_hash``)."""
        return str(self._attr("pixels_hash", self._attr("config_hash")))

    @property
    def job_hash(self) -> str | None:
        """The config hash of the finishing that wrote the exports and reports, while the store is complete.

        None while not complete. A complete store from before the split answers with its legacy
        ``config_hash``, the identity of the whole job that finished it.
        """
        return finished_job_hash(self.path)

    def holds_pixels_of(self, pixels_hash: str, job_hash: str | None = None) -> bool:
        """Whether this store's arrays are what a job with ``pixels_hash`` (and config hash ``job_hash``) writes.

        A store from before the split recorded one ``config_hash``: the pixels hash of that time or, between
        the commit that made it cover exports and scores and the split, the job's config hash. Either match
        means the same pixels.
        """
        own = self._attr("pixels_hash")
        if own is not None:
            return str(own) == pixels_hash
        legacy = self._attr("config_hash")
        return legacy is not None and str(legacy) in (pixels_hash, job_hash)

    @property
    def complete_flag(self) -> bool:
        """Whether the ``complete`` flag is set in zarr.json (read from disk); believe :attr:`complete` instead.

        The flag is what :meth:`mark_complete` wrote, or someone by hand.
        """
        try:
            meta = _read_json(self.path / "zarr.json")
        except (OSError, ValueError):
            return False
        attrs = meta.get("attributes") if isinstance(meta, dict) else None
        return isinstance(attrs, dict) and attrs.get("complete") is True

    @property
    def complete(self) -> bool:
        """Whether the store is finished: the ``complete`` flag is set and every block has a sound record.

        A flag over missing blocks (set by hand, or left by a tool that edited the store) is not believed:
        see :meth:`incomplete_reason`. Reads the block records (small JSON files), never a chunk.
        """
        return self.complete_flag and self.incomplete_reason() is None

    @property
    def has_checksums(self) -> bool:
        """Whether this store was written with chunk checksums and every block chunk stored (the marker)."""
        return self._attr(STORE_MARKER) == STORE_FORMAT

    @property
    def georef(self) -> Georef:
        """The georeferencing of the output (same as the input's)."""
        return Georef.from_attrs(self._attr("georef"))

    @property
    def class_names(self) -> list[str]:
        """Class names (``class_<k>`` when none were stored)."""
        names = self._attr("class_names")
        return list(names) if names else [f"class_{k}" for k in range(self.num_classes)]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """Class colours as RGB (:func:`tiler.palette.default_colors` when none were stored)."""
        colors = self._attr("class_colors")
        if colors:
            return [(int(c[0]), int(c[1]), int(c[2])) for c in colors]
        return list(default_colors(self.num_classes))

    # -- attributes (zarr.json, rewritten atomically) ----------------------------------------------------
    def _update_attrs(self, changes: Mapping[str, Any], *, remove: Sequence[str] = ()) -> None:
        """Rewrite the group's zarr.json with ``changes`` set and ``remove`` dropped: one atomic, fsynced replace."""
        meta_path = self.path / "zarr.json"
        try:
            meta = _read_json(meta_path)
        except (OSError, ValueError) as exc:
            raise OutputError(
                f"cannot read {meta_path} to update it ({exc}); the store is damaged. Rerun the job with "
                f"--overwrite to rebuild it."
            ) from exc
        attributes = meta.setdefault("attributes", {})
        attributes.update(changes)
        for key in remove:
            attributes.pop(key, None)
        write_json_atomic(meta_path, meta, indent=2)
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)

    # -- chunks ----------------------------------------------------------------------------------------
    def chunk_keys(self, window: Window, *, array: str = "labels") -> list[str]:
        """The stored chunk files (shard files when sharded) that ``window`` touches, relative to the store.

        >>> # for a (100, 120) store with (32, 32) chunks:  store.chunk_keys(Window((0, 32), (32, 64)))
        >>> # ['labels/c/0/1']
        """
        arr = self.arrays().get(array)
        if arr is None:
            return []
        return [f"{array}/{key}" for key in _chunk_keys_of(arr, window)]

    def chunk_grid(self, array: str = "labels") -> Iterator[tuple[str, Window]]:
        """Every stored chunk (shard) file of ``array``: ``(key relative to the store, spatial window)``."""
        arr = self.arrays().get(array)
        if arr is None:
            return
        for coords, window in _chunk_windows(arr, Window.from_shape(self.shape)):
            yield f"{array}/{_encode_key(arr, coords)}", window

    @staticmethod
    def record_window(record: Mapping[str, Any]) -> Window | None:
        """The window a block record covers (its ``start``/``stop``), or None when it names none."""
        return _window_of(record)

    def _block_chunk_keys(self, window: Window) -> list[str]:
        return [key for name in self.arrays() for key in self.chunk_keys(window, array=name)]

    def missing_chunk_files(self, keys: Sequence[str]) -> list[str]:
        """Those of ``keys`` (paths relative to the store) with no file on disk; no decoding."""
        return [key for key in keys if not (self.path / key).is_file()]

    def read(self, selection: Window | Sequence[slice], *, array: str = "labels") -> np.ndarray:
        """Read spatial ``selection`` (a window, or one slice per spatial axis, steps allowed) of an array.

        Returns ``(*sel)`` for labels, ``(K, *sel)`` for probabilities. Corruption is never read as pixels:

        Raises:
            OutputError: a chunk fails its checksum or cannot be decoded, or (in a complete store written with
                checksums) a chunk file is missing; the message names the chunk and the store.

        """
        arr = self.arrays().get(array)
        if arr is None:
            raise OutputError(f"output store {self.path} has no {array!r} array.")
        slices = selection.slices if isinstance(selection, Window) else tuple(selection)
        full = (slice(None), *slices) if array == "probabilities" else slices
        bounds = _bounds(slices, self.shape)
        if self.has_checksums and self.complete_flag:
            missing = self.missing_chunk_files(self.chunk_keys(bounds, array=array))
            if missing:
                raise self.corrupt_chunk_error(missing[0], "the chunk file is missing")
        try:
            return np.asarray(arr[full])
        except (ValueError, RuntimeError, OSError) as exc:
            key = self._find_bad_chunk(arr, array, bounds) or f"{array} chunk in {bounds}"
            raise self.corrupt_chunk_error(key, str(exc)) from exc

    def _find_bad_chunk(self, arr: zarr.Array, name: str, bounds: Window) -> str | None:
        for coords, window in _chunk_windows(arr, bounds):
            sel = (slice(None), *window.slices) if name == "probabilities" else window.slices
            try:
                arr[sel]
            except (ValueError, RuntimeError, OSError):
                return f"{name}/{_encode_key(arr, coords)}"
        return None

    def corrupt_chunk_error(self, key: str, reason: str) -> OutputError:
        """The OutputError for an unreadable chunk ``key`` (relative to the store), with the fix."""
        reason = " ".join(reason.split())
        return OutputError(
            f"chunk {key} of output store {self.path} is corrupt or missing ({reason}); its pixels cannot be "
            f"trusted. Run `tiler verify {self.path}` to list every bad chunk, then rerun the job to recompute them."
        )

    # -- writing ---------------------------------------------------------------------------------------
    def check_aligned(self, window: Window) -> None:
        """Raise OutputError unless ``window`` covers whole write units (chunks, or shards when sharded)."""
        unit = self.write_unit
        shape = self.shape
        if window.ndim != len(shape) or not Window.from_shape(shape).contains(window):
            raise OutputError(f"block window {window} lies outside output {self.path} of shape {shape}.")
        bad = [
            (a, b, u)
            for a, b, u, n in zip(window.start, window.stop, unit, shape, strict=True)
            if a % u or (b % u and b != n)
        ]
        if bad:
            raise OutputError(
                f"block window start={window.start} stop={window.stop} is not aligned to the chunk grid "
                f"{unit} of {self.path}; two writers could share a chunk. "
                f"Use blocks that are whole multiples of {unit}."
            )

    def write_block(
        self, window: Window, labels: np.ndarray, probabilities: np.ndarray | None = None
    ) -> None:
        """Overwrite exactly ``window`` (chunk-aligned) with labels (*window.shape), probs (K, ...).

        Every chunk of the window is stored (also one equal to the fill value), and the labels' digest is kept
        for :meth:`record_block` of the same window.
        """
        self.check_aligned(window)
        if tuple(labels.shape) != window.shape:
            raise OutputError(f"labels of shape {labels.shape} do not match block {window} of {self.path}.")
        lab = self.labels
        data = labels.astype(lab.dtype, copy=False)
        lab[window.slices] = data
        self._digests[(window.start, window.stop)] = labels_digest(data, lab.dtype)
        probs = self.probabilities
        if probabilities is not None and probs is not None:
            if tuple(probabilities.shape) != (self.num_classes, *window.shape):
                raise OutputError(
                    f"probabilities of shape {probabilities.shape} do not match (K={self.num_classes}, "
                    f"*{window.shape}) for {self.path}."
                )
            if probs.dtype == np.uint8 and probabilities.dtype != np.uint8:
                probabilities = np.clip(np.rint(probabilities * 255), 0, 255)
            probs[(slice(None), *window.slices)] = probabilities.astype(probs.dtype, copy=False)

    def stored_digest(self, window: Window) -> str:
        """The digest of the labels stored in ``window``, read slab by slab (bounded memory).

        Raises:
            OutputError: a chunk of the window is corrupt (see :meth:`read`).

        """
        dtype = np.dtype(self.labels.dtype).newbyteorder("<")
        crc = 0
        step = self.write_unit[0]
        for a in range(window.start[0], window.stop[0], step):
            b = min(a + step, window.stop[0])
            slab = Window((a, *window.start[1:]), (b, *window.stop[1:]))
            crc = zlib.crc32(np.ascontiguousarray(self.read(slab), dtype=dtype).tobytes(), crc)
        return f"crc32:{crc:08x}"

    # -- block records ---------------------------------------------------------------------------------
    @property
    def _blocks_dir(self) -> Path:
        return self.path / STATE_DIR / "blocks"

    @property
    def _exports_dir(self) -> Path:
        return self.path / STATE_DIR / "exports"

    def record_block(
        self,
        key: str,
        record: Mapping[str, Any],
        window: Window | None = None,
        *,
        labels: np.ndarray | None = None,
    ) -> None:
        """Record a finished block (one JSON file per block, atomic; safe from many processes).

        With a ``window`` (or ``start``/``stop`` in ``record``) the record also keeps ``chunks``, the chunk files
        the block wrote (paths relative to the store, e.g. ``labels/c/0/1``), ``chunk_digests``, the digest of
        each of those files as it is on disk now (:func:`chunk_file_digest`; labels and probabilities alike, so a
        chunk swapped for another block's valid chunk is found), and ``labels_digest`` (see
        :func:`labels_digest`) of ``labels``, of this process's last :meth:`write_block` of that window, or else
        of the labels read back from the store.
        """
        payload = {"key": key, **dict(record)}
        window = window if window is not None else _window_of(record)
        if window is not None:
            payload.setdefault("start", list(window.start))
            payload.setdefault("stop", list(window.stop))
            payload["chunks"] = self._block_chunk_keys(window)
            cached = self._digests.pop((window.start, window.stop), None)
            if labels is not None:
                payload["labels_digest"] = labels_digest(labels, self.labels.dtype)
            else:
                payload["labels_digest"] = cached or self.stored_digest(window)
            payload["chunk_digests"] = {
                key: digest for key in payload["chunks"] if (digest := chunk_file_digest(self.path / key)) is not None
            }
        try:
            self._blocks_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self._blocks_dir, exc, what="record blocks in") from exc
        write_json_atomic(self._blocks_dir / f"{_safe_key(key)}.json", payload)

    def block_records(self) -> dict[str, dict[str, Any]]:
        """Every readable block record, by key.

        A record file that is truncated, not a JSON object, or names another block than its file name is skipped
        with a :class:`StoreWarning` naming the file: that block counts as not done, so a rerun recomputes it.
        """
        return {str(rec.pop("key")): rec for rec in self._read_records(self._blocks_dir, "block")}

    def _read_records(
        self, folder: Path, kind: str, *, unreadable: list[tuple[Path, str]] | None = None
    ) -> list[dict[str, Any]]:
        """The readable records in ``folder``; each unreadable one is warned about, or added to ``unreadable``."""
        out: list[dict[str, Any]] = []
        if not folder.is_dir():
            return out
        for file in sorted(folder.glob("*.json")):
            if file.name.startswith("."):
                continue  # another process's record still being written (a temporary beside it, then renamed)
            try:
                rec = _read_json(file)
                if not isinstance(rec, dict):
                    raise ValueError(f"a JSON {type(rec).__name__}, not an object")
                key = rec.get("key", file.stem)
                if kind == "block" and (not isinstance(key, str) or _safe_key(key) != file.stem):
                    raise ValueError(f"it names block {key!r}, not {file.stem!r}")
            except (OSError, ValueError) as exc:
                message = (
                    f"{kind} record {file} is unreadable ({exc}); that {kind} counts as not done and a rerun "
                    f"redoes it."
                )
                if unreadable is None:
                    warnings.warn(StoreWarning(message, file), stacklevel=3)
                else:
                    unreadable.append((file, message))
                continue
            rec.setdefault("key", file.stem)
            out.append(rec)
        return out

    def missing_chunks(self, record: Mapping[str, Any]) -> list[str]:
        """The chunk files a block record lists (or its window implies) that are not on disk; no decoding."""
        keys = record.get("chunks")
        if not isinstance(keys, list):
            window = _window_of(record)
            keys = self._block_chunk_keys(window) if window is not None else []
        return self.missing_chunk_files([str(k) for k in keys])

    def check_blocks(self) -> list[str]:
        """Keys of recorded blocks with a chunk file missing: a cheap check (one stat per chunk, no decoding).

        Pass them to :meth:`invalidate_blocks` so a rerun recomputes them.
        """
        return sorted(key for key, rec in self.block_records().items() if self.missing_chunks(rec))

    # -- trusting block records ------------------------------------------------------------------------
    def block_record_file(self, key: str) -> Path:
        """The file of block ``key``'s record (its file-safe name under ``.tiler/blocks/``)."""
        return self._blocks_dir / f"{_safe_key(key)}.json"

    def _quiet_block_records(self) -> tuple[dict[str, dict[str, Any]], list[tuple[Path, str]]]:
        """The readable block records by key, and ``(file, message)`` of each unreadable one; never warns."""
        unreadable: list[tuple[Path, str]] = []
        recs = self._read_records(self._blocks_dir, "block", unreadable=unreadable)
        return {str(rec.pop("key")): rec for rec in recs}, unreadable

    def block_shape(self, records: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[int, ...] | None:
        """The block shape of the partition the block records follow: ``block_shape`` as the job kept it.

        A store from before it was kept has it inferred from its records' windows (per axis, the block most of
        them agree on); None when no record tells (none, or none with a window and a block key).
        ``records``: what :meth:`block_records` returned, when the caller has read them.
        """
        recorded = _ints(self._attr(BLOCK_SHAPE))
        if recorded is not None and len(recorded) == len(self.shape):
            return recorded
        return _infer_block(self.shape, self._quiet_block_records()[0] if records is None else records)

    def record_problem(
        self, key: str, record: Mapping[str, Any], *, block: Sequence[int] | None = None
    ) -> str | None:
        """Why block record ``key`` cannot be trusted as it reads (no chunk is opened); None when it is sound.

        A sound record has a window (``start``/``stop``, one whole number per axis) inside the store on its chunk
        grid, and, when the partition's ``block`` shape is given, exactly the window of block ``key`` under it; its
        ``chunks`` are that window's chunk files, its ``chunk_digests`` name some of them, its ``labels_digest`` is
        a string, and each field of :data:`RECORD_FIELDS` it has is of its type. A record with no window is
        sound only while the partition is unknown (stores written by hand or by older tilers).

        >>> # store.record_problem("0_1", {"start": [0, 0], "stop": [64, 64]}, block=(64, 64))
        >>> # "its window start=(0, 0) stop=(64, 64) is not block 0_1's (start=(0, 64) stop=(64, 128) ...)"
        """
        shape = self.shape
        start, stop = record.get("start"), record.get("stop")
        if start is None and stop is None:
            return None if block is None else "it names no window (start/stop)"
        if not (isinstance(start, list) and isinstance(stop, list) and _is(start, "ints") and _is(stop, "ints")
                and len(start) == len(stop) == len(shape)):
            return f"start={_short(start)} stop={_short(stop)} must be {len(shape)} whole numbers each"
        try:
            window = Window(tuple(start), tuple(stop))
        except GeometryError as exc:
            return str(exc)
        if not Window.from_shape(shape).contains(window):
            return f"its window start={window.start} stop={window.stop} lies outside the store's shape {shape}"
        unit = self.write_unit
        if any(a % u or (b % u and b != n) for a, b, u, n in zip(window.start, window.stop, unit, shape, strict=True)):
            return f"its window start={window.start} stop={window.stop} is not on the chunk grid {unit}"
        if block is not None:
            partition = BlockPartition(shape, tuple(block))
            position = _position_of(key, len(shape))
            if position is None or any(p >= c for p, c in zip(position, partition.counts, strict=True)):
                return f"{key!r} is not a block of the partition into blocks of {partition.block}"
            expected = partition.window(position)
            if expected != window:
                return (
                    f"its window start={window.start} stop={window.stop} is not block {key}'s (start="
                    f"{expected.start} stop={expected.stop} for blocks of {partition.block})"
                )
        return self._fields_problem(record, window)

    def _fields_problem(self, record: Mapping[str, Any], window: Window) -> str | None:
        """Why the chunk list, digests or typed fields of a record over ``window`` cannot be trusted, or None."""
        chunks = record.get("chunks")
        expected = self._block_chunk_keys(window)
        if chunks is not None and chunks != expected:
            return f"chunks={_short(chunks)} are not the chunk files of its window ({_short(expected)})"
        digests = record.get("chunk_digests")
        if digests is not None and not (
            isinstance(digests, dict) and all(k in expected and isinstance(v, str) for k, v in digests.items())
        ):
            return f"chunk_digests={_short(digests)} must map chunk files of its window to digests"
        if "labels_digest" in record and not isinstance(record["labels_digest"], str):
            return f"labels_digest={_short(record['labels_digest'])} must be a digest string"
        for name, kind in RECORD_FIELDS.items():
            if name in record and not _is(record[name], kind):
                return f"{name}={_short(record[name])} must be {_KINDS[kind]}"
        return None

    def changed_chunks(self, record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """``(chunk, digest now, digest kept)`` of each chunk file whose bytes differ from the record's digest.

        Reads every file the record's ``chunk_digests`` name (no decoding); a missing file is left to
        :meth:`missing_chunks`. Call it on sound records only (:meth:`record_problem`).
        """
        digests = record.get("chunk_digests")
        out = []
        for key, kept in digests.items() if isinstance(digests, dict) else ():
            found = chunk_file_digest(self.path / str(key))
            if found is not None and found != kept:
                out.append((str(key), found, str(kept)))
        return out

    def audit_blocks(
        self, *, block: Sequence[int] | None = None, check: Callable[[Mapping[str, Any]], str | None] | None = None
    ) -> dict[str, str]:
        """Every block whose record cannot be trusted, with why: what ``tiler verify`` checks of blocks, never warning.

        Unreadable record files (by their file name), records that are not sound (:meth:`record_problem` under
        ``block``, default :meth:`block_shape`; then ``check``, the caller's own test of a record's fields, giving
        why or None), chunk files missing, chunk files whose bytes differ from the record's ``chunk_digests``
        (:meth:`changed_chunks`: a chunk swapped for another block's valid one, or rewritten), and, for records
        from before chunk digests, labels whose digest differs from ``labels_digest`` (decoded). Reads every chunk
        file a record vouches for. Hand the keys to :meth:`invalidate_blocks` so a rerun recomputes them.
        """
        records, unreadable = self._quiet_block_records()
        bad = {file.stem: message for file, message in unreadable}
        block = tuple(block) if block is not None else self.block_shape(records)
        for key, rec in records.items():
            why = self.record_problem(key, rec, block=block) or (check(rec) if check else None)
            why = why or self._chunks_problem(rec)
            if why:
                bad[key] = why
        return bad

    def _chunks_problem(self, record: Mapping[str, Any]) -> str | None:
        """Why the chunks a sound record vouches for are not the ones it wrote, or None."""
        missing = self.missing_chunks(record)
        if missing:
            return f"lost chunk files ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        changed = self.changed_chunks(record)
        if changed:
            chunk, found, kept = changed[0]
            return f"chunk file {chunk} hashes to {found}, its record kept {kept} (swapped or rewritten since)"
        window, kept_labels = _window_of(record), record.get("labels_digest")
        if "chunk_digests" in record or window is None or not isinstance(kept_labels, str):
            return None
        try:
            stored = self.stored_digest(window)
        except OutputError as exc:
            return str(exc)
        return None if stored == kept_labels else f"its labels hash to {stored}, its record kept {kept_labels}"

    def incomplete_reason(self, records: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
        """Why the block records do not make up the whole output; None when every block has a sound record.

        Every block of the partition (:meth:`block_shape`) needs a sound record (:meth:`record_problem`; no chunk
        is read). A store whose partition is unknown is judged by its summary's ``blocks_total`` against its
        readable records; one with neither (written by hand, or by an older tiler) cannot be judged: None.
        ``records``: what :meth:`block_records` returned, when the caller has read them.
        """
        if records is None:
            records = self._quiet_block_records()[0]
        block = self.block_shape(records)
        if block is None:
            summary = self._attr("summary")
            total = summary.get("blocks_total") if isinstance(summary, dict) else None
            if type(total) is int and total != len(records):
                return f"its summary counts {total} blocks but {len(records)} block record(s) are readable"
            return None
        partition = BlockPartition(self.shape, block)
        sound = {key for key, rec in records.items() if self.record_problem(key, rec, block=block) is None}
        missing = [key for key in ("_".join(map(str, p)) for p in partition.positions()) if key not in sound]
        if not missing:
            return None
        return (
            f"{len(missing)} of its {len(partition)} blocks (blocks of {partition.block}) have no sound record "
            f"(first: {missing[0]})"
        )

    def invalidate_blocks(self, keys: Sequence[str]) -> int:
        """Forget blocks so a rerun (``tiler run`` with the same config) recomputes them.

        Clears ``complete`` first, retires every export record (:meth:`retire_exports`: the exports were made from
        the old pixels, so none vouches for its file any more, yet each file stays the store's to replace, so the
        rerun writes it again instead of refusing it as someone else's), deletes unreadable export records and
        export intents, then deletes the blocks' records. Returns the number of records deleted.
        """
        keys = list(keys)
        if not keys:
            return 0
        self.clear_complete()
        broken: list[tuple[Path, str]] = []
        exports = self._read_records(self._exports_dir, "export", unreadable=broken)
        self.retire_exports([str(rec["key"]) for rec in exports])
        for file, _ in broken:
            file.unlink(missing_ok=True)
        self.clear_export_intents()
        removed = 0
        for key in keys:
            file = self._blocks_dir / f"{_safe_key(key)}.json"
            if file.exists():
                file.unlink()
                removed += 1
        return removed

    # -- exports and completion ------------------------------------------------------------------------
    def record_export(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        job_hash: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that export ``name`` is in place at ``path`` (atomic JSON under ``.tiler/exports/``).

        Args:
            name: The export (``cog``, ``geojson``, ``report_json``, ...).
            path: Its file.
            job_hash: The config hash of the finishing that lists it among its outputs.
            settings: What the file was drawn with besides the store (:func:`tiler.config.identity.export_settings`);
                a later finishing keeps the file only under the same settings.

        The record keeps the ``digest`` of the file (:func:`~tiler.io.atomic.content_digest`): its intent's (the
        complete temporary the writer moved into place), else the one the standing record of the same file keeps,
        else the file's as it is now; so ``tiler verify`` and :meth:`export_intact` find a file changed since.
        """
        try:
            self._exports_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self._exports_dir, exc, what="record exports in") from exc
        final = str(Path(path).resolve())
        payload: dict[str, Any] = {"key": name, "path": final, "time": time.time(), **_writer()}
        if job_hash is not None:
            payload["job_hash"] = job_hash
        if settings:
            payload["settings"] = dict(settings)
        digest = self._known_digest(name, final)
        if digest is None and os.path.lexists(final):
            try:
                digest = _cached_digest(final)
            except OSError:
                digest = None  # unreadable now: no record vouches for it, so verify and a rerun redo it
        if digest is not None:
            payload["digest"] = digest
        write_json_atomic(self._exports_dir / f"{_safe_key(name)}.json", payload)
        _intent_file(self.path, final).unlink(missing_ok=True)  # the record vouches for the file from here on

    def _known_digest(self, name: str, final: str) -> str | None:
        """The digest of the file at ``final``: its intent's, else the one ``name``'s standing record keeps."""
        intent = self._read_intent(final)
        if intent is not None:
            return str(intent["digest"])
        file = self._exports_dir / f"{_safe_key(name)}.json"
        try:
            rec = _read_json(file)
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("path") != final or rec.get("replacing"):
            return None
        return str(rec["digest"]) if isinstance(rec.get("digest"), str) else None

    # -- export intents --------------------------------------------------------------------------------
    @property
    def _intents_dir(self) -> Path:
        return self.path / STATE_DIR / "intents"

    def _read_intent(self, final: str) -> dict[str, Any] | None:
        try:
            rec = _read_json(_intent_file(self.path, final))
        except (OSError, ValueError):
            return None
        ok = isinstance(rec, dict) and rec.get("path") == final and isinstance(rec.get("digest"), str)
        return rec if ok else None

    def record_export_intent(self, path: str | os.PathLike[str], digest: str) -> None:
        """Record that a file with ``digest`` (:func:`~tiler.io.atomic.content_digest`) is about to appear at ``path``.

        Call just before the complete temporary is moved onto ``path`` (:meth:`intent_recorder` makes the hook
        the writers take); :meth:`record_export` of that path removes the intent again. A job killed in between
        leaves the intent, by which a rerun knows the file as its own while its digest still matches.
        """
        _write_intent(self.path, path, digest)

    def intent_recorder(self) -> IntentRecorder:
        """The ``before_move(tmp, final)`` hook for export writers: digests ``tmp``, records the intent for ``final``.

        >>> # export_cog(store, path, reference=reader, before_move=store.intent_recorder())
        """
        return IntentRecorder(self.path)

    def export_intents(self) -> dict[str, dict[str, Any]]:
        """Every readable export intent, by its final path (resolved); unreadable ones are skipped with a warning."""
        return {
            str(rec["path"]): rec
            for rec in self._read_records(self._intents_dir, "export intent")
            if isinstance(rec.get("path"), str) and isinstance(rec.get("digest"), str)
        }

    def wrote(self, path: str | os.PathLike[str]) -> bool:
        """Whether the file (or folder) now at ``path`` is one this store's finishing wrote, so a rerun may replace it.

        Yes for a path an export record names (whatever its state), and for a path with an export intent whose
        digest equals the content there now (a job killed between moving the file in and recording it). A file
        whose content differs from its intent was put there by someone else and is not the store's.
        """
        real = os.path.realpath(path)
        records = self.export_records().values()
        if any(isinstance(r.get("path"), str) and os.path.realpath(r["path"]) == real for r in records):
            return True
        intent = next((r for p, r in self.export_intents().items() if os.path.realpath(p) == real), None)
        if intent is None or not os.path.lexists(real):
            return False
        try:
            return content_digest(real) == intent["digest"]
        except OSError:
            return False

    def clear_export_intents(self) -> None:
        """Forget every export intent (the files they vouch for are no longer this store's to replace)."""
        for file in self._intents_dir.glob("*.json") if self._intents_dir.is_dir() else []:
            file.unlink(missing_ok=True)

    def retire_exports(self, names: Sequence[str]) -> None:
        """Mark the records of ``names`` as being replaced; call before their files are written again.

        A retired record keeps its path (the file is still one tiler made, so a rerun may replace it) but no
        longer vouches for the file's content: :meth:`exports_done` leaves it out until it is recorded anew,
        so a job killed while replacing a file never keeps it as it is.
        """
        records = self.export_records()
        for name in names:
            rec = records.get(name)
            if rec is not None and isinstance(rec.get("path"), str):
                payload = {"key": name, "path": rec["path"], "time": time.time(), "replacing": True}
                write_json_atomic(self._exports_dir / f"{_safe_key(name)}.json", payload)

    def export_records(self) -> dict[str, dict[str, Any]]:
        """Every readable export record, by export name (unreadable ones are skipped with a StoreWarning)."""
        return {str(rec.pop("key")): rec for rec in self._read_records(self._exports_dir, "export")}

    def exports_done(self, records: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
        """Recorded exports whose file is still in place as recorded (:meth:`export_intact`): name -> absolute path.

        ``records``: what :meth:`export_records` returned, when the caller has already read them.
        """
        records = self.export_records() if records is None else records
        return {name: rec["path"] for name, rec in records.items() if self.export_intact(name, records)}

    def export_intact(self, name: str, records: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
        """Whether export ``name``'s file is in place with the content its record vouches for: a rerun may keep it.

        No for a record being replaced (:meth:`retire_exports`), one without a ``digest``, a file that is gone,
        and a file whose digest differs from the record's (truncated or changed since: a rerun writes it again).
        Each file's digest is computed once per process and file version (same size, times and inode).
        ``records``: what :meth:`export_records` returned, when the caller has already read them.
        """
        rec = (self.export_records() if records is None else records).get(name)
        if rec is None or rec.get("replacing") or not isinstance(rec.get("digest"), str):
            return False
        path = rec.get("path")
        if not isinstance(path, str) or not os.path.lexists(path):
            return False
        try:
            return _cached_digest(path) == rec["digest"]
        except OSError:
            return False

    def mark_complete(
        self, summary: Mapping[str, Any], *, job_hash: str | None = None, attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Write the summary, the finishing's ``job_hash`` and set ``complete`` in one atomic rewrite of zarr.json.

        Call last, after every block record, export and report is in place.

        Args:
            summary: The job's figures (blocks, tiles, seconds).
            job_hash: The config hash of the finishing (:func:`tiler.config.config_hash`); None: the store's
                pixels hash (a job that writes nothing beside the store).
            attrs: Other attributes of this finishing written in the same rewrite (its redacted ``config``).

        Raises:
            OutputError: a recorded block's chunk file is missing, or (in a store that keeps its ``block_shape``) a
                block of the partition has no sound record: the store would claim pixels it lacks.

        """
        broken = self.check_blocks()
        if broken:
            raise OutputError(
                f"output store {self.path} cannot be marked complete: {len(broken)} recorded block(s) have chunk "
                f"files missing (first: {broken[0]}). Rerun the job to recompute them."
            )
        missing = self.incomplete_reason() if _ints(self._attr(BLOCK_SHAPE)) is not None else None
        if missing:
            raise OutputError(
                f"output store {self.path} cannot be marked complete: {missing}. Rerun the job to compute them."
            )
        finishing = {**dict(attrs or {}), "summary": dict(summary), "job_hash": job_hash or self.pixels_hash}
        self._update_attrs({**finishing, "complete": True})

    def clear_complete(self) -> None:
        """Clear ``complete`` and the finishing's ``job_hash`` in one atomic rewrite of zarr.json (no-op if unset).

        Call before anything beside the store changes (a finishing with other exports or scores), so a job
        killed half-way leaves a store that does not look finished.
        """
        if self.complete_flag or self._attr("job_hash") is not None:
            self._update_attrs({"complete": False}, remove=("job_hash",))

    # -- job lock --------------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """The lock file, beside the store: ``<parent>/.<name>.lock``."""
        return lock_path_for(self.path)

    def acquire_lock(self, owner: str) -> None:
        """Take the job lock (see :func:`acquire_store_lock`); re-entrant, stale locks are taken over."""
        acquire_store_lock(self.path, owner)

    def release_lock(self) -> None:
        """Drop this process's hold of the job lock (see :func:`release_store_lock`)."""
        release_store_lock(self.path)

    def __repr__(self) -> str:
        return (
            f"OutputStore({str(self.path)!r}, shape={self.shape}, chunks={self.chunks}, "
            f"complete={self.complete_flag})"
        )


def _build_group(
    root: Path,
    meta: Mapping[str, Any],
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    shards: Sequence[int] | None,
    dtype: np.dtype,
    nodata_label: int,
    num_classes: int,
    probabilities: str | None,
) -> None:
    """Write a whole store into the empty folder ``root``: group with every attribute, arrays, state folders.

    Besides ``labels`` (and ``probabilities``) the group holds what xarray and rioxarray read (see
    :func:`_coordinate_arrays`): one coordinate array per spatial axis and, for a georeferenced raster, a scalar
    ``spatial_ref`` array carrying the CRS and the GDAL GeoTransform.
    """
    georef = Georef.from_attrs(meta.get("georef"))
    coords = _coordinate_arrays(georef, shape)
    attrs = dict(meta)
    if georef.transform is not None:
        attrs["georef_transform_order"] = TRANSFORM_ORDER
    group = zarr.open_group(str(root), mode="w", zarr_format=3, attributes=attrs)
    data_attrs = _data_var_attrs(georef)
    group.create_array(
        "labels",
        shape=shape,
        chunks=chunks,
        shards=tuple(shards) if shards else None,
        dtype=dtype,
        fill_value=nodata_label,
        compressors=_codecs(),
        dimension_names=_dim_names(len(shape)),
        config=_ARRAY_CONFIG,
        attributes=data_attrs,
    )
    if probabilities is not None:
        group.create_array(
            "probabilities",
            shape=(num_classes, *shape),
            chunks=(num_classes, *chunks),
            shards=(num_classes, *shards) if shards else None,
            dtype=PROBABILITY_DTYPES[probabilities],
            fill_value=0,
            compressors=_codecs(),
            dimension_names=("c", *_dim_names(len(shape))),
            config=_ARRAY_CONFIG,
            attributes=data_attrs,
        )
    for name, (values, dims, array_attrs) in coords.items():
        arr = group.create_array(
            name, shape=values.shape, dtype=values.dtype, dimension_names=dims, attributes=array_attrs,
            fill_value=0,
        )
        arr[...] = values
    for sub in ("blocks", "exports"):
        (root / STATE_DIR / sub).mkdir(parents=True, exist_ok=True)


_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def _cached_digest(path: str) -> str:
    """:func:`~tiler.io.atomic.content_digest` of ``path``, computed once per process for a file's version.

    A file's version is its path, device, inode, size and modification and change times (the change time cannot
    be set back by hand); a folder is digested every time.

    Raises:
        OSError: ``path`` cannot be read.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        return content_digest(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        if len(_DIGESTS) > 256:
            _DIGESTS.clear()
        digest = _DIGESTS[key] = content_digest(path)
    return digest


def _writer() -> dict[str, Any]:
    """Who writes a record: this process's ``pid`` and ``host``."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _intent_file(store: Path, final: str) -> Path:
    """The intent record of the resolved path ``final``: its file-safe name, then a short hash of the whole path."""
    tag = hashlib.sha1(final.encode()).hexdigest()[:10]
    return store / STATE_DIR / "intents" / f"{_safe_key(Path(final).name)}-{tag}.json"


def _write_intent(store: Path, path: str | os.PathLike[str], digest: str) -> None:
    """Write the intent record of ``path`` in the store at ``store`` (see :meth:`OutputStore.record_export_intent`)."""
    final = str(Path(path).resolve())
    file = _intent_file(store, final)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(file.parent, exc, what="record export intents in") from exc
    write_json_atomic(file, {"path": final, "digest": digest, "time": time.time(), **_writer()})


@dataclass(frozen=True)
class IntentRecorder:
    """The ``before_move(tmp, final)`` hook of export writers for the store at ``store`` (picklable).

    Digests the complete temporary (:func:`~tiler.io.atomic.content_digest`) and records it as the intent for
    ``final`` (:meth:`OutputStore.record_export_intent`), before the writer moves it into place.
    """

    store: Path

    def __call__(self, tmp: Path, final: Path) -> None:
        """Record the intent for ``final`` with the digest of ``tmp``."""
        _write_intent(self.store, final, content_digest(tmp))


TRANSFORM_ORDER = "a b c d e f: x = a*col + b*row + c, y = d*col + e*row + f (GDAL GeoTransform: c a b f d e)"
"""How ``georef.transform`` is ordered (rasterio's Affine order), stated in every store that has one."""

GRID_MAPPING = "spatial_ref"


def _data_var_attrs(georef: Georef) -> dict[str, Any]:
    """Attributes of labels and probabilities: the CF grid mapping rioxarray follows to the CRS."""
    if georef.kind != "raster" or georef.transform is None:
        return {}
    return {"grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING}


def _coordinate_arrays(
    georef: Georef, shape: Sequence[int]
) -> dict[str, tuple[np.ndarray, tuple[str, ...], dict[str, Any]]]:
    """Coordinate arrays xarray attaches to the spatial dimensions: name -> (values, dimension names, attrs).

    - raster with a north-up transform: ``x``/``y`` are pixel-centre coordinates in the CRS
      (``x = c + a * (col + 0.5)``, ``y = f + e * (row + 0.5)``), plus the scalar ``spatial_ref`` whose
      ``crs_wkt``/``spatial_ref`` (CF / GDAL) and ``GeoTransform`` rioxarray reads; a rotated transform gets
      ``spatial_ref`` only (rioxarray reads the transform from it);
    - slide: ``x``/``y`` in micrometres from the slide's top-left corner to pixel centres (``mpp``);
    - volume: ``z``/``y``/``x`` in millimetres from the first voxel's centre (``spacing``);
    - no georeferencing: none (xarray then indexes by position).
    """
    ndim = len(shape)
    names = _dim_names(ndim)
    out: dict[str, tuple[np.ndarray, tuple[str, ...], dict[str, Any]]] = {}
    if georef.kind == "raster" and georef.transform is not None:
        a, b, c, d, e, f = georef.transform[:6]
        if b == 0 and d == 0:
            out["y"] = (f + e * (np.arange(shape[0]) + 0.5), ("y",), {"axis": "Y", "long_name": "pixel centre y"})
            out["x"] = (c + a * (np.arange(shape[1]) + 0.5), ("x",), {"axis": "X", "long_name": "pixel centre x"})
        ref: dict[str, Any] = {"GeoTransform": " ".join(repr(v) for v in (c, a, b, f, d, e))}
        if georef.crs_wkt:
            ref.update(crs_wkt=georef.crs_wkt, spatial_ref=georef.crs_wkt)
        out[GRID_MAPPING] = (np.zeros((), np.int32), (), ref)
    elif georef.kind == "slide" and georef.mpp:
        for name, n in zip(names, shape, strict=True):
            attrs = {"units": "micrometer", "long_name": f"pixel centre {name} from the top-left corner"}
            out[name] = ((np.arange(n) + 0.5) * georef.mpp, (name,), attrs)
    elif georef.kind == "volume" and georef.spacing and len(georef.spacing) == ndim:
        for name, n, step in zip(names, shape, georef.spacing, strict=True):
            attrs = {"units": "millimeter", "long_name": f"voxel centre {name} from the first voxel's centre"}
            out[name] = (np.arange(n) * step, (name,), attrs)
    return out


def _window_of(record: Mapping[str, Any]) -> Window | None:
    start, stop = record.get("start"), record.get("stop")
    if not isinstance(start, list | tuple) or not isinstance(stop, list | tuple):
        return None
    try:
        return Window(tuple(int(a) for a in start), tuple(int(b) for b in stop))
    except (TypeError, ValueError):
        return None


_KINDS = {
    "int": "a whole number", "number": "a number", "ints": "a list of whole numbers",
    "int rows": "a list of lists of whole numbers",
}


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


def _position_of(key: str, ndim: int) -> tuple[int, ...] | None:
    """The per-axis position a block key names (``"1_2"`` -> ``(1, 2)``), or None when it names none."""
    parts = key.split("_")
    if len(parts) != ndim or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _infer_block(shape: Sequence[int], records: Mapping[str, Mapping[str, Any]]) -> tuple[int, ...] | None:
    """The block shape most records agree on per axis (block ``p`` starts at ``p * block``), or None."""
    votes: list[Counter[int]] = [Counter() for _ in shape]
    for key, rec in records.items():
        position, window = _position_of(key, len(shape)), _window_of(rec)
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


def chunk_file_digest(path: str | os.PathLike[str]) -> str | None:
    """The digest a block record keeps of a chunk file: crc32 of its bytes as stored; None when there is no file.

    The bytes as stored (compressed, with their checksum), so two chunks differ whenever their pixels do, and a
    chunk file swapped for another block's (valid, checksummed) one is told apart without decoding it. A file
    that cannot be read gets a digest no record keeps (``unreadable: ...``).
    """
    crc = 0
    try:
        with open(path, "rb") as f:
            while data := f.read(1 << 20):
                crc = zlib.crc32(data, crc)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return f"crc32:{crc:08x}"


def _bounds(slices: Sequence[slice], shape: Sequence[int]) -> Window:
    """The box ``slices`` (steps allowed) reads from an array of spatial ``shape``."""
    starts, stops = [], []
    for s, n in zip(slices, shape, strict=True):
        a, b, _ = s.indices(n)
        starts.append(a)
        stops.append(max(b, a + 1))
    return Window(tuple(starts), tuple(stops))


def _stored_unit(arr: zarr.Array) -> tuple[int, ...]:
    """The shape of one stored file of ``arr``: the shard when sharded, else the chunk."""
    shards = getattr(arr, "shards", None)
    return tuple(shards) if shards else tuple(arr.chunks)


def _encode_key(arr: zarr.Array, coords: Sequence[int]) -> str:
    encoding = getattr(arr.metadata, "chunk_key_encoding")  # noqa: B009 (v3 metadata only)
    return str(encoding.encode_chunk_key(tuple(coords)))


def _chunk_windows(arr: zarr.Array, bounds: Window) -> Iterator[tuple[tuple[int, ...], Window]]:
    """``(grid coords, spatial window)`` of every stored file of ``arr`` that spatial ``bounds`` touches."""
    import itertools

    unit = _stored_unit(arr)
    spatial_unit = unit[-bounds.ndim :]
    lead = (0,) * (len(unit) - bounds.ndim)
    shape = tuple(arr.shape)[-bounds.ndim :]
    ranges = [
        range(a // u, -(-b // u)) for a, b, u in zip(bounds.start, bounds.stop, spatial_unit, strict=True)
    ]
    for idx in itertools.product(*ranges):
        start = tuple(i * u for i, u in zip(idx, spatial_unit, strict=True))
        stop = tuple(min(a + u, n) for a, u, n in zip(start, spatial_unit, shape, strict=True))
        yield (*lead, *idx), Window(start, stop)


def _chunk_keys_of(arr: zarr.Array, window: Window) -> list[str]:
    return [_encode_key(arr, coords) for coords, _ in _chunk_windows(arr, window)]


def _dim_names(ndim: int) -> tuple[str, ...]:
    return ("z", "y", "x")[-ndim:] if ndim <= 3 else tuple(f"d{i}" for i in range(ndim))
