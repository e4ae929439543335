"""Label maps on disk (GeoTIFF, NIfTI, zarr array, tiler output store) as one-band, windowed, thread-safe sources.

The one place a label map is opened: metrics and training read label maps through :func:`open_labels`.
GeoTIFFs and NIfTI volumes are read through :func:`tiler.io.open_reader`; zarr arrays (2D or 3D) and the
engine's output store (a group with a ``labels`` array) with zarr. A :class:`LabelSource` exposes
``shape`` ((H, W) or (D, H, W)), ``dtype``, ``nodata``, ``georef`` (a :class:`~tiler.io.base.Georef`, compare
two with :meth:`~tiler.io.base.Georef.same_grid`), a native block shape, ``read(window)`` and the numpy
indexing protocol (``source[slices]``), so ``dask.array.from_array(source)`` reads it chunk by chunk.
NIfTI ``(i, j, k)`` is exposed as ``(D, H, W) = (k, j, i)`` (the :mod:`tiler.io` convention).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io.base import Georef
from tiler.io.objects import as_path, zarr_store
from tiler.paths import is_object_url, is_remote

__all__ = ["LabelSource", "open_labels"]

_SLAB_PIXELS = 4 * 1024 * 1024
_GDAL_CACHE_MB = 64


@dataclass
class LabelSource:
    """One label map on disk; each thread reads through its own handle.

    Attributes:
        path: The path as given.
        kind: ``"raster"``, ``"nifti"``, ``"zarr"`` or ``"store"`` (a tiler output store).
        shape: ``(H, W)`` or ``(D, H, W)``.
        dtype: Label dtype.
        nodata: Nodata value or None.
        georef: Where the pixels lie (compare with :meth:`Georef.same_grid`).
        block: Native block (tile / chunk) shape, for choosing read chunks.
        class_names: Class names stored with the map (output stores), else None.
        num_classes: ``K`` stored with the map (output stores), else None.

    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nodata: float | None
    georef: Georef
    block: tuple[int, ...]
    class_names: list[str] | None = None
    num_classes: int | None = None
    _opener: Callable[[], Any] | None = None
    _local: threading.local = field(default_factory=threading.local)

    def read(self, window: Window) -> np.ndarray:
        """Labels of ``window`` (inside the map), shape ``window.shape``.

        Raises:
            ReadError: The file cannot be read there (corrupt or truncated), naming the file and the window.
        """
        handle = getattr(self._local, "handle", None)
        if handle is None:
            assert self._opener is not None
            handle = self._local.handle = self._opener()
        try:
            if self.kind in ("raster", "nifti"):  # as stored: a NaN label is an error to report, not class 0
                return np.asarray(handle.read_stored(window)[0])
            return np.asarray(handle[window.slices])
        except Exception as exc:  # noqa: BLE001 - any library failure names the file and window
            raise ReadError(
                f"reading window start={window.start} stop={window.stop} of {self.path} failed: {exc}. "
                "The file may be corrupt or truncated; check it or re-create it."
            ) from exc

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        starts = [s.start or 0 for s in index]
        stops = [n if s.stop is None else s.stop for s, n in zip(index, self.shape, strict=True)]
        if any(b <= a for a, b in zip(starts, stops, strict=True)):
            return np.zeros(tuple(max(0, b - a) for a, b in zip(starts, stops, strict=True)), self.dtype)
        return self.read(Window(tuple(starts), tuple(stops)))


def sidecar_class_names(path: str, kind: str) -> list[str] | None:
    """The class names a label file carries beside it, as tiler's exports (and GDAL, 3D Slicer, ITK-SNAP) write them.

    A raster: the band's GDAL category names in ``<file>.aux.xml`` (what ``gdalinfo`` and QGIS show). A NIfTI: the
    ITK-SNAP label description ``<stem>.itksnap.txt``, whose labels ``0 .. n-1`` are the classes (a nodata row
    past them is not a class). None when there is no such file or it names no class.
    """
    import re
    import xml.etree.ElementTree as ET

    from tiler.io.export import aux_path, label_table_paths

    try:
        if kind == "raster":
            root = ET.fromstring(aux_path(path).read_bytes())
            band = next((b for b in root.iter("PAMRasterBand") if b.get("band") == "1"), None)
            categories = band.find("CategoryNames") if band is not None else None
            names = [c.text or "" for c in categories.iter("Category")] if categories is not None else []
        else:
            found: dict[int, str] = {}
            for line in label_table_paths(path)["itksnap"].read_text(encoding="utf-8").splitlines():
                row = re.match(r'\s*(\d+)\s.*"(.*)"\s*$', line)
                if row and not line.lstrip().startswith("#"):
                    found[int(row.group(1))] = row.group(2)
            names = []
            while len(names) in found:  # labels 0, 1, ... in a row: the classes
                names.append(found[len(names)])
    except (OSError, ET.ParseError, UnicodeDecodeError):
        return None
    return names or None


