"""Archive runs: one job template applied to many inputs, with a SQLite ledger so reruns do only new work.

An archive file is a job file (the sections of :class:`tiler.config.JobConfig`) plus an ``archive``
section (see ``configs/archive.yaml``)::

    archive:
      root: ../out/nightly          # output root: ledger.sqlite, reports, one folder per input
      manifest: null                # or a file listing one input path per line
    input:
      path: ../scenes/*.tif         # a glob (recursive ** allowed) unless archive.manifest is given
    model: {weights: ../models/satellite-demo.pt}
    scoring:
      truth: "{stem}_truth.tif"     # optional per-input truth pattern, relative to the input's folder

Rules decided here, stated once:

* **Inputs.** ``input.path`` is a glob, resolved against the config file's directory; or
  ``archive.manifest`` names a text file with one input per line (blank lines and ``#`` comments
  skipped; relative lines resolved against the manifest's directory). Exactly one of the two. Matches
  inside ``archive.root`` and truth files of other matched inputs are left out. An empty match is a
  :class:`~tiler.errors.ConfigError` (a mistyped glob must not look like a quiet night).
* **Outputs.** Each input gets the store ``<root>/<stem>/<stem>.zarr`` (its exports land beside it);
  the stem is the file name without its suffix (``.nii.gz``, ``.ome.tif`` and ``.ome.zarr`` count as
  one suffix). Two inputs with the same stem are a ConfigError. ``output.path`` must not be written.
* **Truth.** ``scoring.truth`` may use ``{stem}`` and ``{name}`` (the input's file name); a relative
  result is resolved against the input's directory. ``archive.missing_truth`` says whether an input
  whose truth file is missing fails (``fail``, the default) or runs unscored (``unscored``).
* **Identity.** A ledger row is keyed by (input fingerprint, config hash). The fingerprint is the
  sha256 of the file's size, modification time (ns) and its first and last MiB — cheap for huge
  rasters, and it changes whenever the file is rewritten or touched (a directory input such as a
  zarr store hashes the names, sizes and times of its files). The config hash is
  :func:`tiler.config.config_hash` of the per-input JobConfig, so it covers what decides the output
  pixels, not scoring, exports or scheduling: changing only those does not reprocess done inputs.
* **Ledger.** ``<root>/ledger.sqlite``: an input already ``done`` with the same key is skipped; a
  ``failed`` one is retried (``attempts`` counts tries); a ``running`` one held by a live run (same
  host and pid alive, or started less than ``archive.stale_after_hours`` ago on another host) is
  left to it, so two overlapping runs never compute one input twice. Claims are made in
  ``BEGIN IMMEDIATE`` transactions with a busy timeout (rollback journal, not WAL, so the root may be
  on a network file system). A retry of the same key resumes the store from its block records; a
  new key overwrites the store.
* **Failures.** Every input is attempted: a :class:`~tiler.errors.TilerError` or any other exception
  is recorded with its message (naming the input) and the run moves on. The run's exit code is 0
  when nothing failed, 1 when some input failed, 2 when the archive itself cannot start (bad config).
* **Reports.** ``report-<UTC time>.json``/``.md`` and ``latest.json``/``.md`` in the root list every
  input of the run as done, skipped or failed, with scores and errors.
"""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import json
import math
import os
import socket
import sqlite3
import string
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from tiler.config import JobConfig, apply_overrides, config_hash, parse_config
from tiler.errors import ConfigError, OutputError, TilerError
from tiler.io.store import pid_alive

__all__ = [
    "ArchiveConfig",
    "ArchiveItem",
    "ArchiveReport",
    "ArchiveSection",
    "Claim",
    "Ledger",
    "LedgerRow",
    "add_parser",
    "fingerprint",
    "input_stem",
    "load_archive",
    "main",
    "run_archive",
    "run_from_args",
]

LEDGER_NAME = "ledger.sqlite"
EDGE_BYTES = 1 << 20
_TRUTH_FIELDS = ("stem", "name")
_DOUBLE_SUFFIXES = (".nii.gz", ".ome.tiff", ".ome.tif", ".ome.zarr")


# ---------------------------------------------------------------------------------------------------
# configuration


