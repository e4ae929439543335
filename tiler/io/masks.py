"""Masks of where an image holds something to segment: slide tissue, volume foreground, raster valid data.

Raster valid data comes from GDAL (see :class:`tiler.io.raster.RasterReader.valid_mask`); this module holds
the computations that are ours: tissue detection on a low-resolution slide level (Otsu on HSV saturation,
small objects removed), the body of a CT volume on a low-resolution copy of it (:func:`body_mask`),
nearest-neighbour upsampling of such a mask to any window (2D or 3D), and a foreground threshold for volumes.
"""

from __future__ import annotations

import functools
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


def upsample_mask(
    mask: np.ndarray, window: Window, shape: Sequence[int], *, block: Sequence[int] | None = None
) -> np.ndarray:
    """Sample (nearest) a low-resolution mask of an image of ``shape`` over ``window``, in 2D or 3D.

    Which mask pixel a full-resolution pixel ``x`` takes, per axis of ``n`` pixels and ``m`` mask pixels:

    * ``block=None``: the mask spans the image proportionally, ``floor((x + 0.5) · m / n)`` (a slide's
      pyramid level, whose scale is not an integer);
    * ``block=b``: mask pixel ``i`` covers the fixed block ``[i·b, (i + 1)·b)``, the last block clipped at
      the image's edge, i.e. ``floor(x / b)`` (a mask made of every ``b``-th pixel, ``m = ceil(n / b)``).

    >>> low = np.array([[True, False], [False, False]])
    >>> upsample_mask(low, Window((0, 0), (3, 4)), (3, 3), block=(2, 2)).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [0, 0, 0, 0]])

    Args:
        mask: Bool array (h, w) or (d, h, w) covering the whole image at a lower resolution.
        window: Window in full-resolution pixel coordinates (may reach past the image).
        shape: Full-resolution image shape (H, W) or (D, H, W).
        block: Full-resolution pixels per mask pixel along each axis, or None (proportional).

    Returns:
        Bool array (*window.shape); False outside the image.

    """
    ndim = len(shape)
    blocks = (None,) * ndim if block is None else tuple(int(b) for b in block)
    index = []
    inside = []
    for axis, (a, b, n, m, step) in enumerate(zip(window.start, window.stop, shape, mask.shape, blocks, strict=True)):
        coords = np.arange(a, b)
        along = [1] * ndim
        along[axis] = -1
        inside.append(((coords >= 0) & (coords < n)).reshape(along))
        if step is None:
            index.append(np.clip((coords.astype(np.float64) + 0.5) * m / n, 0, m - 1).astype(np.int64))
        else:
            index.append(np.clip(coords // step, 0, m - 1).astype(np.int64))
    out: np.ndarray = mask[np.ix_(*index)] & functools.reduce(np.logical_and, inside)
    return out


BODY_THRESHOLD_HU = -500.0
"""Default Hounsfield value above which a voxel may be body: between air (-1000) and lung (about -850 to -600)
seeds nothing but tissue; the lungs get in by hole filling."""


def body_mask(volume_lowres: np.ndarray, *, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """The body in a low-resolution CT volume: what is not the air around it, lungs and airways included.

    1. Voxels whose largest channel exceeds ``threshold_hu`` (a CT has one channel; a non-finite voxel never
       does), 2. the largest 6-connected component of them (the patient, not the table or noise specks),
    3. holes filled slice by slice along the first axis (lungs and airways: open to the outside through the
       nose and mouth in 3D, enclosed in every axial slice), 4. dilated by one voxel in every direction (the
       3×3×3 box): a safety margin, so that upsampled, the body's edge is never cut.

    No 3D hole filling follows step 3: it could fill nothing more, since every voxel still outside the body
    is connected within its slice to the slice's edge, which is the volume's edge.

    >>> ct = np.full((1, 5, 9, 9), -1000.0)
    >>> ct[0, 1:4, 2:6, 2:6] = 40.0      # the body
    >>> ct[0, 2, 3:5, 3:5] = -850.0      # a lung inside it
    >>> ct[0, 0, 0, 8] = 300.0           # a speck of noise in the air
    >>> mask = body_mask(ct)             # the body, its lung, and one voxel around them
    >>> bool(mask[2, 3, 3]), bool(mask[0, 0, 8]), np.array_equal(np.argwhere(mask)[[0, -1]], [[0, 1, 1], [4, 6, 6]])
    (True, False, True)
    >>> int(mask.sum()) == 5 * 6 * 6
    True

    Args:
        volume_lowres: Array (C, d, h, w): the volume sampled coarsely (see
            :func:`tiler.io.volume.read_strided`), in Hounsfield units.
        threshold_hu: A voxel above it may be body.

    Returns:
        Bool array (d, h, w), True = body. A volume with nothing above the threshold gives an all-False
        mask: every voxel is outside the body (a job then labels it all background).

    """
    from scipy import ndimage  # here, not at import: only volumes asked for a body mask need it

    values = np.asarray(volume_lowres)
    if values.ndim != 4:
        raise ValueError(f"body_mask wants a (C, d, h, w) volume; got shape {values.shape}")
    with np.errstate(invalid="ignore"):
        above = (np.isfinite(values) & (values > threshold_hu)).any(axis=0)
    labels, count = ndimage.label(above)
    if count == 0:
        return np.zeros(above.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for d in range(body.shape[0]):
        body[d] = ndimage.binary_fill_holes(body[d])
    out: np.ndarray = ndimage.binary_dilation(body, structure=np.ones((3, 3, 3), dtype=bool))
    return out


def foreground_mask(data: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels where any channel exceeds ``threshold``: data (C, *S) -> bool (*S)."""
    return np.asarray((np.asarray(data) > threshold).any(axis=0), dtype=bool)


MASK_OF_FORMAT = {
    "raster": "nodata", "nifti": "threshold", "zarr": "threshold", "dicom": "threshold", "tiff-slide": "tissue",
    "openslide": "tissue",
}  # fmt: skip
"""The valid-data mask each reader format computes (what ``mask: auto`` means for it)."""

BODY_FORMATS = ("nifti", "zarr", "dicom")
"""Formats that compute a body mask when asked for it by name (``mask: body``): the volumes."""

MASKS_ON_REQUEST = {"body": BODY_FORMATS}
"""Masks a format computes only when named, never as its ``auto``: mask kind -> the formats that have it."""

_WHAT = {
    "nodata": "a raster's nodata / alpha / internal mask",
    "tissue": "a slide's tissue mask (Otsu on saturation)",
    "threshold": "a volume's foreground threshold",
    "body": "a CT volume's body mask (the largest component above a HU threshold, holes filled)",
}


def mask_kind_problem(kind: str, reader_format: str, *, threshold: float | None = None) -> str | None:
    """What is wrong with asking for the mask ``kind`` on an input of ``reader_format``, or None when it fits.

    ``auto`` and ``none`` fit every format; ``nodata``, ``tissue`` and ``threshold`` name one format's mask
    and fit only that format; ``body`` fits the volumes (:data:`MASKS_ON_REQUEST`). A ``threshold`` is a
    volume's only (its foreground threshold, or with ``body`` the HU above which a voxel may be body).

    >>> mask_kind_problem("tissue", "openslide") is None, mask_kind_problem("auto", "raster") is None
    (True, True)
    >>> mask_kind_problem("tissue", "raster")
    "mask 'tissue' is a slide's tissue mask (Otsu on saturation), but the input is a raster, whose mask is 'nodata'"
    >>> mask_kind_problem("body", "dicom", threshold=-300.0) is None
    True
    >>> mask_kind_problem("body", "openslide")  # doctest: +NORMALIZE_WHITESPACE
    "mask 'body' is a CT volume's body mask (the largest component above a HU threshold, holes filled), but the
    input is a openslide, whose mask is 'tissue'"
    """
    natural = MASK_OF_FORMAT.get(reader_format)
    if threshold is not None and natural != "threshold":
        return f"threshold={threshold} is a volume's foreground threshold, but the input is a {reader_format}"
    if kind in ("auto", "none") or natural == kind or reader_format in MASKS_ON_REQUEST.get(kind, ()):
        return None
    its = f", whose mask is {natural!r}" if natural else ", which has no mask of that kind"
    return f"mask {kind!r} is {_WHAT.get(kind, 'unknown')}, but the input is a {reader_format}{its}"
