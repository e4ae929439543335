"""The job lock of an output store: a lock file beside the store, so it can be taken before the store exists.

``<parent>/.<name>.lock`` is created exclusively (content and all, by hard-linking a full temporary file) and
holds the owner, pid, host and time. A lock whose pid is dead on this host is stale and taken over; holds are
re-entrant within one process, so a job can wrap creation, blocks, exports and the complete flag in one
``with store_lock(path, owner):`` while inner code takes and drops the lock again.

In a bucket the lock is a create-only object (a conditional put, ``If-None-Match: *``: of two jobs, one gets it).
Its holder may run on any node, so besides the pid and host it carries a ``heartbeat`` time that a thread of the
holder renews every :data:`HEARTBEAT_S` seconds by a compare-and-swap on the object's ETag; a lock whose heartbeat
is older than :data:`LOCK_TTL_S` (or whose pid is dead on this host) is taken over by the same compare-and-swap, so
two jobs never both take over one dead holder's lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tiler.errors import OutputError
from tiler.io.atomic import output_error, pid_alive, temp_path, write_json_atomic
from tiler.io.objects import AnyPath, ObjectPath, PathArg, as_path

__all__ = ["acquire_store_lock", "check_not_locked", "lock_path_for", "release_store_lock", "store_lock"]

_HELD: dict[str, int] = {}  # lock file -> re-entry depth in this process
_BEATS: dict[str, threading.Event] = {}  # object lock -> the event that stops its heartbeat thread

LOCK_TTL_S = 180.0
"""Seconds after its last heartbeat that a lock object in a bucket is taken for its dead holder's and taken over."""
HEARTBEAT_S = 20.0
"""Seconds between two renewals of a lock object's heartbeat by its holder."""


def lock_path_for(path: PathArg) -> AnyPath:
    """The lock file of the store at ``path``: ``<parent>/.<name>.lock`` (it exists before the store does)."""
    path = as_path(path)
    return path.with_name(f".{path.name}.lock")


def _read_lock(lock: AnyPath) -> dict[str, Any] | None:
    try:
        held = json.loads(lock.read_bytes())
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
    if held.get("host") == socket.gethostname() and pid > 0 and not pid_alive(pid):
        return True
    beat = held.get("heartbeat")
    return isinstance(beat, int | float) and time.time() - float(beat) > LOCK_TTL_S


def _mine(held: Mapping[str, Any]) -> bool:
    return held.get("pid") == os.getpid() and held.get("host") == socket.gethostname()


def _busy_error(store: AnyPath, held: Mapping[str, Any]) -> OutputError:
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


def _take_object_lock(lock: ObjectPath, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Create the lock object, or take over a stale one by compare-and-swap: None, else the live holder's record."""
    for _ in range(5):
        payload["heartbeat"] = time.time()
        tag = lock.create(json.dumps(payload).encode())
        if tag is not None:
            _start_heartbeat(lock, payload, tag)
            return None
        meta = lock.head()
        held = _read_lock(lock)
        if meta is None or held is None:
            continue
        if _mine(held):  # this process's own lock from a hold it lost track of: keep it, beating again
            _start_heartbeat(lock, payload, str(meta["e_tag"]))
            return None
        if not _lock_stale(held):
            return held
        tag = lock.swap(json.dumps(payload).encode(), str(meta["e_tag"]))
        if tag is not None:
            _start_heartbeat(lock, payload, tag)
            return None
    raise OutputError(f"could not take the lock {lock}; another job keeps taking it. Retry later.")


def _start_heartbeat(lock: ObjectPath, payload: dict[str, Any], tag: str) -> None:
    """Renew the lock object's heartbeat every :data:`HEARTBEAT_S` seconds until :func:`release_store_lock`."""
    stop = threading.Event()
    _BEATS[str(lock)] = stop

    def beat(tag: str = tag) -> None:
        while not stop.wait(HEARTBEAT_S):
            record = {**payload, "heartbeat": time.time()}
            try:
                renewed = lock.swap(json.dumps(record).encode(), tag)
            except OSError:
                continue  # the store is unreachable for now: try again at the next beat
            if renewed is None:  # taken over: this job was thought dead (no heartbeat for LOCK_TTL_S)
                logging.getLogger(__name__).warning(
                    "tiler: the lock %s was taken over by another job; this job's writes to that output now race "
                    "with it: stop one of them and rerun", lock)
                return
            tag = renewed

    threading.Thread(target=beat, name=f"tiler-lock-heartbeat {lock}", daemon=True).start()


def default_owner() -> str:
    """The owner recorded in a lock taken without one: ``tiler job pid <pid> on <host>``."""
    return f"tiler job pid {os.getpid()} on {socket.gethostname()}"


def acquire_store_lock(path: PathArg, owner: str | None = None) -> AnyPath:
    """Take the job lock of the store at ``path`` (which need not exist yet); re-entrant in one process.

    A lock whose holder is a dead process on this host is taken over.

    Raises:
        OutputError: another live job holds the lock, naming it; or the folder cannot be written.

    """
    path = as_path(path)
    lock = lock_path_for(path)
    payload = {"owner": owner or default_owner(), "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    if isinstance(lock, ObjectPath):
        if str(lock) in _HELD:
            _HELD[str(lock)] += 1
            return lock
        try:
            holder = _take_object_lock(lock, payload)
        except OSError as exc:
            raise output_error(lock, exc, what="create the job lock") from exc
        if holder is not None:
            raise _busy_error(path, holder)
        _HELD[str(lock)] = 1
        return lock
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


def release_store_lock(path: PathArg) -> None:
    """Drop one hold of the job lock; the file goes when this process's last hold is dropped."""
    lock = lock_path_for(path)
    depth = _HELD.get(str(lock), 0) - 1
    if depth > 0:
        _HELD[str(lock)] = depth
        return
    _HELD.pop(str(lock), None)
    stop = _BEATS.pop(str(lock), None)
    if stop is not None:
        stop.set()
    held = _read_lock(lock)
    if held is not None and _mine(held):
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def store_lock(path: PathArg, owner: str | None = None) -> Iterator[AnyPath]:
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


def check_not_locked(path: PathArg) -> None:
    """Raise OutputError if a live job other than this process holds the lock of ``path``."""
    held = _read_lock(lock_path_for(path))
    if held and not _mine(held) and not _lock_stale(held):
        raise _busy_error(as_path(path), held)
