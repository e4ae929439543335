"""Verifying an output store end to end: every chunk decoded, every block record checked, ``complete`` honest.

:func:`verify_store` reads every stored chunk (shard) of every array one at a time (memory bounded by one
chunk), so a checksum failure, a truncated file or a missing chunk is found and named together with the block
that wrote it. Each block record must be sound (read as a :class:`~tiler.io.store.StoredBlock` and checked by
:func:`~tiler.io.store.check_block`: fields of their types, the window of its block under the store's
partition), and the chunk files it vouches for must be the ones it wrote: the digest of each (labels and
probabilities alike) and of its labels must be those it recorded, so a valid chunk of another block swapped in is
found. ``complete`` over a block with no sound record is a problem, not a finished store. The store's metadata is
checked before anything is read (:func:`~tiler.io.store.check_store_metadata`). Bad blocks are listed in
:attr:`VerifyReport.bad_blocks`; hand them to
:meth:`OutputStore.invalidate_blocks <tiler.io.store.OutputStore.invalidate_blocks>` and rerun the job with the
same config to recompute exactly those blocks.

The report names the store's two hashes: ``pixels_hash`` (what its arrays hold) and, when complete,
``job_hash`` (the config hash of the finishing that wrote its exports and reports). Exports recorded by
an earlier finishing and not listed by the last one are noted, never counted as problems. An export file
whose content no longer has the digest the store recorded for it (in its export record, or in the intent written
just before a killed job moved it into place) is a ``changed-export``; a recorded one is written again by a rerun
(:meth:`OutputStore.export_intact <tiler.io.store.OutputStore.export_intact>`), while a file only an intent names
is someone else's and is never touched until it is moved away. A recorded export without a digest cannot be checked
(``unchecked-export``) and is written again by a rerun too. An intent whose file still matches is noted: the rerun
records it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tiler.errors import OutputError
from tiler.io.atomic import TMP_PREFIX, content_digest
from tiler.io.objects import ObjectPath, PathArg, as_path, lexists, relpath
from tiler.io.store import OutputStore, RecordError, StoredBlock, StoreWarning, check_block

__all__ = ["Problem", "VerifyReport", "verify_store"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store.

    Attributes:
        kind: ``missing-chunk``, ``corrupt-chunk``, ``bad-record``, ``digest-mismatch``, ``incomplete-complete``,
            ``missing-export``, ``changed-export`` or ``unchecked-export``.
        where: The chunk (``labels/c/0/1``), record file or export it concerns, relative to the store when inside it.
        block: Key of the block that owns it, when known.
        detail: What was found.
    """

    kind: str
    where: str
    block: str | None
    detail: str

    def line(self) -> str:
        """One line for a terminal."""
        owner = f" (block {self.block})" if self.block else ""
        return " ".join(f"{self.kind}: {self.where}{owner}: {self.detail}".split())


@dataclass
class VerifyReport:
    """What :func:`verify_store` found.

    Attributes:
        store: The store path.
        complete: The store's ``complete`` flag.
        pixels_hash: What the store's arrays hold (:func:`tiler.config.pixels_hash`).
        job_hash: The config hash of the finishing its exports and reports belong to; None unless complete.
        chunks_checked: Stored chunk files decoded.
        blocks_checked: Block records read.
        problems: Everything wrong, one entry per chunk, record or export.
        notes: Facts that are not problems (not yet complete, leftover temporary files).
    """

    store: str
    complete: bool
    pixels_hash: str | None = None
    job_hash: str | None = None
    chunks_checked: int = 0
    blocks_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    @property
    def bad_blocks(self) -> list[str]:
        """Keys of the blocks to recompute (pass them to ``OutputStore.invalidate_blocks``)."""
        return sorted({p.block for p in self.problems if p.block})

    def lines(self) -> list[str]:
        """One line per problem, then a summary line."""
        out = [p.line() for p in self.problems]
        if self.problems:
            blocks = self.bad_blocks
            out.append(
                f"{self.store}: {len(self.problems)} problem(s), {len(blocks)} block(s) to recompute"
                f"{' (' + ', '.join(blocks[:10]) + (', ...' if len(blocks) > 10 else '') + ')' if blocks else ''}; "
                f"invalidate them and rerun `tiler run` with the same config to recompute them."
            )
        else:
            out.append(
                f"{self.store}: ok ({self.chunks_checked} chunks, {self.blocks_checked} block records checked"
                f"{f', complete, job hash {self.job_hash}' if self.complete else ', not complete'})."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "store": self.store,
            "ok": self.ok,
            "complete": self.complete,
            "pixels_hash": self.pixels_hash,
            "job_hash": self.job_hash,
            "chunks_checked": self.chunks_checked,
            "blocks_checked": self.blocks_checked,
            "bad_blocks": self.bad_blocks,
            "problems": [p.__dict__ for p in self.problems],
            "notes": list(self.notes),
        }


