"""Field types of the config: strict scalars, per-axis values and the defaults each dimensionality takes.

Scalars are strict so that ``true`` is not the integer 1 and ``"256"`` is not a number.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, PlainSerializer, PlainValidator, Strict

from tiler.config.problems import Problems

Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict(), Field(min_length=1)]
Axes = tuple[PosInt, ...]
"""One positive whole number of pixels per spatial axis: (row, col) or (z, y, x)."""

DEFAULTS_BY_NDIM: dict[int, dict[str, int]] = {
    2: {"tile": 256, "overlap": 32, "block": 2048, "chunks": 512},
    3: {"tile": 128, "overlap": 32, "block": 256, "chunks": 64},
}
"""Tile, overlap, block and chunks left out of a 2D or 3D job (3D blocks are small: block³ float32 per class)."""


def is_scalar_int(value: Any) -> bool:
    """Whether ``value`` is an int and not a bool (YAML's ``true`` is not a number of pixels)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _num_threads(value: Any) -> int | str:
    if value == "ALL_CPUS" or (is_scalar_int(value) and value >= 1):
        return value  # type: ignore[no-any-return]
    raise Problems([("", value, "must be a positive integer or ALL_CPUS", "write e.g. 4, or ALL_CPUS")])


def _boundary_width(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Problems(
            [("", value, "must be a number", "write e.g. 0.02 (fraction of diagonal) or 3 (pixels)")]
        )
    if value <= 0:
        raise Problems(
            [("", value, "must be > 0", "write e.g. 0.02 (fraction of the diagonal) or 3 (pixels)")]
        )
    if value >= 1:
        if not float(value).is_integer():
            raise Problems(
                [
                    (
                        "",
                        value,
                        "is >= 1 so it counts pixels, but is not a whole number",
                        f"write {int(value)} pixels, or a fraction below 1",
                    )
                ]
            )
        return int(value)
    return float(value)


NumThreads = Annotated[int | str, PlainValidator(_num_threads), PlainSerializer(lambda v: v)]
BoundaryWidth = Annotated[float | int, PlainValidator(_boundary_width), PlainSerializer(lambda v: v)]


def broadcast(value: Any, ndim: int) -> Any:
    """``value`` repeated once per axis when it is a single int, else as given."""
    return (value,) * ndim if is_scalar_int(value) else value
