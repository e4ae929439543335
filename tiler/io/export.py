"""Exports of a finished output store: Cloud-Optimised GeoTIFF, NIfTI, OME-Zarr, and a PNG quicklook.

Every export carries the class names and colours in the form its viewers read: the COG a GDAL raster attribute
table and category names (``<cog>.aux.xml``, shown by ``gdalinfo`` and QGIS) and a palette; the NIfTI a 3D
Slicer colour table (``.ctbl``) and an ITK-SNAP label description file (``.itksnap.txt``) beside it; the
OME-Zarr ``image-label`` colours and properties; the quicklook a legend. Polygon exports live in
:mod:`tiler.io.vector`.

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
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.atomic import (
    BeforeMove,
    atomic_dir,
    atomic_path,
    clean_temporaries,
    output_error,
    temporary_dir,
    write_bytes_atomic,
)
from tiler.io.base import Georef, Reader
from tiler.io.raster import to_rio_window
from tiler.io.store import OutputStore
from tiler.io.volume import affine_from_spacing, write_nifti_slabs

EXPORT_BLOCK = 2048


COG_DEFLATE_LEVEL = 3
"""Deflate level of COG exports: on a 4096² label map, half the time of GDAL's default 6 for 4 % more bytes."""

COG_IN_MEMORY_BYTES = 256 * 2**20
"""Label maps up to this size (16384² of uint8) go to the COG driver from memory, larger ones from a file."""


