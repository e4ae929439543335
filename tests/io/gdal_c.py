"""``gdalinfo -json`` without the gdalinfo program: GDAL's own GDALInfo() through the C API of the GDAL that
rasterio loaded. rasterio has no call for category names or raster attribute tables; this is what
``gdalinfo`` (and so QGIS, which reads the same GDAL fields) reports."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import rasterio  # noqa: F401  (loads libgdal into the process)


def _libgdal() -> ctypes.CDLL:
    """rasterio's libgdal: pyogrio (geopandas) brings its own GDAL, and /proc/self/maps lists whichever loaded first."""
    loaded = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                     if "libgdal" in Path(line.split()[-1]).name})  # fmt: skip
    ours = [p for p in loaded if "rasterio" in p] or loaded
    if not ours:  # pragma: no cover - rasterio linked statically
        raise RuntimeError("libgdal is not loaded in this process")
    lib = ctypes.CDLL(ours[0])
    lib.GDALAllRegister()
    lib.GDALOpen.restype = ctypes.c_void_p
    lib.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.GDALInfoOptionsNew.restype = ctypes.c_void_p
    lib.GDALInfoOptionsNew.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
    lib.GDALInfo.restype = ctypes.c_void_p
    lib.GDALInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALInfoOptionsFree.argtypes = [ctypes.c_void_p]
    lib.VSIFree.argtypes = [ctypes.c_void_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    return lib


def gdalinfo(path: str | Path) -> dict[str, Any]:
    """What ``gdalinfo -json <path>`` prints, parsed."""
    lib = _libgdal()
    ds = lib.GDALOpen(str(path).encode(), 0)
    if not ds:
        raise OSError(f"GDAL cannot open {path}")
    argv = (ctypes.c_char_p * 2)(b"-json", None)
    options = lib.GDALInfoOptionsNew(argv, None)
    try:
        text = lib.GDALInfo(ds, options)
        try:
            return json.loads(ctypes.string_at(text).decode())
        finally:
            lib.VSIFree(text)
    finally:
        lib.GDALInfoOptionsFree(options)
        lib.GDALClose(ds)
