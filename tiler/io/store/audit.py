"""The block ledger of a store: writing block records, and judging which of them can still be trusted.

A block's record is written after its chunks (records after the data they vouch for) and vouches for exactly the
chunk files its window covers: their digests as they are on disk once written, and the digest of its labels. A
record is trusted while it is sound (:func:`~tiler.io.store.records.check_block`) and every chunk file it vouches
for is in place with the bytes it wrote (:meth:`BlockLedger.audit`); the output is whole while every block of the
partition has a sound record (:meth:`BlockLedger.incomplete_reason`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.atomic import output_error, write_json_atomic
from tiler.io.objects import AnyPath
from tiler.io.store.chunks import chunk_file_digest, missing_files
from tiler.io.store.layout import STATE_DIR, StoreGrid, safe_key, whole_numbers
from tiler.io.store.records import RecordError, StoredBlock, check_block, infer_block, read_record_files

__all__ = ["BlockLedger"]

Records = Mapping[str, Mapping[str, Any] | StoredBlock]
"""Block records by key, as read (:meth:`BlockLedger.read`) or typed (:class:`StoredBlock`)."""


class BlockLedger:
    """The block records of the store at ``path`` (``.tiler/blocks/<key>.json``), checked against its chunk files.

    Args:
        path: The store's folder.
        grid: Its grid of stored files.
        kept_block: The group's ``block_shape`` attribute as stored (None, or a list to check).
        stored_digest: The labels digest of a window as stored now (decodes the labels; raises OutputError when a
            chunk is corrupt), for records from before chunk digests.
    """

    def __init__(
        self, path: AnyPath, grid: StoreGrid, *, kept_block: Any, stored_digest: Callable[[Window], str]
    ) -> None:
        self.path = path
        self.grid = grid
        self.kept_block = kept_block
        self.stored_digest = stored_digest

    @property
    def folder(self) -> AnyPath:
        """The folder of the block records."""
        return self.path / STATE_DIR / "blocks"

    def file(self, key: str) -> AnyPath:
        """The file of block ``key``'s record (its file-safe name)."""
        return self.folder / f"{safe_key(key)}.json"

    # -- writing -------------------------------------------------------------------------------------------
    def record(self, key: str, record: Mapping[str, Any], window: Window | None, *, labels_digest: str | None) -> None:
        """Write block ``key``'s record: ``record``, and with a ``window`` its chunks and their digests (atomic).

        ``labels_digest``: the digest of the block's labels, kept with a window.
        """
        payload = {"key": key, **dict(record)}
        if window is not None:
            payload.setdefault("start", list(window.start))
            payload.setdefault("stop", list(window.stop))
            chunks = self.grid.chunk_keys(window)
            payload["chunks"] = chunks
            payload["labels_digest"] = labels_digest
            payload["chunk_digests"] = {
                c: digest for c in chunks if (digest := chunk_file_digest(self.path / c)) is not None
            }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.folder, exc, what="record blocks in") from exc
        write_json_atomic(self.file(key), payload)

    def forget(self, keys: Sequence[str]) -> int:
        """Delete the records of ``keys``; the number deleted."""
        removed = 0
        for key in keys:
            file = self.file(key)
            if file.exists():
                file.unlink()
                removed += 1
        return removed

    # -- reading -------------------------------------------------------------------------------------------
    def read(self, *, unreadable: list[tuple[AnyPath, str]] | None = None) -> dict[str, dict[str, Any]]:
        """Every readable record as stored (without its ``key``), by key; unreadable ones warned about or listed."""
        return {str(rec.pop("key")): rec for rec in read_record_files(self.folder, "block", unreadable=unreadable)}

    def quiet(self) -> tuple[dict[str, dict[str, Any]], list[tuple[AnyPath, str]]]:
        """The readable records by key, and ``(file, message)`` of each unreadable one; never warns."""
        unreadable: list[tuple[AnyPath, str]] = []
        return self.read(unreadable=unreadable), unreadable

    def block_shape(self, records: Records | None = None) -> tuple[int, ...] | None:
        """The block shape of the partition: as the job kept it, else inferred from ``records``' windows, or None."""
        kept = whole_numbers(self.kept_block)
        if kept is not None and len(kept) == len(self.grid.shape):
            return kept
        return infer_block(self.grid.shape, self.quiet()[0] if records is None else records)

    def typed(self, records: Records | None = None, *, block: Sequence[int] | None = None) -> dict[str, StoredBlock]:
        """The sound records typed, by key (:func:`~tiler.io.store.records.check_block`; never warns).

        ``records``: as read, when the caller has read them; ``block``: the partition's block shape (default
        :meth:`block_shape`).
        """
        records = self.quiet()[0] if records is None else records
        block = tuple(block) if block is not None else self.block_shape(records)
        sound = {}
        for key, rec in records.items():
            try:
                sound[key] = check_block(key, rec, self.grid, block=block)
            except RecordError:
                continue
        return sound

    def problem(self, key: str, record: Mapping[str, Any] | StoredBlock, *, block: Sequence[int] | None) -> str | None:
        """Why record ``key`` cannot be trusted as it reads (see :func:`check_block`), or None."""
        try:
            check_block(key, record, self.grid, block=block)
        except RecordError as exc:
            return str(exc)
        return None

    # -- chunk files against records ------------------------------------------------------------------------
    @staticmethod
    def _read(record: Mapping[str, Any] | StoredBlock) -> StoredBlock | None:
        """``record`` typed; None for one whose fields are not of their types (it vouches for no chunk file)."""
        if isinstance(record, StoredBlock):
            return record
        try:
            return StoredBlock.from_json(record, key=str(record.get("key", "")))
        except RecordError:
            return None

    def _vouched(self, record: Mapping[str, Any] | StoredBlock) -> tuple[str, ...]:
        """The chunk files a record lists, or its window's files when it lists none (records before chunk lists)."""
        rec = self._read(record)
        if rec is None:
            return ()
        if rec.chunks is not None:
            return rec.chunks
        return tuple(self.grid.chunk_keys(rec.window)) if rec.window is not None else ()

    def missing_chunks(self, record: Mapping[str, Any] | StoredBlock) -> list[str]:
        """The chunk files a record lists (or its window implies) that are not on disk; no decoding."""
        return missing_files(self.path, self._vouched(record))

    def changed_chunks(self, record: Mapping[str, Any] | StoredBlock) -> list[tuple[str, str, str]]:
        """``(chunk, digest now, digest kept)`` of each chunk file whose bytes differ from the record's digest.

        Reads every file the record's ``chunk_digests`` name (no decoding); a missing file is left to
        :meth:`missing_chunks`. Call it on sound records (:func:`~tiler.io.store.records.check_block`).
        """
        rec = self._read(record)
        out = []
        for key, kept in (rec.chunk_digests or {}).items() if rec is not None else ():
            found = chunk_file_digest(self.path / key)
            if found is not None and found != kept:
                out.append((key, found, kept))
        return out

    def chunks_problem(self, record: StoredBlock) -> str | None:
        """Why the chunks a sound record vouches for are not the ones it wrote, or None.

        Records from before chunk digests have their labels decoded and compared with ``labels_digest``.
        """
        missing = self.missing_chunks(record)
        if missing:
            return f"lost chunk files ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        changed = self.changed_chunks(record)
        if changed:
            chunk, found, kept = changed[0]
            return f"chunk file {chunk} hashes to {found}, its record kept {kept} (swapped or rewritten since)"
        if "chunk_digests" in record.fields or record.window is None or record.labels_digest is None:
            return None
        try:
            stored = self.stored_digest(record.window)
        except OutputError as exc:
            return str(exc)
        kept_labels = record.labels_digest
        return None if stored == kept_labels else f"its labels hash to {stored}, its record kept {kept_labels}"

    def audit(
        self, *, block: Sequence[int] | None = None, check: Callable[[Mapping[str, Any]], str | None] | None = None
    ) -> dict[str, str]:
        """Every block whose record cannot be trusted, with why (never warns).

        Unreadable record files (by their file name), records that are not sound (under ``block``, default
        :meth:`block_shape`; then ``check``, the caller's own test of a record's fields as stored, giving why or
        None), and records whose chunk files are not the ones they wrote (:meth:`chunks_problem`).
        """
        records, unreadable = self.quiet()
        bad = {file.stem: message for file, message in unreadable}
        block = tuple(block) if block is not None else self.block_shape(records)
        for key, raw in records.items():
            try:
                rec = check_block(key, raw, self.grid, block=block)
            except RecordError as exc:
                bad[key] = str(exc)
                continue
            why = (check(rec.fields) if check else None) or self.chunks_problem(rec)
            if why:
                bad[key] = why
        return bad

    def incomplete_reason(self, records: Records | None = None, *, summary: Any = None) -> str | None:
        """Why the records do not make up the whole output; None when every block has a sound record.

        Every block of the partition (:meth:`block_shape`) needs a sound record (no chunk is read). A store whose
        partition is unknown is judged by its ``summary``'s ``blocks_total`` against its readable records; one with
        neither (written by hand, or by an older tiler) cannot be judged: None.
        """
        if records is None:
            records = self.quiet()[0]
        block = self.block_shape(records)
        if block is None:
            total = summary.get("blocks_total") if isinstance(summary, dict) else None
            if type(total) is int and total != len(records):
                return f"its summary counts {total} blocks but {len(records)} block record(s) are readable"
            return None
        partition = BlockPartition(self.grid.shape, block)
        sound = set(self.typed(records, block=block))
        missing = [key for key in ("_".join(map(str, p)) for p in partition.positions()) if key not in sound]
        if not missing:
            return None
        return (
            f"{len(missing)} of its {len(partition)} blocks (blocks of {partition.block}) have no sound record "
            f"(first: {missing[0]})"
        )