def _block_for(store: OutputStore, target: int = EXPORT_BLOCK) -> tuple[int, ...]:
    """Return a window size of whole write units, about ``target`` pixels per spatial axis."""
    return tuple(max(u, (target // u) * u) for u in store.write_unit)


def _georef_of(store: OutputStore, reference: Reader | Georef | None) -> Georef:
    if isinstance(reference, Reader):
        return reference.georef
    if isinstance(reference, Georef):
        return reference
    return store.georef


def _check_writable(out_path: Path) -> None:
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {out_path}: its folder {parent} does not exist or is not writable.")
    clean_temporaries(parent)


@contextlib.contextmanager
def _write_errors(out_path: Path, what: str) -> Iterator[None]:
    """Turn an OS or GDAL failure (GDAL reports a full disk as an I/O error) into OutputError naming the output."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        raise output_error(out_path, exc, what=what) from exc


def export_cog(
    store: OutputStore,
    out_path: str | os.PathLike[str],
    *,
    reference: Reader | Georef | None = None,
    before_move: BeforeMove | None = None,
    overviews: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the labels as a Cloud-Optimised GeoTIFF that drops onto the input (same CRS and transform).

    With ``overviews`` (a folder of :func:`tiler.io.overviews.write_overview_band` levels, drawn by other
    workers), GDAL takes those as the COG's overviews (an external ``.ovr`` beside the temporary source) instead
    of computing them here.

    A tiled GeoTIFF is written window by window (in memory up to :data:`COG_IN_MEMORY_BYTES` of labels,
    else to a temporary file), then GDAL's COG driver copies it (deflate at :data:`COG_DEFLATE_LEVEL`,
    512-pixel blocks, ``mode`` overviews: each overview pixel is the most frequent class below it).
    Nodata is the store's nodata label (``output.nodata_label``, 255 by default), not the input's nodata
    value, which may be a class index. The class names and colours go into ``<out>.aux.xml`` beside it
    (:func:`write_class_table_aux`): GDAL category names and a thematic raster attribute table.

    Args:
        store: A 2D output store.
        out_path: The ``.tif`` to write.
        reference: The input reader or its georef (default: the georef stored in ``store``).
        before_move: Called as ``before_move(tmp, final)`` for the COG and its ``.aux.xml`` before each move.
        overviews: A folder of stored mode levels to use as the COG's overviews (None: GDAL computes them).

    """
    out_path = Path(out_path)
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


def aux_path(cog_path: str | os.PathLike[str]) -> Path:
    """The GDAL PAM sidecar of a raster: ``<name>.aux.xml`` beside it."""
    cog_path = Path(cog_path)
    return cog_path.with_name(cog_path.name + ".aux.xml")


# GDAL field types and usages (gdal.h: GDALRATFieldType, GDALRATFieldUsage)
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 2, 5, 6, 7, 8, 9


def write_class_table_aux(
    path: str | os.PathLike[str],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    before_move: BeforeMove | None = None,
) -> Path:
    """Write a GDAL PAM file (``.aux.xml``) giving band 1 category names and a thematic raster attribute table.

    GDAL reads it with the raster beside it (``gdalinfo`` lists the categories and the table; QGIS labels the
    classes from it). Columns: ``Value`` (min/max), ``Class`` (name), ``Red``/``Green``/``Blue``/``Alpha``.
    """
    import xml.etree.ElementTree as ET

    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "Description").text = "class"
    categories = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = str(name)
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    columns = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
               ("Red", _GFT_INTEGER, _GFU_RED), ("Green", _GFT_INTEGER, _GFU_GREEN),
               ("Blue", _GFT_INTEGER, _GFU_BLUE), ("Alpha", _GFT_INTEGER, _GFU_ALPHA)]  # fmt: skip
    for i, (col, kind, usage) in enumerate(columns):
        field = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = col
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for k, (name, color) in enumerate(zip(names, colors, strict=True)):
        row = ET.SubElement(rat, "Row", index=str(k))
        for value in (k, name, *(int(v) for v in color[:3]), 255):
            ET.SubElement(row, "F").text = str(value)
    ET.indent(root)
    write_bytes_atomic(path, ET.tostring(root, encoding="utf-8") + b"\n", before_move=before_move)
    return Path(path)


def export_nifti(
    store: OutputStore,
    out_path: str | os.PathLike[str],
    *,
    reference: Reader | Georef | None = None,
    before_move: BeforeMove | None = None,
) -> Path:
    """Write 3D labels as NIfTI with the input's affine, slab by slab (uint8, or uint16 past 255 classes).

    The class names and colours go beside it (:func:`label_table_paths`): ``<name>.ctbl``, a 3D Slicer colour
    table (load it, then load the NIfTI as a LabelMap with that colour table), and ``<name>.itksnap.txt``, an
    ITK-SNAP label description file (Segmentation > Import Label Descriptions). ``before_move(tmp, final)`` is
    called for the NIfTI and each table before its move.
    """
    out_path = Path(out_path)
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


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".tif", ".tiff"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def label_table_paths(nifti_path: str | os.PathLike[str]) -> dict[str, Path]:
    """The label tables beside a NIfTI ``<name>.nii.gz``: ``ctbl`` (3D Slicer) and ``itksnap`` (ITK-SNAP).

    >>> {k: p.name for k, p in label_table_paths("/out/ct.nii.gz").items()}
    {'ctbl': 'ct.ctbl', 'itksnap': 'ct.itksnap.txt'}
    """
    path = Path(nifti_path)
    stem = _stem(path)
    return {"ctbl": path.with_name(stem + ".ctbl"), "itksnap": path.with_name(stem + ".itksnap.txt")}


def _table_rows(
    names: Sequence[str], colors: Sequence[Sequence[int]], nodata_label: int
) -> list[tuple[int, str, tuple[int, int, int], int]]:
    """``(label, name, rgb, alpha)`` per class, then the nodata label (transparent)."""
    rows = [
        (k, str(n), (int(c[0]), int(c[1]), int(c[2])), 255) for k, (n, c) in enumerate(zip(names, colors, strict=True))
    ]
    if nodata_label >= len(names):
        rows.append((nodata_label, "nodata", (0, 0, 0), 0))
    return rows


def write_slicer_ctbl(
    path: str | os.PathLike[str],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    nodata_label: int,
    before_move: BeforeMove | None = None,
) -> Path:
    """Write a 3D Slicer colour table: ``# Color table file`` then ``index name R G B A`` per label.

    Spaces in names become underscores (the format separates fields by spaces).
    """
    rows = _table_rows(names, colors, nodata_label)
    lines = [f"# Color table file {Path(path).name}", f"# {len(rows)} values"]
    lines += [f"{k} {'_'.join(n.split()) or f'class_{k}'} {r} {g} {b} {a}" for k, n, (r, g, b), a in rows]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode(), before_move=before_move)
    return Path(path)


