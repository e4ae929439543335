"""Generated scenes written to real files (GeoTIFF, NIfTI, pyramidal OME-TIFF) window by window.

Each writer asks the scene for one window at a time (``scene.read(window) -> (image (C, *w), labels (*w))``),
so peak memory stays bounded by the window size, whatever the scene size. GDAL's block cache is capped
while writing rasters for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import rasterio
import tifffile
from affine import Affine

from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.raster import to_rio_window
from tiler.io.volume import affine_from_spacing, write_nifti_slabs

SLIDE_TILE = 256


class SceneLike(Protocol):
    """What the writers need of a scene (see :mod:`tiler.scenes`)."""

    shape: tuple[int, ...]
    channels: int
    dtype: np.dtype
    nodata_label: int

    @property
    def image_nodata(self) -> float | None: ...  # noqa: D102 - read-only, so float and None scenes both fit

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]: ...  # noqa: D102


def _parent_writable(path: str | os.PathLike[str]) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: folder {parent} does not exist or is not writable.")


def write_satellite(
    scene: SceneLike,
    image_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    block: int = 1024,
    crs: str = "EPSG:32633",
    pixel_size: float = 10.0,
    origin: tuple[float, float] = (500000.0, 5000000.0),
) -> None:
    """Write a 2D scene as a tiled, deflate-compressed GeoTIFF image (nodata 0) and truth (uint8, nodata 255).

    Args:
        scene: A 2D scene of shape (H, W) with ``channels`` bands.
        image_path: Output image GeoTIFF.
        truth_path: Output truth GeoTIFF.
        block: Window size generated and written at a time (pixels per side; a multiple of 512 is best).
        crs: CRS of both files.
        pixel_size: Pixel size in CRS units.
        origin: (x, y) of the top-left corner.

    """
    _parent_writable(image_path)
    _parent_writable(truth_path)
    h, w = scene.shape
    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    common: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    nodata = scene.image_nodata if scene.image_nodata is not None else 0
    image_profile = {
        **common,
        "count": scene.channels,
        "dtype": str(np.dtype(scene.dtype)),
        "nodata": nodata,
        "interleave": "pixel" if scene.channels <= 4 else "band",
    }
    truth_profile = {**common, "count": 1, "dtype": "uint8", "nodata": scene.nodata_label}
    with (
        rasterio.Env(GDAL_CACHEMAX=128),
        rasterio.open(image_path, "w", **image_profile) as img,
        rasterio.open(truth_path, "w", **truth_profile) as tru,
    ):
        for window in BlockPartition(scene.shape, (block, block)):
            image, labels = scene.read(window)
            rio_window = to_rio_window(window)
            img.write(image, window=rio_window)
            tru.write(labels[None].astype(np.uint8, copy=False), window=rio_window)


def write_ct(
    scene: SceneLike,
    image_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    slab: int = 16,
) -> None:
    """Write a 3D scene (D, H, W) as NIfTI image and truth with the scene's anisotropic spacing affine.

    The image is written slab by slab: ``slab`` slices are generated at a time. The affine follows the
    convention of :mod:`tiler.io.volume` (exposed ``(D, H, W)`` = NIfTI ``(k, j, i)``).
    """
    _parent_writable(image_path)
    _parent_writable(truth_path)
    spacing = tuple(getattr(scene, "spacing", (1.0, 1.0, 1.0)))
    affine = affine_from_spacing(spacing)
    d, h, w = scene.shape

    def slabs(which: int) -> Iterator[np.ndarray]:
        for window in BlockPartition(scene.shape, (slab, h, w)):
            pair = scene.read(window)
            yield pair[0][0] if which == 0 else pair[1]

    write_nifti_slabs(image_path, scene.shape, dtype=scene.dtype, affine=affine, slabs=slabs(0))
    write_nifti_slabs(truth_path, scene.shape, dtype=np.dtype(np.uint8), affine=affine, slabs=slabs(1))


def _tiles(scene: SceneLike, factor: int, *, truth: bool) -> Iterator[np.ndarray]:
    """Tiles of the level downsampled by ``factor`` (every ``factor``-th pixel), row-major, (t, t, S)."""
    h, w = scene.shape
    lh, lw = -(-h // factor), -(-w // factor)
    span = SLIDE_TILE * factor
    for y in range(0, lh, SLIDE_TILE):
        for x in range(0, lw, SLIDE_TILE):
            win = Window((y * factor, x * factor), (min(y * factor + span, h), min(x * factor + span, w)))
            image, labels = scene.read(win)
            if truth:
                yield np.ascontiguousarray(labels[::factor, ::factor])
            else:
                yield np.ascontiguousarray(np.moveaxis(image[:, ::factor, ::factor], 0, -1))


def _write_pyramid(
    scene: SceneLike, path: str | os.PathLike[str], *, levels: int, mpp: float, truth: bool
) -> None:
    h, w = scene.shape
    rgb = not truth and scene.channels == 3
    samples = () if truth else (scene.channels,)
    dtype = np.uint8 if truth else np.dtype(scene.dtype)
    axes = "YX" if truth else "YXS"
    metadata = {
        "axes": axes,
        "PhysicalSizeX": mpp,
        "PhysicalSizeY": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
    }
    options: dict[str, Any] = {
        "tile": (SLIDE_TILE, SLIDE_TILE),
        "compression": "zlib",
        "photometric": "rgb" if rgb else "minisblack",
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(
            _tiles(scene, 1, truth=truth),
            shape=(h, w, *samples),
            dtype=dtype,
            subifds=levels - 1,
            metadata=metadata,
            resolution=(1e4 / mpp, 1e4 / mpp),
            **options,
        )
        for level in range(1, levels):
            f = 2**level
            tif.write(
                _tiles(scene, f, truth=truth),
                shape=(-(-h // f), -(-w // f), *samples),
                dtype=dtype,
                subfiletype=1,
                resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)),
                **options,
            )


def write_slide(
    scene: SceneLike,
    image_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    levels: int = 3,
) -> None:
    """Write a 2D RGB scene as a tiled pyramidal OME-TIFF (levels in SubIFDs, mpp in OME and resolution tags).

    Level ``l`` is every ``2**l``-th pixel of level 0. The truth is a single-level tiled OME-TIFF (uint8,
    same mpp) so that it reads back through the same slide reader. Tiles are generated one at a time.
    """
    _parent_writable(image_path)
    _parent_writable(truth_path)
    if levels < 1:
        raise OutputError(f"levels={levels} for {image_path}; a pyramid needs at least 1 level.")
    mpp = float(getattr(scene, "mpp", 0.5))
    _write_pyramid(scene, image_path, levels=levels, mpp=mpp, truth=False)
    _write_pyramid(scene, truth_path, levels=1, mpp=mpp, truth=True)