class ArchiveSection(BaseModel):
    """The ``archive`` section: where outputs, ledger and reports go, and how inputs are listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Annotated[str, Strict(), Field(min_length=1)]
    manifest: Annotated[str, Strict(), Field(min_length=1)] | None = None
    missing_truth: Literal["fail", "unscored"] = "fail"
    busy_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    stale_after_hours: Annotated[float, Field(gt=0)] = 24.0


_SECTION_FIXES = {
    "root": "set archive.root to the output folder, e.g. root: ../out/nightly",
    "manifest": "set archive.manifest to a text file with one input path per line, or null",
    "missing_truth": "use fail or unscored",
    "busy_timeout_s": "use a positive number of seconds, e.g. 60",
    "stale_after_hours": "use a positive number of hours, e.g. 24",
}


def input_stem(path: str) -> str:
    """Return the name an input's outputs take: its file name without the suffix (``a.nii.gz`` → ``a``)."""
    name = Path(path.rstrip("/")).name
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


@dataclass(frozen=True)
class ArchiveConfig:
    """A validated archive file: the archive section and the job template it applies to every input.

    Attributes:
        source: The config file (for messages and reports).
        archive: The archive section, with ``root`` and ``manifest`` made absolute.
        template: The job sections as a mapping, with ``input.path`` (the glob) and ``model.weights``
            absolute, ``output.path`` unset and ``scoring.truth`` kept as the pattern written.

    """

    source: str
    archive: ArchiveSection
    template: Mapping[str, Any]

    @property
    def root(self) -> Path:
        """The output root."""
        return Path(self.archive.root)

    @property
    def truth_pattern(self) -> str | None:
        """The per-input truth pattern, or None when the archive is not scored."""
        scoring = self.template.get("scoring") or {}
        truth = scoring.get("truth") if isinstance(scoring, Mapping) else None
        return truth if isinstance(truth, str) else None

    def store_path(self, input_path: str) -> str:
        """Return ``<root>/<stem>/<stem>.zarr`` for an input."""
        stem = input_stem(input_path)
        return str(self.root / stem / f"{stem}.zarr")

    def truth_path(self, input_path: str) -> str | None:
        """Return the input's truth file from the pattern (relative → the input's directory), or None."""
        pattern = self.truth_pattern
        if pattern is None:
            return None
        text = pattern.format(stem=input_stem(input_path), name=Path(input_path).name)
        text = os.path.expanduser(text)
        if _is_remote(text) or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(os.path.dirname(input_path), text))

    def inputs(self) -> list[str]:
        """Return the inputs of this archive, absolute and in a stable (sorted or manifest) order.

        Raises:
            ConfigError: The manifest cannot be read, nothing matched, or two inputs share a stem.

        """
        if self.archive.manifest is not None:
            found = _read_manifest(self.archive.manifest)
            where = f"archive.manifest {self.archive.manifest}"
        else:
            pattern = str(self.template["input"]["path"])
            found = sorted(os.path.abspath(p) for p in glob.glob(pattern, recursive=True))
            where = f"input.path {pattern!r}"
        root = os.path.abspath(self.root)
        found = [p for p in found if os.path.commonpath([root, os.path.abspath(p)]) != root]
        truths = {self.truth_path(p) for p in found} - {None}
        inputs = [p for p in found if p not in truths]
        if not inputs:
            raise ConfigError(
                f"{self.source}: {where} lists no inputs (outputs under archive.root and truth files are "
                "left out); fix: check the glob or manifest and that the files exist"
            )
        by_stem: dict[str, list[str]] = {}
        for p in inputs:
            by_stem.setdefault(input_stem(p), []).append(p)
        clashes = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
        if clashes:
            stem, paths = next(iter(clashes.items()))
            raise ConfigError(
                f"{self.source}: {where}: {len(clashes)} stem(s) are shared by several inputs, which would "
                f"write the same store (e.g. {stem!r}: {', '.join(paths)}); fix: rename the files, or split "
                "them into archives with different archive.root"
            )
        return inputs

    def job_for(self, input_path: str) -> JobConfig:
        """Return the JobConfig of one input (its path, its store and its truth file filled in).

        Raises:
            ConfigError: The template does not validate for this input, or its truth file is missing
                and ``archive.missing_truth`` is ``fail``.

        """
        data = copy.deepcopy(dict(self.template))
        data["input"] = {**(data.get("input") or {}), "path": input_path}
        data["output"] = {**(data.get("output") or {}), "path": self.store_path(input_path)}
        truth = self.truth_path(input_path)
        if truth is not None and not _is_remote(truth) and not os.path.exists(truth):
            if self.archive.missing_truth == "fail":
                raise ConfigError(
                    f"{input_path}: its truth file {truth} (scoring.truth {self.truth_pattern!r}) does not "
                    "exist; fix: add it, or set archive.missing_truth: unscored to run such inputs unscored"
                )
            truth = None
        if truth is not None or self.truth_pattern is not None:
            data["scoring"] = {**(data.get("scoring") or {}), "truth": truth}
        return parse_config(data, source=f"{self.source} (input {input_path})")