def write_itksnap_labels(
    path: str | os.PathLike[str],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    nodata_label: int,
    before_move: BeforeMove | None = None,
) -> Path:
    """Write an ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` per label (A in 0..1)."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "################################################",
    ]
    for k, name, (r, g, b), a in _table_rows(names, colors, nodata_label):
        visible = int(a > 0)
        label = name.replace('"', "'")
        lines.append(f'{k:5d} {r:5d} {g:4d} {b:4d} {a / 255:8.2f} {visible:2d} {visible:2d}    "{label}"')
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode(), before_move=before_move)
    return Path(path)


def _downsample_levels(shape: Sequence[int], *, min_size: int = 256, max_levels: int = 5) -> int:
    longest = max(shape[-2:])
    return max(
        1,
        min(
            max_levels,
            1 + int(math.floor(math.log2(max(1, longest / min_size)))) if longest > min_size else 1,
        ),
    )


def export_ome_zarr(
    store: OutputStore,
    out_path: str | os.PathLike[str],
    *,
    reader: Reader,
    name: str = "classes",
    before_move: BeforeMove | None = None,
) -> Path:
    """Write an OME-Zarr 0.5 image of the input with the labels under it: the path to open in napari.

    Layout: ``<out>/{0,1,...}`` the input image pyramid (axes ``c`` when it has several channels, then
    ``z``/``y``/``x``) with ``omero`` channel settings, and ``<out>/labels/<name>/{0,1,...}`` the label pyramid
    with the same number of levels and ``image-label`` colours and properties for every class and for the
    nodata label (transparent, class ``nodata``). Level ``l`` takes every ``2**l``-th pixel along y and x
    (nearest, which keeps labels exact); the z axis of volumes is not downsampled. Scales are micrometres for
    slides (mpp), millimetres for volumes (spacing), pixels otherwise.

    Args:
        store: The output store.
        out_path: The ``.ome.zarr`` folder to write (an earlier OME-Zarr export there is replaced).
        reader: The input the store was made from (its pixels make the image).
        name: The labels' name under ``labels/``.
        before_move: Called as ``before_move(tmp, final)`` with the complete folder, just before it is moved in.

    """
    out_path = Path(out_path)
    ndim = len(store.shape)
    if tuple(reader.shape) != tuple(store.shape):
        raise OutputError(
            f"cannot write OME-Zarr at {out_path}: the input {reader.path} has shape {reader.shape} but the output "
            f"{store.path} has {store.shape}; pass the reader the store was made from."
        )
    names = ["z", "y", "x"][-ndim:]
    base_scale, unit = _ome_scale(store.georef, ndim)
    levels = _downsample_levels(store.shape)
    replace = os.path.lexists(out_path)
    if replace and not _is_ome_zarr(out_path):
        raise OutputError(
            f"cannot write OME-Zarr at {out_path}: something that is not an OME-Zarr export is already there; "
            f"it was left untouched. Choose another export path, or remove it by hand if it is yours to delete."
        )
    _check_writable(out_path)
    what = "write OME-Zarr at"
    with (
        _write_errors(out_path, what),
        atomic_dir(out_path, replace=replace, what=what, before_move=before_move) as tmp,
    ):
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        channels = reader.channels
        lead = ["c"] if channels > 1 else []
        image_datasets, value_range = _write_pyramid(
            root, levels, shape=store.shape, lead=(channels,) if lead else (), chunks=store.chunks,
            dtype=np.dtype(reader.dtype), fill=0, names=[*lead, *names], scale=base_scale,
            read=lambda w: reader.read(w) if lead else reader.read(w)[0], block=_block_for(store),
        )
        axes = [{"name": "c", "type": "channel"}] * bool(lead) + _space_axes(names, unit)
        root.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"name": "image", "axes": axes, "datasets": image_datasets}],
            "omero": _omero(channels, value_range, np.dtype(reader.dtype)),
        }
        labels_group = root.create_group("labels", attributes={"ome": {"version": "0.5", "labels": [name]}})
        group = labels_group.create_group(name)
        label_datasets, _ = _write_pyramid(
            group, levels, shape=store.shape, lead=(), chunks=store.chunks, dtype=np.dtype(store.labels.dtype),
            fill=store.nodata_label, names=names, scale=base_scale, read=store.read, block=_block_for(store),
        )
        colors = [{"label-value": k, "rgba": [*c, 255]} for k, c in enumerate(store.class_colors)]
        properties: list[dict[str, Any]] = [{"label-value": k, "class": n} for k, n in enumerate(store.class_names)]
        if store.nodata_label >= store.num_classes:
            colors.append({"label-value": store.nodata_label, "rgba": [0, 0, 0, 0]})
            properties.append({"label-value": store.nodata_label, "class": "nodata"})
        label_meta: dict[str, Any] = {
            "version": "0.5",
            "multiscales": [
                {"name": name, "axes": _space_axes(names, unit), "datasets": label_datasets, "type": "nearest"}
            ],
            "image-label": {"colors": colors, "properties": properties,
                            "source": {"image": "../../"}},
        }
        group.attrs["ome"] = label_meta
    return out_path


def _ome_scale(geo: Georef, ndim: int) -> tuple[list[float], str | None]:
    """Level-0 scale per spatial axis and its unit: volume spacing (mm), slide mpp (µm), else pixels."""
    if geo.spacing is not None and ndim == 3:
        return list(geo.spacing), "millimeter"
    if geo.mpp is not None:
        return [1.0] * (ndim - 2) + [geo.mpp, geo.mpp], "micrometer"
    return [1.0] * ndim, None


def _space_axes(names: Sequence[str], unit: str | None) -> list[dict[str, Any]]:
    return [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in names]


def _omero(channels: int, value_range: tuple[float, float], dtype: np.dtype) -> dict[str, Any]:
    """Channel settings napari and OMERO use: colours (RGB for 3 channels, else grey) and the display window."""
    lo, hi = value_range if value_range[0] <= value_range[1] else (0.0, 1.0)
    if dtype == np.uint8:
        lo, hi = 0.0, 255.0
    colours = ["FF0000", "00FF00", "0000FF"] if channels == 3 else ["FFFFFF"] * channels
    return {
        "channels": [
            {"label": f"channel {i}", "color": colours[i], "active": True,
             "window": {"min": lo, "max": hi, "start": lo, "end": hi}}
            for i in range(channels)
        ],
        "rdefs": {"model": "color"},
    }


def _write_pyramid(
    group: zarr.Group,
    levels: int,
    *,
    shape: Sequence[int],
    lead: tuple[int, ...],
    chunks: Sequence[int],
    dtype: np.dtype,
    fill: int,
    names: Sequence[str],
    scale: Sequence[float],
    read: Any,
    block: Sequence[int],
) -> tuple[list[dict[str, Any]], tuple[float, float]]:
    """Write levels ``0..levels-1`` (level 0 from ``read(window)``, each next one every 2nd y/x pixel of the last).

    Returns the ``datasets`` entries (path and scale per level; leading axes scale 1) and level 0's value range.
    """
    datasets: list[dict[str, Any]] = []
    lo, hi = math.inf, -math.inf
    src: zarr.Array | None = None
    for level in range(levels):
        f = 2**level
        spatial = tuple(shape[:-2]) + tuple(-(-n // f) for n in shape[-2:])
        arr = group.create_array(
            str(level),
            shape=(*lead, *spatial),
            chunks=(*lead, *(min(c, n) for c, n in zip(chunks, spatial, strict=True))),
            dtype=dtype,
            fill_value=fill,
            dimension_names=tuple(names),
        )
        for window in BlockPartition(spatial, tuple(block)):
            target = (slice(None),) * len(lead) + window.slices
            if src is None:
                data = np.asarray(read(window))
                if data.size:
                    lo, hi = min(lo, float(np.nanmin(data))), max(hi, float(np.nanmax(data)))
            else:
                twice = tuple(slice(a * 2, b * 2, 2) for a, b in zip(window.start[-2:], window.stop[-2:], strict=True))
                data = np.asarray(src[(slice(None),) * len(lead) + window.slices[:-2] + twice])
            arr[target] = data
        scales = [1.0] * len(lead) + list(scale[: len(shape) - 2]) + [v * f for v in scale[-2:]]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scales}]})
        src = arr
    return datasets, (lo, hi)


def _is_ome_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr group with OME metadata (an earlier export that may be replaced)."""
    try:
        meta = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) and "ome" in meta["attributes"]


