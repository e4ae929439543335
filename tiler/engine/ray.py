"""The Ray engine: a pool of model actors, block dispatch with backpressure, retries on worker death.

The only module that imports ray. Each actor holds one :class:`BlockWorker` (model loaded once,
in its constructor) and runs up to ``max_in_flight`` block calls on threads: reading the next
block overlaps inference on the current one (reads and inference each hold their own lock).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import ray.exceptions

from tiler.engine.job import OnRecord
from tiler.engine.plan import Plan, block_key
from tiler.errors import ConfigError, EngineError
from tiler.geometry import Shape


@dataclass(frozen=True)
class RayOptions:
    """How the actor pool is sized and how hard it retries.

    Attributes:
        address: Cluster to join; None: ``RAY_ADDRESS`` if set, else start an embedded local Ray.
        actors: Pool size; None: one per ``gpus_per_actor`` GPU share, else CPUs // ``cpus_per_actor``.
        gpus_per_actor: GPUs per actor (fractional allowed); 0 for CPU actors.
        cpus_per_actor: CPUs reserved per actor.
        threads: torch intra-op threads per CPU actor (None: ``cpus_per_actor``).
        max_in_flight: Blocks queued on one actor at a time (backpressure; >= 2 overlaps read and inference).
        max_restarts: Actor restarts after its process dies.
        max_task_retries: Retries of a block call whose actor died.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    threads: int | None = None
    max_in_flight: int = 2
    max_restarts: int = 3
    max_task_retries: int = 3


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, or the job's cluster), else start a local one.

    The embedded local Ray is sized to this machine and keeps its dashboard off.
    """
    if ray.is_initialized():
        return
    if address == "local":
        address = None
    elif address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def pool_size(options: RayOptions) -> int:
    """Number of actors the cluster can hold at once for these options."""
    if options.actors is not None:
        if options.actors < 1:
            raise ConfigError(f"engine.actors={options.actors} must be at least 1 (or null for automatic).")
        return options.actors
    resources = ray.cluster_resources()
    if options.gpus_per_actor > 0:
        count = int(resources.get("GPU", 0) / options.gpus_per_actor + 1e-9)
        if count < 1:
            raise ConfigError(
                f"engine.gpus_per_actor={options.gpus_per_actor} but the cluster has {resources.get('GPU', 0)} GPUs; "
                f"set engine.gpus_per_actor=0 to run on CPUs, or add GPU nodes."
            )
        return count
    return max(1, int(resources.get("CPU", 1) / options.cpus_per_actor + 1e-9))


class BlockActor:
    """One model actor: builds its worker once, then runs block calls (possibly on two threads)."""

    def __init__(self, plan: Plan, threads: int | None) -> None:
        from tiler.engine.worker import BlockWorker

        self.worker = BlockWorker(plan, threads=threads)
        self.read_lock = threading.Lock()
        self.infer_lock = threading.Lock()

    def pid(self) -> int:
        """This actor's process id (tests kill it)."""
        return os.getpid()

    def run(self, position: Shape) -> dict[str, Any]:
        """Read, infer, write and record one block."""
        with self.read_lock:
            prepared = self.worker.prepare(position)
        with self.infer_lock:
            return self.worker.finish(position, prepared)


def _failure(plan: Plan, position: Shape, exc: BaseException) -> EngineError:
    cause: BaseException = exc
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
    where = f"block {block_key(position)} (window {plan.window(position)}) of {plan.input.path} → {plan.store_path}"
    if isinstance(exc, ray.exceptions.RayActorError):
        return EngineError(
            f"{where} failed: its actor died more often than engine.max_restarts allows ({exc}). Raise "
            f"engine.max_restarts or check the workers' memory; the output is not marked complete, rerun to resume."
        )
    return EngineError(f"{where} failed: {cause}")


def make_runner(options: RayOptions):  # type: ignore[no-untyped-def]
    """A ``run_blocks`` engine for :func:`tiler.engine.job.run_job` that dispatches to a Ray actor pool."""

    def run_blocks(plan: Plan, positions: Sequence[Shape], on_record: OnRecord) -> None:
        if not positions:
            return
        connect(options.address)
        size = min(pool_size(options), len(positions))
        threads = options.threads or max(1, int(options.cpus_per_actor))
        actor_cls: Any = ray.remote(BlockActor).options(  # type: ignore[attr-defined]
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
            max_restarts=options.max_restarts,
            max_task_retries=options.max_task_retries,
            max_concurrency=max(1, options.max_in_flight),
        )
        # the plan is small: passed inline so a restarted actor never depends on an object-store copy
        actors: list[Any] = [actor_cls.remote(plan, threads) for _ in range(size)]
        queue = deque(positions)
        in_flight: dict[Any, tuple[int, Shape]] = {}

        def submit(i: int) -> None:
            position = queue.popleft()
            in_flight[actors[i].run.remote(position)] = (i, position)

        try:
            for _ in range(max(1, options.max_in_flight)):
                for i in range(size):
                    if queue:
                        submit(i)
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                i, position = in_flight.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    raise _failure(plan, position, exc) from exc
                on_record(record)
                if queue:
                    submit(i)
        finally:
            for ref in in_flight:
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - best effort: the actors are killed next anyway
                    pass
            for actor in actors:
                ray.kill(actor)

    return run_blocks
