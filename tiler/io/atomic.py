"""Atomic writes: a file or a folder appears whole at its final path, or not at all.

Everything is first written under a temporary name in the destination's own folder (same filesystem, so the
final move is a rename), flushed to disk, then moved into place. Temporary names start with
:data:`TMP_PREFIX` and carry the writer's host tag and pid, ``.tiler-tmp-<host>-<pid>-<random>-<final name>``,
so :func:`clean_temporaries` can remove the leftovers of a killed writer without touching a live one's, and
the final name's suffix (``.nii.gz``, ``.png``) is kept for libraries that pick a format from it.

Every writer takes an optional ``before_move(tmp, final)`` hook, called once the temporary is complete and
fsynced and just before it is moved onto ``final``: the output store records there what it is about to move
in (its :func:`content_digest`), so a job killed right after the move still knows the file as its own.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> with atomic_file(folder / "a.txt", "w") as f:
...     _ = f.write("whole")
>>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
('whole', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from tiler.errors import OutputError
from tiler.io.objects import AnyPath, ObjectPath, PathArg, as_path, lexists

TMP_PREFIX = ".tiler-tmp-"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
LOW_SPACE = 64 * 2**20
_READ_SIZE = 2**20

_OBJECT_CAUSES = (
    (r"NoSuchBucket|bucket does not exist|ContainerNotFound", "the bucket does not exist (HTTP 404, NoSuchBucket)"),
    (r"SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied|Access Denied|ExpiredToken|403",
     "the server refused the credentials (HTTP 403)"),
    (r"connection refused|dns error|failed to lookup|error sending request|timed out",
     "the storage server cannot be reached"),
)
"""What a storage failure writing an object means, by a pattern of the server's or obstore's message."""

BeforeMove = Callable[[Path, AnyPath], None]
"""Called as ``before_move(temporary, final)`` once a write is complete and fsynced, just before the move."""


def host_tag() -> str:
    """Eight hex digits naming this host in temporary names (host names may hold ``-``)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _local_temp(final: AnyPath) -> Path:
    """Where a file for ``final`` is written first: beside it, or in this machine's temporary folder for an object."""
    if isinstance(final, ObjectPath):
        return temp_path(Path(tempfile.gettempdir()) / final.name)
    return temp_path(final)


def temp_path(final: str | os.PathLike[str], *, label: str = "") -> Path:
    """A fresh temporary name beside ``final`` that keeps its name (and suffix) at the end.

    >>> temp_path("/out/pred.nii.gz").name.endswith("-pred.nii.gz")
    True
    """
    final = Path(final)
    middle = f"{label}-" if label else ""
    return final.with_name(f"{TMP_PREFIX}{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{middle}{final.name}")


def output_error(path: PathArg, exc: BaseException, *, what: str = "write") -> OutputError:
    """The OutputError for an OS (or GDAL) failure writing ``path``: the path, the error, the free space, the fix.

    GDAL reports a full disk as a generic I/O error, so a folder with less than :data:`LOW_SPACE` bytes free is
    called nearly full whatever the error says.
    """
    text = " ".join(str(exc).split())  # one line, whatever GDAL or the OS said
    if isinstance(path, ObjectPath):
        cause = next((c for pattern, c in _OBJECT_CAUSES if re.search(pattern, text, re.IGNORECASE)), text[:300])
        return OutputError(
            f"cannot {what} {path}: {cause}; fix: check the bucket name, and the credentials and endpoint "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, "
            "AZURE_STORAGE_*) in the environment of every process that writes it (the driver and every Ray worker)."
        )
    code = exc.errno if isinstance(exc, OSError) else None  # GDAL errors carry CPL numbers, not errno
    free, total = _free_bytes(Path(path).parent)
    shown = f"{free / 2**20:.1f} MiB" if free is not None else "unknown"
    if total == 0:  # /proc, /sys and the like have no size: nothing is full, nothing can be stored there
        fix = "it lies on a virtual file system (like /proc or /sys) that holds no files: choose a folder on a disk"
    elif code in _NO_SPACE or (free is not None and free < LOW_SPACE):
        fix = f"the disk is full or nearly full ({shown} free): free space or choose an output folder with room"
    elif code in _NO_ACCESS:
        fix = "choose a writable output folder or fix its permissions"
    else:
        fix = f"check that the folder exists, is writable and has free space ({shown} free)"
    return OutputError(f"cannot {what} {path}: {text}; {fix}.")