def _normalise(image: np.ndarray) -> np.ndarray:
    """(C, h, w) any dtype -> (h, w, 3) uint8 with a 2-98 percentile stretch per channel."""
    img = image[:3].astype(np.float64)
    if img.shape[0] < 3:
        img = np.repeat(img[:1], 3, axis=0)
    out = np.zeros(img.shape, dtype=np.uint8)
    for c in range(3):
        band = img[c][np.isfinite(img[c])]
        if band.size == 0:
            continue
        lo, hi = np.percentile(band, (2, 98))
        out[c] = np.clip((np.nan_to_num(img[c], nan=lo) - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(
            np.uint8
        )
    return np.moveaxis(out, 0, -1)


QUICKLOOK_PANEL = 384
"""Longest side, in display pixels, of the largest of a volume quicklook's three slices."""
LEGEND_ROWS = 40


def write_quicklook(
    store: OutputStore,
    png_path: str | os.PathLike[str],
    *,
    reader: Reader | None = None,
    max_size: int = 1024,
    alpha: float = 0.5,
    before_move: BeforeMove | None = None,
    overviews: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a PNG of the labels (class colours, nodata transparent), over the input if given, with a legend.

    2D: the whole map, sampled every ``ceil(max(H, W) / max_size)`` rows and columns (read band by band), at
    the top left, over the input sampled the same way (:meth:`~tiler.io.base.Reader.read_sampled`: from a
    COG's overviews or a slide's coarser pyramid level when there is one, never decoding its full resolution);
    the legend (a colour swatch and name per class) to its right. 3D: the three orthogonal
    middle slices (planes z, y and x through the volume's centre) side by side, each titled, drawn with the
    voxel spacing's aspect and scaled so the largest is :data:`QUICKLOOK_PANEL` pixels long; then the legend.
    ``before_move(tmp, final)`` is called with the complete PNG just before it is moved in.
    """
    from PIL import Image

    png_path = Path(png_path)
    _check_writable(png_path)
    if len(store.shape) == 3:
        picture = _volume_quicklook(store, reader, alpha=alpha, size=min(max_size, QUICKLOOK_PANEL))
    else:
        plane = _plane_quicklook(store, reader, max_size=max_size, alpha=alpha, overviews=overviews)
        picture = Image.fromarray(plane, mode="RGBA")
    picture = _with_legend(picture, store.class_names, store.class_colors)
    with atomic_path(png_path, what="write the quicklook", before_move=before_move) as tmp:
        picture.save(tmp, format="PNG")
    return png_path


def _palette(store: OutputStore) -> np.ndarray:
    palette = np.zeros((max(store.nodata_label, store.num_classes - 1) + 1, 4), dtype=np.uint8)
    for k, c in enumerate(store.class_colors):
        palette[k] = (*c, 255)
    return palette


def _overlay(labels: np.ndarray, palette: np.ndarray, image: np.ndarray | None, alpha: float) -> np.ndarray:
    """(h, w) labels -> (h, w, 4) uint8 colours, blended over (C, h, w) ``image`` when given (then opaque)."""
    rgba = palette[np.clip(labels, 0, len(palette) - 1)]
    if image is None:
        return rgba
    base = _normalise(image)
    a = (rgba[..., 3:4] / 255.0) * alpha
    blended = (base * (1 - a) + rgba[..., :3] * a).astype(np.uint8)
    return np.concatenate([blended, np.full((*labels.shape, 1), 255, np.uint8)], axis=-1)


def _plane_quicklook(
    store: OutputStore, reader: Reader | None, *, max_size: int, alpha: float,
    overviews: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The whole 2D map sampled to at most ``max_size`` pixels a side: (h, w, 4).

    With ``overviews`` (stored mode levels) the labels come from the coarsest level no coarser than the
    sampling step (each sampled pixel's level cell), never from the full-resolution map.
    """
    h, w = store.shape
    step = max(1, math.ceil(max(h, w) / max_size))
    level = 0
    if overviews is not None:
        from tiler.io.overviews import level_shapes, read_level

        shapes = level_shapes(store.shape)
        level = min(len(shapes), step.bit_length() - 1)  # the coarsest level with 2**level <= step
    if level:  # the level cell holding each sampled pixel: row r*step of the map is row r*step // 2**level there
        labels = read_level(overviews, level, shapes[level - 1],  # type: ignore[arg-type]
                            rows=np.arange(0, h, step) >> level, cols=np.arange(0, w, step) >> level)
    else:
        band = step * max(1, 512 // step)
        labels = np.concatenate(
            [store.read((slice(r0, min(r0 + band, h), step), slice(0, w, step))) for r0 in range(0, h, band)], axis=0
        )
    image = reader.read_sampled(step) if reader is not None else None  # overviews / a pyramid level if any
    return _overlay(labels, _palette(store), image, alpha)


def _volume_quicklook(store: OutputStore, reader: Reader | None, *, alpha: float, size: int) -> Any:
    """Three titled orthogonal middle slices side by side, scaled to ``size`` pixels with the voxel aspect."""
    from PIL import Image, ImageDraw

    d, h, w = store.shape
    spacing = store.georef.spacing if store.georef.spacing and len(store.georef.spacing) == 3 else (1.0, 1.0, 1.0)
    mid = (d // 2, h // 2, w // 2)
    scale = size / max(n * s for n, s in zip(store.shape, spacing, strict=True))  # display pixels per mm
    palette = _palette(store)
    font = _font()
    panels = []
    for axis, name in enumerate(("z", "y", "x")):
        rest = [i for i in range(3) if i != axis]
        step = max(1, math.ceil(max(store.shape[i] for i in rest) / (2 * size)))
        sel = [slice(0, n, step) for n in store.shape]
        sel[axis] = slice(mid[axis], mid[axis] + 1)
        labels = np.squeeze(store.read(tuple(sel)), axis=axis)
        image = None
        if reader is not None:
            start = [0, 0, 0]
            stop = list(store.shape)
            start[axis], stop[axis] = mid[axis], mid[axis] + 1
            data = reader.read(Window(tuple(start), tuple(stop)))
            image = np.squeeze(data, axis=axis + 1)[(slice(None), slice(None, None, step), slice(None, None, step))]
        rgba = _overlay(labels, palette, image, alpha)
        target = tuple(max(1, round(store.shape[i] * spacing[i] * scale)) for i in rest)
        panel = Image.fromarray(rgba, mode="RGBA").resize((target[1], target[0]), Image.Resampling.NEAREST)
        panels.append((f"{name} = {mid[axis]} of {store.shape[axis]}", panel))
    gap, title = 8, _text_height(font) + 6
    width = sum(p.width for _, p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGBA", (width, title + max(p.height for _, p in panels)), (255, 255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for text, panel in panels:
        draw.text((x, 2), text, fill=(0, 0, 0, 255), font=font)
        canvas.paste(panel, (x, title))
        x += panel.width + gap
    return canvas


def _font(size: int = 14) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_height(font: Any) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - top) + 2


def _with_legend(picture: Any, names: Sequence[str], colors: Sequence[Sequence[int]]) -> Any:
    """``picture`` at the top left, the legend (swatch and name per class, on white) to its right."""
    from PIL import Image, ImageDraw

    font = _font()
    row = max(18, _text_height(font) + 4)
    entries = [(str(n), tuple(int(v) for v in c[:3])) for n, c in zip(names, colors, strict=True)]
    shown = entries[:LEGEND_ROWS]
    lines = [n for n, _ in shown] + ([f"... {len(entries) - len(shown)} more"] if len(entries) > len(shown) else [])
    pad, swatch = 8, row - 6
    text_w = max(int(font.getlength(t)) for t in lines) if lines else 0
    legend = Image.new("RGBA", (2 * pad + swatch + 6 + text_w, 2 * pad + row * len(lines)), (255, 255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, text in enumerate(lines):
        y = pad + i * row
        if i < len(shown):
            draw.rectangle((pad, y + 3, pad + swatch, y + 3 + swatch), fill=(*shown[i][1], 255), outline=(0, 0, 0, 255))
        draw.text((pad + swatch + 6, y + 2), text, fill=(0, 0, 0, 255), font=font)
    canvas = Image.new("RGBA", (picture.width + legend.width, max(picture.height, legend.height)), (0, 0, 0, 0))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (picture.width, 0))
    return canvas