def _is_remote(path: str) -> bool:
    return path.startswith("/vsi") or "://" in path


def _read_manifest(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"archive.manifest: {path} cannot be read ({exc}); fix: point it at a text file with one "
            "input path per line"
        ) from None
    base = os.path.dirname(path)
    out: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        text = os.path.expanduser(text)
        full = text if _is_remote(text) or os.path.isabs(text) else os.path.join(base, text)
        full = full if _is_remote(full) else os.path.normpath(full)
        if full not in out:
            out.append(full)
    return out


def _resolve_local(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value or _is_remote(value):
        return value
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(base, expanded))


def _section_error(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = "archive." + ".".join(str(p) for p in err["loc"])
        name = str(err["loc"][0]) if err["loc"] else ""
        value = err.get("input")
        if err["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing; fix: {_SECTION_FIXES.get(name, '')}")
        elif err["type"] == "extra_forbidden":
            lines.append(
                f"{source}: {key}: unknown key (got {json.dumps(value, default=str)}); "
                f"fix: remove it, or use one of: {', '.join(ArchiveSection.model_fields)}"
            )
        else:
            lines.append(
                f"{source}: {key}: {err['msg'].lower()} (got {json.dumps(value, default=str)}); "
                f"fix: {_SECTION_FIXES.get(name, 'see configs/archive.yaml')}"
            )
    head = f"{len(lines)} problem{'s' if len(lines) != 1 else ''} in the archive section:\n"
    return ConfigError(head + "\n".join(lines))


def _check_truth_pattern(pattern: Any, source: str) -> None:
    if pattern is None:
        return
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(
            f"{source}: scoring.truth: must be a path pattern or null (got {json.dumps(pattern)}); "
            'fix: write e.g. "{stem}_truth.tif"'
        )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ConfigError(
            f"{source}: scoring.truth: {pattern!r} is not a valid pattern ({exc}); "
            'fix: use {stem} or {name} in braces, e.g. "{stem}_truth.tif"'
        ) from None
    bad = [f for f in fields if f not in _TRUTH_FIELDS]
    if bad:
        raise ConfigError(
            f"{source}: scoring.truth: placeholder {{{bad[0]}}} in {pattern!r} is unknown; "
            "fix: use {stem} (file name without suffix) or {name} (file name)"
        )


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str], str | None]:
    """Split ``--set`` items into archive-section ones, job-template ones and a raw truth pattern."""
    archive, job, truth = [], [], None
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith("archive."):
            archive.append(item)
        elif key == "scoring.truth":
            truth = item.partition("=")[2]
        else:
            job.append(item)
    return archive, job, truth


def _parse_value(text: str, key: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{source}: override {key}: value {text!r} is not valid YAML ({exc}); fix: quote strings"
        ) from None