def _free_bytes(folder: Path) -> tuple[int | None, int | None]:
    """Free and total bytes of the file system under ``folder`` (or its nearest existing parent); None when unknown.

    A total of 0 is a virtual file system (procfs, sysfs), not a full disk.
    """
    for candidate in (folder, *folder.parents):
        try:
            usage = shutil.disk_usage(candidate)
        except OSError:
            continue
        return int(usage.free), int(usage.total)
    return None, None


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree; never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to disk; ignored where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (deepest first), then ``folder`` itself."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                _fsync_file(path)
        fsync_dir(root)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(path: PathArg) -> str:
    """A digest of the file or folder at ``path``: ``sha256:<hex>``, the same for a temporary and its final name.

    A file: the sha256 of its bytes. A folder: the sha256 of one line per entry below it, sorted by path
    relative to it, ``<relative path> <size> <sha256 of the bytes>`` for a file and ``<relative path> -> <target>``
    for a link (so a renamed, resized, edited, added or removed file all change it; empty folders do not).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("whole")
    >>> content_digest(folder / "a.txt") == "sha256:" + hashlib.sha256(b"whole").hexdigest()
    True

    Raises:
        OSError: ``path`` or a file below it cannot be read.
    """
    path = as_path(path)
    if isinstance(path, ObjectPath):
        return _object_digest(path)
    if not path.is_dir() or path.is_symlink():
        return f"sha256:{_file_sha256(path)}"
    lines: list[str] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            entry = Path(root) / name
            rel = entry.relative_to(path).as_posix()
            if entry.is_symlink():
                lines.append(f"{rel} -> {os.readlink(entry)}")
            else:
                lines.append(f"{rel} {entry.stat().st_size} {_file_sha256(entry)}")
    return _listing_digest(lines)


def _listing_digest(lines: list[str]) -> str:
    """The digest of a folder (or key prefix) from its entry lines (``<relative path> <size> <sha256>``)."""
    return f"sha256:{hashlib.sha256(chr(10).join(sorted(lines)).encode()).hexdigest()}"


def _object_sha256(path: ObjectPath) -> tuple[int, str]:
    """The size and sha256 (hex) of an object, read chunk by chunk."""
    digest, size = hashlib.sha256(), 0
    for chunk in path.iter_bytes():
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _object_digest(path: ObjectPath) -> str:
    """:func:`content_digest` of an object, or of every object below a prefix (the same lines as for a folder)."""
    if path.is_file():
        return f"sha256:{_object_sha256(path)[1]}"
    lines = []
    for rel in path.walk_keys():
        size, hexdigest = _object_sha256(path / rel)
        lines.append(f"{rel} {size} {hexdigest}")
    if not lines:
        raise FileNotFoundError(2, "no such object", str(path))
    return _listing_digest(lines)


def _upload_tree(folder: Path, final: ObjectPath, *, last: str = "zarr.json") -> None:
    """Upload every file below the local ``folder`` under the prefix ``final``, the top-level ``last`` file last.

    A zarr hierarchy is found through its root ``zarr.json``: uploaded last, readers meet the whole tree or none.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    files.sort(key=lambda p: p.relative_to(folder).as_posix() == last)
    for file in files:
        (final / file.relative_to(folder).as_posix()).upload(file)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, final: AnyPath, what: str) -> Iterator[None]:
    """Remove the temporary ``tmp`` when the block fails; an OSError becomes the OutputError naming ``final``."""
    try:
        yield
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(final, exc, what=what) from exc
        raise


@contextlib.contextmanager
def atomic_path(
    final: PathArg, *, what: str = "write", before_move: BeforeMove | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` for a writer that takes a file name; move it into place on success.

    The file is fsynced and ``os.replace``-d onto ``final`` (replacing a file there) when the block ends without
    an exception; ``before_move(tmp, final)`` runs between the two. On any exception (the hook's included) the
    temporary is removed and nothing appears at ``final``; an OSError (disk full, permission) becomes an
    :class:`OutputError` naming ``final`` and the fix.
    """
    out = as_path(final)
    tmp = _local_temp(out)
    with _removed_on_failure(tmp, out, what):
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"writing {out} produced no file (expected the temporary {tmp.name}).")
        _fsync_file(tmp)
        if before_move is not None:
            before_move(tmp, out)
        if isinstance(out, ObjectPath):
            out.upload(tmp)  # multipart, completed last: nothing under the key until the whole file is there
            tmp.unlink()
            return
        os.replace(tmp, out)
        fsync_dir(out.parent)


@contextlib.contextmanager
def atomic_file(
    final: PathArg, mode: str = "wb", *, before_move: BeforeMove | None = None
) -> Iterator[IO[Any]]:
    """Yield an open file (``"w"`` or ``"wb"``) whose content appears at ``final`` only when the block succeeds.

    ``before_move``: see :func:`atomic_path`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file mode={mode!r}; use 'w' or 'wb'.")
    with atomic_path(final, before_move=before_move) as tmp:
        try:
            f = open(tmp, mode)
        except OSError as exc:
            raise output_error(final, exc) from exc
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomic(
    path: PathArg, data: bytes, *, before_move: BeforeMove | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (``before_move``: see :func:`atomic_path`); an object in one put."""
    where = as_path(path)
    if isinstance(where, ObjectPath) and before_move is None:
        try:
            where.write_bytes(data)
        except OSError as exc:
            raise output_error(where, exc) from exc
        return
    with atomic_file(path, "wb", before_move=before_move) as f:
        f.write(data)


