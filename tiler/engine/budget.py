"""Memory budget of one actor: what its blocks, batches and model take, estimated and checked before a run.

The estimate, stated once (``tiler inspect`` prints it, the job checks it before anything allocates):

* accumulator: ``(K + 1)`` float32 planes per block pixel, for the block being inferred and one per writer
  thread (``1 + writers`` blocks; two by default);
* input: one region per reader thread plus the block being inferred (``readers + 1``; two by default) of
  ``block + tile`` pixels per axis, ``C`` channels of the input dtype;
* assembled batches: for those same blocks, their tiles cut into float32 batches (given the overlap:
  ``ceil((block + tile) / step)`` tiles of ``tile`` pixels per axis, ``C`` channels);
* batch: ``batch_size * (1 + len(tta_flips))`` tiles of ``(C + K)`` float32 channels, times 8 for the
  network's activations (rough);
* weights: 4 bytes per parameter;
* baseline: what an actor process holds before any block (Python, torch, GDAL, Ray's worker).

Blocks are clipped to the image (a block larger than the image allocates only the image); tiles are not
(an image smaller than a tile is padded up to it).

The memory available is the smaller of the machine's (psutil) and the container's (its cgroup's limit less its
usage: cgroup v2 ``memory.max``, cgroup v1 ``memory.limit_in_bytes`` as a fallback; read by
:mod:`tiler.model.memory`, whose ``CGROUP_FILES`` a test may point elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tiler.errors import ConfigError
from tiler.model.memory import Available
from tiler.model.memory import available_memory as _available

__all__ = [
    "MAX_IN_FLIGHT", "PROCESS_BASELINE", "MemoryEstimate", "available_memory", "check_in_flight", "check_memory",
    "estimate_actor_memory", "memory_available",
]  # fmt: skip

PROCESS_BASELINE = 350 * 2**20
"""What an actor process holds before any block: Python, torch, GDAL and Ray's worker (measured ~300-400 MB)."""
ACTIVATION_FACTOR = 8
"""Network activations per batch, as a multiple of the batch's input and output (rough, U-Net sized)."""
MAX_IN_FLIGHT = 256
"""Most block calls one actor may queue (``engine.max_in_flight``): Ray runs each on its own thread."""
THREAD_STACK = 8 * 2**20
"""Stack one thread of an actor may take (Linux's default, 8 MiB)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one actor needs, by part, with the settings that decided them.

    Attributes:
        tile: Tile shape, pixels per axis.
        block: Block shape as allocated (clipped to the image).
        batch_size: Tiles per forward pass, TTA passes included.
        accumulator: Bytes of the block accumulators.
        inputs: Bytes of the input regions.
        assembled: Bytes of their tiles cut into float32 batches (0 when the overlap is not given).
        batch: Bytes of one batch in, out and its activations.
        weights: Bytes of the network's parameters.
        baseline: Bytes of the process before any block.

    """

    tile: tuple[int, ...]
    block: tuple[int, ...]
    batch_size: int
    accumulator: int
    inputs: int
    batch: int
    weights: int
    baseline: int = PROCESS_BASELINE
    assembled: int = 0

    @property
    def total(self) -> int:
        """All parts together, bytes."""
        return self.accumulator + self.inputs + self.assembled + self.batch + self.weights + self.baseline