def load_archive(path: str | Path, overrides: Sequence[str] = ()) -> ArchiveConfig:
    """Read and validate an archive file.

    Relative paths in the file (``archive.root``, ``archive.manifest``, the ``input.path`` glob and
    ``model.weights``) are resolved against its directory, those given in ``overrides`` against the
    current working directory; ``scoring.truth`` stays a pattern resolved per input.

    Args:
        path: The YAML file.
        overrides: ``key.path=value`` strings (``archive.root=/data/out``, ``tiling.overlap=16``).

    Raises:
        ConfigError: A missing or invalid file, section, key or value; one line per problem.

    """
    file = Path(path)
    source = str(file)
    if not file.is_file():
        raise ConfigError(f"{file}: archive config does not exist or is not a file; fix: check the path")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{file}: cannot be read as YAML ({exc}); fix: correct the file") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: the top level must be a mapping with an archive section and the job sections; "
            "fix: see configs/archive.yaml"
        )
    base = file.resolve().parent
    raw_section = data.pop("archive", None)
    if not isinstance(raw_section, dict):
        raise ConfigError(
            f"{file}: archive: required section is missing or not a mapping (got {json.dumps(raw_section)}); "
            "fix: add `archive:` with at least `root: <output folder>`"
        )
    section = {k: _resolve_local(v, base) if k in ("root", "manifest") else v for k, v in raw_section.items()}
    archive_sets, job_sets, truth_set = _split_overrides(overrides)
    for item in archive_sets:
        key, _, text = item.partition("=")
        name = key.strip().split(".", 1)[1]
        value = _parse_value(text, key, f"{file} --set")
        section[name] = _resolve_local(value, Path.cwd()) if name in ("root", "manifest") else value
    try:
        archive = ArchiveSection.model_validate(section)
    except ValidationError as exc:
        raise _section_error(exc, source) from None

    for sec, key in (("input", "path"), ("model", "weights")):
        part = data.get(sec)
        if isinstance(part, dict) and key in part:
            part[key] = _resolve_local(part[key], base)
    data = apply_overrides(data, job_sets, source=f"{file} --set")
    if truth_set is not None:
        text = truth_set.strip()  # kept raw: "{stem}_truth.tif" is not valid YAML
        truth = None if text in ("", "null", "~", "None") else text.strip("'\"")
        data["scoring"] = {**(data.get("scoring") or {}), "truth": truth}
    return _validated(source, archive, data)


def _validated(source: str, archive: ArchiveSection, data: dict[str, Any]) -> ArchiveConfig:
    output = data.get("output") or {}
    if isinstance(output, dict) and output.get("path") is not None:
        raise ConfigError(
            f"{source}: output.path: is set by the archive to <archive.root>/<stem>/<stem>.zarr "
            f"(got {json.dumps(output['path'])}); fix: remove output.path and set archive.root"
        )
    given = (data.get("input") or {}).get("path") if isinstance(data.get("input"), dict) else None
    if (given is None) == (archive.manifest is None):
        both = "both are set" if given is not None else "neither is set"
        raise ConfigError(
            f"{source}: input.path / archive.manifest: {both} (input.path={json.dumps(given)}, "
            f"archive.manifest={json.dumps(archive.manifest)}); fix: give a glob in input.path, or a "
            "manifest file in archive.manifest, not both"
        )
    scoring = data.get("scoring")
    _check_truth_pattern(scoring.get("truth") if isinstance(scoring, dict) else None, source)
    probe = copy.deepcopy(data)
    probe["input"] = {**(probe.get("input") or {}), "path": given or "<manifest entry>"}
    probe["output"] = {**(probe.get("output") or {}), "path": str(Path(archive.root) / "x" / "x.zarr")}
    if isinstance(probe.get("scoring"), dict) and probe["scoring"].get("truth") is not None:
        probe["scoring"]["truth"] = "<truth>"
    parse_config(probe, source=source)  # every template problem, before any input runs
    template = copy.deepcopy(data)
    template.setdefault("input", {})
    return ArchiveConfig(source=source, archive=archive, template=template)


# ---------------------------------------------------------------------------------------------------
# fingerprints


