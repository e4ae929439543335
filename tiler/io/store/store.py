"""The output store: one zarr v3 group holding labels, optional probabilities, georeferencing and job state.

:class:`OutputStore` creates or resumes a store, rewrites its attributes atomically, reads and writes its pixels
and owns the ``complete`` flag; each other concern lives in its own module of :mod:`tiler.io.store` and the store
delegates to it (layout and metadata checks, chunks, block records and their audit, export records, xarray
coordinates, the group's identity). The ``complete`` attribute is written last, by
:meth:`OutputStore.mark_complete`, and cleared first, by :meth:`OutputStore.clear_complete`, when a job with the
same pixels but another finishing (exports, scores) finishes the store again; it is believed only while every block
of the partition has a sound record (:attr:`OutputStore.complete`). Block records are separate files because zarr
attribute updates from several processes would race.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import zarr

from tiler.errors import OutputError
from tiler.geometry import Window
from tiler.io.base import Georef
from tiler.io.lock import acquire_store_lock, check_not_locked, lock_path_for, release_store_lock
from tiler.io.objects import AnyPath, ObjectPath, PathArg, as_path, lexists, zarr_store
from tiler.io.store.audit import BlockLedger
from tiler.io.store.build import check_create_args, new_store, unfinished_build
from tiler.io.store.chunks import (
    ARRAY_CONFIG,
    check_aligned,
    corrupt_chunk_error,
    labels_digest,
    missing_files,
    read_checked,
    stored_labels_digest,
    write_window,
)
from tiler.io.store.exports import ExportLedger, IntentRecorder, write_intent
from tiler.io.store.group import (
    finished_job_hash,
    group_attrs,
    holds_pixels_of,
    is_tiler_store,
    not_a_store,
    open_store_group,
    resume_group,
    rewrite_attrs,
)
from tiler.io.store.layout import BLOCK_SHAPE, STORE_FORMAT, STORE_MARKER, StoreGrid
from tiler.io.store.records import StoredBlock, window_of
from tiler.palette import default_colors

__all__ = ["OutputStore"]

AnyRecord = Mapping[str, Any] | StoredBlock  # a block record as read (block_records) or typed (stored_blocks)


class OutputStore:
    """A zarr v3 output store; create it with :meth:`create`, re-open it with :meth:`open`."""

    def __init__(self, path: PathArg, group: zarr.Group) -> None:
        self.path = as_path(path)
        self.group = group
        self._digests: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {}
        self._grid: StoreGrid | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    is_tiler_store = staticmethod(is_tiler_store)

    @classmethod
    def create(
        cls,
        path: PathArg,
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
        into place (:func:`~tiler.io.store.build.build_group`), so a killed creation leaves no half store. Take
        :func:`~tiler.io.lock.store_lock` first when several jobs may target the same path.

        Args:
            path: Store directory.
            shape: Spatial output shape (H, W) or (D, H, W).
            num_classes: Number of classes K.
            chunks: Chunk shape per spatial axis.
            nodata_label: Label of pixels with no prediction (the labels' fill value). The labels' dtype is
                :func:`tiler.label_rules.labels_dtype` of ``num_classes`` and this label: uint8 when every class and
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
        path = as_path(path)
        shape = tuple(int(n) for n in shape)
        chunks = tuple(int(c) for c in chunks)
        check_create_args(path, shape, chunks, block, probabilities)
        replace = lexists(path)
        if replace and isinstance(path, ObjectPath) and unfinished_build(path):
            path.remove_tree()  # a creation killed mid-upload: array metadata without the group, no pixel yet
            replace = False
        if replace:
            if not is_tiler_store(path):
                raise not_a_store(path)
            if not overwrite:
                cls.open(path)  # refuses metadata no job writes before anything is changed
                resume_group(path, pixels_hash, job_hash, block)
                return cls.open(path)
            check_not_locked(path)
        new_store(
            path, shape=shape, num_classes=num_classes, chunks=chunks, nodata_label=nodata_label,
            probabilities=probabilities, attrs=attrs, pixels_hash=pixels_hash, shards=shards, block=block,
            replace=replace,
        )  # fmt: skip
        return cls.open(path)

    @classmethod
    def open(cls, path: PathArg, *, mode: Literal["r", "r+"] = "r+") -> OutputStore:
        """Open an existing store (``mode="r"`` for read-only consumers such as exports).

        Raises:
            OutputError: ``path`` is missing or is not a tiler store, or its metadata declares shapes no job writes
                (:func:`~tiler.io.store.layout.check_store_metadata`).

        """
        return cls(as_path(path), open_store_group(as_path(path), mode))

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
        return self.group["labels"].with_config(ARRAY_CONFIG)  # type: ignore[union-attr,return-value]

    @property
    def probabilities(self) -> zarr.Array | None:
        """The probabilities array (K, *shape), or None."""
        if "probabilities" not in self.group:
            return None
        return self.group["probabilities"].with_config(ARRAY_CONFIG)  # type: ignore[union-attr,return-value]

    def arrays(self) -> dict[str, zarr.Array]:
        """The store's arrays by name: ``labels`` and, when stored, ``probabilities``."""
        probs = self.probabilities
        return {"labels": self.labels, **({"probabilities": probs} if probs is not None else {})}

    @property
    def grid(self) -> StoreGrid:
        """The grid of stored (chunk or shard) files every array shares."""
        if self._grid is None:
            self._grid = StoreGrid.of(self.arrays())
        return self._grid

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
        return self.grid.write_unit

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
        """The config hash of the finishing that wrote the exports and reports; None while not complete."""
        return finished_job_hash(self.path)

    def holds_pixels_of(self, pixels_hash: str, job_hash: str | None = None) -> bool:
        """Whether this store's arrays are what a job with ``pixels_hash`` (and config hash ``job_hash``) writes."""
        return holds_pixels_of(self.attrs, pixels_hash, job_hash)

    @property
    def complete_flag(self) -> bool:
        """Whether the ``complete`` flag is set in zarr.json (read from disk); believe :attr:`complete` instead."""
        attrs = group_attrs(self.path)
        return attrs is not None and attrs.get("complete") is True

    @property
    def complete(self) -> bool:
        """Whether the store is finished: the ``complete`` flag is set and every block has a sound record.

        A flag over missing blocks is not believed (:meth:`incomplete_reason`; reads the records, never a chunk).
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
        rewrite_attrs(self.path, changes, remove=remove)
        self.group = zarr.open_group(zarr_store(self.path), mode="r+", zarr_format=3, use_consolidated=False)

    # -- chunks (:mod:`tiler.io.store.chunks`) ---------------------------------------------------------
    def chunk_keys(self, window: Window, *, array: str = "labels") -> list[str]:
        """The stored chunk files (shard files when sharded) that ``window`` touches, relative to the store.

        >>> # for a (100, 120) store with (32, 32) chunks:  store.chunk_keys(Window((0, 32), (32, 64)))
        >>> # ['labels/c/0/1']
        """
        return self.grid.chunk_keys(window, array) if self.grid.array(array) is not None else []

    def chunk_grid(self, array: str = "labels") -> Iterator[tuple[str, Window]]:
        """Every stored chunk (shard) file of ``array``: ``(key relative to the store, spatial window)``."""
        grid = self.grid.array(array)
        if grid is not None:
            yield from grid.files(Window.from_shape(self.shape))

    def missing_chunk_files(self, keys: Sequence[str]) -> list[str]:
        """Those of ``keys`` (paths relative to the store) with no file on disk; no decoding."""
        return missing_files(self.path, keys)

    def read(self, selection: Window | Sequence[slice], *, array: str = "labels") -> np.ndarray:
        """Read spatial ``selection`` (a window, or one slice per spatial axis, steps allowed) of an array.

        Returns ``(*sel)`` for labels, ``(K, *sel)`` for probabilities. Corruption is never read as pixels:

        Raises:
            OutputError: a chunk fails its checksum or cannot be decoded, or (in a complete store written with
                checksums) a chunk file is missing; the message names the chunk and the store.

        """
        arr, grid = self.arrays().get(array), self.grid.array(array)
        if arr is None or grid is None:
            raise OutputError(f"output store {self.path} has no {array!r} array.")
        kept = self.has_checksums and self.complete_flag
        return read_checked(self.path, arr, grid, selection, files_kept=kept)

    def corrupt_chunk_error(self, key: str, reason: str) -> OutputError:
        """The OutputError for an unreadable chunk ``key`` (relative to the store), with the fix."""
        return corrupt_chunk_error(self.path, key, reason)

    def check_aligned(self, window: Window) -> None:
        """Raise OutputError unless ``window`` covers whole write units (chunks, or shards when sharded)."""
        check_aligned(self.path, self.grid, window)

    def write_block(self, window: Window, labels: np.ndarray, probabilities: np.ndarray | None = None) -> None:
        """Overwrite exactly ``window`` (chunk-aligned) with labels (*window.shape), probs (K, ...).

        Every chunk of the window is stored (even all fill); the labels' digest is kept for :meth:`record_block`.
        """
        self.check_aligned(window)
        digest = write_window(self.path, window, labels, probabilities, arrays=(self.labels, self.probabilities))
        self._digests[(window.start, window.stop)] = digest

    def stored_digest(self, window: Window) -> str:
        """The digest of the labels stored in ``window``, read slab by slab (bounded memory).

        Raises:
            OutputError: a chunk of the window is corrupt (see :meth:`read`).

        """
        return stored_labels_digest(self.read, window, step=self.write_unit[0], dtype=self.labels.dtype)

    # -- block records (:mod:`tiler.io.store.records`, :mod:`tiler.io.store.audit`) ---------------------
    @property
    def blocks(self) -> BlockLedger:
        """The block ledger: records written, read back typed and audited against the chunk files."""
        return BlockLedger(self.path, self.grid, kept_block=self._attr(BLOCK_SHAPE), stored_digest=self.stored_digest)

    def record_block(
        self, key: str, record: Mapping[str, Any], window: Window | None = None, *, labels: np.ndarray | None = None
    ) -> None:
        """Record a finished block (one JSON file per block, atomic; safe from many processes).

        With a ``window`` (or ``start``/``stop`` in ``record``) the record also keeps the chunk files the block wrote
        and their digests (:meth:`~tiler.io.store.audit.BlockLedger.record`), and the ``labels_digest`` of
        ``labels``, of this process's last :meth:`write_block` of that window, or else of the labels as stored.
        """
        window = window if window is not None else window_of(record)
        digest = None
        if window is not None:
            cached = self._digests.pop((window.start, window.stop), None)
            if labels is not None:
                digest = labels_digest(labels, self.labels.dtype)
            else:
                digest = cached or self.stored_digest(window)
        self.blocks.record(key, record, window, labels_digest=digest)

    def block_records(self) -> dict[str, dict[str, Any]]:
        """Every readable block record as stored (without its ``key``), by key.

        An unreadable one is skipped with a :class:`~.records.StoreWarning` (that block counts as not done).
        """
        return self.blocks.read()

    def stored_blocks(self, *, block: Sequence[int] | None = None) -> dict[str, StoredBlock]:
        """The sound block records typed, by key, under the partition's ``block`` (default :meth:`block_shape`)."""
        return self.blocks.typed(block=block)

    @staticmethod
    def record_window(record: AnyRecord) -> Window | None:
        """The window a block record covers (its ``start``/``stop``), or None when it names none."""
        return window_of(record)

    def block_record_file(self, key: str) -> AnyPath:
        """The file of block ``key``'s record (its file-safe name under ``.tiler/blocks/``)."""
        return self.blocks.file(key)

    def missing_chunks(self, record: AnyRecord) -> list[str]:
        """The chunk files a block record lists (or its window implies) that are not on disk; no decoding."""
        return self.blocks.missing_chunks(record)

    def check_blocks(self) -> list[str]:
        """Keys of recorded blocks with a chunk file missing: one stat per chunk, no decoding."""
        ledger = self.blocks
        return sorted(key for key, rec in ledger.read().items() if ledger.missing_chunks(rec))

    def block_shape(self, records: Mapping[str, AnyRecord] | None = None) -> tuple[int, ...] | None:
        """The partition's block shape (:meth:`.audit.BlockLedger.block_shape`; ``records``: as read), or None."""
        return self.blocks.block_shape(records)

    def record_problem(self, key: str, record: AnyRecord, *, block: Sequence[int] | None = None) -> str | None:
        """Why block record ``key`` cannot be trusted as it reads (:func:`.records.check_block`), or None."""
        return self.blocks.problem(key, record, block=block)

    def changed_chunks(self, record: AnyRecord) -> list[tuple[str, str, str]]:
        """``(chunk, digest now, digest kept)`` of each chunk file whose bytes differ from the record's."""
        return self.blocks.changed_chunks(record)

    def audit_blocks(
        self, *, block: Sequence[int] | None = None, check: Callable[[Mapping[str, Any]], str | None] | None = None
    ) -> dict[str, str]:
        """Every block whose record cannot be trusted, with why: what ``tiler verify`` checks (never warns).

        See :meth:`.audit.BlockLedger.audit`; hand the keys to :meth:`invalidate_blocks` to have them recomputed.
        """
        return self.blocks.audit(block=block, check=check)

    def incomplete_reason(self, records: Mapping[str, AnyRecord] | None = None) -> str | None:
        """Why the block records do not make up the whole output (:meth:`.audit.BlockLedger.incomplete_reason`).

        ``records``: what :meth:`block_records` returned, when the caller has read them.
        """
        return self.blocks.incomplete_reason(records, summary=self._attr("summary"))

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
        broken: list[tuple[AnyPath, str]] = []
        exports = self.exports.records(unreadable=broken)
        self.retire_exports(list(exports))
        for file, _ in broken:
            file.unlink(missing_ok=True)
        self.clear_export_intents()
        return self.blocks.forget(keys)

    # -- exports (:mod:`tiler.io.store.exports`) -------------------------------------------------------
    @property
    def exports(self) -> ExportLedger:
        """The export ledger: export records and intents."""
        return ExportLedger(self.path)

    def record_export(
        self, name: str, path: PathArg, *, job_hash: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Record that export ``name`` is in place at ``path``, with its digest (:meth:`ExportLedger.record`)."""
        self.exports.record(name, path, job_hash=job_hash, settings=settings)

    def record_export_intent(self, path: PathArg, digest: str) -> None:
        """Record that a file with ``digest`` is about to appear at ``path`` (:func:`.exports.write_intent`)."""
        write_intent(self.path, path, digest)

    def intent_recorder(self) -> IntentRecorder:
        """The ``before_move(tmp, final)`` hook for export writers: digests ``tmp``, records the intent for ``final``.

        >>> # export_cog(store, path, reference=reader, before_move=store.intent_recorder())
        """
        return IntentRecorder(self.path)

    def export_intents(self) -> dict[str, dict[str, Any]]:
        """Every readable export intent, by its final path (resolved); unreadable ones are skipped with a warning."""
        return self.exports.intents()

    def wrote(self, path: PathArg) -> bool:
        """Whether the file now at ``path`` is one this store's finishing wrote (:meth:`ExportLedger.wrote`)."""
        return self.exports.wrote(path)

    def clear_export_intents(self) -> None:
        """Forget every export intent (the files they vouch for are no longer this store's to replace)."""
        self.exports.clear_intents()

    def retire_exports(self, names: Sequence[str]) -> None:
        """Mark the records of ``names`` as being replaced (:meth:`ExportLedger.retire`), before rewriting them."""
        self.exports.retire(names)

    def export_records(self) -> dict[str, dict[str, Any]]:
        """Every readable export record, by export name (unreadable ones are skipped with a StoreWarning)."""
        return self.exports.records()

    def exports_done(self, records: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
        """Recorded exports whose file is in place as recorded (:meth:`export_intact`): name -> absolute path."""
        ledger = self.exports
        return {n: str(rec.path) for n, rec in ledger.typed(records).items() if ledger.intact(rec)}

    def export_intact(self, name: str, records: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
        """Whether export ``name``'s file is in place as its record vouches (:meth:`ExportLedger.intact`)."""
        ledger = self.exports
        return ledger.intact(ledger.typed(records).get(name))

    # -- completion ------------------------------------------------------------------------------------
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
        missing = self.incomplete_reason() if self._attr(BLOCK_SHAPE) is not None else None
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
    def lock_path(self) -> AnyPath:
        """The lock file, beside the store: ``<parent>/.<name>.lock``."""
        return lock_path_for(self.path)

    def acquire_lock(self, owner: str) -> None:
        """Take the job lock (see :func:`~tiler.io.lock.acquire_store_lock`); re-entrant, stale locks taken over."""
        acquire_store_lock(self.path, owner)

    def release_lock(self) -> None:
        """Drop this process's hold of the job lock (see :func:`~tiler.io.lock.release_store_lock`)."""
        release_store_lock(self.path)

    def __repr__(self) -> str:
        return (
            f"OutputStore({str(self.path)!r}, shape={self.shape}, chunks={self.chunks}, "
            f"complete={self.complete_flag})"
        )

