"""The store's layout: where its files lie (state folders, chunk files) and which metadata a job can have written.

Layout of ``<parent>/``::

    .<name>.lock                  the job lock (exclusive create), see :mod:`tiler.io.lock`
    <name>/zarr.json              group attributes (:mod:`.group`, :mod:`.store`) and the inline consolidated
                                  metadata of every array (what xarray reads without listing folders)
    <name>/labels/, probabilities/, x, y (, z), spatial_ref        the arrays (:mod:`.build`, :mod:`.coords`)
    <name>/.tiler/blocks/<key>.json      one record per finished block (:mod:`.records`)
    <name>/.tiler/exports/<n>.json       one record per finished export (:mod:`.exports`)
    <name>/.tiler/intents/<f>.json       one record per export file about to be moved into place

Chunk files are named by zarr's chunk key encoding relative to the store (``labels/c/0/1``); a store's arrays
share one spatial grid of stored files (:class:`StoreGrid`), the shard shape when sharded, else the chunk shape.
Arrays are indexed (row, col) / (z, y, x); probabilities carry the class axis first, ``(K, *shape)``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from tiler.errors import OutputError
from tiler.geometry import Window
from tiler.io.objects import AnyPath, PathArg, as_path

__all__ = [
    "BLOCK_SHAPE", "MAX_STORED_FILES", "MAX_UNIT_BYTES", "STATE_DIR", "STORE_FORMAT", "STORE_MARKER", "ArrayGrid",
    "StoreGrid", "array_geometry", "check_store_metadata", "read_json", "safe_key", "selection_bounds",
    "whole_numbers",
]  # fmt: skip

STATE_DIR = ".tiler"
"""The folder of the store's own records (blocks, exports, intents), beside its arrays."""
STORE_MARKER = "tiler_store"
"""Group attribute marking a store written with chunk checksums and every block chunk stored."""
STORE_FORMAT = 1
"""The value of :data:`STORE_MARKER` this tiler writes."""
BLOCK_SHAPE = "block_shape"
"""Group attribute: the block shape of the partition the store's block records follow."""
MAX_STORED_FILES = 10**8
"""Most chunk (shard) files one array of a store may declare: more is metadata no real store has."""
MAX_UNIT_BYTES = 2**34
"""Largest decoded chunk (shard) one array of a store may declare, in bytes: verify reads one at a time."""


def safe_key(key: str) -> str:
    """``key`` as a file name: every character but letters, digits, ``-``, ``_`` and ``.`` becomes ``_``.

    >>> safe_key("(0, 1)")
    '_0__1_'
    """
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(key))


def read_json(path: AnyPath) -> Any:
    """The JSON value in the file at ``path``.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not JSON.

    """
    return json.loads(path.read_bytes())


def whole_numbers(value: Any) -> tuple[int, ...] | None:
    """``value`` as whole numbers of at least 1 (JSON integers, never booleans or floats), else None.

    >>> whole_numbers([64, 64]), whole_numbers([64, 0]), whole_numbers([True])
    ((64, 64), None, None)
    """
    if not isinstance(value, list) or not all(type(v) is int and v >= 1 for v in value):
        return None
    return tuple(value)


def selection_bounds(slices: Sequence[slice], shape: Sequence[int]) -> Window:
    """The box ``slices`` (steps allowed) reads from an array of spatial ``shape``."""
    starts, stops = [], []
    for s, n in zip(slices, shape, strict=True):
        a, b, _ = s.indices(n)
        starts.append(a)
        stops.append(max(b, a + 1))
    return Window(tuple(starts), tuple(stops))


