"""The archive ledger: one SQLite row per (input fingerprint, config hash), claimed before an input runs.

The config hash is the job's (:func:`tiler.config.config_hash`: pixels, exports and scores); each row also
keeps the pixels hash (:func:`tiler.config.pixels_hash`), so a new key on an input whose store already holds
its pixels (an added export, a new truth) finishes that store again instead of computing it anew.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
        resume: Whether the store may be resumed (or finished again) from its block records: the last
            attempt at this store had the same input fingerprint and the same config hash or pixels
            hash. Otherwise an existing store is overwritten.

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


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(json_safe(value), sort_keys=True)


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            exists = self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
            if exists is None:
                with self._transaction():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
            elif not self._has_pixels_hash():
                with self._transaction():  # a ledger from before the pixels hash: its rows keep NULL there
                    if not self._has_pixels_hash():
                        self._conn.execute("ALTER TABLE runs ADD COLUMN pixels_hash TEXT")
        except OutputError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(
                f"{self.path}: the archive ledger cannot be opened ({exc}); fix: make archive.root writable, "
                "or move a damaged ledger aside (every input is then reprocessed)"
            ) from exc

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
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise OutputError(
                f"{self.path}: the archive ledger stayed locked ({exc}) past the busy timeout; fix: let the "
                "other archive run finish, or raise archive.busy_timeout_s"
            ) from exc
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @staticmethod
    def _row(values: Sequence[Any] | None) -> LedgerRow | None:
        if values is None:
            return None
        (fp, ch, inp, store, status, error, scores, outputs, summary, started, finished, attempts, host,
         pid, pixels) = values
        return LedgerRow(
            fingerprint=fp, config_hash=ch, input_path=inp, store_path=store, status=status, error=error,
            scores=json.loads(scores) if scores else None, outputs=json.loads(outputs) if outputs else None,
            summary=json.loads(summary) if summary else None, started_at=started, finished_at=finished,
            attempts=int(attempts), host=host, pid=pid, pixels_hash=pixels,
        )

    _COLUMNS = (
        "fingerprint, config_hash, input_path, store_path, status, error, scores, outputs, summary, "
        "started_at, finished_at, attempts, host, pid, pixels_hash"
    )

    def get(self, fingerprint: str, config_hash: str) -> LedgerRow | None:
        """Return the row of one key, or None."""
        cur = self._conn.execute(
            f"SELECT {self._COLUMNS} FROM runs WHERE fingerprint = ? AND config_hash = ?",
            (fingerprint, config_hash),
        )
        return self._row(cur.fetchone())

    def rows(self) -> list[LedgerRow]:
        """Return every row, oldest start first."""
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
        still_done: Callable[[LedgerRow], bool] | None = None,
    ) -> Claim:
        """Atomically decide whether this run processes a key, and mark it ``running`` if so.

        A new key, a ``failed`` one or a ``running`` one whose run is gone is claimed (``attempts`` + 1);
        a ``done`` key is reported done unless ``still_done(row)`` says its outputs are no longer there (the
        store was removed, or finished since for another config), when it is claimed again; a key held by a
        live run is reported busy. ``pixels_hash`` (the job's :func:`tiler.config.pixels_hash`) decides with
        the last attempt at the store whether a claim may resume it (see :attr:`Claim.resume`); a row from
        before the column counts its config hash as its pixels hash, as the store of that time did.
        """
        with self._transaction() as conn:
            row = self.get(fingerprint, config_hash)
            if row is not None and row.status == "done" and (still_done is None or still_done(row)):
                return Claim("done", row, resume=True)
            if row is not None and row.status == "running" and not self._stale(row):
                return Claim("busy", row, resume=True)
            last = conn.execute(
                "SELECT fingerprint, config_hash, pixels_hash FROM runs WHERE store_path = ? "
                "ORDER BY started_at DESC LIMIT 1",
                (store_path,),
            ).fetchone()
            resume = last is not None and last[0] == fingerprint and (
                last[1] == config_hash or (pixels_hash is not None and (last[2] or last[1]) == pixels_hash)
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
