"""The Ray executor: a pool of model actors that lives for the whole run and takes blocks of any input.

With :mod:`~tiler.engine.ray_connect` (joining or starting Ray) and :mod:`~tiler.engine.ray_finish`
(finishing steps as Ray tasks), whose public names it re-exports, the only modules that import ray.

Each actor holds one :class:`~tiler.engine.worker.ModelWorker` (model loaded once, in its constructor, a few
inputs kept open) and runs as many block calls on threads as its pipeline needs to keep every stage busy (readers,
the model, writers: see :class:`~tiler.engine.executor.Stages`), so reading and writing other blocks overlap
inference. Blocks go to the least busy actor with a free slot; an actor that dies is restarted by Ray and its calls
retried.
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

from tiler.engine.executor import Done, Stages, block_failure
from tiler.engine.plan import BlockRecord, ModelFacts, ModelRef, Plan
from tiler.engine.ray_connect import CONNECT_TIMEOUT_S, connect, stop_embedded
from tiler.engine.ray_finish import RayFinisher, cause_of
from tiler.errors import ConfigError, EngineError
from tiler.geometry import Shape

__all__ = [
    "CONNECT_TIMEOUT_S",
    "ModelActor",
    "RayExecutor",
    "RayFinisher",
    "RayOptions",
    "connect",
    "pool_size",
    "stop_embedded",
]


@dataclass(frozen=True)
class RayOptions:
    """How the actor pool is sized and how hard it retries.

    Attributes:
        address: Cluster to join; None: ``RAY_ADDRESS`` if set, else start an embedded local Ray;
            ``"local"``: always start a private embedded one.
        actors: Pool size; None: one per ``gpus_per_actor`` GPU share, else CPUs // ``cpus_per_actor``.
        gpus_per_actor: GPUs per actor (fractional allowed); 0 for CPU actors.
        cpus_per_actor: CPUs reserved per actor.
        threads: torch intra-op threads per CPU actor (None: ``cpus_per_actor``).
        max_in_flight: Blocks queued on one actor at least (backpressure); the actor takes more when its
            pipeline needs them (``readers + 1 + writers``); 1 runs one block at a time, stages in turn.
        max_restarts: Actor restarts after its process dies.
        max_task_retries: Runs of a block alone on an actor after its actor died (see :class:`RayExecutor`); a
            block that kills its actor while running alone that many times fails, and only it.
        readers: Reader threads per actor (None: one per ``cpus_per_actor``, see
            :meth:`~tiler.engine.executor.Stages.sized`).
        writers: Writer threads per actor (None: one).
        env_vars: Names of the driver's environment variables every worker gets (:func:`connect`).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    threads: int | None = None
    max_in_flight: int = 2
    max_restarts: int = 3
    max_task_retries: int = 3
    readers: int | None = None
    writers: int | None = None
    env_vars: tuple[str, ...] = ()

    @property
    def stages(self) -> Stages:
        """The pipeline of each actor (reader and writer threads)."""
        return Stages.sized(self.readers, self.writers, cpus=self.cpus_per_actor)

    @property
    def depth(self) -> int:
        """Blocks queued on one actor at a time: enough for every stage, bounded so its memory stays flat."""
        if self.max_in_flight <= 1:
            return 1
        return max(self.max_in_flight, self.stages.depth)



