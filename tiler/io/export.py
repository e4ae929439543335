"""Exports of a finished output store: Cloud-Optimised GeoTIFF, NIfTI, OME-Zarr labels, and a PNG quicklook.

Every export streams the labels window by window (or slab by slab); none holds the whole output in memory.
Every export appears whole or not at all: it is written under a temporary name in the destination folder and
moved into place (:mod:`tiler.io.atomic`); a failure (disk full, a killed GDAL copy) leaves nothing at the final
path and no temporary behind. Labels are read through :meth:`OutputStore.read`, so a corrupt chunk stops the
export with an error instead of exporting wrong pixels.
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

from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.atomic import atomic_dir, atomic_path, clean_temporaries, output_error, temporary_dir
from tiler.io.base import Georef, Reader
from tiler.io.raster import to_rio_window
from tiler.io.store import OutputStore
from tiler.io.volume import affine_from_spacing, write_nifti_slabs

EXPORT_BLOCK = 2048


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
    store: OutputStore, out_path: str | os.PathLike[str], *, reference: Reader | Georef | None = None
) -> Path:
    """Write the labels as a Cloud-Optimised GeoTIFF that drops onto the input (same CRS, transform, nodata).

    A tiled GeoTIFF is written window by window to a temporary file, then GDAL's COG driver copies it
    (deflate, 512-pixel blocks, nearest-neighbour overviews).

    Args:
        store: A 2D output store.
        out_path: The ``.tif`` to write.
        reference: The input reader or its georef (default: the georef stored in ``store``).

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
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if geo.crs_wkt:
        profile["crs"] = rasterio.crs.CRS.from_wkt(geo.crs_wkt)
    if geo.transform:
        profile["transform"] = Affine(*geo.transform[:6])
    with _write_errors(out_path, "write the COG"), temporary_dir(out_path.parent, label="cog") as tmp_dir:
        tmp = tmp_dir / "labels.tif"
        with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(tmp, "w", **profile) as dst:
            if labels.dtype == np.uint8:  # the palette must be set before any pixel is written
                cmap = {k: (*c, 255) for k, c in enumerate(store.class_colors)}
                dst.write_colormap(1, cmap)
            for window in BlockPartition(store.shape, _block_for(store)):
                dst.write(store.read(window)[None], window=to_rio_window(window))
        with rasterio.Env(GDAL_CACHEMAX=256), atomic_path(out_path, what="write the COG") as cog_tmp:
            rasterio.shutil.copy(
                tmp,
                cog_tmp,
                driver="COG",
                compress="deflate",
                blocksize=512,
                overview_resampling="nearest",
                BIGTIFF="IF_SAFER",
            )
            _move_sidecar(cog_tmp, out_path)
    return out_path


def _move_sidecar(tmp: Path, out_path: Path) -> None:
    """Move a ``.aux.xml`` GDAL wrote beside the temporary COG to its place beside ``out_path``."""
    aux = tmp.with_name(tmp.name + ".aux.xml")
    if aux.exists():
        os.replace(aux, out_path.with_name(out_path.name + ".aux.xml"))


def export_nifti(
    store: OutputStore, out_path: str | os.PathLike[str], *, reference: Reader | Georef | None = None
) -> Path:
    """Write 3D labels as NIfTI with the input's affine, slab by slab (uint8, or uint16 past 255 classes)."""
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
    with atomic_path(out_path, what="write the NIfTI") as tmp:
        write_nifti_slabs(tmp, store.shape, dtype=store.labels.dtype, affine=affine, slabs=slabs)
    return out_path


def _downsample_levels(shape: Sequence[int], *, min_size: int = 256, max_levels: int = 5) -> int:
    longest = max(shape[-2:])
    return max(
        1,
        min(
            max_levels,
            1 + int(math.floor(math.log2(max(1, longest / min_size)))) if longest > min_size else 1,
        ),
    )


