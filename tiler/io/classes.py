"""The class table of an output: which classes are background, and how many pixels and what area each covers.

Rules stated once:

* **Background.** A class named ``background`` (any case) is the background class; every other class is
  foreground. Scores average over the foreground classes beside the all-class means, and polygon exports
  leave the background class out unless asked for it by name.
* **Areas.** Per-class pixel counts come from the block records (each block worker counts its labels while
  writing them, so no second pass over the pixels), read as :class:`~tiler.io.store.StoredBlock`; a record
  written before blocks carried counts is recounted from the store, that block only. A pixel's size in real
  units follows from the georeferencing:

  ======================== ==================================================== ===========
  output                   one pixel                                            reported in
  ======================== ==================================================== ===========
  raster, projected CRS    ``|a*e - b*d|`` CRS units² x (metres per unit)²      m², ha
  raster, geographic CRS   WGS 84 ellipsoid band area, per block                m², ha
  slide                    ``mpp²`` µm²                                         mm²
  volume                   ``|det(affine[:3, :3])|`` (or the spacings' product) mm³, ml
  anything else            (no size)                                            pixels
  ======================== ==================================================== ===========

>>> is_background(" Background ")
True
>>> foreground_classes(["background", "liver", "lesion"])
(1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tiler.geometry import Window
from tiler.io.base import Georef

if TYPE_CHECKING:
    from tiler.io.store import OutputStore, StoredBlock

BACKGROUND_NAME = "background"
WGS84_A = 6_378_137.0
WGS84_F = 1 / 298.257223563


def _authalic_q(lat: float, e: float) -> float:
    """``q(φ)`` of the ellipsoid's equal-area (authalic) latitude (Snyder 1987, eq. 3-12)."""
    s = math.sin(lat)
    return s / (1 - (e * s) ** 2) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)


def ellipsoid_band_area(lat0: float, lat1: float, dlon: float) -> float:
    """Area in m² of the WGS 84 band between latitudes ``lat0`` and ``lat1`` (degrees), ``dlon`` degrees wide.

    ``A = b² Δλ |q(φ0) - q(φ1)| / 2``; exact on the ellipsoid, no spherical approximation.
    """
    e = math.sqrt(WGS84_F * (2 - WGS84_F))
    b = WGS84_A * (1 - WGS84_F)
    q0, q1 = _authalic_q(math.radians(lat0), e), _authalic_q(math.radians(lat1), e)
    return b * b * math.radians(abs(dlon)) * abs(q0 - q1) / 2


def is_background(name: str) -> bool:
    """Whether a class called ``name`` is the background class (see the module docstring)."""
    return name.strip().lower() == BACKGROUND_NAME


def foreground_classes(names: Sequence[str]) -> tuple[int, ...]:
    """Indices of the classes that are not background (all of them when none is named ``background``)."""
    return tuple(i for i, n in enumerate(names) if not is_background(n))


# -- pixel size in real units ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelMeasure:
    """How big one pixel (voxel) of an output is.

    Attributes:
        unit: The base unit of :meth:`pixel_size`: ``"m2"``, ``"mm2"``, ``"mm3"`` or ``"px"`` (no size known).
        note: How the size was derived, for the report.
        size: The size of every pixel in ``unit`` (None when it varies by row: geographic CRS).
        transform: The raster's affine, for a geographic CRS.

    """

    unit: str
    note: str
    size: float | None = 1.0
    transform: tuple[float, ...] | None = None

    def pixel_size(self, window: Window) -> float:
        """The mean size of one pixel of ``window`` in :attr:`unit` (exact per block for a geographic CRS)."""
        if self.size is not None or self.transform is None:
            return self.size or 0.0
        a, _, _, _, e, f = self.transform[:6]
        r0, r1 = window.start[0], window.stop[0]
        return ellipsoid_band_area(f + e * r0, f + e * r1, a) / max(r1 - r0, 1)

    @property
    def units(self) -> dict[str, float]:
        """The reported units: name -> factor from the base unit (``{"m2": 1, "ha": 1e-4}``)."""
        return {"m2": {"m2": 1.0, "ha": 1e-4}, "mm2": {"mm2": 1.0}, "mm3": {"mm3": 1.0, "ml": 1e-3}}.get(
            self.unit, {}
        )


