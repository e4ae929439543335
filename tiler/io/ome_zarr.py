"""The OME-Zarr export: the input image pyramid with the label pyramid under it, the path to open in napari.

Both pyramids are written window by window (level 0 from the input and the store, each next level every second
y/x pixel of the last), into a temporary folder moved into place whole (:func:`tiler.io.atomic.atomic_dir`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from tiler.errors import OutputError
from tiler.geometry import BlockPartition
from tiler.io.atomic import BeforeMove, atomic_dir
from tiler.io.base import Georef, Reader
from tiler.io.export_common import _block_for, _check_writable, _write_errors
from tiler.io.objects import AnyPath, PathArg, as_path, lexists
from tiler.io.store import OutputStore


def _downsample_levels(shape: Sequence[int], *, min_size: int = 256, max_levels: int = 5) -> int:
    """How many pyramid levels: halve the longest y/x side down to about ``min_size``, at most ``max_levels``."""
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
    out_path: PathArg,
    *,
    reader: Reader,
    name: str = "classes",
    before_move: BeforeMove | None = None,
) -> AnyPath:
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
    out_path = as_path(out_path)
    ndim = len(store.shape)
    if tuple(reader.shape) != tuple(store.shape):
        raise OutputError(
            f"cannot write OME-Zarr at {out_path}: the input {reader.path} has shape {reader.shape} but the output "
            f"{store.path} has {store.shape}; pass the reader the store was made from."
        )
    names = ["z", "y", "x"][-ndim:]
    base_scale, unit = _ome_scale(store.georef, ndim)
    levels = _downsample_levels(store.shape)
    replace = lexists(out_path)
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
    """OME ``axes`` entries of the spatial axes ``names``, with ``unit`` when known."""
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


def _is_ome_zarr(path: AnyPath) -> bool:
    """Whether ``path`` is a zarr group with OME metadata (an earlier export that may be replaced)."""
    try:
        meta = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) and "ome" in meta["attributes"]
