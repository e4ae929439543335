"""Where finishing steps run: worker processes, never the driver.

An input's finishing (its exports, score, reports and complete flag) is cut into steps, module-level
functions of small picklable arguments (:mod:`tiler.job.finish`). A :class:`Finisher` runs each step in
another process and hands back a future: Ray tasks on the cluster's CPU workers
(:class:`tiler.engine.ray.RayFinisher`), or, for the in-process engine, a bounded pool of processes
(:class:`ProcessFinisher`). The driver only submits steps and collects their small results.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Finisher(Protocol):
    """Runs finishing steps away from the driver."""

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in a worker process; its result (or error) arrives through the future."""
        ...

    def close(self) -> None:
        """Stop the workers (steps still running are waited for)."""
        ...


PRELOAD = ["tiler.job.finish", "tiler.io.export", "tiler.io.vector", "tiler.io.store", "tiler.metrics.files"]
"""Modules the fork server imports once, so each finishing process starts with them loaded."""


class ProcessFinisher:
    """Finishing on a bounded pool of worker processes (the in-process engine's finisher).

    The processes come from a fork server (one per driver process, started with the first pool): a plain
    ``fork`` of the driver would copy locks that its reader and writer threads hold (GDAL's among them) and
    hang; the server is single-threaded and has the finishing modules imported (:data:`PRELOAD`), so a worker
    starts in milliseconds and never loads the model.

    Args:
        workers: Processes finishing at once.
    """

    def __init__(self, workers: int = 2) -> None:
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in one of the pool's processes."""
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(PRELOAD)
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Shut the pool down once its steps are done."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
