"""What every raster export shares: the folder check, the georeferencing used, the window size, the errors.

Each export (:mod:`tiler.io.export`, :mod:`tiler.io.ome_zarr`, :mod:`tiler.io.quicklook`,
:mod:`tiler.io.dicom_seg`) checks its destination folder first (:func:`_check_writable`, which also removes
temporaries a killed export left there), and turns an OS or GDAL failure into an :class:`OutputError` naming the
output (:func:`_write_errors`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from tiler.errors import OutputError
from tiler.io.atomic import clean_temporaries, output_error
from tiler.io.base import Georef, Reader
from tiler.io.objects import AnyPath, ObjectPath
from tiler.io.store import OutputStore

EXPORT_BLOCK = 2048
"""About how many pixels a side the windows an export streams the labels in have (whole write units)."""


def _block_for(store: OutputStore, target: int = EXPORT_BLOCK) -> tuple[int, ...]:
    """Return a window size of whole write units, about ``target`` pixels per spatial axis."""
    return tuple(max(u, (target // u) * u) for u in store.write_unit)


def _georef_of(store: OutputStore, reference: Reader | Georef | None) -> Georef:
    """The georeferencing to write: the reader's, the one given, or the one stored with the labels."""
    if isinstance(reference, Reader):
        return reference.georef
    if isinstance(reference, Georef):
        return reference
    return store.georef


def _check_writable(out_path: AnyPath) -> None:
    """Refuse a destination folder that is missing or read-only; remove the temporaries left there."""
    if isinstance(out_path, ObjectPath):
        clean_temporaries(out_path)  # those of this machine's temporary folder, where its files are written first
        return
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {out_path}: its folder {parent} does not exist or is not writable.")
    clean_temporaries(parent)


@contextlib.contextmanager
def _write_errors(out_path: AnyPath, what: str) -> Iterator[None]:
    """Turn an OS or GDAL failure (GDAL reports a full disk as an I/O error) into OutputError naming the output."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        raise output_error(out_path, exc, what=what) from exc