def export_ome_zarr(store: OutputStore, out_path: str | os.PathLike[str], *, name: str = "classes") -> Path:
    """Write the labels as an OME-Zarr 0.5 ``labels`` group (multiscale pyramid, image-label colours).

    Layout: ``<out>/labels/<name>/{0,1,...}``; level ``l`` takes every ``2**l``-th pixel along y and x
    (nearest, which keeps labels exact); the z axis of volumes is not downsampled.
    """
    out_path = Path(out_path)
    ndim = len(store.shape)
    geo = store.georef
    if geo.spacing is not None and ndim == 3:
        base_scale = list(geo.spacing)
        unit: str | None = "millimeter"
    elif geo.mpp is not None:
        base_scale, unit = [geo.mpp, geo.mpp], "micrometer"
    else:
        base_scale, unit = [1.0] * ndim, None
    names = ["z", "y", "x"][-ndim:]
    axes = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in names]
    levels = _downsample_levels(store.shape)
    colors = [{"label-value": k, "rgba": [*c, 255]} for k, c in enumerate(store.class_colors)]
    colors.append({"label-value": store.nodata_label, "rgba": [0, 0, 0, 0]})
    properties = [{"label-value": k, "class": n} for k, n in enumerate(store.class_names)]
    replace = os.path.lexists(out_path)
    if replace and not _is_ome_zarr(out_path):
        raise OutputError(
            f"cannot write OME-Zarr at {out_path}: something that is not an OME-Zarr export is already there; "
            f"it was left untouched. Choose another export path, or remove it by hand if it is yours to delete."
        )
    _check_writable(out_path)
    what = "write OME-Zarr at"
    with _write_errors(out_path, what), atomic_dir(out_path, replace=replace, what=what) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3, attributes={"ome": {"version": "0.5"}})
        labels_group = root.create_group("labels", attributes={"ome": {"version": "0.5", "labels": [name]}})
        group = labels_group.create_group(name)
        datasets = []
        src: Any = store
        for level in range(levels):
            f = 2**level
            arr = _write_level(store, group, src, level, names)
            scale = list(base_scale[: ndim - 2]) + [v * f for v in base_scale[-2:]]
            datasets.append(
                {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            )
            src = arr
        ome: dict[str, Any] = {
            "version": "0.5",
            "multiscales": [{"name": name, "axes": axes, "datasets": datasets, "type": "nearest"}],
            "image-label": {"colors": colors, "properties": properties, "source": {"image": "../../"}},
        }
        group.attrs["ome"] = ome
    return out_path


def _is_ome_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr group with OME metadata (an earlier export that may be replaced)."""
    try:
        meta = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) and "ome" in meta["attributes"]


def _write_level(store: OutputStore, group: zarr.Group, src: Any, level: int, names: Sequence[str]) -> zarr.Array:
    """Write pyramid level ``level`` (every 2nd y/x pixel of ``src``, the store itself at level 0)."""
    ndim = len(store.shape)
    f = 2**level
    shape = tuple(store.shape[:-2]) + tuple(-(-n // f) for n in store.shape[-2:])
    chunks = tuple(min(c, n) for c, n in zip(store.chunks, shape, strict=True))
    arr = group.create_array(
        str(level),
        shape=shape,
        chunks=chunks,
        dtype=store.labels.dtype,
        fill_value=store.nodata_label,
        dimension_names=tuple(names),
    )
    step = (1,) * (ndim - 2) + (2, 2) if level else (1,) * ndim
    for window in BlockPartition(shape, _block_for(store)):
        src_slices = tuple(
            slice(a * s, b * s, s) for a, b, s in zip(window.start, window.stop, step, strict=True)
        )
        arr[window.slices] = store.read(src_slices) if src is store else np.asarray(src[src_slices])
    return arr


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


def write_quicklook(
    store: OutputStore,
    png_path: str | os.PathLike[str],
    *,
    reader: Reader | None = None,
    max_size: int = 1024,
    alpha: float = 0.5,
) -> Path:
    """Write a downsampled PNG of the labels (class colours, nodata transparent), over the input if given.

    3D outputs show their middle slice. Pixels are sampled every ``ceil(max(H, W) / max_size)`` rows and
    columns, read band by band.
    """
    from PIL import Image

    png_path = Path(png_path)
    _check_writable(png_path)
    shape = store.shape
    plane = (shape[0] // 2,) if len(shape) == 3 else ()
    h, w = shape[-2:]
    step = max(1, math.ceil(max(h, w) / max_size))
    band = step * max(1, 512 // step)
    rows_lab, rows_img = [], []
    for r0 in range(0, h, band):
        r1 = min(r0 + band, h)
        lab = store.read((*(slice(p, p + 1) for p in plane), slice(r0, r1, step), slice(0, w, step)))
        rows_lab.append(lab[0] if plane else lab)
        if reader is not None:
            win = Window((*plane, r0, 0), (*(p + 1 for p in plane), r1, w))
            data = reader.read(win)
            data = data[:, 0] if plane else data
            rows_img.append(data[:, ::step, ::step])
    labels = np.concatenate(rows_lab, axis=0)
    palette = np.zeros((max(store.nodata_label, store.num_classes - 1) + 1, 4), dtype=np.uint8)
    for k, c in enumerate(store.class_colors):
        palette[k] = (*c, 255)
    rgba = palette[np.clip(labels, 0, len(palette) - 1)]
    if reader is not None:
        base = _normalise(np.concatenate(rows_img, axis=1))
        a = (rgba[..., 3:4] / 255.0) * alpha
        blended = (base * (1 - a) + rgba[..., :3] * a).astype(np.uint8)
        rgba = np.concatenate([blended, np.full((*labels.shape, 1), 255, np.uint8)], axis=-1)
    with atomic_path(png_path, what="write the quicklook") as tmp:
        Image.fromarray(rgba, mode="RGBA").save(tmp, format="PNG")
    return png_path
