"""The memory a model may use: what this machine and its container give a new process, and whether a network fits.

Two limits, the smaller one wins:

* the machine's: ``psutil.virtual_memory().available``;
* the container's: its cgroup's limit less what the cgroup already uses (cgroup v2 ``memory.max`` and
  ``memory.current``; cgroup v1 ``memory.limit_in_bytes`` and ``memory.usage_in_bytes`` as a fallback).
  ``max`` (v2) or a limit of :data:`UNLIMITED` bytes or more (v1's "none") means no limit.

A network's size is counted before anything is allocated (its constructor run on the ``meta`` device, or
its declared channel lists), and refused when its float32 parameters, read twice while the weights load
(the network's own tensors and the file's), plus the activations of one tile where they are cheap to
estimate, exceed that memory. This module imports nothing heavy (psutil when first asked, torch never).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiler.errors import ModelError

__all__ = [
    "CGROUP_FILES",
    "MAX_PARAMETERS",
    "Available",
    "available_memory",
    "check_network_size",
    "container_limit",
    "largest_entry",
]

CGROUP_FILES: tuple[Path, ...] = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
"""Where the container's memory limit is read, first existing file first (tests point it at a temporary file)."""
_USAGE = {"memory.max": "memory.current", "memory.limit_in_bytes": "memory.usage_in_bytes"}
UNLIMITED = 2**60
"""A cgroup v1 limit this large means no limit (the kernel writes ``PAGE_COUNTER_MAX`` pages, about 2**63)."""
MAX_PARAMETERS = 2**30
"""Most parameters any network may have, whatever the memory (4 GiB of float32)."""
LOADING_COPIES = 2
"""Copies of the float32 parameters held while a model loads: the network's and the weights file's."""


@dataclass(frozen=True)
class Available:
    """Memory a new process can take now, and where the limit comes from.

    Attributes:
        machine: Bytes the machine has available (psutil).
        container: Bytes the container's cgroup still allows (its limit less its usage), None without a limit.
        limit: The cgroup's limit in bytes, None without one.
        limit_file: The file the limit was read from, None without one.

    """

    machine: int
    container: int | None = None
    limit: int | None = None
    limit_file: Path | None = None

    @property
    def bytes(self) -> int:
        """The smaller of the machine's and the container's memory."""
        return self.machine if self.container is None else min(self.machine, self.container)

    @property
    def by_container(self) -> bool:
        """Whether the container's limit is the smaller one."""
        return self.container is not None and self.container < self.machine

    def describe(self) -> str:
        """What is available, and the container's limit when there is one.

        ``"3.5 GiB is available"``, or ``"the container's memory limit in /sys/fs/cgroup/memory.max is 4.0 GiB (0.5
        GiB used; the machine has 20.0 GiB available), so 3.5 GiB is available"``.
        """
        gib = 2**30
        text = f"{self.bytes / gib:.1f} GiB is available"
        if self.limit is None or self.container is None:
            return text
        used = self.limit - self.container
        return (
            f"the container's memory limit in {self.limit_file} is {self.limit / gib:.1f} GiB ({used / gib:.1f} GiB "
            f"used; the machine has {self.machine / gib:.1f} GiB available), so {text}"
        )


def _read_bytes(path: Path) -> int | None:
    """The number in a cgroup file; None for ``max``, a missing or unreadable file, or anything else."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def container_limit(files: Sequence[Path] | None = None) -> tuple[int, int, Path] | None:
    """The container's memory limit, its usage and the limit's file; None without a limit.

    Args:
        files: Limit files to try in order (default :data:`CGROUP_FILES`). The usage is read from the file
            beside each (``memory.current`` / ``memory.usage_in_bytes``), 0 when there is none.

    >>> container_limit([Path("/nonexistent/memory.max")]) is None
    True
    """
    for path in CGROUP_FILES if files is None else files:
        path = Path(path)
        if not path.is_file():
            continue
        limit = _read_bytes(path)
        if limit is None or limit >= UNLIMITED:
            return None  # "max": this cgroup sets no limit
        usage_name = _USAGE.get(path.name)
        usage = _read_bytes(path.with_name(usage_name)) if usage_name else None
        return limit, min(usage or 0, limit), path
    return None


def available_memory(files: Sequence[Path] | None = None) -> Available:
    """Memory a new process can take now: the machine's and its container's (see the module docstring)."""
    import psutil

    machine = int(psutil.virtual_memory().available)
    found = container_limit(files)
    if found is None:
        return Available(machine)
    limit, usage, path = found
    return Available(machine, limit - usage, limit, path)


def _largest(value: Any) -> int:
    """The largest whole number in ``value`` (nested lists and mappings searched), 0 if none."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return max((_largest(v) for v in value), default=0)
    return 0


def largest_entry(args: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The argument holding the largest number (the likeliest cause of a network's size), with its value.

    >>> largest_entry({"in_channels": 3, "decoder_channels": [65536, 16], "name": "resnet18"})
    ('decoder_channels', [65536, 16])
    """
    best: tuple[str, Any] | None = None
    top = 0
    for key, value in args.items():
        n = _largest(value)
        if n > top:
            best, top = (str(key), value), n
    return best


def check_network_size(
    parameters: int,
    *,
    source: str,
    args: Mapping[str, Any],
    activations: int = 0,
    networks: int = 1,
    available: Available | None = None,
) -> None:
    """Refuse a network whose parameters (and one tile's activations) do not fit, before it is built.

    Args:
        parameters: Its parameter count (counted on the ``meta`` device).
        source: What declared it, for messages (``"smp config /m/config.json"``).
        args: The declared arguments; the one holding the largest number is named as the likely cause.
        activations: Bytes of one tile's activations, when estimated (0: not counted).
        networks: Networks of this size held at once (an nnU-Net ensemble holds one per fold); one more copy of
            the parameters is counted for the weights being loaded.
        available: The memory to fit in (default :func:`available_memory`).

    Raises:
        ModelError: Past :data:`MAX_PARAMETERS`, or past the memory, naming the source, the key and its value.

    """
    need = parameters * 4 * (max(1, networks) + LOADING_COPIES - 1) + activations
    cap = parameters > MAX_PARAMETERS
    memory = None if cap else (available or available_memory())
    if not cap and memory is not None and need <= memory.bytes:
        return
    gib = 2**30
    entry = largest_entry(args)
    cause = f"{entry[0]}={entry[1]!r}" if entry is not None else "its arguments"
    key = entry[0] if entry is not None else "the sizes"
    tile = f" and {activations / gib:.1f} GiB of activations per tile" if activations else ""
    held = f", {networks} of them" if networks > 1 else ""
    limit = f"more than tiler's cap of {MAX_PARAMETERS:,}" if memory is None else f"but {memory.describe()}"
    raise ModelError(
        f"{source}: {cause} makes a network of {parameters:,} parameters ({parameters * 4 / gib:.1f} GiB of "
        f"float32{held}, {need / gib:.1f} GiB while the weights load{tile}), {limit}; it was not built. Fix: set {key} "
        "to the sizes the model was trained with, or give the model on a machine with that much memory."
    )
