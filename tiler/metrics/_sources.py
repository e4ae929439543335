"""Label maps on disk (GeoTIFF, NIfTI, zarr array, engine output store) as lazily read dask arrays.

GeoTIFFs and NIfTI volumes are read through :func:`tiler.io.open_reader`; zarr arrays (2D or 3D) and
the engine's output store (a group with a ``labels`` array) directly with zarr, since the io zarr
reader takes 3D volumes only. Each source exposes ``shape`` ((H, W) or (D, H, W)), ``dtype``,
``nodata``, ``georef``, a native block shape and ``read(window) -> (*window.shape)``; :func:`as_dask`
wraps it in a dask array whose chunks are read on demand, so the whole image is never loaded.
NIfTI ``(i, j, k)`` is exposed as ``(D, H, W) = (k, j, i)`` (the :mod:`tiler.io` convention).
"""

from __future__ import annotations

import copy
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from tiler.errors import ReadError, ScoreError
from tiler.geometry import Window

_TARGET_CHUNK_PIXELS = 4 * 1024 * 1024
_GDAL_CACHE_MB = 64


@dataclass(frozen=True)
class SourceGeoref:
    """Georeferencing to compare: raster CRS + transform ``(a, b, c, d, e, f)``, or a volume's 4x4 affine."""

    crs_wkt: str | None = None
    transform: tuple[float, ...] | None = None
    affine: tuple[tuple[float, ...], ...] | None = None


@dataclass
class LabelSource:
    """One label map on disk.

    Attributes:
        path: The path as given.
        kind: ``"raster"``, ``"nifti"``, ``"zarr"`` or ``"store"`` (engine output).
        shape: ``(H, W)`` or ``(D, H, W)``.
        dtype: Label dtype.
        nodata: Nodata value or None.
        georef: What to compare against the other map.
        block: Native block (tile / chunk) shape, for choosing dask chunks.
        class_names: Class names stored with the map (engine stores), else None.
        num_classes: ``K`` stored with the map (engine stores), else None.

    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nodata: float | None
    georef: SourceGeoref
    block: tuple[int, ...]
    class_names: list[str] | None = None
    num_classes: int | None = None
    _opener: Any = None
    _local: threading.local = field(default_factory=threading.local)

    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` (inside the image), shape ``window.shape``."""
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = self._opener()
        try:
            return _read(self.kind, handle, window)
        except Exception as exc:  # noqa: BLE001 - any library failure names the file and window
            raise ReadError(
                f"reading window start={window.start} stop={window.stop} of {self.path} failed: {exc}. "
                "The file may be corrupt or truncated; check it or re-create it."
            ) from exc

    # dask.array.from_array protocol
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


def _read(kind: str, handle: Any, window: Window) -> np.ndarray:
    if kind in ("raster", "nifti"):
        return np.asarray(handle.read(window)[0])
    return np.asarray(handle[window.slices])