def pixel_measure(georef: Georef) -> PixelMeasure:
    """The size of a pixel of an output georeferenced by ``georef`` (see the module table)."""
    if georef.kind == "raster" and georef.transform is not None and georef.crs_wkt:
        from rasterio.crs import CRS

        crs = CRS.from_wkt(georef.crs_wkt)
        a, b, _, d, e, _ = georef.transform[:6]
        if crs.is_projected:
            unit_name, metres = crs.linear_units_factor
            size = abs(a * e - b * d) * metres**2
            return PixelMeasure("m2", f"pixel {math.sqrt(size):.6g} m on a side ({unit_name}, projected CRS)", size)
        if crs.is_geographic and b == 0 and d == 0:
            note = "geographic CRS: pixel areas on the WGS 84 ellipsoid, per block"
            return PixelMeasure("m2", note, None, georef.transform)
    if georef.kind == "slide" and georef.mpp:
        return PixelMeasure("mm2", f"{georef.mpp:.6g} µm per pixel", georef.mpp**2 * 1e-6)
    if georef.kind == "volume":
        if georef.affine is not None:
            size = abs(float(np.linalg.det(np.asarray(georef.affine, dtype=float)[:3, :3])))
        elif georef.spacing is not None:
            size = float(np.prod(georef.spacing))
        else:
            size = 0.0
        if size > 0:
            return PixelMeasure("mm3", f"voxel {size:.6g} mm³", size)
    return PixelMeasure("px", "no pixel size known (no CRS, mpp or spacing): pixel counts only", 1.0)


# -- per-class counts and areas ----------------------------------------------------------------------------
def _record_counts(store: OutputStore, record: StoredBlock, window: Window) -> tuple[np.ndarray, bool]:
    """The class counts ``(K,)`` of one block record, recounted from the store when the record has none."""
    k = store.num_classes
    counts = record.class_counts
    if counts is not None and len(counts) == k:
        return np.asarray(counts, dtype=np.int64), False
    labels = store.read(window)
    return np.bincount(labels.ravel(), minlength=k)[:k].astype(np.int64), True


def class_areas(store: OutputStore, records: Mapping[str, StoredBlock] | None = None) -> dict[str, Any]:
    """Pixels and area per class of a finished store, summed from its block records.

    Args:
        store: The output store.
        records: Its sound block records, typed (default: :meth:`OutputStore.stored_blocks`).

    Returns:
        JSON-ready ``{"unit": ..., "note": ..., "units": [...], "classes": [{"class", "name", "pixels",
        <unit>: area, ...}], "nodata_pixels", "total_pixels", "blocks_recounted"}``.

    """
    records = store.stored_blocks() if records is None else records
    measure = pixel_measure(store.georef)
    k = store.num_classes
    pixels = np.zeros(k, dtype=np.int64)
    area = np.zeros(k, dtype=np.float64)
    covered = recounted = 0
    for record in records.values():
        window = record.window
        if window is None:
            continue
        counts, again = _record_counts(store, record, window)
        recounted += int(again)
        covered += int(np.prod(window.shape))
        pixels += counts
        area += counts * measure.pixel_size(window)
    total = int(np.prod(store.shape))
    rows = []
    for i, name in enumerate(store.class_names):
        row: dict[str, Any] = {"class": i, "name": name, "pixels": int(pixels[i])}
        row.update({u: float(area[i] * f) for u, f in measure.units.items()})
        rows.append(row)
    return {
        "unit": measure.unit,
        "note": measure.note,
        "units": list(measure.units),
        "classes": rows,
        "nodata_pixels": int(covered - pixels.sum()) + (total - covered),
        "total_pixels": total,
        "blocks_recounted": recounted,
    }