def write_json_atomic(path: PathArg, payload: Mapping[str, Any], *, indent: int | None = None) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (serialised first, so a bad value writes nothing)."""
    text = json.dumps(payload, indent=indent)
    write_bytes_atomic(path, text.encode())


@contextlib.contextmanager
def atomic_dir(
    final: PathArg,
    *,
    replace: bool = False,
    what: str = "write",
    before_move: BeforeMove | None = None,
) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; rename it to ``final`` when the block succeeds.

    Args:
        final: The folder to create.
        replace: Replace an existing ``final`` (moved aside under a temporary name, the new folder renamed in,
            then the old one deleted). Without it, a ``final`` that exists (or appears while the block runs) is
            refused with OutputError and left untouched.
        what: The verb for error messages.
        before_move: Called as ``before_move(tmp, final)`` once the folder is complete, just before the move;
            with it every file below the folder is fsynced first (the hook may vouch for their content).

    Raises:
        OutputError: ``final`` exists (without ``replace``), or an OS error (disk full, permission).

    """
    out = as_path(final)
    if not replace and lexists(out):
        raise OutputError(
            f"cannot {what} {out}: it already exists and was left untouched. Choose another path, or remove it "
            f"by hand if it is yours to delete."
        )
    tmp = _local_temp(out)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise output_error(out, exc, what=what) from exc
    with _removed_on_failure(tmp, out, what):
        yield tmp
        if before_move is not None:
            _fsync_tree(tmp)
            before_move(tmp, out)
        if isinstance(out, ObjectPath):
            _upload_dir_into_place(tmp, out, replace=replace)
        else:
            _move_dir_into_place(tmp, out, replace=replace)


def _exists_error(final: AnyPath) -> OutputError:
    return OutputError(
        f"{final} appeared while it was being created (another process is writing the same output?); "
        f"it was left untouched. Choose another output path, or wait for the other job and rerun."
    )


def _upload_dir_into_place(tmp: Path, final: ObjectPath, *, replace: bool) -> None:
    """The object-storage form of :func:`_move_dir_into_place`; the local temporary is removed after.

    The old tree is deleted (its root ``zarr.json`` first), then the new one uploaded with its root ``zarr.json``
    last: a reader finds the old hierarchy, none, or the whole new one.
    """
    if final.exists():
        if not replace:
            raise _exists_error(final)
        (final / "zarr.json").unlink(missing_ok=True)  # no longer a hierarchy from here: never half old, half new
        final.remove_tree()
    _upload_tree(tmp, final)
    _remove(tmp)


def _move_dir_into_place(tmp: Path, final: Path, *, replace: bool) -> None:
    fsync_dir(tmp)
    if os.path.lexists(final):
        if not replace:
            raise _exists_error(final)
        old = temp_path(final, label="old")
        os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        _remove(old)
        return
    try:
        os.rename(tmp, final)  # replaces only an empty folder that appeared meanwhile; never one with content
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise _exists_error(final) from exc
        raise
    fsync_dir(final.parent)


@contextlib.contextmanager
def temporary_dir(folder: PathArg, *, label: str) -> Iterator[Path]:
    """Yield a scratch folder inside ``folder`` (this machine's temporary folder for a bucket), always removed."""
    local = Path(tempfile.gettempdir()) if isinstance(folder, ObjectPath) else Path(folder)
    tmp = temp_path(local / label)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise output_error(tmp, exc, what="create the temporary folder") from exc
    try:
        yield tmp
    finally:
        _remove(tmp)


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """``(host tag, pid)`` encoded in a temporary name, or None when ``name`` is not one of ours.

    >>> parse_temp_name(".tiler-tmp-0a1b2c3d-4242-deadbeef-pred.tif")
    ('0a1b2c3d', 4242)
    >>> parse_temp_name("pred.tif") is None
    True
    """
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX) :].split("-", 3)
    if len(parts) < 4 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a lock or temporary it owns is live)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temporaries(folder: PathArg) -> list[Path]:
    """Remove the leftovers of killed writers in ``folder``: temporaries of this host whose pid is dead.

    Temporaries of live processes and of other hosts (a shared folder) are kept. Returns what was removed.
    """
    removed: list[Path] = []
    # nothing is written to a bucket under a temporary name: its files are written first in the local temporary folder
    where = as_path(folder)
    local = Path(tempfile.gettempdir()) if isinstance(where, ObjectPath) else where
    try:
        entries = list(local.iterdir())
    except OSError:
        return removed
    here = host_tag()
    for entry in entries:
        owner = parse_temp_name(entry.name)
        if owner is None or owner[0] != here or pid_alive(owner[1]):
            continue
        _remove(entry)
        removed.append(entry)
    return removed