def fingerprint(path: str, *, edge_bytes: int = EDGE_BYTES) -> str:
    """Return a cheap identity of an input: sha256 of size, mtime (ns), first and last ``edge_bytes``.

    A directory (e.g. a zarr input) hashes the relative names, sizes and mtimes of its files instead.
    A remote path (URL, GDAL virtual path) is identified by the path alone.

    Raises:
        OSError: The path does not exist or cannot be read.

    """
    digest = hashlib.sha256(b"tiler-fingerprint-v1\0")
    if _is_remote(path):
        digest.update(b"remote\0" + path.encode())
        return digest.hexdigest()
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                digest.update(f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        return digest.hexdigest()
    st = os.stat(path)
    digest.update(f"file\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(edge_bytes))
        if st.st_size > edge_bytes:
            fh.seek(max(edge_bytes, st.st_size - edge_bytes))
            digest.update(fh.read(edge_bytes))
    return digest.hexdigest()


def _missing_fingerprint(path: str) -> str:
    return "missing:" + hashlib.sha256(path.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# ledger


def _now() -> str:
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


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Ledger.claim`.

    Attributes:
        state: ``claimed`` (this run must process the input), ``done`` (already done: skip) or
            ``busy`` (another live run holds it: skip).
        row: The row after the claim.
        resume: Whether the store may be resumed from its block records (the last attempt at this
            store had the same key); otherwise an existing store is overwritten.

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
    PRIMARY KEY (fingerprint, config_hash)
);
CREATE INDEX IF NOT EXISTS runs_store ON runs (store_path, started_at);
"""


def _json_safe(value: Any) -> Any:
    """Return ``value`` with NaN/inf as None and numpy scalars/arrays as Python values."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(_json_safe(value), sort_keys=True)


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
        except OutputError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(
                f"{self.path}: the archive ledger cannot be opened ({exc}); fix: make archive.root writable, "
                "or move a damaged ledger aside (every input is then reprocessed)"
            ) from exc

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
         pid) = values
        return LedgerRow(
            fingerprint=fp, config_hash=ch, input_path=inp, store_path=store, status=status, error=error,
            scores=json.loads(scores) if scores else None, outputs=json.loads(outputs) if outputs else None,
            summary=json.loads(summary) if summary else None, started_at=started, finished_at=finished,
            attempts=int(attempts), host=host, pid=pid,
        )

    _COLUMNS = (
        "fingerprint, config_hash, input_path, store_path, status, error, scores, outputs, summary, "
        "started_at, finished_at, attempts, host, pid"
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

    def claim(self, fingerprint: str, config_hash: str, *, input_path: str, store_path: str | None) -> Claim:
        """Atomically decide whether this run processes a key, and mark it ``running`` if so.

        A new key, a ``failed`` one or a ``running`` one whose run is gone is claimed (``attempts`` + 1);
        a ``done`` key is reported done; a key held by a live run is reported busy.
        """
        with self._transaction() as conn:
            row = self.get(fingerprint, config_hash)
            if row is not None and row.status == "done":
                return Claim("done", row, resume=True)
            if row is not None and row.status == "running" and not self._stale(row):
                return Claim("busy", row, resume=True)
            last = conn.execute(
                "SELECT fingerprint, config_hash FROM runs WHERE store_path = ? "
                "ORDER BY started_at DESC LIMIT 1",
                (store_path,),
            ).fetchone()
            resume = last is not None and tuple(last) == (fingerprint, config_hash)
            now = _now()
            if row is None:
                conn.execute(
                    f"INSERT INTO runs ({self._COLUMNS}) "
                    "VALUES (?, ?, ?, ?, 'running', NULL, NULL, NULL, NULL, ?, NULL, 1, ?, ?)",
                    (fingerprint, config_hash, input_path, store_path, now, self.host, self.pid),
                )
            else:
                conn.execute(
                    "UPDATE runs SET status = 'running', input_path = ?, store_path = ?, started_at = ?, "
                    "finished_at = NULL, attempts = attempts + 1, host = ?, pid = ? "
                    "WHERE fingerprint = ? AND config_hash = ?",
                    (input_path, store_path, now, self.host, self.pid, fingerprint, config_hash),
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
                    status, error, _dumps(scores), _dumps(outputs), _dumps(summary), _now(),
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


# ---------------------------------------------------------------------------------------------------
# running


@dataclass
class ArchiveItem:
    """What a run did with one input: ``done`` (computed now), ``skipped`` or ``failed``."""

    input: str
    stem: str
    status: Literal["done", "skipped", "failed"]
    store: str | None = None
    reason: str | None = None
    error: str | None = None
    scores: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None
    attempts: int = 0
    fingerprint: str | None = None
    config_hash: str | None = None
    seconds: float | None = None


@dataclass
class ArchiveReport:
    """One archive run: every input's outcome and where the report files were written."""

    config: str
    root: str
    engine: str
    started_at: str
    finished_at: str = ""
    seconds: float = 0.0
    items: list[ArchiveItem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Inputs per outcome, and the total."""
        out = {s: sum(1 for i in self.items if i.status == s) for s in ("done", "skipped", "failed")}
        return {**out, "total": len(self.items)}

    @property
    def exit_code(self) -> int:
        """0 when no input failed, 1 otherwise."""
        return 1 if self.counts["failed"] else 0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report as a mapping."""
        return _json_safe(
            {
                "config": self.config, "root": self.root, "engine": self.engine,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "seconds": round(self.seconds, 3), "counts": self.counts,
                "exit_code": self.exit_code, "items": [asdict(i) for i in self.items],
            }
        )

    def to_markdown(self) -> str:
        """Return the human-readable Markdown report."""
        c = self.counts
        lines = [
            f"# Archive run {self.started_at}",
            "",
            f"- config: `{self.config}`",
            f"- root: `{self.root}`",
            f"- engine: {self.engine}, {self.seconds:.1f} s",
            "",
            f"**{c['done']} done, {c['skipped']} skipped, {c['failed']} failed** of {c['total']} inputs.",
        ]
        sections = (
            ("failed", "Failed", ("input", "attempts", "error")),
            ("done", "Done", ("input", "fwiou", "miou", "seconds", "store")),
            ("skipped", "Skipped", ("input", "fwiou", "miou", "reason")),
        )
        for status, title, columns in sections:
            items = [i for i in self.items if i.status == status]
            if not items:
                continue
            lines += ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(i, col) for col in columns) + " |" for i in items]
        return "\n".join(lines) + "\n"

    def write(self, root: Path) -> list[str]:
        """Write ``report-<time>.json/.md`` and ``latest.json/.md`` into ``root``; return the paths."""
        stamp = datetime.fromisoformat(self.started_at).strftime("%Y%m%dT%H%M%S.%fZ")
        texts = {"json": json.dumps(self.to_dict(), indent=2) + "\n", "md": self.to_markdown()}
        files: list[str] = []
        for ext, text in texts.items():
            for name in (f"report-{stamp}.{ext}", f"latest.{ext}"):
                path = root / name
                tmp = root / f".{name}.{os.getpid()}.tmp"
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, path)
                files.append(str(path))
        self.files = files
        return files


def _cell(item: ArchiveItem, column: str) -> str:
    if column in ("fwiou", "miou"):
        value = (item.scores or {}).get(column)
        return f"{value:.4f}" if isinstance(value, int | float) else "-"
    if column == "seconds":
        return f"{item.seconds:.1f}" if item.seconds is not None else "-"
    if column == "input":
        return f"`{item.input}`"
    value = getattr(item, column)
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _error_text(exc: BaseException, input_path: str) -> str:
    text = str(exc) if isinstance(exc, TilerError) else f"{type(exc).__name__}: {exc}"
    if input_path not in text:
        text = f"{input_path}: {text}"
    return text


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _process(
    archive: ArchiveConfig, ledger: Ledger, input_path: str, *, engine: str, quiet: bool
) -> ArchiveItem:
    """Run (or skip) one input and record the outcome; never raises for a bad input."""
    stem = input_stem(input_path)
    item = ArchiveItem(input=input_path, stem=stem, status="failed", store=archive.store_path(input_path))
    try:
        item.fingerprint = fingerprint(input_path)
    except OSError as exc:
        item.fingerprint = _missing_fingerprint(input_path)
        item.config_hash = "-"
        item.error = f"{input_path}: the input cannot be read ({exc}); fix: check that the file exists"
        row = ledger.record_failure(item.fingerprint, "-", input_path=input_path, error=item.error)
        item.attempts = row.attempts
        return item
    try:
        cfg = archive.job_for(input_path)
        item.config_hash = config_hash(cfg)
    except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
        item.config_hash = "-"
        item.error = _error_text(exc, input_path)
        row = ledger.record_failure(item.fingerprint, "-", input_path=input_path, error=item.error)
        item.attempts = row.attempts
        return item
    claim = ledger.claim(item.fingerprint, item.config_hash, input_path=input_path, store_path=item.store)
    item.attempts = claim.row.attempts
    if claim.state != "claimed":
        item.status, item.scores, item.outputs = "skipped", claim.row.scores, claim.row.outputs
        item.reason = (
            f"done on {claim.row.finished_at}"
            if claim.state == "done"
            else f"being processed by pid {claim.row.pid} on {claim.row.host} since {claim.row.started_at}"
        )
        return item
    t0 = time.perf_counter()
    try:
        from tiler.segment import run_segment

        overwrite = not claim.resume and os.path.exists(str(item.store))
        result = run_segment(cfg, overwrite=overwrite, quiet=quiet, engine=engine)
    except BaseException as exc:
        item.seconds = time.perf_counter() - t0
        item.error = _error_text(exc, input_path)
        if not isinstance(exc, Exception):
            item.error = f"{input_path}: interrupted ({type(exc).__name__})"
        elif not isinstance(exc, TilerError):
            _log(quiet, "".join(traceback.format_exception(exc)))
        ledger.finish(item.fingerprint, item.config_hash, status="failed", error=item.error)
        if not isinstance(exc, Exception):
            raise
        return item
    item.seconds = time.perf_counter() - t0
    item.status, item.scores, item.outputs = "done", result.scores, dict(result.outputs)
    ledger.finish(
        item.fingerprint, item.config_hash, status="done", scores=result.scores, outputs=result.outputs,
        summary=result.summary,
    )
    return item


def _describe(item: ArchiveItem) -> str:
    if item.status == "failed":
        return f"FAILED (attempt {item.attempts}): {item.error}"
    score = (item.scores or {}).get("fwiou")
    extra = f", fwiou {score:.4f}" if isinstance(score, int | float) else ""
    if item.status == "skipped":
        return f"skipped ({item.reason}{extra})"
    return f"done in {item.seconds or 0:.1f} s{extra}"


def run_archive(archive: ArchiveConfig, *, engine: str = "ray", quiet: bool = False) -> ArchiveReport:
    """Process every input of an archive not already done with the same fingerprint and config hash.

    Args:
        archive: The loaded archive (see :func:`load_archive`).
        engine: ``ray`` or ``local`` (in-process), passed to :func:`tiler.segment.run_segment`.
        quiet: No progress lines on stderr.

    Returns:
        The run report (also written to the root as JSON and Markdown); its ``exit_code`` is 1 when
        some input failed.

    Raises:
        ConfigError: The inputs cannot be listed (see :meth:`ArchiveConfig.inputs`).
        OutputError: The root or the ledger cannot be written.

    """
    if engine not in ("ray", "local"):
        raise ConfigError(f"engine: {engine!r} is not an engine; fix: use ray or local")
    t0 = time.perf_counter()
    report = ArchiveReport(config=archive.source, root=str(archive.root), engine=engine, started_at=_now())
    inputs = archive.inputs()
    ledger = Ledger(
        archive.root / LEDGER_NAME,
        busy_timeout_s=archive.archive.busy_timeout_s,
        stale_after_hours=archive.archive.stale_after_hours,
    )
    try:
        for n, input_path in enumerate(inputs, 1):
            item = _process(archive, ledger, input_path, engine=engine, quiet=quiet)
            report.items.append(item)
            _log(quiet, f"[{n}/{len(inputs)}] {input_path}: {_describe(item)}")
    finally:
        ledger.close()
        report.finished_at = _now()
        report.seconds = time.perf_counter() - t0
        report.write(archive.root)
    return report


# ---------------------------------------------------------------------------------------------------
# command line


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="archive YAML file (an archive section plus a job template)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key, e.g. --set tiling.overlap=16 or --set archive.root=/data/out (repeatable)",
    )
    parser.add_argument(
        "--engine", choices=("ray", "local"), default="ray",
        help="ray (default: RAY_ADDRESS or an embedded local Ray) or local (in-process)",
    )
    parser.add_argument(  # SUPPRESS: keeps `tiler --quiet archive ...` from being reset by this default
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress lines"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run an archive from parsed arguments; return 0 (nothing failed), 1 (some failed) or 2 (bad setup)."""
    try:
        archive = load_archive(args.config, args.overrides)
        report = run_archive(archive, engine=args.engine, quiet=bool(getattr(args, "quiet", False)))
    except TilerError as exc:
        print(f"tiler archive: error: {exc}", file=sys.stderr)
        return 2
    c = report.counts
    print(
        f"{c['done']} done, {c['skipped']} skipped, {c['failed']} failed of {c['total']} inputs; "
        f"report: {report.root}/latest.md"
    )
    return report.exit_code


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tiler archive CONFIG`` on argparse subparsers (its ``func`` returns the exit code)."""
    parser = subparsers.add_parser(
        "archive",
        help="segment every input of an archive, skipping those already done (SQLite ledger)",
        description="Apply one job template to every input of a glob or manifest; reruns process only new, "
        "changed or failed inputs. Exit code: 0 nothing failed, 1 some input failed, 2 bad config.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipelines.archive``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.archive",
        description="Segment every input of an archive, skipping those already done (SQLite ledger).",
    )
    _add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