def verify_store(path: PathArg) -> VerifyReport:
    """Check every chunk, block record and the ``complete`` flag of the store at ``path``.

    Raises:
        OutputError: ``path`` is not a tiler store (:meth:`OutputStore.is_tiler_store`), or its metadata declares
            shapes no job writes (one line naming the file, the value and the fix).

    """
    path = as_path(path)
    if not OutputStore.is_tiler_store(path):
        raise OutputError(
            f"{path} is not a tiler output store (no tiler metadata in its zarr.json); give the store folder a "
            f"job wrote (its `output.store`)."
        )
    store = OutputStore.open(path, mode="r")
    flagged = store.complete_flag
    report = VerifyReport(store=str(path), complete=flagged, pixels_hash=store.pixels_hash,
                          job_hash=store.job_hash)
    records = _sound_records(store, _read_records(store, report), report)
    incomplete = store.incomplete_reason(records) if flagged else None
    report.complete = flagged and incomplete is None
    owner = _chunk_owners(store, records)
    for name in store.arrays():
        _check_chunks(store, name, owner, report)
    _check_digests(store, records, report)
    _check_complete(store, records, incomplete, report)
    _check_intents(store, report)
    _note_leftovers(store, report)
    return report


def _read_records(store: OutputStore, report: VerifyReport) -> dict[str, dict[str, Any]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        records = store.block_records()
    _add_bad_records(store, caught, report)
    report.blocks_checked = len(records)
    return records


def _add_bad_records(
    store: OutputStore, caught: list[warnings.WarningMessage], report: VerifyReport, *, blocks: bool = True
) -> None:
    """A problem per unreadable record; a block record's file name is its block key (made file-safe)."""
    for w in caught:
        if isinstance(w.message, StoreWarning):
            where = relpath(w.message.path, store.path)
            block = w.message.path.stem if blocks else None
            report.problems.append(Problem("bad-record", where, block, str(w.message)))


def _sound_records(
    store: OutputStore, records: Mapping[str, dict[str, Any]], report: VerifyReport
) -> dict[str, StoredBlock]:
    """The records that can be trusted as they read, typed; a ``bad-record`` problem for each other one."""
    block = store.block_shape(records)
    sound: dict[str, StoredBlock] = {}
    for key, rec in records.items():
        try:
            sound[key] = check_block(key, rec, store.grid, block=block)
        except RecordError as exc:
            where = relpath(store.block_record_file(key), store.path)
            detail = f"the record cannot be trusted: {exc}; a rerun redoes the block"
            report.problems.append(Problem("bad-record", where, key, detail))
    return sound


def _chunk_owners(store: OutputStore, records: Mapping[str, StoredBlock]) -> dict[str, str]:
    """The block that wrote each chunk file, by the records' chunk lists (or their windows' files)."""
    owner: dict[str, str] = {}
    for key, rec in records.items():
        chunks = rec.chunks
        if chunks is None:
            chunks = tuple(store.grid.chunk_keys(rec.window)) if rec.window is not None else ()
        for chunk in chunks:
            owner[chunk] = key
    return owner


def _check_chunks(store: OutputStore, name: str, owner: Mapping[str, str], report: VerifyReport) -> None:
    """Stat and decode every stored chunk of array ``name``, one at a time."""
    pending = 0
    arr = store.arrays()[name]
    for key, window in store.chunk_grid(name):
        block = owner.get(key)
        if not (store.path / key).is_file():
            if block is not None or (report.complete and store.has_checksums):
                why = "recorded as written by its block" if block else "the store is marked complete"
                report.problems.append(Problem("missing-chunk", key, block, f"the chunk file is missing ({why})"))
            else:
                pending += 1
            continue
        sel = (slice(None), *window.slices) if name == "probabilities" else window.slices
        try:
            arr[sel]
        except (ValueError, RuntimeError, OSError) as exc:
            report.problems.append(Problem("corrupt-chunk", key, block, f"cannot be decoded: {exc}"))
        report.chunks_checked += 1
    if pending:
        report.notes.append(f"{pending} {name} chunk(s) not written yet (no block record covers them).")


def _check_digests(store: OutputStore, records: Mapping[str, StoredBlock], report: VerifyReport) -> None:
    """Compare each record's digests with what is stored: its labels, then each chunk file (bad blocks skipped).

    A labels mismatch is one problem for the block; its labels chunk files are then not named again.
    """
    bad = set(report.bad_blocks)
    for key, rec in records.items():
        if key in bad:
            continue
        labels_bad = _check_labels_digest(store, key, rec, report)
        for chunk, found, kept in store.changed_chunks(rec):
            if labels_bad and chunk.startswith("labels/"):
                continue
            detail = (
                f"the chunk file hashes to {found}, the block recorded {kept}: another chunk (another block's?) was "
                f"put in its place or it was rewritten since"
            )
            report.problems.append(Problem("digest-mismatch", chunk, key, detail))


def _check_labels_digest(store: OutputStore, key: str, rec: StoredBlock, report: VerifyReport) -> bool:
    """Add a problem when the labels in the record's window do not have its ``labels_digest``; True if added."""
    digest, window = rec.labels_digest, rec.window
    if not digest or window is None:
        return False
    try:
        stored = store.stored_digest(window)
    except OutputError as exc:
        report.problems.append(Problem("corrupt-chunk", f"labels in {window}", key, str(exc)))
        return True
    if stored == digest:
        return False
    where = f"labels in start={window.start} stop={window.stop}"
    report.problems.append(
        Problem("digest-mismatch", where, key, f"the stored labels hash to {stored}, the block recorded {digest}")
    )
    return True


def _check_complete(
    store: OutputStore, records: Mapping[str, StoredBlock], incomplete: str | None, report: VerifyReport
) -> None:
    """The ``complete`` flag against the blocks (``incomplete``: :meth:`OutputStore.incomplete_reason`); exports."""
    if not store.complete_flag:
        report.notes.append(
            f"not complete: {len(records)} block record(s); rerun `tiler run` with the same config to finish."
        )
        return
    if incomplete is not None:
        detail = (
            f"marked complete but {incomplete}: the flag is not believed; rerun `tiler run` with the same config to "
            f"compute them"
        )
        report.problems.append(Problem("incomplete-complete", "zarr.json", None, detail))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        exports = store.export_records()
    _add_bad_records(store, caught, report, blocks=False)
    job_hash = store.job_hash
    typed = store.exports.typed(exports)
    earlier = sorted(n for n, rec in typed.items() if rec.replacing or (rec.job_hash or job_hash) != job_hash)
    if earlier:
        report.notes.append(
            f"{len(earlier)} export(s) recorded by an earlier finishing, not outputs of the last one (job hash "
            f"{job_hash}): {', '.join(earlier)}; left on disk, never replaced without a record."
        )
    for name, rec in sorted(typed.items()):
        if name in earlier:
            continue
        where = str(rec.path)
        if not lexists(where):
            detail = f"export {name!r} is recorded as done; its file is gone"
            report.problems.append(Problem("missing-export", where, None, detail))
        elif rec.digest is not None:
            rewrite = "rerun `tiler run` with the same config to write it again (the rerun replaces it)"
            _check_export_digest(where, rec.digest, f"export {name!r} was recorded", report, fix=rewrite)
        else:
            detail = (
                f"export {name!r} is recorded without a digest, so its content cannot be checked; rerun `tiler run` "
                f"with the same config to write it again"
            )
            report.problems.append(Problem("unchecked-export", where, None, detail))


def _check_export_digest(
    where: str, recorded: str, what: str, report: VerifyReport, *, fix: str = ""
) -> bool:
    """Add a ``changed-export`` problem when the file at ``where`` no longer has digest ``recorded``; True if it has.

    ``fix``: what to do about it (default: the file is someone else's, move it away and rerun).
    """
    try:
        found = content_digest(where)
    except OSError as exc:
        found = f"unreadable ({exc})"
    if found == recorded:
        return True
    fix = fix or "someone replaced it. Move it away and rerun the job to write it again"
    detail = f"{what} with digest {recorded} but the file there now is {found}: {fix}."
    report.problems.append(Problem("changed-export", where, None, detail))
    return False


def _check_intents(store: OutputStore, report: VerifyReport) -> None:
    """Export files a killed job moved into place before recording them: fine while their digest matches."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        intents = store.export_intents()
    _add_bad_records(store, caught, report, blocks=False)
    pending = []
    for where, intent in sorted(intents.items()):
        if not lexists(where):
            continue  # killed before the move: nothing there to vouch for
        if _check_export_digest(where, intent["digest"], "a job moved it into place", report):
            pending.append(where)
    if pending:
        report.notes.append(
            f"{len(pending)} export file(s) moved into place by a job that stopped before recording them (first: "
            f"{pending[0]}); they are the store's own and a rerun records them."
        )


def _note_leftovers(store: OutputStore, report: VerifyReport) -> None:
    if isinstance(store.path, ObjectPath):
        return  # nothing is written to a bucket under a temporary name
    leftovers = [p for p in store.path.rglob("*") if p.name.endswith(".partial") or p.name.startswith(TMP_PREFIX)]
    if leftovers:
        report.notes.append(
            f"{len(leftovers)} leftover temporary file(s) from an interrupted write (first: "
            f"{leftovers[0].relative_to(store.path)}); they are ignored."
        )
