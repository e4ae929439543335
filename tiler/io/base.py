"""The reader contract of every input format: windowed, boundless, picklable reads plus georeferencing.

A reader is built from a path and its options only; the file handle is opened lazily in each process
(and dropped when pickled), so a reader can be shipped to a Ray actor and re-opened there.
"""

from __future__ import annotations

import abc
import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiler.errors import InputError, ReadError
from tiler.geometry import Window

GEOREF_KINDS = ("raster", "volume", "slide", "none")


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


def _fill_value(nodata: float | None, dtype: np.dtype) -> Any:
    """Return the value written outside the image: nodata when it fits the dtype, else 0."""
    if nodata is None or (isinstance(nodata, float) and math.isnan(nodata) and dtype.kind != "f"):
        return 0
    return nodata


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

    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window``; parts outside the image are filled with nodata (or 0).

        Args:
            window: Spatial window in image pixel coordinates; may reach past the image (boundless).

        Returns:
            Array (C, *window.shape) of :attr:`dtype`.

        """
        self._check_window(window)
        inside = window.clip(self.shape)
        if inside == window:
            return self._guarded_read(window)
        out = np.full((self.channels, *window.shape), _fill_value(self.nodata, self.dtype), dtype=self.dtype)
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
                f"reading window start={window.start} stop={window.stop} of {self.path} failed: {exc}. "
                f"The file may be corrupt or truncated; check it (e.g. `gdalinfo -checksum`) or re-create it."
            ) from exc

    def read_masked(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels and valid mask of ``window`` together (see :meth:`read` and :meth:`valid_mask`).

        Formats whose mask follows from the pixels override this to decode the window only once.
        """
        return self.read(window), self.valid_mask(window)

    def valid_mask(self, window: Window) -> np.ndarray | None:
        """Which pixels of ``window`` hold data.

        Returns:
            Bool array (*window.shape), True = has data, False outside the image; None when the reader
            has no mask at all (every pixel inside the image is valid).

        """
        return None

    def _check_window(self, window: Window) -> None:
        if window.ndim != len(self.shape):
            raise InputError(
                f"window {window} has {window.ndim} axes but {self.path} has spatial shape {self.shape}; "
                f"give one start/stop per axis."
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, shape={self.shape}, channels={self.channels}, "
            f"dtype={self.dtype}, nodata={self.nodata})"
        )


def is_remote(path: str) -> bool:
    """Whether ``path`` is a GDAL virtual file system path or URL (never checked for existence locally)."""
    return path.startswith("/vsi") or "://" in path


def check_exists(path: str) -> None:
    """Raise ReadError unless a local ``path`` exists (remote paths are left to the library)."""
    if not is_remote(path) and not os.path.exists(path):
        raise ReadError(f"input {path} does not exist; check the path (absolute: {os.path.abspath(path)}).")


def scan_windows(shape: Sequence[int], block: int) -> Iterator[Window]:
    """Yield windows covering ``shape`` in C order: ``block`` pixels in (H, W), ``block // 64`` slices in D.

    Args:
        shape: Spatial shape (H, W) or (D, H, W).
        block: Window side in pixels along the last two axes.

    """
    steps = [max(1, block // 64)] * (len(shape) - 2) + [max(1, block)] * 2
    ranges = [range(0, n, s) for n, s in zip(shape, steps, strict=True)]
    for start in itertools.product(*ranges):
        stop = tuple(min(a + s, n) for a, s, n in zip(start, steps, shape, strict=True))
        yield Window(start, stop)


def check_has_data(reader: Reader, *, block: int = 2048) -> None:
    """Raise InputError when every pixel of ``reader`` is nodata (nothing to segment).

    Scans the valid mask window by window and stops at the first valid pixel.
    """
    for window in scan_windows(reader.shape, block):
        mask = reader.valid_mask(window)
        if mask is None or bool(mask.any()):
            return
    value = "masked" if reader.nodata is None else f"value {reader.nodata:g}"
    raise InputError(
        f"every pixel is nodata ({value}) in {reader.path} (shape {reader.shape}): nothing to segment. "
        f"Check that this is the right file, the right bands, or the nodata value set in its metadata."
    )

