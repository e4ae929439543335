"""Whole-slide images: pyramidal (OME-)TIFF via tifffile, vendor formats via OpenSlide, one level read.

Level choice, stated once (:func:`choose_level`): given a requested mpp, the reader takes the coarsest
pyramid level that is still at least as fine as requested, with 10% tolerance (level mpp <= requested x
1.1); when even level 0 is coarser, it takes level 0 (the nearest). It never resamples: ``reader.mpp``
is the chosen level's own mpp. ``level=`` picks a level directly. Windows are in that level's pixels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import openslide
import tifffile
import zarr

from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io.base import Georef, Reader, check_dtype, check_exists, sample_level
from tiler.io.masks import tissue_mask, upsample_mask

OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TISSUE_MASK_SIZE = 2048  # the tissue mask is computed on the finest level no larger than this


def choose_level(level_mpps: Sequence[float | None], mpp: float | None, level: int | None) -> int:
    """Pyramid level for a requested ``mpp`` (see module docstring), or ``level`` when given."""
    n = len(level_mpps)
    if level is not None:
        if not 0 <= level < n:
            raise InputError(f"level={level} does not exist; this slide has levels 0..{n - 1}.")
        return level
    if mpp is None or level_mpps[0] is None:
        return 0
    fine_enough = [i for i, m in enumerate(level_mpps) if m is not None and m <= mpp * 1.1]
    return max(fine_enough) if fine_enough else 0


def _ome_mpp(ome_xml: str | None) -> float | None:
    if not ome_xml:
        return None
    found = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome_xml)
    if not found:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome_xml)
    factor = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit.group(1) if unit else "µm", 1.0)
    return float(found.group(1)) * factor


def _tag_mpp(page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or unit not in (2, 3):  # 2 = inch, 3 = centimetre
        return None
    per_unit = num / den
    return (25400.0 if unit == 2 else 10000.0) / per_unit


def coarsest_level(level_shapes: Sequence[tuple[int, int]], exposed: int, step: int) -> tuple[int, float]:
    """The coarsest pyramid level at most ``step`` times coarser than level ``exposed``, and its scale.

    Args:
        level_shapes: ``(h, w)`` of every level, finest first.
        exposed: The level the reader exposes.
        step: Sampling step in exposed-level pixels.

    Returns:
        ``(level, scale)``: scale = exposed-level pixels per pixel of that level (1.0 for ``exposed``).
    """
    base_w = level_shapes[exposed][1]
    best, best_scale = exposed, 1.0
    for k in range(exposed + 1, len(level_shapes)):
        scale = base_w / level_shapes[k][1]
        if scale <= step * (1 + 1e-6) and scale > best_scale:
            best, best_scale = k, scale
    return best, best_scale


class _TissueMasked:
    """Tissue mask from a low-resolution level, upsampled to any window of the exposed level."""

    mask_mode: str
    _tissue: np.ndarray | None = None

    def _low_res_rgb(self) -> np.ndarray | None:  # pragma: no cover - overridden
        return None

    def _format_mask(self, window: Window, pixels: np.ndarray | None) -> np.ndarray | None:
        if self.mask_mode == "none" or self.channels < 3:  # type: ignore[attr-defined]
            return None
        if self._tissue is None:
            low = self._low_res_rgb()
            if low is None:
                return None
            self._tissue = tissue_mask(low)
        return upsample_mask(self._tissue, window, self.shape)  # type: ignore[attr-defined]


class TiffSlideReader(_TissueMasked, Reader):
    """Pyramidal TIFF / OME-TIFF slides; windowed reads through ``aszarr`` (only the tiles needed).

    Args:
        path: ``.tif``/``.tiff``/``.ome.tif`` file whose first series is the slide.
        level: Pyramid level to read; default from ``mpp`` (see :func:`choose_level`).
        mpp: Requested microns per pixel.
        mask: ``"auto"`` (tissue mask for RGB slides) or ``"none"``.

    """

    format = "tiff-slide"

    def __init__(
        self, path: str, *, level: int | None = None, mpp: float | None = None, mask: str = "auto"
    ) -> None:
        self.path = str(path)
        self.mask_mode = mask
        check_exists(self.path)
        tif = self._open_tiff()
        try:
            series = tif.series[0]
            base_mpp = _ome_mpp(tif.ome_metadata) if tif.is_ome else None
            base_mpp = base_mpp or _tag_mpp(series.levels[0].keyframe)
            shapes = [lv.shape for lv in series.levels]
            self._axes = series.axes
            if self._axes not in ("YX", "YXS", "SYX", "CYX"):
                raise InputError(
                    f"{self.path} has axes {self._axes!r}; "
                    "tiler reads 2D slides with axes YX, YXS, SYX or CYX."
                )
            yx = [(s[self._axes.index("Y")], s[self._axes.index("X")]) for s in shapes]
            mpps = [base_mpp * yx[0][1] / w if base_mpp else None for _, w in yx]
            self.level = choose_level(mpps, mpp, level)
            self.level_shapes = yx
            self.level_mpps = mpps
            self.shape = tuple(int(n) for n in yx[self.level])
            s = shapes[self.level]
            self.channels = (
                1 if self._axes == "YX" else int(s[self._axes.index("S" if "S" in self._axes else "C")])
            )
            self.dtype = check_dtype(self.name, series.dtype).newbyteorder("=")
        finally:
            tif.close()
        self.nodata = None
        self.georef = Georef(kind="slide", mpp=mpps[self.level])

    @property
    def mpp(self) -> float | None:
        """Microns per pixel of the exposed level."""
        return self.georef.mpp

    def _open_tiff(self) -> tifffile.TiffFile:
        try:
            return tifffile.TiffFile(self.path)
        except Exception as exc:  # noqa: BLE001
            raise ReadError(
                f"cannot open {self.path} as a TIFF slide: {exc}. Check the file is a valid TIFF."
            ) from exc

    def _open(self) -> Any:
        tif = self._open_tiff()
        store = tif.series[0].aszarr(level=self.level)
        return tif, zarr.open_array(store, mode="r")

    def _close_handle(self, handle: Any) -> None:
        handle[0].close()

    def _level_array(self, level: int) -> Any:
        return zarr.open_array(self.handle[0].series[0].aszarr(level=level), mode="r")

    def _to_channels_first(self, data: np.ndarray) -> np.ndarray:
        if self._axes == "YX":
            data = data[None]
        elif self._axes == "YXS":
            data = np.moveaxis(data, -1, 0)
        return np.ascontiguousarray(data, dtype=self.dtype)

    def _read_inside(self, window: Window) -> np.ndarray:
        arr = self.handle[1]
        key = (*window.slices, slice(None)) if self._axes == "YXS" else window.slices
        if self._axes in ("SYX", "CYX"):
            key = (slice(None), *window.slices)
        return self._to_channels_first(np.asarray(arr[key]))

    def read_sampled(self, step: int) -> np.ndarray:
        """The slide sampled every ``step`` pixels of the exposed level, from the coarsest level fine enough."""
        level, scale = coarsest_level(self.level_shapes, self.level, step)
        if level == self.level:
            return super().read_sampled(step)
        array = self._level_array(level)

        def read(window: Window) -> np.ndarray:
            key: tuple[slice, ...] = (*window.slices, slice(None)) if self._axes == "YXS" else window.slices
            if self._axes in ("SYX", "CYX"):
                key = (slice(None), *window.slices)
            return self._to_channels_first(np.asarray(array[key]))

        return sample_level(read, self.level_shapes[level], step=step, scale=scale, full_shape=self.shape)

    def _low_res_rgb(self) -> np.ndarray | None:
        small = [i for i, (h, w) in enumerate(self.level_shapes) if max(h, w) <= TISSUE_MASK_SIZE]
        level = small[0] if small else len(self.level_shapes) - 1
        # no small level: subsample the coarsest while reading, never holding the whole level
        step = max(1, -(-max(self.level_shapes[level]) // TISSUE_MASK_SIZE))
        every = slice(None, None, step)
        key: tuple[slice, ...] = (every, every)
        if self._axes == "YXS":
            key = (every, every, slice(None))
        elif self._axes in ("SYX", "CYX"):
            key = (slice(None), every, every)
        return self._to_channels_first(np.asarray(self._level_array(level)[key]))


class OpenSlideReader(_TissueMasked, Reader):
    """Vendor slide formats (.svs, .ndpi, .mrxs, ...) through OpenSlide ``read_region`` at one level.

    Pixels are returned as RGB (3, H, W) uint8; transparent (alpha 0) pixels, e.g. outside scanned regions,
    are filled with 0.
    """

    format = "openslide"

    def __init__(
        self, path: str, *, level: int | None = None, mpp: float | None = None, mask: str = "auto"
    ) -> None:
        self.path = str(path)
        self.mask_mode = mask
        check_exists(self.path)
        slide = self._open()
        try:
            base = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
            base_mpp = float(base) if base else None
            downs = [float(d) for d in slide.level_downsamples]
            mpps = [base_mpp * d if base_mpp else None for d in downs]
            self.level = choose_level(mpps, mpp, level)
            self.level_shapes = [(h, w) for w, h in slide.level_dimensions]
            self.downsamples = downs
        finally:
            slide.close()
        self.shape = tuple(self.level_shapes[self.level])
        self.channels = 3
        self.dtype = np.dtype(np.uint8)
        self.nodata = None
        self.georef = Georef(kind="slide", mpp=mpps[self.level])

    @property
    def mpp(self) -> float | None:
        """Microns per pixel of the exposed level."""
        return self.georef.mpp

    def _open(self) -> Any:
        try:
            return openslide.OpenSlide(self.path)
        except Exception as exc:  # noqa: BLE001
            raise ReadError(
                f"OpenSlide cannot open {self.path}: {exc}. Check the file is a supported slide "
                f"({', '.join(OPENSLIDE_SUFFIXES)} or a tiled TIFF)."
            ) from exc

    def _region(self, level: int, window: Window) -> np.ndarray:
        (r0, c0), (r1, c1) = window.start, window.stop
        ds = self.downsamples[level]
        location = (int(round(c0 * ds)), int(round(r0 * ds)))
        rgba = np.asarray(self.handle.read_region(location, level, (c1 - c0, r1 - r0)))
        rgb = np.moveaxis(rgba[..., :3], -1, 0).copy()
        rgb[:, rgba[..., 3] == 0] = 0
        return rgb

    def _read_inside(self, window: Window) -> np.ndarray:
        return self._region(self.level, window)

    def read_sampled(self, step: int) -> np.ndarray:
        """The slide sampled every ``step`` pixels of the exposed level, from the coarsest level fine enough."""
        level, scale = coarsest_level(self.level_shapes, self.level, step)
        if level == self.level:
            return super().read_sampled(step)
        return sample_level(
            lambda window: self._region(level, window), self.level_shapes[level], step=step, scale=scale,
            full_shape=self.shape,
        )

    def _low_res_rgb(self) -> np.ndarray | None:
        small = [i for i, (h, w) in enumerate(self.level_shapes) if max(h, w) <= TISSUE_MASK_SIZE]
        level = small[0] if small else len(self.level_shapes) - 1
        h, w = self.level_shapes[level]
        if max(h, w) > TISSUE_MASK_SIZE:
            thumb = self.handle.get_thumbnail((TISSUE_MASK_SIZE, TISSUE_MASK_SIZE)).convert("RGB")
            return np.moveaxis(np.asarray(thumb), -1, 0)
        return self._region(level, Window((0, 0), (h, w)))