def estimate_actor_memory(
    tile: Sequence[int],
    block: Sequence[int],
    *,
    channels: int,
    itemsize: int,
    classes: int,
    parameters: int,
    batch_size: int,
    tta_passes: int = 0,
    shape: Sequence[int] | None = None,
    overlap: Sequence[int] | None = None,
    readers: int = 1,
    writers: int = 1,
) -> MemoryEstimate:
    """Estimate one actor's memory (see the module docstring for the formula). Pure arithmetic: no allocation.

    Args:
        tile: Tile shape ``(H, W)`` or ``(D, H, W)``.
        block: Block shape, same axes.
        channels: Input channels ``C``.
        itemsize: Bytes per input pixel value.
        classes: Output classes ``K``.
        parameters: The network's parameter count.
        batch_size: ``model.batch_size``.
        tta_passes: ``len(model.tta_flips)``.
        shape: The image's spatial shape, to clip the block to it.
        overlap: Tile overlap per axis, to count the assembled batches (None: not counted).
        readers: Reader threads of the worker (``engine.readers``): blocks read and assembled at once.
        writers: Writer threads (``engine.writers``): finished blocks held while they are written.

    >>> estimate_actor_memory((256, 256), (2048, 2048), channels=3, itemsize=1, classes=4, parameters=10**6,
    ...                       batch_size=8).total // 2**20
    656
    """
    tile_t = tuple(int(t) for t in tile)
    block_t = tuple(int(b) for b in block)
    if shape is not None:
        block_t = tuple(min(b, int(n)) for b, n in zip(block_t, shape, strict=True))
    block_px = math.prod(block_t)
    region_px = math.prod(b + t for b, t in zip(block_t, tile_t, strict=True))
    batch = batch_size * (1 + tta_passes)
    held = readers + 1  # blocks read (or being read) and the one being inferred
    assembled = 0
    if overlap is not None:
        steps = tuple(max(1, t - int(o)) for t, o in zip(tile_t, overlap, strict=True))
        tiles_px = math.prod(-(-(b + t) // s) * t for b, t, s in zip(block_t, tile_t, steps, strict=True))
        assembled = held * tiles_px * channels * 4
    return MemoryEstimate(
        tile=tile_t,
        block=block_t,
        batch_size=batch,
        accumulator=(classes + 1) * block_px * 4 * (1 + writers),
        inputs=held * region_px * channels * itemsize,
        assembled=assembled,
        batch=batch * math.prod(tile_t) * (channels + classes) * 4 * ACTIVATION_FACTOR,
        weights=parameters * 4,
    )


def memory_available(cgroup_files: Sequence[Path] | None = None) -> Available:
    """The memory a new process can take now: the smaller of the machine's and its container's, with the limit.

    Args:
        cgroup_files: The container's limit files to read (default :data:`tiler.model.memory.CGROUP_FILES`).
    """
    return _available(cgroup_files)


def available_memory(cgroup_files: Sequence[Path] | None = None) -> int:
    """Bytes of memory a new process can take now: the smaller of the machine's and the container's."""
    return memory_available(cgroup_files).bytes


def check_memory(
    estimate: MemoryEstimate,
    available_bytes: int | None = None,
    *,
    actors: int = 1,
    cgroup_files: Sequence[Path] | None = None,
) -> None:
    """Raise ConfigError when ``actors`` actors of ``estimate`` would not fit in the available memory.

    Args:
        estimate: From :func:`estimate_actor_memory`.
        available_bytes: Memory available to the job; default :func:`memory_available`: the smaller of this
            machine's and its container's.
        actors: Actors sharing that memory (the pool size on one machine).
        cgroup_files: The container's limit files (default :data:`tiler.model.memory.CGROUP_FILES`).

    """
    found = memory_available(cgroup_files) if available_bytes is None else None
    available = found.bytes if found is not None else int(available_bytes or 0)
    need = estimate.total * max(1, actors)
    if need <= available:
        return
    gib = 2**30
    where = found.describe() if found is not None else f"{available / gib:.1f} GiB is available"
    per_actor = f"{estimate.total / gib:.1f} GiB per actor" + (f" x {actors} actors" if actors > 1 else "")
    raise ConfigError(
        f"the job needs about {per_actor} ({need / gib:.1f} GiB: tiling.tile={list(estimate.tile)} with a batch of "
        f"{estimate.batch_size} takes {estimate.batch / gib:.1f} GiB, tiling.block={list(estimate.block)} takes "
        f"{(estimate.accumulator + estimate.inputs) / gib:.1f} GiB) but {where}; "
        f"fix: lower tiling.tile (e.g. [512, 512]), tiling.block or model.batch_size"
        + (", or engine.actors" if actors > 1 else "")
        + (", or raise the container's memory limit" if found is not None and found.by_container else "")
        + "."
    )


def check_in_flight(max_in_flight: int, *, depth: int = 0) -> None:
    """Raise ConfigError when ``engine.max_in_flight`` asks an actor to queue more block calls than it can hold.

    Each queued call is a thread of the actor (Ray's ``max_concurrency``), with its stack, waiting for the
    pipeline's stages: more than the pipeline's ``depth`` (readers + 1 + writers) makes nothing faster, and a
    number past :data:`MAX_IN_FLIGHT` threads kills the actor before it has loaded its model.

    Args:
        max_in_flight: ``engine.max_in_flight``.
        depth: The pipeline's depth (:attr:`tiler.engine.executor.Stages.depth`), named in the message.

    >>> check_in_flight(4, depth=3)
    """
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ConfigError(f"engine.max_in_flight={max_in_flight!r} must be a whole number >= 1; fix: use 2")
    if max_in_flight <= MAX_IN_FLIGHT:
        return
    stacks = max_in_flight * THREAD_STACK
    raise ConfigError(
        f"engine.max_in_flight={max_in_flight} asks each actor for {max_in_flight:,} threads (up to "
        f"{stacks / 2**30:,.1f} GiB of thread stacks), more than the {MAX_IN_FLIGHT} tiler allows: the actor would die "
        f"before loading its model; fix: set engine.max_in_flight to at most {MAX_IN_FLIGHT} (the default, 2, "
        "already keeps every stage busy: an actor queues at least readers + 1 + writers blocks"
        + (f", {depth} here)" if depth else ")")
    )
