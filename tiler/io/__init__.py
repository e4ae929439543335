"""Input readers and output writers per format.

The only layer that imports rasterio, nibabel, tifffile, openslide and zarr.

:func:`open_reader` picks a reader from the path (or ``format=``); every reader follows
:class:`tiler.io.base.Reader`: windowed, boundless ``read(window) -> (C, *window.shape)``,
``valid_mask(window)``, georeferencing, picklable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tiler.errors import ReadError
from tiler.io.base import Georef, Reader, check_exists, check_has_data, is_remote
from tiler.redact import redact

FORMATS = ("raster", "nifti", "zarr", "dicom", "tiff-slide", "openslide", "stac-item")
SUPPORTED = (
    "rasters: .tif .tiff .vrt .img .jp2 and anything GDAL opens (format='raster'), "
    "incl. /vsicurl/ and /vsis3/ paths; "
    "volumes: .nii .nii.gz, .zarr, DICOM series folders (one series' slice files); "
    "slides: pyramidal/OME .tif .tiff .ome.tif, and .svs .ndpi .mrxs .scn .vms .vmu .bif .svslide; "
    "STAC items: item.json, or file:///data/items.json#<item id> (format='stac-item', with input.assets)"
)
RASTER_SUFFIXES = (
    ".tif",
    ".tiff",
    ".vrt",
    ".img",
    ".jp2",
    ".gtiff",
    ".geotiff",
    ".nc",
    ".hdf",
    ".dem",
    ".asc",
)

__all__ = ["FORMATS", "Georef", "Reader", "check_has_data", "detect_format", "open_reader"]

_GEOTIFF_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeys


def _looks_like_slide(path: str) -> bool:
    """Tell whether a local TIFF is a slide: no GeoTIFF tags, and OME or pyramidal (else it is a raster)."""
    import logging

    import tifffile

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # GDAL-specific tags (e.g. GDAL_NODATA) make tifffile log noise
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            if any(code in page.tags for code in _GEOTIFF_TAGS):
                return False
            return bool(tif.is_ome or len(tif.series[0].levels) > 1 or tif.is_svs or tif.is_ndpi)
    except Exception:  # noqa: BLE001 - not a readable TIFF: let the raster reader report it
        return False
    finally:
        logger.setLevel(level)


ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")
"""Files that make a folder a zarr store (v3, v2 array, v2 group), whatever its name."""


def _zarr_store(path: str) -> str | None:
    """The store part of ``path`` when it is zarr, else None.

    A path is zarr when its last component ends in ``.zarr`` or it is a folder holding zarr metadata;
    ``store.zarr:array`` names an array inside such a store.
    """
    from tiler.io.volume import _split_zarr_path

    for store in dict.fromkeys((path, _split_zarr_path(path)[0])):
        name = os.path.basename(store.rstrip("/\\")).lower()
        if name.endswith(".zarr") or any(os.path.isfile(os.path.join(store, m)) for m in ZARR_METADATA):
            return store
    return None


def detect_format(path: str) -> str:
    """Return the reader format for ``path`` from its last component's suffix (and zarr metadata, TIFF tags).

    Only the last component counts: ``survey.zarr-exports/a.tif`` is a raster, ``scan.zarr`` a zarr store.
    A folder holding DICOM files is a DICOM series; a single DICOM file is refused (give its folder). A ``.json``
    file, local or remote, optionally followed by ``#<item id>``, is a STAC item (:mod:`tiler.io.stac_item`).
    """
    from tiler.io.slide import OPENSLIDE_SUFFIXES
    from tiler.io.stac_item import is_item_path

    lower = os.path.basename(path.rstrip("/\\")).lower()
    if is_item_path(path):
        return "stac-item"
    if is_remote(path):
        return "raster"
    if _zarr_store(path) is not None:
        return "zarr"
    if os.path.isdir(path):
        from tiler.io.dicom import is_dicom_folder

        if is_dicom_folder(path):
            return "dicom"
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    if lower.endswith(OPENSLIDE_SUFFIXES):
        return "openslide"
    if lower.endswith((".ome.tif", ".ome.tiff")):
        return "tiff-slide"
    if lower.endswith((".tif", ".tiff")):
        return "tiff-slide" if _looks_like_slide(path) else "raster"
    if lower.endswith(RASTER_SUFFIXES):
        return "raster"
    from tiler.io.dicom import DICOM_SUFFIXES, is_dicom_file, single_file_error

    if lower.endswith(DICOM_SUFFIXES) or is_dicom_file(path):
        raise single_file_error(path)
    raise ReadError(
        redact(f"{path}: unsupported format {Path(lower).suffix or '(no extension)'!r}. Supported: {SUPPORTED}.")
    )


def open_reader(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    bands: Sequence[int] | None = None,
    channels_from_4d: bool = False,
    level: int | None = None,
    mpp: float | None = None,
    mask: str = "auto",
    threshold: float | None = None,
    gdal_options: Mapping[str, Any] | None = None,
    series: str | None = None,
    assets: Sequence[str] | None = None,
) -> Reader:
    """Open ``path`` with the reader for its format.

    Args:
        path: Local path, GDAL virtual path (``/vsicurl/...``, ``/vsis3/...``), or ``store.zarr:array``.
        format: ``"auto"`` or one of :data:`FORMATS`.
        bands: 1-based bands to read (rasters).
        channels_from_4d: Read a 4D NIfTI's last axis as channels.
        level: Slide pyramid level (overrides ``mpp``).
        mpp: Requested slide resolution in microns per pixel.
        mask: ``"auto"`` (each format's natural mask), ``"none"``, or ``"body"`` for volumes (nifti, zarr,
            dicom): the body of a CT, the air around it invalid (:func:`tiler.io.masks.body_mask`).
        threshold: Volume foreground threshold for the valid mask (e.g. -500 HU); with ``mask="body"`` the HU
            above which a voxel may be body (default :data:`tiler.io.masks.BODY_THRESHOLD_HU`).
        gdal_options: GDAL configuration options for raster reads.
        series: SeriesInstanceUID to read from a DICOM folder holding several series.
        assets: STAC item asset keys stacked as bands, in channel order (``stac-item`` only).

    Returns:
        A :class:`Reader`; pixels are opened lazily.

    """
    from tiler.io.masks import BODY_FORMATS
    from tiler.io.raster import RasterReader
    from tiler.io.slide import OpenSlideReader, TiffSlideReader
    from tiler.io.volume import NiftiReader, ZarrReader

    text = os.fspath(path)
    if mask not in ("auto", "none", "body"):
        raise ReadError(redact(f"mask={mask!r} is unknown for {text}; use 'auto', 'none' or 'body' (volumes)."))
    if format == "auto":
        from tiler.io.stac_item import split_item_path

        if not is_remote(text):
            check_exists(_zarr_store(text) or split_item_path(text)[0])
        fmt = detect_format(text)
    elif format in FORMATS:
        fmt = format
    else:
        raise ReadError(redact(f"format={format!r} is not supported for {text}; use 'auto' or one of {FORMATS}."))
    if mask == "body" and fmt not in BODY_FORMATS:
        raise ReadError(
            redact(
                f"mask='body' is a CT volume's body mask, but {text} is a {fmt}; use mask='auto' (its own mask) or "
                f"'none', or give a volume ({', '.join(BODY_FORMATS)})."
            )
        )
    if assets is not None and fmt != "stac-item":
        raise ReadError(
            redact(
                f"input.assets {list(assets)} picks the assets of a STAC item, but {text} is a {fmt}; fix: remove "
                "input.assets, or give a STAC item (item.json, or file:///data/items.json#<item id>)"
            )
        )
    if fmt == "stac-item":
        from tiler.io.stac_item import StacItemReader

        return StacItemReader(text, assets=assets, bands=bands, mask=mask, gdal_options=gdal_options)
    if fmt == "raster":
        return RasterReader(text, bands=bands, mask=mask, gdal_options=gdal_options)
    if fmt == "nifti":
        return NiftiReader(text, channels_from_4d=channels_from_4d, threshold=threshold, mask=mask)
    if fmt == "zarr":
        return ZarrReader(text, threshold=threshold, mask=mask)
    if fmt == "dicom":
        from tiler.io.dicom import DicomSeriesReader

        return DicomSeriesReader(text, series=series, threshold=threshold, mask=mask)
    if fmt == "tiff-slide":
        return TiffSlideReader(text, level=level, mpp=mpp, mask=mask)
    return OpenSlideReader(text, level=level, mpp=mpp, mask=mask)
