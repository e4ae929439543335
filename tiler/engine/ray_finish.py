"""Finishing steps as Ray tasks: :class:`RayFinisher`, and how a Ray error becomes the step's (or block's) own.

Part of the Ray engine (:mod:`tiler.engine.ray`, which re-exports :class:`RayFinisher`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import ray
import ray.exceptions

from tiler.errors import EngineError

__all__ = ["RayFinisher", "cause_of"]


def cause_of(exc: BaseException) -> BaseException | str:
    """The cause of a Ray error: the task's own TilerError, else one line saying what went wrong."""
    if isinstance(exc, ray.exceptions.RayActorError):
        return (
            f"its actor died more often than engine.max_restarts allows ({str(exc).splitlines()[0]}); raise "
            "engine.max_restarts or check the workers' memory; the output is not marked complete, rerun to resume"
        )
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
        from tiler.errors import TilerError

        return cause if isinstance(cause, TilerError) else f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}"


class RayFinisher:
    """Finishing steps as Ray tasks (:class:`~tiler.engine.finishing.Finisher`): the driver only holds their refs.

    A step whose worker dies is retried by Ray (a step rewrites whole files and records, so running it twice is
    harmless); its error comes back as the step's own :class:`~tiler.errors.TilerError`.

    Args:
        placement: The Ray options of each step (``num_cpus``, a scheduling strategy), or a function giving
            them when a step is submitted.
        preload: Modules the steps need, imported ahead by :meth:`warm`.
    """

    def __init__(
        self, *, placement: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        self.placement = placement if placement is not None else {"num_cpus": 1}
        self.preload = list(preload)

    def submit(self, fn: Any, /, *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` as a Ray task."""
        options = self.placement() if callable(self.placement) else self.placement
        return _step_future(ray.remote(fn).options(max_retries=2, **options).remote(*args))

    def warm(self) -> None:
        """Start a Ray worker importing ``preload`` where steps will run; later steps reuse it."""
        from tiler.engine.finishing import warm_up

        options = self.placement() if callable(self.placement) else self.placement
        ray.remote(warm_up).options(**options).remote(self.preload)

    def close(self) -> None:
        """Nothing to stop: the steps' workers belong to Ray."""


def _step_future(ref: Any) -> Future[Any]:
    """A future of ``ref``'s value whose error is the step's own (a TilerError), not Ray's wrapper."""
    out: Future[Any] = Future()

    def settle(done: Future[Any]) -> None:
        try:
            out.set_result(done.result())
        except ray.exceptions.RayTaskError as exc:
            cause = cause_of(exc)
            error = cause if isinstance(cause, BaseException) else EngineError(f"a finishing step failed: {cause}")
            out.set_exception(error)
        except ray.exceptions.RayError as exc:
            lost = str(exc).splitlines()[0]
            out.set_exception(EngineError(f"a finishing step's worker was lost ({lost}); rerun the job to finish it"))

    ref.future().add_done_callback(settle)
    return out
