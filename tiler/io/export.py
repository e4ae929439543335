"""Exports of a finished output store: Cloud-Optimised GeoTIFF, NIfTI, OME-Zarr, and a PNG quicklook.

Every export carries the class names and colours in the form its viewers read: the COG a GDAL raster attribute
table and category names (``<cog>.aux.xml``, shown by ``gdalinfo`` and QGIS) and a palette; the NIfTI a 3D
Slicer colour table (``.ctbl``) and an ITK-SNAP label description file (``.itksnap.txt``) beside it; the
OME-Zarr ``image-label`` colours and properties; the quicklook a legend. Polygon exports live in
:mod:`tiler.io.vector`.

This module writes the COG and the NIfTI; the others have their own modules, their writers importable here too:
:mod:`tiler.io.label_tables` (the class tables beside a COG or a NIfTI), :mod:`tiler.io.ome_zarr`,
:mod:`tiler.io.quicklook`, and :mod:`tiler.io.export_common` (what they share).

Every export streams the labels window by window (or slab by slab); none holds the whole output in memory.
Every export appears whole or not at all: it is written under a temporary name in the destination folder and
moved into place (:mod:`tiler.io.atomic`); a failure (disk full, a killed GDAL copy) leaves nothing at the final
path and no temporary behind. Labels are read through :meth:`OutputStore.read`, so a corrupt chunk stops the
export with an error instead of exporting wrong pixels. Every writer takes ``before_move(tmp, final)``, called for
each of its files (sidecars included) once complete, just before its move: the output store's
:meth:`~tiler.io.store.OutputStore.intent_recorder` records there what is about to appear.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.io import MemoryFile

from tiler.errors import OutputError
from tiler.geometry import BlockPartition
from tiler.io.atomic import BeforeMove, atomic_path, temporary_dir
from tiler.io.base import Georef, Reader
from tiler.io.export_common import EXPORT_BLOCK, _block_for, _check_writable, _georef_of, _write_errors
from tiler.io.label_tables import (
    aux_path,
    label_table_paths,
    write_class_table_aux,
    write_itksnap_labels,
    write_slicer_ctbl,
)
from tiler.io.objects import AnyPath, PathArg, as_path
from tiler.io.ome_zarr import export_ome_zarr
from tiler.io.quicklook import write_quicklook
from tiler.io.raster import to_rio_window
from tiler.io.store import OutputStore
from tiler.io.volume import affine_from_spacing, write_nifti_slabs

__all__ = [
    "COG_DEFLATE_LEVEL", "COG_IN_MEMORY_BYTES", "EXPORT_BLOCK", "aux_path", "export_cog", "export_nifti",
    "export_ome_zarr", "label_table_paths", "write_class_table_aux", "write_itksnap_labels", "write_quicklook",
    "write_slicer_ctbl",
]  # fmt: skip

COG_DEFLATE_LEVEL = 3
"""Deflate level of COG exports: on a 4096² label map, half the time of GDAL's default 6 for 4 % more bytes."""

COG_IN_MEMORY_BYTES = 256 * 2**20
"""Label maps up to this size (16384² of uint8) go to the COG driver from memory, larger ones from a file."""