def _open_with_reader(path: str, kind: str) -> LabelSource:
    """Open a GeoTIFF / NIfTI label map with :func:`tiler.io.open_reader` (one reader copy per thread)."""
    from tiler.io import open_reader

    # Each chunk is read once: a small GDAL block cache keeps the whole raster out of memory, and
    # callers read chunks in parallel threads, so GDAL decodes in the calling thread.
    gdal = {"GDAL_CACHEMAX": _GDAL_CACHE_MB, "GDAL_NUM_THREADS": 1} if kind == "raster" else None
    reader = open_reader(path, mask="none", gdal_options=gdal)
    if reader.channels != 1:
        raise InputError(
            f"{path} has {reader.channels} bands/channels; a label map has exactly one channel of labels."
        )
    shape = tuple(int(v) for v in reader.shape)
    if kind == "raster":  # GDAL rasters chunk by their own blocks; other 2D readers (OME-TIFF slides) by 512
        shapes = getattr(reader.handle, "block_shapes", None)
        block = tuple(int(v) for v in shapes[0]) if shapes else (512, 512)
        reader.close()
    else:  # NIfTI (D, H, W) slabs of whole planes: contiguous on disk
        block = (max(1, _SLAB_PIXELS // (shape[1] * shape[2])), shape[1], shape[2])

    def opener() -> Any:
        return copy.copy(reader)  # a reader copy drops the handle and re-opens it in this thread

    # an exported COG or NIfTI keeps its class names beside it (a local sidecar; a remote one is not looked for)
    names = None if is_remote(path) else sidecar_class_names(path, kind)
    return LabelSource(path, kind, shape, np.dtype(reader.dtype), reader.nodata, reader.georef, block,
                       class_names=names, num_classes=len(names) if names else None, _opener=opener)  # fmt: skip


def _georef(attrs: dict[str, Any]) -> Georef:
    """The georeferencing stored in zarr attributes (nested under ``georef`` or flat); none when unreadable."""
    try:
        return Georef.from_attrs(attrs)
    except (InputError, TypeError, ValueError):
        return Georef()


def _open_zarr(path: str) -> LabelSource:
    import zarr

    try:
        node = zarr.open(zarr_store(as_path(path), read_only=True), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"cannot open {path} as zarr: {exc}. Check the path.") from exc
    group_attrs: dict[str, Any] = {}
    kind, array_name = "zarr", None
    if isinstance(node, zarr.Group):
        if "labels" not in node:
            raise InputError(
                f"zarr group {path} has no 'labels' array (arrays: {list(node.array_keys())}); give the "
                "engine's output store or a label array."
            )
        group_attrs, kind, array_name = dict(node.attrs), "store", "labels"
        node = node["labels"]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{path}: 'labels' is not a zarr array; give the engine's output store or an array.")
    attrs = {**group_attrs, **dict(node.attrs)}
    nodata = attrs.get("nodata_label", attrs.get("nodata"))
    names = attrs.get("class_names")

    def opener() -> Any:
        root: Any = zarr.open(zarr_store(as_path(path), read_only=True), mode="r")
        return root[array_name] if array_name else root

    return LabelSource(
        path, kind, tuple(int(v) for v in node.shape), np.dtype(node.dtype),
        None if nodata is None else float(nodata), _georef(attrs),
        tuple(int(v) for v in node.chunks), list(names) if names else None,
        int(attrs["num_classes"]) if attrs.get("num_classes") is not None else None, _opener=opener,
    )


def open_labels(path: str | os.PathLike[str]) -> LabelSource:
    """Open a label map: GeoTIFF (any GDAL raster), NIfTI, a zarr array, or a tiler output store.

    A remote path (``s3://bucket/truth.tif``, ``/vsis3/...``, ``https://...``) is a raster read through GDAL, with
    the cloud options of the reading process (:mod:`tiler.io.cloud`).

    Raises:
        ReadError: The path does not exist or cannot be opened.
        InputError: The file is not a single-band / 3D label map.

    """
    text = str(path)
    if is_object_url(text) and text.lower().rstrip("/").endswith(".zarr"):
        return _open_zarr(text)  # a store (or zarr array) in a bucket, through zarr's store for obstore
    if is_remote(text):
        return _open_with_reader(text, "raster")
    if not os.path.exists(text):
        raise ReadError(f"{text} does not exist; check the path (absolute: {os.path.abspath(text)}).")
    lower = text.lower().rstrip("/")
    if lower.endswith((".nii", ".nii.gz")):
        return _open_with_reader(text, "nifti")
    if Path(text).is_dir() or lower.endswith(".zarr"):
        return _open_zarr(text)
    return _open_with_reader(text, "raster")
