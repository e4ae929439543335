"""The store's export ledger: export records (what a finishing put beside the store), intents, and their digests.

An export record (``.tiler/exports/<name>.json``) keeps the export's ``path``, the ``job_hash`` of the finishing
that last listed it, the ``settings`` it was drawn with, the ``digest`` of its content
(:func:`~tiler.io.atomic.content_digest`) and the ``pid`` and ``host`` that recorded it; a record being replaced
keeps its path and ``replacing: true`` only. An intent (``.tiler/intents/<file>.json``) is written just before an
export file is moved into place (its final path and the digest of the complete temporary) and removed once the
export is recorded: a job killed in between still knows the file as its own (:meth:`ExportLedger.wrote`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiler.io.atomic import content_digest, output_error, write_json_atomic
from tiler.io.objects import AnyPath, ObjectPath, PathArg, as_path, lexists, resolved
from tiler.io.store.layout import STATE_DIR, read_json, safe_key
from tiler.io.store.records import read_record_files

__all__ = ["ExportLedger", "IntentRecorder", "StoredExport", "cached_digest", "write_intent"]

_DIGESTS: dict[tuple[Any, ...], str] = {}


def cached_digest(path: str) -> str:
    """:func:`~tiler.io.atomic.content_digest` of ``path``, computed once per process for a file's version.

    A file's version is its path, device, inode, size and modification and change times (the change time cannot
    be set back by hand), an object's its URL and ETag; a folder (or key prefix) is digested every time.

    Raises:
        OSError: ``path`` cannot be read.
    """
    where = as_path(path)
    key: tuple[Any, ...]
    if isinstance(where, ObjectPath):
        meta = where.head()
        if meta is None:
            return content_digest(where)
        key = (str(where), meta.get("e_tag"), meta.get("size"))
    else:
        st = os.stat(where)
        if stat.S_ISDIR(st.st_mode):
            return content_digest(where)
        key = (os.path.realpath(where), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        if len(_DIGESTS) > 256:
            _DIGESTS.clear()
        digest = _DIGESTS[key] = content_digest(path)
    return digest


def _writer() -> dict[str, Any]:
    """Who writes a record: this process's ``pid`` and ``host``."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _intent_file(store: AnyPath, final: str) -> AnyPath:
    """The intent record of the resolved path ``final``: its file-safe name, then a short hash of the whole path."""
    tag = hashlib.sha1(final.encode()).hexdigest()[:10]
    return store / STATE_DIR / "intents" / f"{safe_key(final.rstrip('/').rsplit('/', 1)[-1])}-{tag}.json"


def write_intent(store: AnyPath, path: PathArg, digest: str) -> None:
    """Record in the store at ``store`` that a file with ``digest`` is about to appear at ``path``.

    Call just before the complete temporary is moved onto ``path``; :meth:`ExportLedger.record` of that path
    removes the intent again. A job killed in between leaves the intent, by which a rerun knows the file as its
    own while its digest still matches.
    """
    final = resolved(path)
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
    ``final`` (:func:`write_intent`), before the writer moves it into place.
    """

    store: AnyPath

    def __call__(self, tmp: Path, final: AnyPath) -> None:
        """Record the intent for ``final`` with the digest of ``tmp``."""
        write_intent(self.store, final, content_digest(tmp))


@dataclass(frozen=True)
class StoredExport:
    """An export record read back typed (what :meth:`ExportLedger.records` gives, as stored).

    Attributes:
        name: The export (``cog``, ``geojson``, ``report_json``, ...).
        path: Its file, absolute; None when the record names none.
        digest: The digest of the content it vouches for; None when it keeps none (or is being replaced).
        job_hash: The config hash of the finishing that last listed it, or None.
        replacing: Whether its file is being written again (:meth:`ExportLedger.retire`).
    """

    name: str
    path: str | None
    digest: str | None
    job_hash: str | None
    replacing: bool

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> StoredExport:
        """Read export ``name``'s record; a field of another type reads as absent (the record vouches for less)."""
        path, digest, job = data.get("path"), data.get("digest"), data.get("job_hash")
        return cls(
            name,
            path if isinstance(path, str) else None,
            digest if isinstance(digest, str) else None,
            str(job) if job is not None else None,
            bool(data.get("replacing")),
        )

    def vouches(self) -> bool:
        """Whether the record vouches for a file's content: it has a path and a digest and is not being replaced."""
        return self.path is not None and self.digest is not None and not self.replacing


