"""The job lock of an output store: a lock file beside the store, so it can be taken before the store exists.

``<parent>/.<name>.lock`` is created exclusively (content and all, by hard-linking a full temporary file) and
holds the owner, pid, host and time. A lock whose pid is dead on this host is stale and taken over; holds are
re-entrant within one process, so a job can wrap creation, blocks, exports and the complete flag in one
``with store_lock(path, owner):`` while inner code takes and drops the lock again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tiler.errors import OutputError
from tiler.io.atomic import output_error, pid_alive, temp_path, write_json_atomic

__all__ = ["acquire_store_lock", "check_not_locked", "lock_path_for", "release_store_lock", "store_lock"]

_HELD: dict[str, int] = {}  # lock file -> re-entry depth in this process


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    """The lock file of the store at ``path``: ``<parent>/.<name>.lock`` (it exists before the store does)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        with open(lock, "rb") as f:
            held = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"owner": "unknown", "pid": -1, "host": "unknown"}
    return dict(held) if isinstance(held, dict) else {"owner": "unknown", "pid": -1, "host": "unknown"}


def _lock_stale(held: Mapping[str, Any]) -> bool:
    try:
        pid = int(held.get("pid", -1))
    except (TypeError, ValueError):
        return False
    return held.get("host") == socket.gethostname() and pid > 0 and not pid_alive(pid)


def _mine(held: Mapping[str, Any]) -> bool:
    return held.get("pid") == os.getpid() and held.get("host") == socket.gethostname()


def _busy_error(store: Path, held: Mapping[str, Any]) -> OutputError:
    return OutputError(
        f"output {store} is being written by job {held.get('owner')} (pid {held.get('pid')} on "
        f"{held.get('host')}); wait for it to finish or use another output."
    )


def _create_lock_file(lock: Path, payload: Mapping[str, Any]) -> bool:
    """Create ``lock`` with its content in one step (hard link of a full temporary); False if it exists."""
    tmp = temp_path(lock)
    write_json_atomic(tmp, payload)
    try:
        os.link(tmp, lock)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _take_over(lock: Path, stale: Mapping[str, Any]) -> None:
    """Remove a dead holder's lock, unless another process replaced it meanwhile (then leave theirs)."""
    aside = temp_path(lock, label="stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    moved = _read_lock(aside)
    if moved != dict(stale):  # a live job's fresh lock: put it back
        with contextlib.suppress(OSError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)


def default_owner() -> str:
    """The owner recorded in a lock taken without one: ``tiler job pid <pid> on <host>``."""
    return f"tiler job pid {os.getpid()} on {socket.gethostname()}"


def acquire_store_lock(path: str | os.PathLike[str], owner: str | None = None) -> Path:
    """Take the job lock of the store at ``path`` (which need not exist yet); re-entrant in one process.

    A lock whose holder is a dead process on this host is taken over.

    Raises:
        OutputError: another live job holds the lock, naming it; or the folder cannot be written.

    """
    path = Path(path)
    lock = lock_path_for(path)
    payload = {"owner": owner or default_owner(), "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(lock, exc, what="create the job lock") from exc
    for _ in range(5):
        if _create_lock_file(lock, payload):
            _HELD[str(lock)] = 1
            return lock
        held = _read_lock(lock)
        if held is None:
            continue
        if _mine(held):
            _HELD[str(lock)] = _HELD.get(str(lock), 0) + 1
            return lock
        if _lock_stale(held):
            _take_over(lock, held)
            continue
        raise _busy_error(path, held)
    raise OutputError(f"could not take the lock {lock}; another job keeps taking it. Retry later.")


def release_store_lock(path: str | os.PathLike[str]) -> None:
    """Drop one hold of the job lock; the file goes when this process's last hold is dropped."""
    lock = lock_path_for(path)
    depth = _HELD.get(str(lock), 0) - 1
    if depth > 0:
        _HELD[str(lock)] = depth
        return
    _HELD.pop(str(lock), None)
    held = _read_lock(lock)
    if held is not None and _mine(held):
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def store_lock(path: str | os.PathLike[str], owner: str | None = None) -> Iterator[Path]:
    """Hold the job lock of the store at ``path`` for the block: create or resume, run, export, mark complete.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "out.zarr"
    >>> with store_lock(out, "job-1") as lock:
    ...     lock.name, lock.exists()
    ('.out.zarr.lock', True)
    >>> lock.exists()
    False
    """
    lock = acquire_store_lock(path, owner)
    try:
        yield lock
    finally:
        release_store_lock(path)


def check_not_locked(path: str | os.PathLike[str]) -> None:
    """Raise OutputError if a live job other than this process holds the lock of ``path``."""
    held = _read_lock(lock_path_for(path))
    if held and not _mine(held) and not _lock_stale(held):
        raise _busy_error(Path(path), held)
