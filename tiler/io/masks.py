"""Masks of where an image holds something to segment: slide tissue, volume foreground, raster valid data.

Raster valid data comes from GDAL (see :class:`tiler.io.raster.RasterReader.valid_mask`); this module holds
the computations that are ours: tissue detection on a low-resolution slide level (Otsu on HSV saturation,
small objects removed), nearest-neighbour upsampling of such a mask to any window, and a foreground
threshold for volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tiler.geometry import Window


def tissue_mask(rgb: np.ndarray, *, min_fraction: float = 1e-3) -> np.ndarray:
    """Tissue pixels of a low-resolution RGB slide image.

    Otsu's threshold on the HSV saturation separates stained tissue (saturated) from glass (white/grey);
    objects and holes smaller than ``min_fraction`` of the image are removed.

    Args:
        rgb: Array (3, h, w) of uint8 (or floats in [0, 1]).
        min_fraction: Smallest kept object, as a fraction of the image area.

    Returns:
        Bool array (h, w), True = tissue. A uniform image (nothing to threshold) is all True.

    """
    from skimage.color import rgb2hsv  # here, not at import: scikit-image costs a second to import
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    img = np.moveaxis(np.asarray(rgb)[:3], 0, -1)
    sat = rgb2hsv(img)[..., 1]
    if float(sat.max() - sat.min()) < 1e-6:
        return np.ones(sat.shape, dtype=bool)
    mask = sat > threshold_otsu(sat)
    min_size = max(1, int(min_fraction * sat.size))
    mask = remove_small_objects(mask, max_size=min_size)
    return remove_small_holes(mask, max_size=min_size)


def upsample_mask(mask: np.ndarray, window: Window, shape: Sequence[int]) -> np.ndarray:
    """Sample (nearest) a low-resolution mask of an image of ``shape`` over ``window``.

    Args:
        mask: Bool array (h, w) covering the whole image at a lower resolution.
        window: Window in full-resolution pixel coordinates (may reach past the image).
        shape: Full-resolution image shape (H, W).

    Returns:
        Bool array (*window.shape); False outside the image.

    """
    index = []
    inside = []
    for a, b, n, m in zip(window.start, window.stop, shape, mask.shape, strict=True):
        coords = np.arange(a, b)
        inside.append((coords >= 0) & (coords < n))
        index.append(np.clip((coords.astype(np.float64) + 0.5) * m / n, 0, m - 1).astype(np.int64))
    out: np.ndarray = mask[np.ix_(*index)] & np.logical_and.outer(inside[0], inside[1])
    return out


def foreground_mask(data: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels where any channel exceeds ``threshold``: data (C, *S) -> bool (*S)."""
    return np.asarray((np.asarray(data) > threshold).any(axis=0), dtype=bool)


MASK_OF_FORMAT = {
    "raster": "nodata", "nifti": "threshold", "zarr": "threshold", "dicom": "threshold", "tiff-slide": "tissue",
    "openslide": "tissue",
}  # fmt: skip
"""The valid-data mask each reader format computes (what ``mask: auto`` means for it)."""

_WHAT = {
    "nodata": "a raster's nodata / alpha / internal mask",
    "tissue": "a slide's tissue mask (Otsu on saturation)",
    "threshold": "a volume's foreground threshold",
}


def mask_kind_problem(kind: str, reader_format: str, *, threshold: float | None = None) -> str | None:
    """What is wrong with asking for the mask ``kind`` on an input of ``reader_format``, or None when it fits.

    ``auto`` and ``none`` fit every format; ``nodata``, ``tissue`` and ``threshold`` name one format's mask
    and fit only that format. A foreground ``threshold`` is a volume's (``auto`` or ``threshold``) only.

    >>> mask_kind_problem("tissue", "openslide") is None, mask_kind_problem("auto", "raster") is None
    (True, True)
    >>> mask_kind_problem("tissue", "raster")
    "mask 'tissue' is a slide's tissue mask (Otsu on saturation), but the input is a raster, whose mask is 'nodata'"
    """
    natural = MASK_OF_FORMAT.get(reader_format)
    if threshold is not None and natural != "threshold":
        return f"threshold={threshold} is a volume's foreground threshold, but the input is a {reader_format}"
    if kind in ("auto", "none") or natural == kind:
        return None
    its = f", whose mask is {natural!r}" if natural else ", which has no mask of that kind"
    return f"mask {kind!r} is {_WHAT.get(kind, 'unknown')}, but the input is a {reader_format}{its}"
