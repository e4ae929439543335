"""Where finishing steps run: worker processes, never the driver.

An input's finishing (its exports, score, reports and complete flag) is cut into steps, module-level
functions of small picklable arguments (:mod:`tiler.job.finish`). A :class:`Finisher` runs each step in
another process and hands back a future: Ray tasks on the cluster's CPU workers
(:class:`tiler.engine.ray.RayFinisher`), or, for the in-process engine, a bounded pool of processes
(:class:`ProcessFinisher`). The driver only submits steps and collects their small results.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from tiler.errors import EngineError

T = TypeVar("T")


class Finisher(Protocol):
    """Runs finishing steps away from the driver."""

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in a worker process; its result (or error) arrives through the future."""
        ...

    def close(self) -> None:
        """Stop the workers (steps still running are waited for)."""
        ...

    def warm(self) -> None:
        """Start a worker now and import the finisher's ``preload`` modules in it, so that cost overlaps the blocks."""
        ...


def warm_up(modules: Sequence[str]) -> int:
    """Import ``modules`` in this worker; returns its pid."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    return os.getpid()


class ProcessFinisher:
    """Finishing on a bounded pool of worker processes (the in-process engine's finisher).

    The processes come from a fork server (one per driver process, started with the first pool): a plain
    ``fork`` of the driver would copy locks that its reader and writer threads hold (GDAL's among them) and
    hang; the server is single-threaded and imports ``preload`` once, so a worker starts with the steps'
    modules loaded, in milliseconds, and never loads the model. The server is the process's: the first pool's
    ``preload`` is the one every later pool of the process gets.

    Args:
        workers: Processes finishing at once.
        preload: Modules the steps need (the fork server imports them once).
    """

    def __init__(self, workers: int = 2, preload: Sequence[str] = ()) -> None:
        self.workers = max(1, workers)
        self.preload = list(preload)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in one of the pool's processes.

        A worker that dies (killed, out of memory) fails the steps it and its pool had in hand with an
        :class:`~tiler.errors.EngineError` (their inputs are not complete; a rerun finishes them), and the next
        step gets a new pool, so one death never fails the rest of an archive.
        """
        with self._lock:
            if self._pool is None or getattr(self._pool, "_broken", False):
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(self.preload)
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=watch_driver,
                                                 initargs=(os.getpid(),))
            return _named_death(self._pool.submit(fn, *args))

    def warm(self) -> None:
        """Start the fork server and a worker now (their imports overlap the blocks instead of delaying finishing)."""
        self.submit(warm_up, self.preload)

    def close(self) -> None:
        """Shut the pool down once its steps are done."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


DRIVER_CHECK_S = 1.0
"""How often a finishing process checks that the driver that started it is alive (seconds)."""


def watch_driver(driver: int) -> None:
    """Run in each pool process: when the driver is gone (killed), end this process and the fork server.

    A SIGKILLed driver never shuts its pool down, and the fork server and its workers would otherwise live on
    as orphans; a step still running there is abandoned, as its input's rerun redoes it.
    """

    def watch() -> None:
        while True:
            time.sleep(DRIVER_CHECK_S)
            try:
                os.kill(driver, 0)
            except ProcessLookupError:
                server = os.getppid()
                if server not in (1, driver):
                    with contextlib.suppress(OSError):
                        os.kill(server, signal.SIGKILL)
                os._exit(1)
            except PermissionError:
                pass  # alive, another user's: not ours to judge

    threading.Thread(target=watch, name="tiler-watch-driver", daemon=True).start()


def _named_death(future: Future[T]) -> Future[T]:
    """``future``, with the pool's BrokenProcessPool turned into the project's error saying what to do."""
    out: Future[T] = Future()

    def settle(done: Future[T]) -> None:
        try:
            out.set_result(done.result())
        except BrokenProcessPool as exc:
            out.set_exception(EngineError(
                f"a finishing worker process died ({exc}); the input is not marked complete: rerun to finish it "
                "(its blocks are kept). If it happens again: from a Python script, call tiler under "
                "`if __name__ == \"__main__\":` (worker processes import the script again, as multiprocessing "
                "does), else check the machine's memory"
            ))
        except BaseException as exc:  # noqa: BLE001 - the step's own error, handed over as it is
            out.set_exception(exc)

    future.add_done_callback(settle)
    return out