def export_cog(
    store: OutputStore,
    out_path: PathArg,
    *,
    reference: Reader | Georef | None = None,
    before_move: BeforeMove | None = None,
    overviews: str | os.PathLike[str] | None = None,
) -> AnyPath:
    """Write the labels as a Cloud-Optimised GeoTIFF that drops onto the input (same CRS and transform).

    With ``overviews`` (a folder of :func:`tiler.io.overviews.write_overview_band` levels, drawn by other
    workers), GDAL takes those as the COG's overviews (an external ``.ovr`` beside the temporary source) instead
    of computing them here.

    A tiled GeoTIFF is written window by window (in memory up to :data:`COG_IN_MEMORY_BYTES` of labels,
    else to a temporary file), then GDAL's COG driver copies it (deflate at :data:`COG_DEFLATE_LEVEL`,
    512-pixel blocks, ``mode`` overviews: each overview pixel is the most frequent class below it).
    Nodata is the store's nodata label (``output.nodata_label``, 255 by default), not the input's nodata
    value, which may be a class index. The class names and colours go into ``<out>.aux.xml`` beside it
    (:func:`~tiler.io.label_tables.write_class_table_aux`): GDAL category names and a thematic raster attribute table.

    Args:
        store: A 2D output store.
        out_path: The ``.tif`` to write.
        reference: The input reader or its georef (default: the georef stored in ``store``).
        before_move: Called as ``before_move(tmp, final)`` for the COG and its ``.aux.xml`` before each move.
        overviews: A folder of stored mode levels to use as the COG's overviews (None: GDAL computes them).

    """
    out_path = as_path(out_path)
    _check_writable(out_path)
    if len(store.shape) != 2:
        raise OutputError(
            f"export_cog needs a 2D output; {store.path} has shape {store.shape}. Use export_nifti."
        )
    geo = _georef_of(store, reference)
    height, width = store.shape
    labels = store.labels
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": str(labels.dtype),
        "nodata": store.nodata_label,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "BIGTIFF": "IF_SAFER",
    }
    if geo.crs_wkt:
        profile["crs"] = rasterio.crs.CRS.from_wkt(geo.crs_wkt)
    if geo.transform:
        profile["transform"] = Affine(*geo.transform[:6])

    def fill(dst: Any) -> None:
        dst.set_band_description(1, "class")
        if labels.dtype == np.uint8:  # the palette must be set before any pixel is written
            dst.write_colormap(1, {k: (*c, 255) for k, c in enumerate(store.class_colors)})
        for window in BlockPartition(store.shape, _block_for(store)):
            dst.write(store.read(window)[None], window=to_rio_window(window))

    with _write_errors(out_path, "write the COG"), contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=256))
        copy_options: dict[str, Any] = {"overview_resampling": "mode"}
        source_name: str | Path
        if overviews is not None:  # drawn already: a source file with them beside it as its .ovr
            from tiler.io.overviews import write_ovr

            source_name = stack.enter_context(temporary_dir(out_path.parent, label="cog")) / "labels.tif"
            with rasterio.open(source_name, "w", **profile, compress="lzw") as dst:
                fill(dst)
            write_ovr(overviews, store.shape, source_name.with_name(source_name.name + ".ovr"), dtype=labels.dtype)
            copy_options = {"OVERVIEWS": "FORCE_USE_EXISTING"}
        elif labels.nbytes <= COG_IN_MEMORY_BYTES:  # uncompressed in /vsimem: no encode and decode of a temporary
            source = stack.enter_context(MemoryFile())
            with source.open(**profile) as dst:
                fill(dst)
            source_name = source.name
        else:  # a temporary file: LZW costs a sixth of deflate's time on a label map, the COG re-encodes
            source_name = stack.enter_context(temporary_dir(out_path.parent, label="cog")) / "labels.tif"
            with rasterio.open(source_name, "w", **profile, compress="lzw") as dst:
                fill(dst)
        with atomic_path(out_path, what="write the COG", before_move=before_move) as cog_tmp:
            rasterio.shutil.copy(
                source_name,
                cog_tmp,
                driver="COG",
                compress="deflate",
                level=COG_DEFLATE_LEVEL,
                blocksize=512,
                BIGTIFF="IF_SAFER",
                **copy_options,
            )
            cog_tmp.with_name(cog_tmp.name + ".aux.xml").unlink(missing_ok=True)  # GDAL's own; ours replaces it
    write_class_table_aux(aux_path(out_path), store.class_names, store.class_colors, before_move=before_move)
    return out_path


def export_nifti(
    store: OutputStore,
    out_path: PathArg,
    *,
    reference: Reader | Georef | None = None,
    before_move: BeforeMove | None = None,
) -> AnyPath:
    """Write 3D labels as NIfTI with the input's affine, slab by slab (uint8, or uint16 past 255 classes).

    The class names and colours go beside it (:func:`~tiler.io.label_tables.label_table_paths`): ``<name>.ctbl``,
    a 3D Slicer colour table (load it, then load the NIfTI as a LabelMap with that colour table), and
    ``<name>.itksnap.txt``, an ITK-SNAP label description file (Segmentation > Import Label Descriptions).
    ``before_move(tmp, final)`` is called for the NIfTI and each table before its move.
    """
    out_path = as_path(out_path)
    _check_writable(out_path)
    if len(store.shape) != 3:
        raise OutputError(
            f"export_nifti needs a 3D output; {store.path} has shape {store.shape}. Use export_cog."
        )
    geo = _georef_of(store, reference)
    if geo.affine is not None:
        affine = np.asarray(geo.affine, dtype=float)
    else:
        affine = affine_from_spacing(geo.spacing or (1.0, 1.0, 1.0))
    depth, height, width = store.shape
    slab = store.write_unit[0]
    slabs = (store.read(window) for window in BlockPartition(store.shape, (slab, height, width)))
    with atomic_path(out_path, what="write the NIfTI", before_move=before_move) as tmp:
        write_nifti_slabs(tmp, store.shape, dtype=store.labels.dtype, affine=affine, slabs=slabs)
    tables = label_table_paths(out_path)
    names, colors, nodata = store.class_names, store.class_colors, store.nodata_label
    write_slicer_ctbl(tables["ctbl"], names, colors, nodata_label=nodata, before_move=before_move)
    write_itksnap_labels(tables["itksnap"], names, colors, nodata_label=nodata, before_move=before_move)
    return out_path
