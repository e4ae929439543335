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
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from tiler.errors import OutputError

TMP_PREFIX = ".tiler-tmp-"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
LOW_SPACE = 64 * 2**20
_READ_SIZE = 2**20

BeforeMove = Callable[[Path, Path], None]
"""Called as ``before_move(temporary, final)`` once a write is complete and fsynced, just before the move."""


def host_tag() -> str:
    """Eight hex digits naming this host in temporary names (host names may hold ``-``)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(final: str | os.PathLike[str], *, label: str = "") -> Path:
    """A fresh temporary name beside ``final`` that keeps its name (and suffix) at the end.

    >>> temp_path("/out/pred.nii.gz").name.endswith("-pred.nii.gz")
    True
    """
    final = Path(final)
    middle = f"{label}-" if label else ""
    return final.with_name(f"{TMP_PREFIX}{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{middle}{final.name}")


def output_error(path: str | os.PathLike[str], exc: BaseException, *, what: str = "write") -> OutputError:
    """The OutputError for an OS (or GDAL) failure writing ``path``: the path, the error, the free space, the fix.

    GDAL reports a full disk as a generic I/O error, so a folder with less than :data:`LOW_SPACE` bytes free is
    called nearly full whatever the error says.
    """
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
    text = " ".join(str(exc).split())  # one line, whatever GDAL or the OS said
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


def content_digest(path: str | os.PathLike[str]) -> str:
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
    path = Path(path)
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
    listing = "\n".join(sorted(lines)).encode()
    return f"sha256:{hashlib.sha256(listing).hexdigest()}"


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, final: Path, what: str) -> Iterator[None]:
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
    final: str | os.PathLike[str], *, what: str = "write", before_move: BeforeMove | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` for a writer that takes a file name; move it into place on success.

    The file is fsynced and ``os.replace``-d onto ``final`` (replacing a file there) when the block ends without
    an exception; ``before_move(tmp, final)`` runs between the two. On any exception (the hook's included) the
    temporary is removed and nothing appears at ``final``; an OSError (disk full, permission) becomes an
    :class:`OutputError` naming ``final`` and the fix.
    """
    final = Path(final)
    tmp = temp_path(final)
    with _removed_on_failure(tmp, final, what):
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"writing {final} produced no file (expected the temporary {tmp.name}).")
        _fsync_file(tmp)
        if before_move is not None:
            before_move(tmp, final)
        os.replace(tmp, final)
        fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_file(
    final: str | os.PathLike[str], mode: str = "wb", *, before_move: BeforeMove | None = None
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
    path: str | os.PathLike[str], data: bytes, *, before_move: BeforeMove | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (``before_move``: see :func:`atomic_path`)."""
    with atomic_file(path, "wb", before_move=before_move) as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike[str], payload: Mapping[str, Any], *, indent: int | None = None) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (serialised first, so a bad value writes nothing)."""
    text = json.dumps(payload, indent=indent)
    write_bytes_atomic(path, text.encode())


@contextlib.contextmanager
def atomic_dir(
    final: str | os.PathLike[str],
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
    final = Path(final)
    if not replace and os.path.lexists(final):
        raise OutputError(
            f"cannot {what} {final}: it already exists and was left untouched. Choose another path, or remove it "
            f"by hand if it is yours to delete."
        )
    tmp = temp_path(final)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise output_error(final, exc, what=what) from exc
    with _removed_on_failure(tmp, final, what):
        yield tmp
        if before_move is not None:
            _fsync_tree(tmp)
            before_move(tmp, final)
        _move_dir_into_place(tmp, final, replace=replace)


def _exists_error(final: Path) -> OutputError:
    return OutputError(
        f"{final} appeared while it was being created (another process is writing the same output?); "
        f"it was left untouched. Choose another output path, or wait for the other job and rerun."
    )


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
def temporary_dir(folder: str | os.PathLike[str], *, label: str) -> Iterator[Path]:
    """Yield a scratch folder inside ``folder`` (a recognisable temporary name), always removed at the end."""
    tmp = temp_path(Path(folder) / label)
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


def clean_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the leftovers of killed writers in ``folder``: temporaries of this host whose pid is dead.

    Temporaries of live processes and of other hosts (a shared folder) are kept. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
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
