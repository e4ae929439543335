"""The reader contract of every input format: windowed, boundless, picklable reads plus georeferencing.

A reader is built from a path and its options only; the file handle is opened lazily in each process
(and dropped when pickled), so a reader can be shipped to a Ray actor and re-opened there.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiler.errors import InputError, ReadError
from tiler.geometry import BlockPartition, Window
from tiler.paths import is_remote
from tiler.redact import redact

GEOREF_KINDS = ("raster", "volume", "slide", "none")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Georef:
    """Where an image's pixels lie in the world: an affine for rasters and volumes, a pixel size for slides.

    Attributes:
        kind: ``"raster"``, ``"volume"``, ``"slide"`` or ``"none"``.
        crs_wkt: Raster CRS as WKT (``None`` when the raster has none).
        transform: Raster affine ``(a, b, c, d, e, f)``: ``x = a*col + b*row + c``, ``y = d*col + e*row + f``.
        affine: Volume 4x4 affine (NIfTI convention: maps voxel ``(i, j, k, 1)`` to world millimetres).
        spacing: Volume voxel size per exposed axis ``(D, H, W)``, millimetres.
        mpp: Slide microns per pixel at the exposed level.

    """

    kind: str = "none"
    crs_wkt: str | None = None
    transform: tuple[float, ...] | None = None
    affine: tuple[tuple[float, ...], ...] | None = None
    spacing: tuple[float, ...] | None = None
    mpp: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in GEOREF_KINDS:
            raise InputError(f"Georef kind={self.kind!r} is unknown; use one of {GEOREF_KINDS}.")
        if self.transform is not None:
            object.__setattr__(self, "transform", tuple(float(v) for v in self.transform))
        if self.affine is not None:
            object.__setattr__(self, "affine", tuple(tuple(float(v) for v in row) for row in self.affine))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        if self.mpp is not None:
            object.__setattr__(self, "mpp", float(self.mpp))

    def to_attrs(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the georeferencing (for zarr attributes)."""
        return {
            "kind": self.kind,
            "crs_wkt": self.crs_wkt,
            "transform": list(self.transform) if self.transform is not None else None,
            "affine": [list(r) for r in self.affine] if self.affine is not None else None,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "mpp": self.mpp,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any] | None) -> Georef:
        """Rebuild from :meth:`to_attrs` output, or from a mapping holding it under ``"georef"``."""
        if not attrs:
            return cls()
        if "georef" in attrs and isinstance(attrs["georef"], Mapping):
            attrs = attrs["georef"]
        keys = ("kind", "crs_wkt", "transform", "affine", "spacing", "mpp")
        return cls(**{k: attrs[k] for k in keys if attrs.get(k) is not None})


    def grid_differences(self, other: Georef, *, tolerance: float = 1e-6) -> tuple[list[GridDifference], list[str]]:
        """How ``other``'s pixel grid differs from this one, and notes on what could not be compared.

        The CRS is compared as a coordinate system (two WKT spellings of one CRS are equal), the raster
        transform and the volume affine element by element within ``tolerance``. A property only one of
        the two has is a note, not a difference.

        >>> a = Georef("raster", transform=(10, 0, 500000, 0, -10, 5000000))
        >>> a.grid_differences(Georef("raster", transform=(10, 0, 500010, 0, -10, 5000000)))[0][0].name
        'transform'
        >>> a.grid_differences(Georef("raster"))
        ([], ['transform not checked: only one of the two has one'])
        """
        differences: list[GridDifference] = []
        notes: list[str] = []
        if self.crs_wkt and other.crs_wkt and not _crs_equal(self.crs_wkt, other.crs_wkt):
            differences.append(GridDifference("CRS", f"{self.crs_wkt[:120]!r}...", f"{other.crs_wkt[:120]!r}..."))
        pairs = (("transform", self.transform, other.transform), ("affine", self.affine, other.affine))
        for name, mine, theirs in pairs:
            if mine is None or theirs is None:
                if (mine is None) != (theirs is None):
                    notes.append(f"{name} not checked: only one of the two has one")
                continue
            a, b = np.asarray(mine, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
            if a.shape != b.shape or not np.allclose(a, b, rtol=0.0, atol=tolerance):
                differences.append(GridDifference(name, str(list(a.ravel())), str(list(b.ravel()))))
        return differences, notes

    def same_grid(self, other: Georef, *, tolerance: float = 1e-6) -> bool:
        """Whether ``other`` places pixels where this one does (see :meth:`grid_differences`).

        >>> Georef("volume", affine=((2, 0, 0, 0), (0, 2, 0, 0), (0, 0, 3, 0), (0, 0, 0, 1))).same_grid(
        ...     Georef("volume", affine=((2, 0, 0, 0), (0, 2, 0, 0), (0, 0, 3 + 1e-9, 0), (0, 0, 0, 1))))
        True
        """
        return not self.grid_differences(other, tolerance=tolerance)[0]


@dataclass(frozen=True)
class GridDifference:
    """One property two georeferencings disagree on: its name (``CRS``, ``transform``, ``affine``) and both values."""

    name: str
    this: str
    other: str


def _crs_equal(a: str, b: str) -> bool:
    """Whether two CRS strings (WKT, ``EPSG:n``) name one coordinate system; an unparsable one equals only itself."""
    if a == b:
        return True
    from rasterio.crs import CRS

    try:
        return bool(CRS.from_user_input(a) == CRS.from_user_input(b))
    except Exception:  # noqa: BLE001 - an unparsable CRS is simply not equal
        return False


def one_line(text: str) -> str:
    """A message as one line with secrets redacted (library errors often span lines and quote URLs)."""
    return redact(" ".join(text.split()))


SUPPORTED_DTYPE_KINDS = "biuf"
"""numpy dtype kinds a reader accepts: bool, signed and unsigned integers, real floats."""


def fill_value(nodata: float | None, dtype: np.dtype) -> float | int:
    """The one value every invalid pixel holds when read: the nodata value when finite and exact in ``dtype``, else 0.

    Pixels outside the image (boundless reads) and non-finite pixels (NaN, ±Inf) are given this value,
    so the network never sees a NaN and invalid pixels look the same as the file's own nodata pixels.

    >>> fill_value(-9999.0, np.dtype("float32")), fill_value(float("nan"), np.dtype("float32"))
    (-9999.0, 0)
    >>> fill_value(-1.0, np.dtype("uint8")), fill_value(None, np.dtype("int16"))
    (0, 0)
    """
    if nodata is None or not math.isfinite(nodata):
        return 0
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            fits = bool(np.isfinite(np.asarray(nodata).astype(dtype)))
        return float(nodata) if fits else 0
    if dtype.kind in "iu" and float(nodata).is_integer():
        info = np.iinfo(dtype)
        return int(nodata) if info.min <= nodata <= info.max else 0
    return int(nodata) if nodata in (0, 1) else 0


def check_dtype(path: str, dtype: Any) -> np.dtype:
    """Return ``dtype`` as a numpy dtype, or raise InputError when tiler cannot segment such pixels.

    Complex, structured (e.g. NIfTI RGB24), string, object and date dtypes are refused: dropping the
    imaginary part (or reading bytes as numbers) would give a result that looks right and is not.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is not None and dt.kind in SUPPORTED_DTYPE_KINDS and dt.fields is None:
        return dt
    raise InputError(
        redact(
            f"{path} has pixels of dtype {dtype}, which tiler cannot segment (it reads real-valued integer or "
            f"float pixels). Convert the file first, e.g. the magnitude of complex data "
            f"(`gdal_translate -ot Float32 ...` with a VRT pixel function, or numpy.abs) or one band per channel."
        )
    )


def finite_pixels(pixels: np.ndarray, fill: float | int) -> tuple[np.ndarray, np.ndarray | None]:
    """Replace pixels with a non-finite value in any channel by ``fill`` in every channel.

    Args:
        pixels: Array (C, *S).
        fill: The reader's :func:`fill_value`.

    Returns:
        The pixels (in place when they own their memory) and a bool (*S) mask of the pixels that were
        finite in every channel, or None for a non-float dtype (every pixel finite).

    """
    if pixels.dtype.kind != "f":
        return pixels, None
    finite = np.isfinite(pixels).all(axis=0)
    if finite.all():
        return pixels, finite
    if not (pixels.flags.writeable and pixels.flags.owndata):
        pixels = pixels.copy()
    pixels[:, ~finite] = fill
    return pixels, finite


def inside_mask(window: Window, shape: Sequence[int]) -> np.ndarray:
    """Bool (*window.shape): True where ``window`` lies inside an image of ``shape``."""
    keep = np.zeros(window.shape, dtype=bool)
    inside = window.clip(shape)
    if inside is not None:
        keep[inside.relative_to(window).slices] = True
    return keep


class Reader(abc.ABC):
    """A windowed, boundless, picklable view of one input image.

    Attributes:
        path: The input path exactly as given (GDAL virtual paths such as ``/vsis3/...`` are kept).
        shape: Spatial shape, ``(H, W)`` or ``(D, H, W)``.
        channels: Number of channels ``C`` returned by :meth:`read`.
        dtype: Pixel dtype (native byte order).
        georef: Georeferencing of the exposed pixels.
        nodata: Pixel value meaning "no data", or None.

    """

    path: str
    shape: tuple[int, ...]
    channels: int
    dtype: np.dtype
    georef: Georef
    nodata: float | None
    format: str = "unknown"

    _handle: Any = None

    # -- lazy handle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> Any:
        """Open the underlying file (called lazily, once per process)."""

    def _close_handle(self, handle: Any) -> None:
        close = getattr(handle, "close", None)
        if close is not None:
            close()

    @property
    def handle(self) -> Any:
        """The open file handle, opened on first use in this process."""
        if self._handle is None:
            self._handle = self._open()
        return self._handle

    def close(self) -> None:
        """Close the file handle (a later read re-opens it)."""
        if self._handle is not None:
            self._close_handle(self._handle)
            self._handle = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    # -- pixels -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _read_inside(self, window: Window) -> np.ndarray:
        """Pixels of ``window``, which lies wholly inside the image: (C, *window.shape)."""

    @property
    def fill(self) -> float | int:
        """The value every invalid pixel holds in what :meth:`read` returns (see :func:`fill_value`)."""
        return fill_value(self.nodata, self.dtype)

    @property
    def name(self) -> str:
        """The path for messages: credentials and URL query values redacted (see :mod:`tiler.redact`)."""
        return redact(self.path)

    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window``; parts outside the image and non-finite pixels hold :attr:`fill`.

        A pixel with NaN or ±Inf in any channel gets :attr:`fill` in every channel (it is also invalid in
        :meth:`valid_mask`), so what this returns is always finite.

        Args:
            window: Spatial window in image pixel coordinates; may reach past the image (boundless).

        Returns:
            Array (C, *window.shape) of :attr:`dtype`.

        """
        self._check_window(window)
        return finite_pixels(self._read_raw(window), self.fill)[0]

    def read_stored(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` as the file stores them: NaN and ±Inf kept (a label map's values, never replaced).

        :meth:`read` gives the model finite pixels; a label map read for scoring must not turn a NaN into a class.

        Returns:
            Array (C, *window.shape) of :attr:`dtype`; outside the image :attr:`fill`.
        """
        self._check_window(window)
        return self._read_raw(window)

    def read_sampled(self, step: int) -> np.ndarray:
        """The whole 2D image sampled every ``step`` pixels, for previews (the quicklook).

        Pixel ``(i, j)`` is the image at (or, from a coarser level, near) ``(i·step, j·step)``. This reads
        full-resolution row bands, one at a time, and equals ``read(whole)[:, ::step, ::step]``; formats
        with overviews or a pyramid override it to read a coarser level instead.

        Returns:
            Array (C, ceil(H / step), ceil(W / step)) of :attr:`dtype`, finite as :meth:`read` is.

        """
        if len(self.shape) != 2 or step < 1:
            raise ValueError(f"read_sampled wants a 2D image and a step >= 1; got shape {self.shape}, step {step}")
        return sample_level(self.read, self.shape, step=step, scale=1.0, full_shape=self.shape)

    def read_masked(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels and valid mask of ``window`` together (see :meth:`read` and :meth:`valid_mask`).

        The window is decoded once; formats whose mask follows from the pixels take it from them.
        """
        self._check_window(window)
        raw = self._read_raw(window)
        return self._with_finite(window, raw, self._format_mask(window, raw))

    def valid_mask(self, window: Window) -> np.ndarray | None:
        """Which pixels of ``window`` hold data: the format's mask, and never a non-finite pixel.

        Returns:
            Bool array (*window.shape), True = has data, False outside the image; None when every pixel
            inside the image is valid by construction (no format mask, and a dtype without NaN).
            A float image always has a mask: its non-finite pixels.

        """
        self._check_window(window)
        if self.dtype.kind == "f":
            return self.read_masked(window)[1]
        return self._format_mask(window, None)

    def _format_mask(self, window: Window, pixels: np.ndarray | None) -> np.ndarray | None:
        """The format's own valid mask of ``window`` (nodata, alpha, tissue, threshold), False outside.

        Args:
            window: Any window (boundless).
            pixels: The raw pixels of ``window`` (C, *window.shape) when already read, else None.

        Returns:
            Bool (*window.shape), or None when the format has no mask.

        """
        return None

    def _with_finite(
        self, window: Window, raw: np.ndarray, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Replace non-finite pixels by :attr:`fill` and take them out of ``valid``."""
        pixels, finite = finite_pixels(raw, self.fill)
        if finite is None:
            return pixels, valid
        if window.clip(self.shape) != window:
            finite &= inside_mask(window, self.shape)
        return pixels, finite if valid is None else valid & finite

    def _read_raw(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` as stored (NaN kept); outside the image :attr:`fill`."""
        inside = window.clip(self.shape)
        if inside == window:
            return self._guarded_read(window)
        out = np.full((self.channels, *window.shape), self.fill, dtype=self.dtype)
        if inside is not None:
            out[(slice(None), *inside.relative_to(window).slices)] = self._guarded_read(inside)
        return out

    def _guarded_read(self, window: Window) -> np.ndarray:
        try:
            return self._read_inside(window)
        except (ReadError, InputError):
            raise
        except Exception as exc:  # noqa: BLE001 - any library failure becomes a ReadError naming file+window
            raise ReadError(
                one_line(
                    f"reading window start={window.start} stop={window.stop} of {self.name} failed: {exc}. "
                    f"The file may be corrupt or truncated; check it (e.g. `gdalinfo -checksum`) or re-create it."
                )
            ) from exc

    def data_windows(self, block: int) -> Iterator[Window]:
        """Windows of :func:`scan_windows` that may hold valid pixels (all, unless the format knows better).

        A sparse GeoTIFF, for one, skips windows whose blocks are all missing from the file.
        """
        return scan_windows(self.shape, block)

    def _check_window(self, window: Window) -> None:
        if window.ndim != len(self.shape):
            raise InputError(
                f"window {window} has {window.ndim} axes but {self.name} has spatial shape {self.shape}; "
                f"give one start/stop per axis."
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.name!r}, shape={self.shape}, channels={self.channels}, "
            f"dtype={self.dtype}, nodata={self.nodata})"
        )


SAMPLE_BAND_ROWS = 512
"""Rows of a level read at a time by :func:`sample_level` (bounds its memory)."""


def sample_level(
    read: Any, level_shape: Sequence[int], *, step: int, scale: float, full_shape: Sequence[int]
) -> np.ndarray:
    """Every ``step``-th pixel of a ``full_shape`` image, taken from a level ``scale`` times coarser.

    Args:
        read: ``read(window) -> (C, *window.shape)`` on the level (windows lie inside ``level_shape``).
        level_shape: ``(h, w)`` of that level.
        step: Sampling step in full-resolution pixels.
        scale: Full-resolution pixels per level pixel (1.0: the full resolution itself).
        full_shape: ``(H, W)`` of the full resolution.

    Returns:
        (C, ceil(H / step), ceil(W / step)); pixel ``(i, j)`` is level pixel
        ``(floor(i·step / scale), floor(j·step / scale))``, clipped to the level. Row bands of
        :data:`SAMPLE_BAND_ROWS` level rows are read one at a time, only those holding a sampled row.
    """
    level_h, level_w = (int(n) for n in level_shape)
    rows = np.minimum((np.arange(-(-int(full_shape[0]) // step)) * step / scale).astype(np.int64), level_h - 1)
    cols = np.minimum((np.arange(-(-int(full_shape[1]) // step)) * step / scale).astype(np.int64), level_w - 1)
    parts = []
    for r0 in range(0, level_h, SAMPLE_BAND_ROWS):
        r1 = min(r0 + SAMPLE_BAND_ROWS, level_h)
        wanted = rows[(rows >= r0) & (rows < r1)]
        if wanted.size:
            parts.append(read(Window((r0, 0), (r1, level_w)))[:, wanted - r0][:, :, cols])
    return np.concatenate(parts, axis=1)


def check_exists(path: str) -> None:
    """Raise ReadError unless a local ``path`` exists (remote paths are left to the library)."""
    if not is_remote(path) and not os.path.exists(path):
        raise ReadError(
            redact(f"input {path} does not exist; check the path (absolute: {os.path.abspath(path)}).")
        )


def scan_windows(shape: Sequence[int], block: int) -> Iterator[Window]:
    """Yield windows covering ``shape`` in C order: ``block`` pixels in (H, W), ``block // 64`` slices in D.

    Args:
        shape: Spatial shape (H, W) or (D, H, W).
        block: Window side in pixels along the last two axes.

    """
    steps = [max(1, block // 64)] * (len(shape) - 2) + [max(1, block)] * 2
    yield from BlockPartition(tuple(shape), tuple(steps))


HAS_DATA_SECONDS = 30.0
"""How long :func:`check_has_data` scans before it gives up proving an input empty (and lets the job run)."""


def check_has_data(reader: Reader, *, block: int = 2048, max_seconds: float = HAS_DATA_SECONDS) -> None:
    """Raise InputError when every pixel of ``reader`` is nodata (nothing to segment).

    Scans the valid mask of :meth:`Reader.data_windows` (a sparse GeoTIFF's missing blocks are never read)
    and stops at the first valid pixel. A scan that has found nothing after ``max_seconds`` stops too,
    with a warning, and the job goes on: its empty tiles are skipped anyway.
    """
    deadline = time.monotonic() + max_seconds
    for window in reader.data_windows(block):
        mask = reader.valid_mask(window)
        if mask is None or bool(mask.any()):
            return
        if time.monotonic() > deadline:
            logger.warning(
                "%s: no valid pixel in the first %.0f s of scanning (up to window %s of shape %s); "
                "going on without proving the input empty.",
                reader.name, max_seconds, window, reader.shape,
            )
            return
    value = "masked" if reader.nodata is None else f"value {reader.nodata:g}"
    raise InputError(
        f"every pixel is nodata ({value}) in {reader.name} (shape {reader.shape}): nothing to segment. "
        f"Check that this is the right file, the right bands, or the nodata value set in its metadata."
    )


def region_window(region: Sequence[Sequence[int]], shape: Sequence[int], path: str) -> Window:
    """``input.region``'s ``[[start, stop], ...]`` as a window of the image ``path`` of spatial ``shape``.

    Raises:
        InputError: Not one pair per axis lying inside the image; names the region, the file, its shape and the fix.
    """
    full = Window.from_shape(tuple(int(n) for n in shape))
    pairs = [[int(a), int(b)] for a, b in region]
    if len(pairs) != full.ndim or not full.contains(Window(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))):
        raise InputError(
            f"input.region {pairs} does not lie inside {path} of shape {list(full.shape)}; fix: give one "
            "[start, stop] pair per axis within the image, auto, or null"
        )
    return Window(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
