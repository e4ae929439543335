"""Tile geometry: N-D integer windows, the tile grid over an image, and the block partition of its output.

Pure numpy and the standard library. Everything is N-D with one code path; 2D images are
indexed (row, col) and 3D volumes (z, y, x). Coordinates are in pixels of the (unpadded) image;
a tile on an axis shorter than the tile reaches past the image end into the padding.

The grid rule, stated once (:func:`axis_starts`): with tile ``T`` and overlap ``O`` on an axis of
length ``L``, the step is ``S = T - O``; tiles start at ``0, S, 2S, ...``; the last tile is moved
back to end flush with the edge; an axis shorter than ``T`` is padded to ``T`` (at its end) and the
padding is cropped away again when stitching. A second rule, :attr:`StepRule.NNUNET`, spreads the
same number of starts evenly instead (nnU-Net's sliding window); it is chosen per grid, never mixed.

Example: a 10 x 7 image in 4 x 4 tiles overlapping by 1 (step 3); the last tile of each axis ends flush
with the edge, and blocks of 4 x 4 partition the output (clipped at the edge):

>>> grid = TileGrid((10, 7), tile=(4, 4), overlap=(1, 1))
>>> grid.starts, len(grid), grid.window((2, 1))
(((0, 3, 6), (0, 3)), 6, Window(start=(6, 3), stop=(10, 7)))
>>> [w.shape for w in BlockPartition((5, 7), (4, 4))]
[(4, 4), (4, 3), (1, 4), (1, 3)]
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from tiler.errors import GeometryError

Shape = tuple[int, ...]


class StepRule(str, enum.Enum):
    """Where the tiles of an axis start (:func:`axis_starts` states both rules).

    ``OVERLAP``: tiler's rule, a fixed step ``T - O`` with the last tile moved back flush with the edge.
    ``NNUNET``: nnU-Net's rule, the same count of tiles spread evenly between ``0`` and ``L - T``.
    """

    OVERLAP = "overlap"
    NNUNET = "nnunet"


class PadMode(str, enum.Enum):
    """How an axis shorter than the tile is padded: mirror its content, or fill a constant."""

    REFLECT = "reflect"
    CONSTANT = "constant"


def _as_int_tuple(name: str, values: Sequence[int] | int, ndim: int | None = None) -> Shape:
    """Normalise ``values`` to a tuple of ints, broadcasting a scalar to ``ndim`` axes."""
    if isinstance(values, int | float) and not isinstance(values, bool):
        if ndim is None:
            raise GeometryError(
                f"{name}={values!r} is a scalar but the number of axes is unknown; give one value per axis."
            )
        values = (values,) * ndim
    out = tuple(values)  # type: ignore[arg-type]
    for v in out:
        if isinstance(v, bool) or not float(v).is_integer():
            raise GeometryError(f"{name}={out!r} must hold whole pixel counts; got {v!r}. Give integers (pixels).")
    result = tuple(int(v) for v in out)
    if ndim is not None and len(result) != ndim:
        raise GeometryError(
            f"{name}={result!r} has {len(result)} axes but the image has {ndim}; give one value per axis "
            f"(2 for (row, col), 3 for (z, y, x))."
        )
    return result


@dataclass(frozen=True, order=True)
class Window:
    """A half-open N-D box ``[start, stop)`` in pixel coordinates; hashable and comparable.

    Attributes:
        start: First pixel per axis, e.g. ``(row, col)`` or ``(z, y, x)``.
        stop: One past the last pixel per axis.
    """

    start: Shape
    stop: Shape

    def __post_init__(self) -> None:
        start = _as_int_tuple("start", self.start)
        stop = _as_int_tuple("stop", self.stop)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        if len(start) != len(stop) or not start:
            raise GeometryError(
                f"Window start={start} and stop={stop} must have the same, non-zero number of axes."
            )
        if any(b <= a for a, b in zip(start, stop, strict=True)):
            raise GeometryError(
                f"Window start={start}, stop={stop} is empty or inverted; every stop must exceed its start."
            )

    @classmethod
    def from_shape(cls, shape: Sequence[int], start: Sequence[int] | None = None) -> Window:
        """The window of size ``shape`` starting at ``start`` (default: the origin)."""
        shape = tuple(shape)
        start = tuple(start) if start is not None else (0,) * len(shape)
        return cls(start, tuple(a + s for a, s in zip(start, shape, strict=True)))

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.start)

    @property
    def shape(self) -> Shape:
        """Size per axis."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        """Number of pixels inside."""
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        """Slices selecting this window from an array whose origin is the image origin."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    def relative_to(self, origin: Window | Sequence[int]) -> Window:
        """This window in the coordinates of an array whose first pixel is ``origin``'s start."""
        base = origin.start if isinstance(origin, Window) else tuple(origin)
        return Window(
            tuple(a - o for a, o in zip(self.start, base, strict=True)),
            tuple(b - o for b, o in zip(self.stop, base, strict=True)),
        )

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or None when they do not overlap."""
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        if any(b <= a for a, b in zip(start, stop, strict=True)):
            return None
        return Window(start, stop)

    def union_bounds(self, other: Window) -> Window:
        """The smallest window holding both."""
        return Window(
            tuple(min(a, b) for a, b in zip(self.start, other.start, strict=True)),
            tuple(max(a, b) for a, b in zip(self.stop, other.stop, strict=True)),
        )

    def contains(self, other: Window) -> bool:
        """Whether ``other`` lies wholly inside this window."""
        return all(a <= c for a, c in zip(self.start, other.start, strict=True)) and all(
            d <= b for b, d in zip(self.stop, other.stop, strict=True)
        )

    def clip(self, shape: Sequence[int]) -> Window | None:
        """This window cut to an image of ``shape`` (None when nothing of it lies inside)."""
        return self.intersection(Window.from_shape(shape))


def axis_starts(length: int, tile: int, overlap: int, rule: StepRule | str = StepRule.OVERLAP) -> tuple[int, ...]:
    """Tile start positions along one axis: the grid rules of the project.

    With ``P = max(L, T)`` (the padded length) and the target step ``S = T - O``, both rules place
    ``n = ceil((P - T) / S) + 1`` tiles, first at 0 and last at ``P - T`` (flush with the edge):

    * ``overlap`` (default): starts ``min(i · S, P - T)`` for ``i = 0 … n - 1``;
    * ``nnunet``: starts ``round(i · (P - T) / (n - 1))`` (half to even, as numpy rounds), the steps spread
      evenly, each at most ``S``. This is nnU-Net's ``compute_steps_for_sliding_window`` with step fraction
      ``f = S / T`` (its default ``f = 0.5`` is ``O = T / 2``).

    Neither places a start twice (the ``nnunet`` step is at least 1 pixel since ``n - 1 <= P - T``).

    >>> axis_starts(110, 64, 32)
    (0, 32, 46)
    >>> axis_starts(110, 64, 32, StepRule.NNUNET)
    (0, 23, 46)

    Args:
        length: Image length ``L`` along the axis (pixels, >= 1).
        tile: Tile size ``T`` (pixels, >= 1).
        overlap: Overlap ``O`` between neighbouring tiles (pixels, ``0 <= O < T``).
        rule: ``overlap`` or ``nnunet``.

    Returns:
        Increasing start positions, first 0, last ``max(L, T) - T``.
    """
    if length < 1 or tile < 1:
        raise GeometryError(f"axis length={length} and tile={tile} must both be at least 1 pixel.")
    if not 0 <= overlap < tile:
        raise GeometryError(
            f"overlap={overlap} must satisfy 0 <= overlap < tile={tile}; use an overlap of at most {tile - 1} "
            f"pixels (a quarter of the tile, {tile // 4}, is a common choice)."
        )
    padded = max(length, tile)
    step = tile - overlap
    count = -(-(padded - tile) // step) + 1
    if StepRule(rule) is StepRule.NNUNET:
        actual = (padded - tile) / (count - 1) if count > 1 else 0.0
        return tuple(round(actual * i) for i in range(count))
    return tuple(min(i * step, padded - tile) for i in range(count))


def crop_cuts(starts: Sequence[int], tile: int, length: int) -> tuple[int, ...]:
    """Borders between neighbouring tiles' crop interiors along one axis.

    Tile ``i`` owns ``[cuts[i], cuts[i + 1])``: each border sits in the middle of the overlap of two
    neighbours, the first tile owns from 0 and the last up to ``length``, so the interiors cover
    every pixel of the axis exactly once.

    Returns:
        ``len(starts) + 1`` increasing positions, first 0, last ``length``.
    """
    inner = [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)]
    return (0, *(min(c, length) for c in inner), length)


@dataclass(frozen=True)
class TileGrid:
    """The overlapping tiles covering an image, in one global (C-order) sequence.

    Attributes:
        shape: Spatial image shape, ``(H, W)`` or ``(D, H, W)``.
        tile: Tile size per axis, in pixels.
        overlap: Overlap between neighbouring tiles per axis, in pixels (``0 <= overlap < tile``).
        pad_mode: How axes shorter than the tile are padded.
        rule: Where tiles start on each axis (:func:`axis_starts`).
        region: The part of the image the tiles cover (a region of interest: nnU-Net's non-zero crop box, a
            window of a scene), or None for the whole image. Tiles are placed over the region as over an image
            of its shape (the grid rule measured from its start), read only pixels inside it (padding past its
            end like past an image's) and leave the pixels outside it to no tile.
    """

    shape: Shape
    tile: Shape
    overlap: Shape
    pad_mode: PadMode = PadMode.REFLECT
    rule: StepRule = StepRule.OVERLAP
    region: Window | None = None
    _starts: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = _as_int_tuple("image shape", self.shape)
        if len(shape) not in (2, 3):
            raise GeometryError(
                f"image shape={shape} has {len(shape)} spatial axes; tiler tiles 2D (H, W) or 3D (D, H, W) images."
            )
        tile = _as_int_tuple("tile", self.tile, len(shape))
        overlap = _as_int_tuple("overlap", self.overlap, len(shape))
        for name, values in (("image shape", shape), ("tile", tile)):
            if any(v < 1 for v in values):
                raise GeometryError(f"{name}={values} must be at least 1 pixel on every axis.")
        for o, t in zip(overlap, tile, strict=True):
            if not 0 <= o < t:
                raise GeometryError(
                    f"overlap={overlap} must be >= 0 and smaller than tile={tile} on every axis; "
                    f"lower the overlap (a quarter of the tile is a common choice)."
                )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "pad_mode", PadMode(self.pad_mode))
        object.__setattr__(self, "rule", StepRule(self.rule))
        region = self.region
        if region is not None:
            if region.ndim != len(shape) or not Window.from_shape(shape).contains(region) or region.size == 0:
                raise GeometryError(
                    f"region start={region.start} stop={region.stop} must be a non-empty window inside the image "
                    f"of shape {shape}; give one start and stop per axis within it."
                )
            if region == Window.from_shape(shape):
                object.__setattr__(self, "region", None)  # the whole image: one grid, one identity
        starts = tuple(
            tuple(a + s for s in axis_starts(n, t, o, self.rule))
            for a, n, t, o in zip(self.extent.start, self.extent.shape, tile, overlap, strict=True)
        )
        object.__setattr__(self, "_starts", starts)

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.shape)

    @property
    def extent(self) -> Window:
        """The window the tiles cover and read from: :attr:`region`, or the whole image."""
        return self.region if self.region is not None else Window.from_shape(self.shape)

    @property
    def padded_shape(self) -> Shape:
        """The extent's shape after padding short axes up to the tile size."""
        return tuple(max(n, t) for n, t in zip(self.extent.shape, self.tile, strict=True))

    @property
    def starts(self) -> tuple[tuple[int, ...], ...]:
        """Tile start positions per axis (from :func:`axis_starts`)."""
        return self._starts

    @property
    def counts(self) -> Shape:
        """Number of tiles per axis."""
        return tuple(len(s) for s in self._starts)

    def __len__(self) -> int:
        return math.prod(self.counts)

    def index_of(self, position: Sequence[int]) -> int:
        """Global (C-order) index of the tile at per-axis position ``position``."""
        flat = 0
        for p, n in zip(position, self.counts, strict=True):
            flat = flat * n + p
        return flat

    def window(self, position: Sequence[int]) -> Window:
        """The tile at per-axis position ``position`` (its window may reach into padding)."""
        start = tuple(s[p] for s, p in zip(self._starts, position, strict=True))
        return Window.from_shape(self.tile, start)

    def positions(self) -> Iterator[Shape]:
        """Per-axis positions of every tile, in global order."""
        return itertools.product(*(range(n) for n in self.counts))

    def __iter__(self) -> Iterator[Window]:
        return (self.window(p) for p in self.positions())

    @cached_property
    def cuts(self) -> tuple[tuple[int, ...], ...]:
        """Per-axis crop borders (see :func:`crop_cuts`)."""
        ext = self.extent
        return tuple(
            tuple(a + c for c in crop_cuts(tuple(x - a for x in s), t, n))
            for s, t, a, n in zip(self._starts, self.tile, ext.start, ext.shape, strict=True)
        )

    def interior(self, position: Sequence[int]) -> Window:
        """The part of the image that tile ``position`` alone owns in ``crop`` blending."""
        return Window(
            tuple(c[p] for c, p in zip(self.cuts, position, strict=True)),
            tuple(c[p + 1] for c, p in zip(self.cuts, position, strict=True)),
        )

    def positions_intersecting(self, window: Window) -> list[Shape]:
        """Positions of the tiles that overlap ``window`` (image coordinates), in global order."""
        if window.ndim != self.ndim:
            raise GeometryError(f"window {window} has {window.ndim} axes but the grid has {self.ndim}.")
        ranges = []
        for starts, t, a, b in zip(self._starts, self.tile, window.start, window.stop, strict=True):
            first = bisect.bisect_right(starts, a - t)  # first tile with start + t > a
            last = bisect.bisect_left(starts, b)  # first tile with start >= b
            ranges.append(range(first, last))
        return list(itertools.product(*ranges))

    def region_of(self, positions: Sequence[Sequence[int]]) -> Window:
        """The smallest window (padded coordinates) holding every tile at ``positions``."""
        if not positions:
            raise GeometryError("region_of needs at least one tile position.")
        lo = tuple(min(p[i] for p in positions) for i in range(self.ndim))
        hi = tuple(max(p[i] for p in positions) for i in range(self.ndim))
        return self.window(lo).union_bounds(self.window(hi))


@dataclass(frozen=True)
class BlockPartition:
    """The output cut into blocks aligned to its chunk grid; each block is one unit of work.

    Blocks start at multiples of ``block`` and are clipped at the image edge, so a block owns whole
    output chunks whenever ``block`` is a multiple of the chunk shape.

    Attributes:
        shape: Spatial output shape.
        block: Block shape per axis, in pixels.
    """

    shape: Shape
    block: Shape

    def __post_init__(self) -> None:
        shape = _as_int_tuple("image shape", self.shape)
        block = _as_int_tuple("block", self.block, len(shape))
        if any(b < 1 for b in block) or any(n < 1 for n in shape):
            raise GeometryError(f"block={block} and image shape={shape} must be at least 1 pixel on every axis.")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "block", block)

    @property
    def counts(self) -> Shape:
        """Number of blocks per axis."""
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block, strict=True))

    def __len__(self) -> int:
        return math.prod(self.counts)

    def window(self, position: Sequence[int]) -> Window:
        """The block at per-axis position ``position``, clipped to the image."""
        start = tuple(p * b for p, b in zip(position, self.block, strict=True))
        stop = tuple(min(a + b, n) for a, b, n in zip(start, self.block, self.shape, strict=True))
        return Window(start, stop)

    def positions(self) -> Iterator[Shape]:
        """Per-axis positions of every block, in C order."""
        return itertools.product(*(range(n) for n in self.counts))

    def __iter__(self) -> Iterator[Window]:
        return (self.window(p) for p in self.positions())

    def check_aligned(self, chunks: Sequence[int]) -> None:
        """Raise unless every block owns whole chunks of a store chunked by ``chunks``."""
        chunks = _as_int_tuple("chunks", chunks, len(self.shape))
        if any(b % c for b, c in zip(self.block, chunks, strict=True)):
            raise GeometryError(
                f"block={self.block} is not a multiple of the output chunk shape {chunks}; two blocks would "
                f"share a chunk and race. Use a block that is a whole number of chunks per axis."
            )
