"""Georeferenced rasters (GeoTIFF, COG, anything GDAL opens) read window by window through rasterio.

Paths are passed to GDAL untouched, so GDAL virtual file systems work (``/vsicurl/https://...``,
``/vsis3/bucket/key.tif``), and so do the URLs rasterio maps to them (``s3://``, ``gs://``, ``az://``, ``https://``).
Every call on a remote file runs under the GDAL options the clouds' standard variables of *this* process imply
(:func:`tiler.io.cloud.gdal_cloud_options`: ``AWS_ENDPOINT_URL`` for an S3-compatible server), computed where the
file is read, never shipped with the reader. Only north-up rasters are accepted: a rotated or sheared transform
raises InputError (warp it first with ``gdalwarp``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.session
import rasterio.windows
from rasterio.enums import Resampling
from rasterio.errors import EnvError, RasterioIOError

from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io.base import (
    Georef,
    Reader,
    check_dtype,
    check_exists,
    finite_pixels,
    inside_mask,
    is_remote,
    one_line,
    scan_windows,
)
from tiler.io.cloud import describe_remote_failure, gdal_cloud_options

DEFAULT_GDAL_OPTIONS: dict[str, Any] = {"GDAL_CACHEMAX": 256, "GDAL_NUM_THREADS": "ALL_CPUS"}
NETWORK_GDAL_OPTIONS: dict[str, Any] = {
    "GDAL_HTTP_CONNECTTIMEOUT": 10,
    "GDAL_HTTP_LOW_SPEED_TIME": 6,
    "GDAL_HTTP_LOW_SPEED_LIMIT": 1,
    "GDAL_HTTP_TIMEOUT": 30,
    "GDAL_HTTP_MAX_RETRY": 1,
    "GDAL_HTTP_RETRY_DELAY": 1,
}
"""Defaults for remote paths (``/vsicurl/``, ``/vsis3/``, URLs), overridable through ``input.gdal.options``.

A request gives up when no byte arrives for ``GDAL_HTTP_LOW_SPEED_TIME`` s or after ``GDAL_HTTP_TIMEOUT``
s in all, and is retried once: a server that accepts and never answers ends in a ReadError in about
15 s (GDAL sends two requests to open a file) instead of a hang, while a slow large transfer that keeps
moving is not cut short before 30 s.
"""
AWS_CREDENTIAL_OPTIONS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""Options rasterio.Env refuses as keywords; they are handed to GDAL through :class:`_GdalCredentials`."""

MAX_BLOCK_SCAN = 1_000_000
"""A GeoTIFF with more blocks than this is not checked for missing (sparse) blocks."""


