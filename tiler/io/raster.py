"""Georeferenced rasters (GeoTIFF, COG, anything GDAL opens) read window by window through rasterio.

Paths are passed to GDAL untouched, so GDAL virtual file systems work (``/vsicurl/https://...``,
``/vsis3/bucket/key.tif``). Only north-up rasters are accepted: a rotated or sheared transform raises
InputError (warp it first with ``gdalwarp``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.errors import RasterioIOError

from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io.base import Georef, Reader, check_exists

DEFAULT_GDAL_OPTIONS: dict[str, Any] = {"GDAL_CACHEMAX": 256, "GDAL_NUM_THREADS": "ALL_CPUS"}


def to_rio_window(window: Window) -> rasterio.windows.Window:
    """Convert a (row, col) Window to a rasterio ``Window(col_off, row_off, width, height)``."""
    (r0, c0), (r1, c1) = window.start, window.stop
    return rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)


class RasterReader(Reader):
    """Windowed, boundless reads of a GDAL raster with band selection and a folded valid-data mask.

    Args:
        path: Local path or GDAL virtual path.
        bands: 1-based band indexes to read (rasterio convention); default all bands.
        mask: ``"auto"`` (nodata/alpha/internal mask and NaN) or ``"none"`` (every pixel valid).
        gdal_options: GDAL configuration (e.g. ``GDAL_CACHEMAX``, ``GDAL_NUM_THREADS``) for every read.

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
        self.gdal_options = {**DEFAULT_GDAL_OPTIONS, **dict(gdal_options or {})}
        self.mask_mode = mask
        check_exists(self.path)
        src = self._open()
        try:
            self._describe(src, bands)
        finally:
            self._close_handle(src)

    def _describe(self, src: Any, bands: Sequence[int] | None) -> None:
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise InputError(
                f"{self.path} has a rotated/sheared transform (b={t.b}, d={t.d}); "
                f"tiler needs a north-up raster. "
                f"Warp it first: `gdalwarp {self.path} north_up.tif`."
            )
        count = src.count
        chosen = tuple(int(b) for b in bands) if bands is not None else tuple(range(1, count + 1))
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad or not chosen:
            raise InputError(
                f"bands={list(chosen)} invalid for {self.path}, which has {count} band(s); "
                f"give 1-based band numbers between 1 and {count}."
            )
        self.bands = chosen
        self.shape = (src.height, src.width)
        self.channels = len(chosen)
        self.dtype = np.dtype(src.dtypes[chosen[0] - 1])
        self.nodata = None if src.nodata is None else float(src.nodata)
        self.georef = Georef(
            kind="raster",
            crs_wkt=src.crs.to_wkt() if src.crs is not None else None,
            transform=tuple(t)[:6],
        )
        flags = [src.mask_flag_enums[b - 1] for b in chosen]
        all_valid = all(f == [rasterio.enums.MaskFlags.all_valid] for f in flags)
        self._has_mask = self.mask_mode != "none" and (not all_valid or self.dtype.kind == "f")
        self._gdal_mask = not all_valid
        # GDAL's dataset mask of a nodata-only raster is "any band differs from nodata": with every band
        # read, it follows from the pixels, so read_masked need not decode the window twice
        every_band = sorted(chosen) == list(range(1, count + 1))
        self._mask_from_pixels = (
            self._has_mask and every_band and self.nodata is not None
            and all(f == [rasterio.enums.MaskFlags.nodata] for f in flags)
        )

    def _open(self) -> Any:
        try:
            with rasterio.Env(**self.gdal_options):
                return rasterio.open(self.path)
        except RasterioIOError as exc:
            raise ReadError(
                f"cannot open {self.path} as a raster: {exc}. Check the path, the credentials for remote "
                f"paths, and that GDAL can read the file (`gdalinfo {self.path}`)."
            ) from exc

    def _read_inside(self, window: Window) -> np.ndarray:
        with rasterio.Env(**self.gdal_options):
            data = self.handle.read(list(self.bands), window=to_rio_window(window))
        return np.asarray(data, dtype=self.dtype)

    def read_masked(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels and valid mask of ``window``, decoding it once when the mask is nodata-only."""
        if not self._mask_from_pixels:
            return super().read_masked(window)
        pixels = self.read(window)
        valid = (pixels != np.asarray(self.nodata, dtype=pixels.dtype)).any(axis=0)
        if self.dtype.kind == "f":
            valid &= ~np.isnan(pixels).any(axis=0)
        inside = window.clip(self.shape)
        if inside != window:  # outside the image is never valid, whatever the fill value
            keep = np.zeros(window.shape, dtype=bool)
            if inside is not None:
                keep[inside.relative_to(window).slices] = True
            valid &= keep
        return pixels, valid

    def valid_mask(self, window: Window) -> np.ndarray | None:
        """Return valid pixels: GDAL's dataset mask (nodata, alpha, internal mask), no NaN in any band."""
        self._check_window(window)
        if not self._has_mask:
            return None
        out = np.zeros(window.shape, dtype=bool)
        inside = window.clip(self.shape)
        if inside is None:
            return out
        rel = inside.relative_to(window).slices
        try:
            if self._gdal_mask:
                with rasterio.Env(**self.gdal_options):
                    out[rel] = self.handle.dataset_mask(window=to_rio_window(inside)) > 0
            else:
                out[rel] = True
            if self.dtype.kind == "f":
                out[rel] &= ~np.isnan(self._read_inside(inside)).any(axis=0)
        except Exception as exc:  # noqa: BLE001 - library failure -> ReadError naming file and window
            raise ReadError(
                f"reading the valid mask of window start={inside.start} stop={inside.stop} of {self.path} "
                f"failed: {exc}. The file may be corrupt; check it with `gdalinfo -checksum {self.path}`."
            ) from exc
        return out
