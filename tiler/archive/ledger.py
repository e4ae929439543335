"""The archive ledger: one SQLite row per (input fingerprint, config hash), claimed before an input runs.

The config hash is the job's (:func:`tiler.config.config_hash`: pixels, exports and scores); each row also
keeps the pixels hash (:func:`tiler.config.pixels_hash`), so a new key on an input whose store already holds
its pixels (an added export, a new truth) finishes that store again instead of computing it anew.

A ledger that cannot serve (another tool's database, a ``runs`` table without our columns, a row whose JSON
does not parse, a read-only file or folder, a file where archive.root should be) is refused when it is opened,
before anything is written to it, with one :class:`~tiler.errors.OutputError` line naming the file, the problem
and the fix; so is an SQLite error later on (see :func:`ledger_error`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from tiler.errors import OutputError
from tiler.io.store import pid_alive
from tiler.jsonsafe import json_safe

LEDGER_NAME = "ledger.sqlite"


def now() -> str:
    """The current UTC time as ISO 8601 with microseconds (the ledger's and reports' timestamps)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class LedgerRow:
    """One ledger row: the latest state of one (input fingerprint, config hash)."""

    fingerprint: str
    config_hash: str
    input_path: str
    store_path: str | None
    status: Literal["running", "done", "failed"]
    error: str | None
    scores: dict[str, Any] | None
    outputs: dict[str, str] | None
    summary: dict[str, Any] | None
    started_at: str | None
    finished_at: str | None
    attempts: int
    host: str | None
    pid: int | None
    pixels_hash: str | None = None


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Ledger.claim`.

    Attributes:
        state: ``claimed`` (this run must process the input), ``done`` (already done: skip) or
            ``busy`` (another live run holds it: skip).
        row: The row after the claim.
        resume: Whether the store may be resumed (or finished again) from its block records: the store
            holds this job's pixels and the last attempt at it with these pixels had the same input
            fingerprint. Otherwise an existing store is overwritten.

    """

    state: Literal["claimed", "done", "busy"]
    row: LedgerRow
    resume: bool


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    fingerprint TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    input_path  TEXT NOT NULL,
    store_path  TEXT,
    status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    error       TEXT,
    scores      TEXT,
    outputs     TEXT,
    summary     TEXT,
    started_at  TEXT,
    finished_at TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    host        TEXT,
    pid         INTEGER,
    pixels_hash TEXT,
    PRIMARY KEY (fingerprint, config_hash)
);
CREATE INDEX IF NOT EXISTS runs_store ON runs (store_path, started_at);
"""


_JSON_COLUMNS = ("scores", "outputs", "summary")
_MOVE_ASIDE = "move it aside (every input is then reprocessed) or restore it from a backup"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(json_safe(value), sort_keys=True)


def ledger_error(path: Path, exc: BaseException) -> OutputError:
    """The one-line error of an SQLite (or file) failure on the ledger at ``path``: the file, the problem, the fix.

    >>> str(ledger_error(Path("/out/ledger.sqlite"), sqlite3.OperationalError("attempt to write a readonly database")))
    '/out/ledger.sqlite: the archive ledger cannot be written (attempt to write a readonly database); fix: make /out \
and /out/ledger.sqlite writable (SQLite writes a journal beside the ledger), or set archive.root to a writable folder'
    """
    code = getattr(exc, "sqlite_errorname", "")
    text = " ".join(str(exc).split())
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in text:
        problem, fix = "stayed locked past the busy timeout", (
            "let the other archive run finish, or raise archive.busy_timeout_s")
    elif (code.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN", "SQLITE_AUTH"))
          or isinstance(exc, PermissionError) or "readonly" in text or "unable to open" in text):
        problem, fix = "cannot be written", (
            f"make {path.parent} and {path} writable (SQLite writes a journal beside the ledger), or set "
            "archive.root to a writable folder")
    elif code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in text or "malformed" in text:
        problem, fix = "is not an SQLite database or is damaged", _MOVE_ASIDE
    elif code.startswith("SQLITE_IOERR") or "I/O error" in text:
        problem, fix = "cannot be read or written", (
            f"check the disk, and that SQLite may create {path}-journal beside it (archive.root writable, no "
            "folder of that name)")
    else:
        problem, fix = "cannot be used", f"check the file and its folder, or {_MOVE_ASIDE}"
    return OutputError(f"{path}: the archive ledger {problem} ({text}); fix: {fix}")


class Ledger:
    """The SQLite ledger of an archive: one row per (input fingerprint, config hash).

    Every change is one short transaction (``BEGIN IMMEDIATE`` where a read decides a write), with
    a busy timeout, so overlapping archive runs on one root wait for each other instead of failing.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = 60.0, stale_after_hours: float = 24.0
    ) -> None:
        self.path = Path(path)
        self.stale_after = timedelta(hours=stale_after_hours)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._root_folder()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc) from None
        try:
            with self._errors():
                self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                self._check_writable()
                columns = self._check_table()
                if columns is None:
                    with self._transaction():
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                self._conn.execute(statement)
                elif "pixels_hash" not in columns:
                    with self._transaction():  # a ledger from before the pixels hash: its rows keep NULL there
                        if not self._has_pixels_hash():
                            self._conn.execute("ALTER TABLE runs ADD COLUMN pixels_hash TEXT")
                self._check_rows()
        except BaseException:
            self._conn.close()
            raise

    def _root_folder(self) -> None:
        """Create archive.root if needed; refuse a file (or a path through one) where that folder should be."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise OutputError(
                f"{self.path}: the archive ledger cannot be created: archive.root {folder} is a file (or lies under "
                "one), not a folder; fix: set archive.root to a folder, or move that file away"
            ) from None
        except OSError as exc:
            raise ledger_error(self.path, exc) from None
        if os.path.isdir(self.path):
            raise OutputError(
                f"{self.path}: the archive ledger is a folder, not a file; fix: move that folder away, or set "
                "archive.root to another folder"
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn an SQLite error on the ledger into its one-line :class:`OutputError`."""
        try:
            yield
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc) from None

    def _check_writable(self) -> None:
        """Refuse a ledger this process cannot write, before a run claims anything, leaving it as it was.

        A write to the header (the user version set to itself) inside a transaction that is rolled back: SQLite
        opens a read-only file read-only and needs the folder writable for its journal, and both only show on a
        write. Nothing reaches the file: a rolled-back change is never written to it. A ledger another run is
        writing (locked past the busy timeout) is not refused here: the claims wait for it, and say so.
        """
        try:
            if self.path.stat().st_size == 0:
                return  # a new ledger (SQLite made an empty file): creating its table is the first write
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ledger_error(self.path, exc) from None
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                return  # another run holds the write lock: that says nothing about this one, and claims wait
            raise
        try:
            self._conn.execute(f"PRAGMA user_version = {version}")
        finally:
            with suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _check_table(self) -> set[str] | None:
        """The columns of an archive ledger's ``runs`` table, or None for an empty database (a new ledger).

        Raises:
            OutputError: The database holds another tool's tables and no ``runs`` table, or a ``runs`` table
                without the ledger's columns.
        """
        tables = [row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        if "runs" not in tables:
            if not tables:
                return None
            raise OutputError(
                f"{self.path}: is not an archive ledger: it holds the table(s) {', '.join(tables)} of another tool and "
                "no runs table; it was left untouched; fix: set archive.root to another folder, or move that file "
                "away"
            )
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
        missing = [c.strip() for c in self._COLUMNS.split(",") if c.strip() not in columns | {"pixels_hash"}]
        if missing:
            raise OutputError(
                f"{self.path}: is not an archive ledger: its runs table lacks the column(s) {', '.join(missing)} "
                "(another tool's table?); it was left untouched; fix: set archive.root to another folder, or move "
                "that file away"
            )
        return columns

    def _check_rows(self) -> None:
        """Refuse a ledger with a row whose scores, outputs or summary is not a JSON object (checked in SQLite)."""
        for column in _JSON_COLUMNS:
            bad = self._conn.execute(
                f"SELECT rowid, input_path FROM runs WHERE {column} IS NOT NULL AND "
                f"(NOT json_valid({column}) OR json_type({column}) != 'object') LIMIT 1"
            ).fetchone()
            if bad is not None:
                raise self._bad_row(bad[0], bad[1], column)

    def _bad_row(self, rowid: object, input_path: object, column: str) -> OutputError:
        return OutputError(
            f"{self.path}: the archive ledger is damaged: the {column} of row {rowid} (input {input_path}) is not a "
            f"JSON object; it was left untouched; fix: delete that row (its input is then reprocessed), or "
            f"{_MOVE_ASIDE}"
        )

    def _has_pixels_hash(self) -> bool:
        return any(row[1] == "pixels_hash" for row in self._conn.execute("PRAGMA table_info(runs)"))

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed, or rolled back on any error (SQLite's made one line)."""
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with suppress(sqlite3.Error):  # SQLite may have rolled back already
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _row(self, values: Sequence[Any] | None) -> LedgerRow | None:
        if values is None:
            return None
        (fp, ch, inp, store, status, error, scores, outputs, summary, started, finished, attempts, host,
         pid, pixels) = values
        decoded: dict[str, Any] = {}
        for column, text in zip(_JSON_COLUMNS, (scores, outputs, summary), strict=True):
            try:
                decoded[column] = json.loads(text) if text else None
            except ValueError:  # written by something else since the ledger was opened
                raise self._bad_row("?", inp, column) from None
        return LedgerRow(
            fingerprint=fp, config_hash=ch, input_path=inp, store_path=store, status=status, error=error,
            started_at=started, finished_at=finished, attempts=int(attempts), host=host, pid=pid, pixels_hash=pixels,
            **decoded,
        )

    _COLUMNS = (
        "fingerprint, config_hash, input_path, store_path, status, error, scores, outputs, summary, "
        "started_at, finished_at, attempts, host, pid, pixels_hash"
    )

    def get(self, fingerprint: str, config_hash: str) -> LedgerRow | None:
        """Return the row of one key, or None."""
        with self._errors():
            cur = self._conn.execute(
                f"SELECT {self._COLUMNS} FROM runs WHERE fingerprint = ? AND config_hash = ?",
                (fingerprint, config_hash),
            )
            return self._row(cur.fetchone())

    def rows(self) -> list[LedgerRow]:
        """Return every row, oldest start first."""
        with self._errors():
            cur = self._conn.execute(f"SELECT {self._COLUMNS} FROM runs ORDER BY started_at, input_path")
            return [row for row in map(self._row, cur.fetchall()) if row is not None]

    def _stale(self, row: LedgerRow) -> bool:
        """Whether a ``running`` row was left by a run that is gone."""
        if row.host == self.host and row.pid is not None:
            return row.pid == self.pid or not pid_alive(row.pid)
        if row.started_at is None:
            return True
        return datetime.now(UTC) - datetime.fromisoformat(row.started_at) > self.stale_after

    def claim(
        self,
        fingerprint: str,
        config_hash: str,
        *,
        input_path: str,
        store_path: str | None,
        pixels_hash: str | None = None,
        store_holds_pixels: Callable[[], bool | None] | None = None,
        still_done: Callable[[LedgerRow], bool] | None = None,
    ) -> Claim:
        """Atomically decide whether this run processes a key, and mark it ``running`` if so.

        A new key, a ``failed`` one or a ``running`` one whose run is gone is claimed (``attempts`` + 1);
        a ``done`` key is reported done unless ``still_done(row)`` says its outputs are no longer there (the
        store was removed, or finished since for another config), when it is claimed again; a key held by a
        live run is reported busy.

        Whether a claim may resume the store (:attr:`Claim.resume`) is one rule: the latest attempt at the
        store with the same ``pixels_hash`` (the job's :func:`tiler.config.pixels_hash`; a row from before the
        column counts its config hash as its pixels hash, as the store of that time did) must have had the same
        input fingerprint, and the store must hold this job's pixels (``store_holds_pixels()``, asked only then:
        what the caller reads from the store, None when there is none; not given: not asked). The store, not the
        latest attempt of any config, says what it holds: an attempt that failed before it replaced the store
        (another archive config on the same root, stopped or failed while planning) leaves the store to
        whoever wrote it, so the next claim replaces it instead of resuming another config's pixels.
        """
        with self._transaction() as conn:
            row = self.get(fingerprint, config_hash)
            if row is not None and row.status == "done" and (still_done is None or still_done(row)):
                return Claim("done", row, resume=True)
            if row is not None and row.status == "running" and not self._stale(row):
                return Claim("busy", row, resume=True)
            same_pixels = pixels_hash if pixels_hash is not None else config_hash
            last = conn.execute(
                "SELECT fingerprint FROM runs WHERE store_path = ? AND "
                "(config_hash = ? OR COALESCE(pixels_hash, config_hash) = ?) ORDER BY started_at DESC LIMIT 1",
                (store_path, config_hash, same_pixels),
            ).fetchone()
            resume = last is not None and last[0] == fingerprint and (
                store_holds_pixels is None or store_holds_pixels() is not False
            )
            started = now()
            if row is None:
                conn.execute(
                    f"INSERT INTO runs ({self._COLUMNS}) "
                    "VALUES (?, ?, ?, ?, 'running', NULL, NULL, NULL, NULL, ?, NULL, 1, ?, ?, ?)",
                    (fingerprint, config_hash, input_path, store_path, started, self.host, self.pid, pixels_hash),
                )
            else:
                conn.execute(
                    "UPDATE runs SET status = 'running', input_path = ?, store_path = ?, started_at = ?, "
                    "finished_at = NULL, attempts = attempts + 1, host = ?, pid = ?, "
                    "pixels_hash = COALESCE(?, pixels_hash) WHERE fingerprint = ? AND config_hash = ?",
                    (input_path, store_path, started, self.host, self.pid, pixels_hash, fingerprint, config_hash),
                )
            claimed = self.get(fingerprint, config_hash)
        if claimed is None:  # pragma: no cover - the row was written in the same transaction
            raise RuntimeError("ledger row vanished inside its transaction")
        return Claim("claimed", claimed, resume=resume)

    def finish(
        self,
        fingerprint: str,
        config_hash: str,
        *,
        status: Literal["done", "failed"],
        error: str | None = None,
        scores: Mapping[str, Any] | None = None,
        outputs: Mapping[str, str] | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> LedgerRow:
        """Record the end of a claimed attempt and return the row."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, scores = ?, outputs = ?, summary = ?, "
                "finished_at = ? WHERE fingerprint = ? AND config_hash = ?",
                (
                    status, error, _dumps(scores), _dumps(outputs), _dumps(summary), now(),
                    fingerprint, config_hash,
                ),
            )
        row = self.get(fingerprint, config_hash)
        if row is None:
            raise RuntimeError(f"ledger {self.path} lost the row of {fingerprint[:12]}/{config_hash}")
        return row

    def record_failure(self, fingerprint: str, config_hash: str, *, input_path: str, error: str) -> LedgerRow:
        """Record an input that failed before it could be claimed (unreadable, bad per-input config)."""
        claim = self.claim(fingerprint, config_hash, input_path=input_path, store_path=None)
        if claim.state != "claimed":
            return claim.row
        return self.finish(fingerprint, config_hash, status="failed", error=error)