def pool_size(options: RayOptions) -> int:
    """Number of actors for these options, checked against what the cluster can place.

    Raises:
        ConfigError: The pool asks for more CPUs or GPUs than the whole cluster has (it would wait forever).
    """
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if options.actors is not None and options.actors < 1:
        raise ConfigError(f"engine.actors={options.actors} must be at least 1 (or null for automatic).")
    if options.cpus_per_actor > cpus:
        raise ConfigError(
            f"engine.cpus_per_actor={options.cpus_per_actor} but the cluster has {cpus:g} CPUs in all, so no actor "
            f"could ever start; fix: set engine.cpus_per_actor to at most {cpus:g}"
        )
    fit = int(cpus / options.cpus_per_actor + 1e-9) if options.cpus_per_actor > 0 else 1 << 30
    if options.gpus_per_actor > 0:
        fit = min(fit, int(gpus / options.gpus_per_actor + 1e-9))
        if fit < 1:
            raise ConfigError(
                f"engine.gpus_per_actor={options.gpus_per_actor} but the cluster has {gpus:g} GPUs; "
                "set engine.gpus_per_actor=0 to run on CPUs, or add GPU nodes."
            )
    if options.actors is None:
        return fit
    if options.actors > fit:
        raise ConfigError(
            f"engine.actors={options.actors} but the cluster can place only {fit} actor(s) of "
            f"{options.cpus_per_actor:g} CPU / {options.gpus_per_actor:g} GPU ({cpus:g} CPUs, {gpus:g} GPUs in all), "
            f"so the rest would wait forever; fix: set engine.actors to at most {fit}, or null for automatic"
        )
    return options.actors


class ModelActor:
    """One model actor: loads its model once, then runs block calls of any plan on its threads (a pipeline)."""

    def __init__(self, model: ModelRef, threads: int | None, stages: Stages | None = None) -> None:
        from tiler.engine.worker import ModelWorker
        from tiler.errors import TilerError

        self.worker: ModelWorker | None = None
        self.error: TilerError | None = None
        try:
            self.worker = ModelWorker(model, threads=threads, stages=stages)
        except TilerError as exc:  # kept, and raised by every call: a model that cannot load is not restarted
            self.error = exc

    def pid(self) -> int:
        """This actor's process id (tests kill it)."""
        return os.getpid()

    def _loaded(self) -> Any:
        if self.worker is None:
            assert self.error is not None
            raise self.error
        return self.worker

    def facts(self) -> ModelFacts | None:
        """What planning needs of the model (raises the error that stopped it from loading)."""
        return self._loaded().facts  # type: ignore[no-any-return]

    def run(self, plan: Plan, position: Shape) -> BlockRecord:
        """Read, infer, write and record one block."""
        return self._loaded().run(plan, position)  # type: ignore[no-any-return]