# -- the grid of stored files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArrayGrid:
    """The stored files of one array: a box per file over the array's spatial axes, and the file's key.

    Attributes:
        name: The array's name in the store (``labels``, ``probabilities``).
        shape: The array's whole shape, ``(*shape)`` or ``(K, *shape)``.
        unit: The shape of one stored file (the shard when sharded, else the chunk), same axes as ``shape``.
        encoding: zarr's chunk key encoding of the array (grid coordinates -> key).
    """

    name: str
    shape: tuple[int, ...]
    unit: tuple[int, ...]
    encoding: Any

    @classmethod
    def of(cls, name: str, arr: zarr.Array) -> ArrayGrid:
        """The grid of the zarr v3 array ``arr`` stored as ``name``."""
        shards = getattr(arr, "shards", None)
        unit = tuple(shards) if shards else tuple(arr.chunks)
        encoding = getattr(arr.metadata, "chunk_key_encoding")  # noqa: B009 (v3 metadata only)
        return cls(name, tuple(arr.shape), unit, encoding)

    def key(self, coords: Sequence[int]) -> str:
        """The file of grid position ``coords`` relative to the store (``labels/c/0/1``)."""
        return f"{self.name}/{self.encoding.encode_chunk_key(tuple(coords))}"

    def files(self, bounds: Window) -> Iterator[tuple[str, Window]]:
        """``(key, spatial window)`` of every stored file that the spatial box ``bounds`` touches, in grid order."""
        spatial = self.unit[-bounds.ndim :]
        lead = (0,) * (len(self.unit) - bounds.ndim)
        shape = self.shape[-bounds.ndim :]
        ranges = [range(a // u, -(-b // u)) for a, b, u in zip(bounds.start, bounds.stop, spatial, strict=True)]
        for idx in itertools.product(*ranges):
            start = tuple(i * u for i, u in zip(idx, spatial, strict=True))
            stop = tuple(min(a + u, n) for a, u, n in zip(start, spatial, shape, strict=True))
            yield self.key((*lead, *idx)), Window(start, stop)

    def keys(self, window: Window) -> list[str]:
        """The keys of the stored files the spatial ``window`` touches."""
        return [key for key, _ in self.files(window)]

    def selection(self, window: Window) -> tuple[slice, ...]:
        """The index of spatial ``window`` in this array (all classes of probabilities)."""
        lead = (slice(None),) * (len(self.shape) - window.ndim)
        return (*lead, *window.slices)


@dataclass(frozen=True)
class StoreGrid:
    """The grid of stored files every array of a store shares.

    Attributes:
        shape: The spatial shape of the output, (H, W) or (D, H, W).
        arrays: One :class:`ArrayGrid` per array, labels first.
    """

    shape: tuple[int, ...]
    arrays: tuple[ArrayGrid, ...]

    @classmethod
    def of(cls, arrays: Mapping[str, zarr.Array]) -> StoreGrid:
        """The grid of a store's ``arrays`` (name -> array, ``labels`` first)."""
        grids = tuple(ArrayGrid.of(name, arr) for name, arr in arrays.items())
        return cls(grids[0].shape, grids)

    @property
    def write_unit(self) -> tuple[int, ...]:
        """The smallest independently writable box: the labels' shard shape when sharded, else their chunk shape."""
        return self.arrays[0].unit

    def array(self, name: str) -> ArrayGrid | None:
        """The grid of array ``name``, or None when the store has no such array."""
        return next((a for a in self.arrays if a.name == name), None)

    def chunk_keys(self, window: Window, array: str | None = None) -> list[str]:
        """The stored files of ``array`` (default: of every array, as a block writes them) ``window`` touches."""
        return [key for a in self.arrays if array in (None, a.name) for key in a.keys(window)]

    def on_grid(self, window: Window) -> bool:
        """Whether ``window`` covers whole write units (its end may be the output's edge instead)."""
        return not any(
            a % u or (b % u and b != n)
            for a, b, u, n in zip(window.start, window.stop, self.write_unit, self.shape, strict=True)
        )


# -- metadata a job can have written ------------------------------------------------------------------------
def _bad_metadata(file: AnyPath, field: str, value: Any, why: str) -> OutputError:
    """The one-line OutputError for a metadata ``field`` of ``file`` holding ``value`` (shortened), with the fix."""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return OutputError(
        f"{file}: {field}={shown} {why}; the store's metadata is damaged or was edited by hand. Fix: rerun the job "
        "with --overwrite to rebuild the store (or restore that file from a backup)."
    )


def _check_sharding(file: AnyPath, meta: Mapping[str, Any], unit: tuple[int, ...]) -> None:
    """Refuse inner chunks that do not divide the shard ``unit``, or that cut a shard into more than 2**20."""
    codecs = meta.get("codecs")
    for codec in codecs if isinstance(codecs, list) else []:
        if isinstance(codec, dict) and codec.get("name") == "sharding_indexed":
            sharding = codec.get("configuration")
            inner_raw = sharding.get("chunk_shape") if isinstance(sharding, dict) else None
            inner = whole_numbers(inner_raw)
            if inner is None or len(inner) != len(unit) or any(u % c for u, c in zip(unit, inner, strict=True)):
                raise _bad_metadata(file, "sharding_indexed chunk_shape", inner_raw,
                                    f"must be whole numbers of at least 1 dividing the shard shape {list(unit)}")
            if math.prod(u // c for u, c in zip(unit, inner, strict=True)) > 2**20:
                raise _bad_metadata(file, "sharding_indexed chunk_shape", inner_raw,
                                    f"cuts each shard {list(unit)} into more than 2**20 chunks")


def array_geometry(file: AnyPath) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The shape and stored-file shape (the shard when sharded, else the chunk) an array's ``zarr.json`` declares.

    None when there is no such file (zarr names what is missing). What no real store declares is refused before
    zarr allocates anything or anyone walks the chunk grid: shapes and chunk shapes that are not whole numbers of
    at least 1, more than :data:`MAX_STORED_FILES` chunk files, a chunk over :data:`MAX_UNIT_BYTES` decoded.

    Raises:
        OutputError: one line naming ``file``, the field, its value and the fix.

    """
    try:
        meta = read_json(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _bad_metadata(file, "contents", str(exc), "cannot be read as JSON") from None
    if not isinstance(meta, dict):
        raise _bad_metadata(file, "contents", meta, "is not a JSON object")
    shape = whole_numbers(meta.get("shape"))
    if shape is None or not 1 <= len(shape) <= 4:
        raise _bad_metadata(file, "shape", meta.get("shape"), "must be 1 to 4 whole numbers, each at least 1")
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    raw = config.get("chunk_shape") if isinstance(config, dict) else None
    unit = whole_numbers(raw)
    if unit is None or len(unit) != len(shape):
        raise _bad_metadata(file, "chunk_grid.configuration.chunk_shape", raw,
                            f"must be {len(shape)} whole numbers of at least 1 (one per axis of shape {list(shape)})")
    _check_sharding(file, meta, unit)
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


def check_store_metadata(path: PathArg) -> None:
    """Refuse a store whose metadata no job writes, before zarr or anything else reads its arrays.

    Checks the labels' and probabilities' ``zarr.json`` (see :func:`array_geometry`), that the probabilities are
    ``(K, *shape)`` chunked ``(K, *chunks)`` like the labels, and the group's ``num_classes``, ``nodata_label``
    and ``block_shape``. (The store opens its arrays from these files, never from the consolidated copy in the
    group's ``zarr.json``, which only other readers such as xarray use.)

    Raises:
        OutputError: one line naming the file, the field, its value and the fix.

    """
    path = as_path(path)
    labels_file, probs_file = path / "labels" / "zarr.json", path / "probabilities" / "zarr.json"
    labels = array_geometry(labels_file)
    if labels is None:
        return
    shape, unit = labels
    if len(shape) not in (2, 3):
        raise _bad_metadata(labels_file, "shape", list(shape), "must have 2 or 3 axes (an image or a volume)")
    probs = array_geometry(probs_file)
    if probs is not None and (probs[0][1:] != shape or probs[1][1:] != unit or probs[1][0] != probs[0][0]):
        raise _bad_metadata(probs_file, "shape", [list(probs[0]), list(probs[1])],
                            f"must be (K, *{list(shape)}) chunked (K, *{list(unit)}) like the labels")
    try:
        meta = read_json(path / "zarr.json")
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
    if block is not None and (whole_numbers(block) is None or len(block) != len(shape)):
        raise _bad_metadata(path / "zarr.json", f"attributes.{BLOCK_SHAPE}", block,
                            f"must be {len(shape)} whole numbers, each at least 1 (the job's tiling.block)")