class _GdalCredentials(rasterio.session.Session):
    """A rasterio session that hands AWS credential options to GDAL as they were given (no boto3)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    @classmethod
    def hascreds(cls, config: Mapping[str, Any]) -> bool:
        return all(k in config for k in AWS_CREDENTIAL_OPTIONS[:2])

    def get_credential_options(self) -> dict[str, Any]:
        return dict(self.options)


def gdal_env(options: Mapping[str, Any]) -> rasterio.Env:
    """A ``rasterio.Env`` for GDAL configuration ``options``, AWS credential options included."""
    creds = {k: v for k, v in options.items() if k in AWS_CREDENTIAL_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in AWS_CREDENTIAL_OPTIONS}
    if creds:
        return rasterio.Env(session=_GdalCredentials(creds), **rest)
    return rasterio.Env(**rest)


def to_rio_window(window: Window) -> rasterio.windows.Window:
    """Convert a (row, col) Window to a rasterio ``Window(col_off, row_off, width, height)``."""
    (r0, c0), (r1, c1) = window.start, window.stop
    return rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)


class RasterReader(Reader):
    """Windowed, boundless reads of a GDAL raster with band selection and a folded valid-data mask.

    Args:
        path: Local path or GDAL virtual path.
        bands: 1-based band indexes to read (rasterio convention); default all bands.
        mask: ``"auto"`` (GDAL's nodata/alpha/internal mask) or ``"none"`` (no such mask). Either way a
            pixel with NaN or ±Inf in any band is invalid and read as :attr:`fill`.
        gdal_options: GDAL configuration (e.g. ``GDAL_CACHEMAX``, ``GDAL_NUM_THREADS``) for every read;
            remote paths get :data:`NETWORK_GDAL_OPTIONS` unless overridden here. These win over the options
            :func:`~tiler.io.cloud.gdal_cloud_options` derives from the environment of the reading process.

    """

    format = "raster"

    def __init__(
        self,
        path: str,
        *,
        bands: Sequence[int] | None = None,
        mask: str = "auto",
        gdal_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = str(path)
        network = NETWORK_GDAL_OPTIONS if is_remote(self.path) else {}
        self.gdal_options = {**DEFAULT_GDAL_OPTIONS, **network, **dict(gdal_options or {})}
        self.mask_mode = mask
        self._present: np.ndarray | None = None
        check_exists(self.path)
        src = self._open()
        try:
            with self._gdal_env():  # the mask flags may look for sidecar files (.msk) on the server
                self._describe(src, bands)
        finally:
            self._close_handle(src)

    def _gdal_env(self) -> rasterio.Env:
        """The GDAL environment of every call on the file: this process's cloud options, then :attr:`gdal_options`.

        Computed on each call from this process's environment (cheap: a few lookups), so a reader pickled to a
        Ray worker reads with the worker's own endpoint and credentials, never the driver's.
        """
        return gdal_env({**gdal_cloud_options(self.path), **self.gdal_options})

    def _remote_error(self, action: str, exc: Exception) -> ReadError | None:
        """A one-line ReadError for a storage failure of a remote file (cause, server, fix), else None."""
        cause = describe_remote_failure(self.path, str(exc), {**gdal_cloud_options(self.path), **self.gdal_options})
        if cause is None:
            return None
        return ReadError(one_line(f"cannot {action} {self.path}: {cause}"))

    def _describe(self, src: Any, bands: Sequence[int] | None) -> None:
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise InputError(
                f"{self.name} has a rotated/sheared transform (b={t.b}, d={t.d}); "
                f"tiler needs a north-up raster. "
                f"Warp it first: `gdalwarp {self.name} north_up.tif`."
            )
        count = src.count
        chosen = tuple(int(b) for b in bands) if bands is not None else tuple(range(1, count + 1))
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad or not chosen:
            raise InputError(
                f"bands={list(chosen)} invalid for {self.name}, which has {count} band(s); "
                f"give 1-based band numbers between 1 and {count}."
            )
        self.bands = chosen
        self.shape = (src.height, src.width)
        self.channels = len(chosen)
        for b in chosen:
            check_dtype(self.name, src.dtypes[b - 1])
        self.dtype = np.dtype(src.dtypes[chosen[0] - 1])
        self.nodata = None if src.nodata is None else float(src.nodata)
        self.georef = Georef(
            kind="raster",
            crs_wkt=src.crs.to_wkt() if src.crs is not None else None,
            transform=tuple(t)[:6],
        )
        flags = [src.mask_flag_enums[b - 1] for b in chosen]
        all_valid = all(f == [rasterio.enums.MaskFlags.all_valid] for f in flags)
        self._has_mask = self.mask_mode != "none" and not all_valid
        nodata_only = all(f == [rasterio.enums.MaskFlags.nodata] for f in flags) and self.nodata is not None
        # GDAL's dataset mask of a nodata-only raster is "any band differs from nodata": with every band
        # read, it follows from the pixels, so read_masked need not decode the window twice
        every_band = sorted(chosen) == list(range(1, count + 1))
        self._mask_from_pixels = self._has_mask and every_band and nodata_only
        # a sparse GeoTIFF's missing blocks read as nodata: with a nodata-only mask they hold no data
        self._sparse_known = self._has_mask and nodata_only and src.driver == "GTiff"
        self._block_shape = tuple(src.block_shapes[0]) if src.block_shapes else (1, src.width)

    def _open(self) -> Any:
        try:
            with self._gdal_env():
                return rasterio.open(self.path)
        except RasterioIOError as exc:
            remote = self._remote_error("open", exc)
            if remote is not None:
                raise remote from exc
            raise ReadError(
                one_line(
                    f"cannot open {self.path} as a raster: {exc}. Check the path, the credentials for remote "
                    f"paths, the network (a remote request gives up after GDAL_HTTP_LOW_SPEED_TIME="
                    f"{self.gdal_options.get('GDAL_HTTP_LOW_SPEED_TIME', 'unset')} s without data; raise it in "
                    f"input.gdal.options for a slow server), and that GDAL can read the file (`gdalinfo {self.path}`)."
                )
            ) from exc
        except EnvError as exc:
            raise ReadError(
                one_line(f"cannot open {self.path}: GDAL options rejected ({exc}); fix input.gdal.options.")
            ) from exc

    def _read_inside(self, window: Window) -> np.ndarray:
        try:
            with self._gdal_env():
                data = self.handle.read(list(self.bands), window=to_rio_window(window))
        except RasterioIOError as exc:  # a server that fails mid-job (expired token): its cause, not "corrupt"
            remote = self._remote_error(f"read window start={window.start} stop={window.stop} of", exc)
            if remote is not None:
                raise remote from exc
            raise
        return np.asarray(data, dtype=self.dtype)

    def read_sampled(self, step: int) -> np.ndarray:
        """The image sampled every ``step`` pixels; from GDAL's overviews when the file has them.

        With overviews, GDAL reads the one closest to the requested size (nearest neighbour), so the cost is
        that of the overview, not of the full resolution; without them, full-resolution row bands as
        :meth:`Reader.read_sampled`.
        """
        with self._gdal_env():  # overviews may be a sidecar .ovr on the server
            overviews = self.handle.overviews(self.bands[0]) if step > 1 else []
        if not overviews:
            return super().read_sampled(step)
        out_shape = (len(self.bands), -(-self.shape[0] // step), -(-self.shape[1] // step))
        try:
            with self._gdal_env():
                data = self.handle.read(list(self.bands), out_shape=out_shape, resampling=Resampling.nearest)
        except Exception as exc:  # noqa: BLE001 - library failure -> ReadError naming the file
            raise ReadError(
                one_line(
                    f"reading the overviews of {self.path} failed: {exc}. The file may be corrupt; check it with "
                    f"`gdalinfo -checksum {self.path}`."
                )
            ) from exc
        return finite_pixels(np.asarray(data, dtype=self.dtype), self.fill)[0]

    def _format_mask(self, window: Window, pixels: np.ndarray | None) -> np.ndarray | None:
        """GDAL's dataset mask (nodata, alpha, internal mask); from ``pixels`` when it is nodata-only."""
        if not self._has_mask:
            return None
        if pixels is not None and self._mask_from_pixels:
            valid = (pixels != np.asarray(self.nodata, dtype=pixels.dtype)).any(axis=0)
            if window.clip(self.shape) != window:  # outside the image is never valid, whatever the fill
                valid &= inside_mask(window, self.shape)
            return valid
        out = np.zeros(window.shape, dtype=bool)
        inside = window.clip(self.shape)
        if inside is None:
            return out
        try:
            with self._gdal_env():
                out[inside.relative_to(window).slices] = self.handle.dataset_mask(window=to_rio_window(inside)) > 0
        except Exception as exc:  # noqa: BLE001 - library failure -> ReadError naming file and window
            raise ReadError(
                one_line(
                    f"reading the valid mask of window start={inside.start} stop={inside.stop} of {self.path} "
                    f"failed: {exc}. The file may be corrupt; check it with `gdalinfo -checksum {self.path}`."
                )
            ) from exc
        return out

    def _present_blocks(self) -> np.ndarray | None:
        """Bool (block rows, block cols): which blocks a GeoTIFF stores (None when unknown)."""
        if not self._sparse_known:
            return None
        if self._present is None:
            bh, bw = self._block_shape
            rows, cols = -(-self.shape[0] // bh), -(-self.shape[1] // bw)
            if rows * cols > MAX_BLOCK_SCAN:
                return None
            present = np.zeros((rows, cols), dtype=bool)
            handle = self.handle
            with self._gdal_env():
                for band in range(1, handle.count + 1):
                    for r in range(rows):
                        for c in range(cols):
                            if not present[r, c]:
                                present[r, c] = (
                                    handle.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=band) is not None
                                )
                    if present.all():
                        break
            self._present = present
        return self._present

    def data_windows(self, block: int) -> Iterator[Window]:
        """Windows that may hold data: a sparse GeoTIFF's windows with no stored block are skipped."""
        present = self._present_blocks()
        bh, bw = self._block_shape
        for window in scan_windows(self.shape, block):
            (r0, c0), (r1, c1) = window.start, window.stop
            if present is None or present[r0 // bh : -(-r1 // bh), c0 // bw : -(-c1 // bw)].any():
                yield window