class RayExecutor:
    """Blocks on a pool of Ray model actors that lives until :meth:`close` (one model at a time).

    Args:
        options: Pool size, resources and retries.
    """

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        self.model: ModelRef | None = None
        self._actors: list[Any] = []
        self._busy: list[int] = []
        self._refs: dict[Any, _Call] = {}
        self._suspects: deque[_Call] = deque()  # blocks whose actor died: each runs again alone
        self._starting = threading.RLock()  # the planning thread may ask for facts while the driver starts the pool
        self._facts: Any = None  # the pool model's facts call, pending or answered
        self._facts_actor: Any = None  # the actor that call went to
        self._next_node = -1  # the CPU node the last zero-CPU finishing step was placed on

    @property
    def depth(self) -> int:
        """Blocks queued on one actor at a time (its ``max_concurrency``): see :attr:`RayOptions.depth`."""
        return self.options.depth

    def slots(self) -> int:
        """Free block slots over all actors (0 before :meth:`start`, and while a suspect waits for an idle actor)."""
        if self._suspects:
            return 0  # actors drain, so that each suspect gets one to itself
        return sum(self.depth - busy for busy in self._busy)

    def in_flight(self) -> int:
        """Blocks submitted and not yet returned (suspects waiting to run again included)."""
        return len(self._refs) + len(self._suspects)

    def start(self, model: ModelRef, *, hint: int | None = None) -> None:
        """Start the pool for ``model`` (replacing a pool of another model, which must be idle)."""
        with self._starting:
            self._start(model, hint)

    def _start(self, model: ModelRef, hint: int | None) -> None:
        if self.model == model and self._actors:
            return
        if self._refs:
            raise EngineError("the actor pool cannot change its model while blocks are in flight")
        self._kill()
        connect(self.options.address, self.options.env_vars)
        size = pool_size(self.options)
        if hint is not None:
            size = max(1, min(size, hint))
        options = self.options
        actor_cls: Any = ray.remote(ModelActor).options(  # type: ignore[attr-defined]
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
            max_restarts=options.max_restarts,
            max_task_retries=0,  # a block whose actor died runs again alone (RayExecutor.wait), never beside others
            max_concurrency=self.depth,
        )
        threads = options.threads or max(1, int(options.cpus_per_actor))
        # the model reference is small: passed inline so a restarted actor never depends on an object-store copy
        self._actors = [actor_cls.remote(model, threads, options.stages) for _ in range(size)]
        self._busy = [0] * size
        self.model = model

    def facts(self, model: ModelRef) -> ModelFacts | None:
        """The facts of ``model`` as the first actor loaded it (starting the pool for it if none runs).

        Raises:
            TilerError: The model does not load (the actor's own error).
            EngineError: The actor died before it answered.
        """
        with self._starting:
            if not self._actors:
                self._start(model, None)
            if self.model != model:
                return None
            if self._facts is None:
                self._facts = self._actors[0].facts.remote()
                self._facts_actor = self._actors[0]
            call, asked = self._facts, self._facts_actor
        try:
            return ray.get(call)  # type: ignore[no-any-return]
        except ray.exceptions.RayTaskError as exc:
            from tiler.errors import TilerError

            if isinstance(exc.cause, TilerError):
                raise exc.cause from None
            raise EngineError(f"the model actor could not load {model.weights}: {cause_of(exc)}") from exc
        except ray.exceptions.RayActorError as exc:
            with self._starting:
                if self._facts is call:  # its restarts ran out: the next caller asks a new actor
                    self._facts = None
                    if self._actors:
                        self._replace(0, asked)
            raise EngineError(f"the model actor died while loading {model.weights}: {cause_of(exc)}") from exc

    def submit(self, token: Any, plan: Plan, position: Shape) -> None:
        """Send one block to the least busy actor with a free slot."""
        if self.slots() <= 0:
            raise EngineError("no free actor slot: wait for a block to finish before submitting another")
        i = min(range(len(self._actors)), key=lambda k: self._busy[k])
        self._busy[i] += 1
        actor = self._actors[i]
        self._refs[actor.run.remote(plan, position)] = _Call(token, plan, position, i, actor)

    def wait(self, timeout: float | None = None) -> list[Done]:
        """Blocks that finished within ``timeout`` seconds (all that are ready; possibly none).

        A block whose actor died is not failed: every block in flight on that actor is a suspect, and each runs
        again alone on an idle actor (:meth:`_run_suspects`). A block that kills its actor while running alone is
        the cause, and fails with that (after ``max_task_retries`` runs alone); the innocent blocks that shared its
        actor finish, so a poison input fails alone.
        """
        self._run_suspects()
        if not self._refs:
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        out = []
        for ref in ready:
            call = self._refs.pop(ref)
            self._busy[call.slot] -= self.depth if call.alone else 1
            try:
                out.append(Done(call.token, call.plan, call.position, record=ray.get(ref)))
            except ray.exceptions.RayActorError as exc:
                self._replace(call.slot, call.actor)
                limit = self.options.max_task_retries
                if 0 <= limit <= call.alone:  # -1: no limit
                    cause = (
                        f"it killed its model worker {call.alone} time(s) running alone on it "
                        f"({str(exc).splitlines()[0]}): this block is the cause (other blocks that shared its worker "
                        "ran again alone and went on); check this part of the input (a decoder crash, a memory "
                        "blow-up), or raise engine.max_task_retries for a transient fault"
                    )
                    error = block_failure(call.plan, call.position, cause)
                    error.__cause__ = exc
                    out.append(Done(call.token, call.plan, call.position, error=error))
                else:
                    self._suspects.append(call)
            except ray.exceptions.RayTaskError as exc:
                error = block_failure(call.plan, call.position, cause_of(exc))
                error.__cause__ = exc
                out.append(Done(call.token, call.plan, call.position, error=error))
        self._run_suspects()
        return out

    def _run_suspects(self) -> None:
        """Start each suspect block alone on an idle actor (one with nothing in flight), while there is one."""
        while self._suspects:
            idle = next((i for i, busy in enumerate(self._busy) if busy == 0), None)
            if idle is None:
                return
            call = self._suspects.popleft()
            self._busy[idle] = self.depth  # no other block goes to this actor while the suspect runs
            actor = self._actors[idle]
            ref = actor.run.remote(call.plan, call.position)
            self._refs[ref] = _Call(call.token, call.plan, call.position, idle, actor, alone=call.alone + 1)

    def _replace(self, i: int, dead: Any) -> None:
        """Swap the permanently dead actor ``dead`` at slot ``i`` for a new one (its own restarts ran out).

        Nothing happens when slot ``i`` already holds another actor: several calls fail on one dead actor,
        and only the first replaces it (a later one must not kill the replacement and the blocks it runs).
        """
        assert self.model is not None
        if self._actors[i] is not dead:
            return
        try:
            ray.kill(self._actors[i])
        except Exception:  # noqa: BLE001 - it is already dead
            pass
        options = self.options
        actor_cls: Any = ray.remote(ModelActor).options(  # type: ignore[attr-defined]
            num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor, max_restarts=options.max_restarts,
            max_task_retries=0, max_concurrency=self.depth,
        )
        threads = options.threads or max(1, int(options.cpus_per_actor))
        self._actors[i] = actor_cls.remote(self.model, threads, options.stages)

    def finisher(self, workers: int, preload: Sequence[str] = ()) -> RayFinisher:
        """Ray tasks finishing this run's inputs on CPU workers (:class:`RayFinisher`); ``workers`` is not a limit here.

        Each step asks for one CPU when the cluster has CPUs beyond the pool's reservation, so it lands on a CPU
        worker. When the pool holds every CPU (an embedded Ray on a laptop, or a default-sized pool), it asks for
        none and is placed, in turn, on the nodes that have CPUs: never on a node with none (a head node started
        with ``--num-cpus 0``, the driver's). Decided when a step is submitted, so the pool started since counts.
        """
        return RayFinisher(placement=self._finish_placement, preload=preload)

    def _finish_placement(self) -> dict[str, Any]:
        """Ray options of the next finishing step: ``num_cpus``, and a node with CPUs when it asks for none."""
        connect(self.options.address, self.options.env_vars)
        reserved = len(self._actors) * self.options.cpus_per_actor
        if float(ray.cluster_resources().get("CPU", 0)) - reserved >= 1:
            return {"num_cpus": 1}
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
        if not nodes:
            return {"num_cpus": 0}
        self._next_node = (self._next_node + 1) % len(nodes)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[self._next_node], soft=True)}

    def pids(self) -> list[int]:
        """Process ids of the actors (tests kill them)."""
        return [int(pid) for pid in ray.get([a.pid.remote() for a in self._actors])]

    def _kill(self) -> None:
        for ref in self._refs:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001 - best effort: the actors are killed next anyway
                pass
        self._refs.clear()
        self._suspects.clear()
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._busy, self.model = [], [], None
        self._facts = None

    def close(self) -> None:
        """Kill the pool; blocks in flight are abandoned."""
        self._kill()


@dataclass(frozen=True)
class _Call:
    """A block call on the pool.

    Who asked (``token``), the block, the actor slot and handle it went to, and how many times it has run alone
    since its actor died beside other blocks (0: an ordinary call among others).
    """

    token: Any
    plan: Plan
    position: Shape
    slot: int
    actor: Any
    alone: int = 0