class ExportLedger:
    """The export records and intents of the store at ``path``."""

    def __init__(self, path: AnyPath) -> None:
        self.path = path

    @property
    def folder(self) -> AnyPath:
        """The folder of the export records."""
        return self.path / STATE_DIR / "exports"

    @property
    def intents_folder(self) -> AnyPath:
        """The folder of the export intents."""
        return self.path / STATE_DIR / "intents"

    def record(self, name: str, path: PathArg, *, job_hash: str | None, settings: Any) -> None:
        """Record that export ``name`` is in place at ``path`` (atomic JSON under ``.tiler/exports/``).

        Args:
            name: The export (``cog``, ``geojson``, ``report_json``, ...).
            path: Its file.
            job_hash: The config hash of the finishing that lists it among its outputs.
            settings: What the file was drawn with besides the store (:func:`tiler.config.identity.export_settings`);
                a later finishing keeps the file only under the same settings.

        The record keeps the ``digest`` of the file (:func:`~tiler.io.atomic.content_digest`): its intent's (the
        complete temporary the writer moved into place), else the one the standing record of the same file keeps,
        else the file's as it is now; so ``tiler verify`` and :meth:`intact` find a file changed since. The
        file's intent is removed: the record vouches for it from here on.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.folder, exc, what="record exports in") from exc
        final = resolved(path)
        payload: dict[str, Any] = {"key": name, "path": final, "time": time.time(), **_writer()}
        if job_hash is not None:
            payload["job_hash"] = job_hash
        if settings:
            payload["settings"] = dict(settings)
        digest = self._known_digest(name, final)
        if digest is None and lexists(final):
            try:
                digest = cached_digest(final)
            except OSError:
                digest = None  # unreadable now: no record vouches for it, so verify and a rerun redo it
        if digest is not None:
            payload["digest"] = digest
        write_json_atomic(self.folder / f"{safe_key(name)}.json", payload)
        _intent_file(self.path, final).unlink(missing_ok=True)  # the record vouches for the file from here on

    def _known_digest(self, name: str, final: str) -> str | None:
        """The digest of the file at ``final``: its intent's, else the one ``name``'s standing record keeps."""
        intent = self.intent(final)
        if intent is not None:
            return str(intent["digest"])
        try:
            rec = read_json(self.folder / f"{safe_key(name)}.json")
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict):
            return None
        stored = StoredExport.from_json(name, rec)
        return stored.digest if stored.path == final and not stored.replacing else None

    def records(self, *, unreadable: list[tuple[AnyPath, str]] | None = None) -> dict[str, dict[str, Any]]:
        """Every readable export record as stored, by export name (unreadable ones warned about or listed)."""
        return {str(rec.pop("key")): rec for rec in read_record_files(self.folder, "export", unreadable=unreadable)}

    def typed(self, records: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, StoredExport]:
        """The export records typed, by name (``records``: what :meth:`records` gave, when already read)."""
        return {n: StoredExport.from_json(n, r) for n, r in (self.records() if records is None else records).items()}

    def retire(self, names: Sequence[str]) -> None:
        """Mark the records of ``names`` as being replaced; call before their files are written again.

        A retired record keeps its path (the file is still one tiler made, so a rerun may replace it) but no
        longer vouches for the file's content: :meth:`intact` says no until it is recorded anew, so a job killed
        while replacing a file never keeps it as it is.
        """
        for name, rec in self.typed().items():
            if name in names and rec.path is not None:
                payload = {"key": name, "path": rec.path, "time": time.time(), "replacing": True}
                write_json_atomic(self.folder / f"{safe_key(name)}.json", payload)

    def intact(self, rec: StoredExport | None) -> bool:
        """Whether ``rec`` vouches for its file and the file is in place with that digest: a rerun may keep it.

        No for no record, a record being replaced (:meth:`retire`), one without a ``digest``, a file that is gone,
        and a file whose digest differs from the record's (truncated or changed since: a rerun writes it again).
        Each file's digest is computed once per process and file version (:func:`cached_digest`).
        """
        if rec is None or not rec.vouches() or rec.path is None or not lexists(rec.path):
            return False
        try:
            return cached_digest(rec.path) == rec.digest
        except OSError:
            return False

    # -- intents -------------------------------------------------------------------------------------------
    def intent(self, final: str) -> dict[str, Any] | None:
        """The readable intent for the resolved path ``final``, or None."""
        try:
            rec = read_json(_intent_file(self.path, final))
        except (OSError, ValueError):
            return None
        ok = isinstance(rec, dict) and rec.get("path") == final and isinstance(rec.get("digest"), str)
        return rec if ok else None

    def intents(self, *, unreadable: list[tuple[AnyPath, str]] | None = None) -> dict[str, dict[str, Any]]:
        """Every readable intent by its final path (unreadable ones warned about or listed)."""
        return {
            str(rec["path"]): rec
            for rec in read_record_files(self.intents_folder, "export intent", unreadable=unreadable)
            if isinstance(rec.get("path"), str) and isinstance(rec.get("digest"), str)
        }

    def clear_intents(self) -> None:
        """Forget every intent (the files they vouch for are no longer the store's to replace)."""
        for file in self.intents_folder.glob("*.json") if self.intents_folder.is_dir() else []:
            file.unlink(missing_ok=True)

    def wrote(self, path: PathArg) -> bool:
        """Whether the file (or folder) now at ``path`` is one the store's finishing wrote, so a rerun may replace it.

        Yes for a path an export record names (whatever its state), and for a path with an intent whose digest
        equals the content there now (a job killed between moving the file in and recording it). A file whose
        content differs from its intent was put there by someone else and is not the store's.
        """
        real = resolved(path)
        if any(r.path is not None and resolved(r.path) == real for r in self.typed().values()):
            return True
        intent = next((r for p, r in self.intents().items() if resolved(p) == real), None)
        if intent is None or not lexists(real):
            return False
        try:
            return content_digest(real) == intent["digest"]
        except OSError:
            return False