def _open_with_io(path: str, kind: str) -> LabelSource:
    """Open a GeoTIFF / NIfTI label map with :func:`tiler.io.open_reader` (one reader copy per thread)."""
    from tiler.io import open_reader

    # Each chunk is read once: a small GDAL block cache keeps the whole raster out of memory, and
    # dask already reads chunks in parallel, so GDAL decodes in the calling thread.
    gdal = {"GDAL_CACHEMAX": _GDAL_CACHE_MB, "GDAL_NUM_THREADS": 1} if kind == "raster" else None
    reader = open_reader(path, mask="none", gdal_options=gdal)
    if reader.channels != 1:
        raise ScoreError(
            f"{path} has {reader.channels} bands/channels; a label map has exactly one channel of labels."
        )
    g = reader.georef
    georef = SourceGeoref(crs_wkt=g.crs_wkt, transform=g.transform, affine=g.affine)
    shape = tuple(int(v) for v in reader.shape)
    if kind == "raster":  # GDAL rasters chunk by their own blocks; other 2D readers (OME-TIFF slides) by 512
        shapes = getattr(reader.handle, "block_shapes", None)
        block = tuple(int(v) for v in shapes[0]) if shapes else (512, 512)
        reader.close()
    else:  # NIfTI (D, H, W) slabs of whole planes: contiguous on disk
        block = (max(1, _TARGET_CHUNK_PIXELS // (shape[1] * shape[2])), shape[1], shape[2])

    def opener() -> Any:
        return copy.copy(reader)  # a reader copy drops the handle and re-opens it in this thread

    dtype = np.dtype(reader.dtype)
    return LabelSource(path, kind, shape, dtype, reader.nodata, georef, block, _opener=opener)


def _georef_from_attrs(attrs: dict[str, Any]) -> SourceGeoref:
    nested = attrs.get("georef")
    g: dict[str, Any] = nested if isinstance(nested, dict) else attrs
    transform = g.get("transform")
    affine = g.get("affine")
    return SourceGeoref(
        crs_wkt=g.get("crs_wkt"),
        transform=tuple(float(v) for v in transform) if transform else None,
        affine=tuple(tuple(float(v) for v in row) for row in affine) if affine else None,
    )


def _open_zarr(path: str) -> LabelSource:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"cannot open {path} as zarr: {exc}. Check the path.") from exc
    group_attrs: dict[str, Any] = {}
    kind, array_name = "zarr", None
    if isinstance(node, zarr.Group):
        if "labels" not in node:
            raise ScoreError(
                f"zarr group {path} has no 'labels' array (arrays: {list(node.array_keys())}); give the "
                "engine's output store or a label array."
            )
        group_attrs, kind, array_name = dict(node.attrs), "store", "labels"
        node = node["labels"]
    if not isinstance(node, zarr.Array):
        raise ScoreError(f"{path}: 'labels' is not a zarr array; give the engine's output store or an array.")
    attrs = {**group_attrs, **dict(node.attrs)}
    nodata = attrs.get("nodata_label", attrs.get("nodata"))
    names = attrs.get("class_names")

    def opener() -> Any:
        root: Any = zarr.open(path, mode="r")
        return root[array_name] if array_name else root

    return LabelSource(
        path, kind, tuple(int(v) for v in node.shape), np.dtype(node.dtype),
        None if nodata is None else float(nodata), _georef_from_attrs(attrs),
        tuple(int(v) for v in node.chunks), list(names) if names else None,
        int(attrs["num_classes"]) if attrs.get("num_classes") is not None else None, _opener=opener,
    )


def open_labels(path: str | os.PathLike[str]) -> LabelSource:
    """Open a label map: GeoTIFF (any GDAL raster), NIfTI, a zarr array, or an engine output store.

    Raises:
        ReadError: The path does not exist or cannot be opened.
        ScoreError: The file is not a single-band / 3D label map.

    """
    text = os.fspath(path)
    if not os.path.exists(text):
        raise ReadError(f"{text} does not exist; check the path (absolute: {os.path.abspath(text)}).")
    lower = text.lower().rstrip("/")
    if lower.endswith((".nii", ".nii.gz")):
        return _open_with_io(text, "nifti")
    if Path(text).is_dir() or lower.endswith(".zarr"):
        return _open_zarr(text)
    return _open_with_io(text, "raster")


def _axis_chunk(a: int, b: int, length: int, target: int) -> int:
    step = math.lcm(max(1, a), max(1, b))
    if step > 2 * target:
        step = max(1, a)
    return min(length, step * max(1, target // step))


def as_dask(truth: LabelSource, pred: LabelSource) -> tuple[da.Array, da.Array]:
    """Both maps as dask arrays with one chunking, aligned to both native block shapes where possible."""
    ndim = len(truth.shape)
    side = max(1, int(round(_TARGET_CHUNK_PIXELS ** (1.0 / ndim))))
    if ndim == 3:  # slabs: full planes when they fit
        plane = truth.shape[1] * truth.shape[2]
        depth = max(1, _TARGET_CHUNK_PIXELS // plane)
        targets = [depth, max(side, truth.shape[1]), max(side, truth.shape[2])]
    else:
        targets = [side] * ndim
    axes = zip(truth.block, pred.block, truth.shape, targets, strict=True)
    chunks = tuple(_axis_chunk(a, b, n, t) for a, b, n, t in axes)
    return (
        da.from_array(truth, chunks=chunks, lock=False, asarray=True, fancy=False, name=f"truth-{id(truth)}"),
        da.from_array(pred, chunks=chunks, lock=False, asarray=True, fancy=False, name=f"pred-{id(pred)}"),
    )


def _crs_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    from rasterio.crs import CRS

    try:
        return bool(CRS.from_wkt(a) == CRS.from_wkt(b))
    except Exception:  # noqa: BLE001 - an unparsable CRS is simply not equal
        return False


def check_compatible(pred: LabelSource, truth: LabelSource, *, tolerance: float = 1e-6) -> list[str]:
    """Raise ScoreError unless both maps have one shape and georeferencing; return notes on what was skipped.

    Rasters compare CRS and transform, volumes their affine, each within ``tolerance``.
    """
    if pred.shape != truth.shape:
        raise ScoreError(
            f"prediction {pred.path} has shape {pred.shape} but truth {truth.path} has shape {truth.shape}; "
            "score a prediction made on the truth's grid (resample one onto the other first)."
        )
    notes: list[str] = []
    pg, tg = pred.georef, truth.georef
    if pg.crs_wkt and tg.crs_wkt and not _crs_equal(pg.crs_wkt, tg.crs_wkt):
        raise ScoreError(
            f"prediction {pred.path} has CRS {pg.crs_wkt[:120]!r}... but truth {truth.path} has CRS "
            f"{tg.crs_wkt[:120]!r}...; reproject one onto the other's grid first."
        )
    pairs = (("transform", pg.transform, tg.transform), ("affine", pg.affine, tg.affine))
    for name, p, t in pairs:
        if p is None or t is None:
            if (p is None) != (t is None):
                notes.append(f"{name} not checked: only one of the two maps has one")
            continue
        if not np.allclose(np.asarray(p), np.asarray(t), rtol=0.0, atol=tolerance):
            raise ScoreError(
                f"prediction {pred.path} has {name} {list(np.asarray(p).ravel())} but truth {truth.path} has "
                f"{name} {list(np.asarray(t).ravel())} (tolerance {tolerance}); the maps are not on the same "
                "grid: resample one onto the other first."
            )
    return notes
