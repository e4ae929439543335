"""What xarray and rioxarray read of a store: dimension names, coordinate arrays, the grid mapping and nodata.

``xarray.open_zarr(store)`` gives ``labels`` ``(y, x)`` / ``(z, y, x)`` and ``probabilities`` ``(c, y, x)`` /
``(c, z, y, x)`` with pixel-centre coordinates in real units and, for a georeferenced raster, the CRS and
transform rioxarray reads from the ``spatial_ref`` variable (the CF grid mapping). ``labels`` declares its nodata
label as ``_FillValue`` (the attribute xarray reads for zarr v3, equal to the array's fill value), so xarray masks
it by default (``rio.encoded_nodata`` is the label) and ``mask_and_scale=False`` keeps the integer labels
(``rio.nodata`` is the label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tiler.io.base import Georef

__all__ = ["GRID_MAPPING", "TRANSFORM_ORDER", "coordinate_arrays", "data_var_attrs", "dim_names"]

TRANSFORM_ORDER = "a b c d e f: x = a*col + b*row + c, y = d*col + e*row + f (GDAL GeoTransform: c a b f d e)"
"""How ``georef.transform`` is ordered (rasterio's Affine order), stated in every store that has one."""

GRID_MAPPING = "spatial_ref"
"""The scalar variable holding the CRS and GeoTransform (CF grid mapping, rioxarray's default name)."""


def dim_names(ndim: int) -> tuple[str, ...]:
    """The dimension names of ``ndim`` spatial axes.

    >>> dim_names(2), dim_names(3)
    (('y', 'x'), ('z', 'y', 'x'))
    """
    return ("z", "y", "x")[-ndim:] if ndim <= 3 else tuple(f"d{i}" for i in range(ndim))


def data_var_attrs(georef: Georef, *, nodata: int | None = None) -> dict[str, Any]:
    """Attributes of a data array: the CF grid mapping rioxarray follows to the CRS, and its ``_FillValue``.

    Args:
        georef: The output's georeferencing.
        nodata: The value of pixels with no prediction (the labels' nodata label, equal to the array's fill
            value); None for an array without one (probabilities: 0 is a probability, not nodata).

    """
    attrs: dict[str, Any] = {} if nodata is None else {"_FillValue": int(nodata)}
    if georef.kind == "raster" and georef.transform is not None:
        attrs.update(grid_mapping=GRID_MAPPING, coordinates=GRID_MAPPING)
    return attrs


def coordinate_arrays(
    georef: Georef, shape: Sequence[int]
) -> dict[str, tuple[np.ndarray, tuple[str, ...], dict[str, Any]]]:
    """Coordinate arrays xarray attaches to the spatial dimensions: name -> (values, dimension names, attrs).

    - raster with a north-up transform: ``x``/``y`` are pixel-centre coordinates in the CRS
      (``x = c + a * (col + 0.5)``, ``y = f + e * (row + 0.5)``), plus the scalar ``spatial_ref`` whose
      ``crs_wkt``/``spatial_ref`` (CF / GDAL) and ``GeoTransform`` rioxarray reads; a rotated transform gets
      ``spatial_ref`` only (rioxarray reads the transform from it);
    - slide: ``x``/``y`` in micrometres from the slide's top-left corner to pixel centres (``mpp``);
    - volume: ``z``/``y``/``x`` in millimetres from the first voxel's centre (``spacing``);
    - no georeferencing: none (xarray then indexes by position).
    """
    ndim = len(shape)
    names = dim_names(ndim)
    out: dict[str, tuple[np.ndarray, tuple[str, ...], dict[str, Any]]] = {}
    if georef.kind == "raster" and georef.transform is not None:
        a, b, c, d, e, f = georef.transform[:6]
        if b == 0 and d == 0:
            out["y"] = (f + e * (np.arange(shape[0]) + 0.5), ("y",), {"axis": "Y", "long_name": "pixel centre y"})
            out["x"] = (c + a * (np.arange(shape[1]) + 0.5), ("x",), {"axis": "X", "long_name": "pixel centre x"})
        ref: dict[str, Any] = {"GeoTransform": " ".join(repr(v) for v in (c, a, b, f, d, e))}
        if georef.crs_wkt:
            ref.update(crs_wkt=georef.crs_wkt, spatial_ref=georef.crs_wkt)
        out[GRID_MAPPING] = (np.zeros((), np.int32), (), ref)
    elif georef.kind == "slide" and georef.mpp:
        for name, n in zip(names, shape, strict=True):
            attrs = {"units": "micrometer", "long_name": f"pixel centre {name} from the top-left corner"}
            out[name] = ((np.arange(n) + 0.5) * georef.mpp, (name,), attrs)
    elif georef.kind == "volume" and georef.spacing and len(georef.spacing) == ndim:
        for name, n, step in zip(names, shape, georef.spacing, strict=True):
            attrs = {"units": "millimeter", "long_name": f"voxel centre {name} from the first voxel's centre"}
            out[name] = (np.arange(n) * step, (name,), attrs)
    return out
