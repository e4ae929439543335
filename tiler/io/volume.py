"""3D volumes (NIfTI and zarr) read slab by slab, and NIfTI written slab by slab.

Axis convention, stated once: a NIfTI array indexed ``(i, j, k)`` is exposed as ``(D, H, W) = (k, j, i)``,
the reversed order. NIfTI stores voxels with ``i`` fastest (Fortran order), so the exposed array's C order
is exactly the on-disk order, and a slab of consecutive ``D`` (= ``k``) indices is one contiguous byte
range. ``Georef.affine`` is the file's own affine (mapping ``(i, j, k, 1)`` to world millimetres) and
``Georef.spacing`` is the voxel size in the exposed ``(D, H, W)`` order. :func:`write_nifti_slabs` inverts
the convention exactly, so image -> read -> write -> read keeps pixels and affine.

Reads slice ``img.dataobj``: an uncompressed ``.nii`` is read only where the window lies; a ``.nii.gz``
cannot seek, so each read decompresses the stream up to the window's last slab (use ``.nii`` or zarr
for volumes too big to decompress repeatedly).

zarr volumes are taken as stored: 3D arrays are ``(D, H, W)``, 4D arrays ``(C, D, H, W)``.

Valid masks, for every volume reader (NIfTI, zarr, DICOM): none by default, a per-voxel foreground
``threshold``, or with ``mask="body"`` the body of a CT (:func:`tiler.io.masks.body_mask`) computed once on a
copy of the volume at most :data:`BODY_MASK_SIZE` voxels per axis, read slab by slab (:func:`read_strided`).
"""

from __future__ import annotations

import gzip
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

import nibabel as nib
import numpy as np
import zarr

from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io.base import Georef, Reader, check_dtype, check_exists, inside_mask, one_line
from tiler.io.masks import BODY_THRESHOLD_HU, body_mask, foreground_mask, upsample_mask
from tiler.redact import redact


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size per exposed axis ``(D, H, W)`` = column norms of the affine for ``(k, j, i)``."""
    norms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return (float(norms[2]), float(norms[1]), float(norms[0]))


def affine_from_spacing(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Return the diagonal NIfTI affine for spacing ``(D, H, W)``: ``diag(sW, sH, sD)`` on ``(i, j, k)``."""
    sd, sh, sw = (float(s) for s in spacing)
    affine = np.diag([sw, sh, sd, 1.0])
    affine[:3, 3] = origin
    return affine


def check_affine(path: str, affine: np.ndarray) -> None:
    """Raise ReadError unless ``affine`` is a finite 4x4 matrix whose 3x3 part is invertible.

    A NaN or singular affine has no voxel size and no inverse: the exports and any resampling would fail
    (or be wrong) after the whole job ran, so such a volume is refused at open.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        problem = f"a non-finite affine {a.tolist()}"
    elif np.linalg.matrix_rank(a[:3, :3]) < 3:
        problem = f"a singular affine (a zero voxel size or collinear axes) {a.tolist()}"
    else:
        return
    raise ReadError(
        redact(
            f"{path} has {problem}: tiler cannot place its voxels in space. Fix the header's sform/qform "
            f"(e.g. `nib.Nifti1Image(data, np.diag([sx, sy, sz, 1]))`, or `fslorient`), or give zarr volumes "
            f"positive 'spacing' attributes."
        )
    )


BODY_MASK_SIZE = 128
"""Most voxels per axis of the low-resolution volume a body mask is computed on: the stride per axis is
``ceil(n / BODY_MASK_SIZE)``, so a 512×512×300 CT is read every 4th voxel in-plane and every 3rd slice."""

STRIDED_SLAB_VOXELS = 2**24
"""Most full-resolution voxels (per channel) :func:`read_strided` reads at once: 64 slices of 512×512."""

VOLUME_MASKS = ("auto", "none", "body")
"""What a volume reader's ``mask`` may be: ``auto``/``none`` (the ``threshold`` alone decides) or ``body``."""


def body_strides(shape: Sequence[int], size: int = BODY_MASK_SIZE) -> tuple[int, ...]:
    """Integer stride per axis so that every ``stride``-th voxel leaves at most ``size`` per axis.

    >>> body_strides((300, 512, 512)), body_strides((40, 96, 96))
    ((3, 4, 4), (1, 1, 1))
    """
    return tuple(max(1, math.ceil(int(n) / size)) for n in shape)


def read_strided(
    read: Callable[[Window], np.ndarray],
    shape: Sequence[int],
    strides: Sequence[int],
    *,
    slab_voxels: int = STRIDED_SLAB_VOXELS,
    slices_apart: bool = False,
) -> np.ndarray:
    """Every ``strides``-th voxel of a ``(D, H, W)`` volume, read a slab at a time, never the whole volume.

    Voxel ``(i, j, k)`` of the result is voxel ``(i·sd, j·sh, k·sw)`` of the volume. Slabs are consecutive
    slices (a multiple of ``sd`` of them, whole rows, at most ``slab_voxels`` voxels; when one slice is too
    big, bands of a multiple of ``sh`` rows): one contiguous read each, as NIfTI and zarr store them. With
    ``slices_apart`` (a format with one file per slice) only the kept slices are read, one at a time.

    Args:
        read: ``read(window) -> (C, *window.shape)`` for windows inside the volume.
        shape: Volume shape ``(D, H, W)``.
        strides: ``(sd, sh, sw)``, each at least 1.
        slab_voxels: Most voxels per channel held at full resolution at once (at least ``sd·sh·W``).
        slices_apart: Read only the kept slices.

    Returns:
        Array (C, ceil(D / sd), ceil(H / sh), ceil(W / sw)) of what ``read`` returns.

    """
    (depth, rows, cols), (sd, sh, sw) = (int(n) for n in shape), (int(s) for s in strides)
    per_slice = 1 if slices_apart else sd  # slices held per kept slice
    band = rows if per_slice * rows * cols <= slab_voxels else max(sh, slab_voxels // (per_slice * cols) // sh * sh)
    slab = max(sd, slab_voxels // (rows * cols) // sd * sd) if band == rows and not slices_apart else sd
    out: np.ndarray | None = None
    for d0 in range(0, depth, slab):
        d1 = d0 + 1 if slices_apart else min(d0 + slab, depth)
        for h0 in range(0, rows, band):
            part = read(Window((d0, h0, 0), (d1, min(h0 + band, rows), cols)))[:, ::sd, ::sh, ::sw]
            if out is None:
                low = (-(-depth // sd), -(-rows // sh), -(-cols // sw))
                out = np.empty((part.shape[0], *low), dtype=part.dtype)
            out[:, d0 // sd : d0 // sd + part.shape[1], h0 // sh : h0 // sh + part.shape[2]] = part
    assert out is not None  # a volume has at least one voxel
    return out


class _SharedMask:
    """A low-resolution mask computed once and shared by a reader and all its copies.

    ``copy.copy`` of a reader keeps this object, so a copy made before the mask was computed shares it too;
    pickling keeps the mask (it is small). The lock makes threads that ask at once compute it once.
    """

    def __init__(self) -> None:
        self.value: np.ndarray | None = None
        self._lock = threading.Lock()

    def get(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The mask, computed by ``compute`` on the first call of any copy."""
        if self.value is None:
            with self._lock:
                if self.value is None:
                    self.value = compute()
        return self.value

    def __getstate__(self) -> dict[str, Any]:
        return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
        self._lock = threading.Lock()


class _VolumeMask:
    """A volume's valid mask: a per-voxel foreground ``threshold`` (any channel above it), or the body mask.

    With ``mask="body"`` the mask is :func:`tiler.io.masks.body_mask` of the volume read every
    :func:`body_strides`-th voxel (lazily, on the first mask asked for), ``threshold`` its HU threshold
    (default :data:`tiler.io.masks.BODY_THRESHOLD_HU`), upsampled block by block to each window.
    """

    threshold: float | None
    mask_mode: str = "auto"
    _body: _SharedMask | None = None
    _slices_apart = False  # read_strided reads only the kept slices (one file per slice)

    def _init_mask(self, mask: str, threshold: float | None) -> None:
        if mask not in VOLUME_MASKS:
            raise InputError(f"mask={mask!r} is unknown for volume {self.name}; use one of {VOLUME_MASKS}.")  # type: ignore[attr-defined]
        self.mask_mode = mask
        self.threshold = threshold
        self._body = _SharedMask() if mask == "body" else None

    def body_strides(self) -> tuple[int, ...]:
        """Full-resolution voxels per body-mask voxel along ``(D, H, W)`` (see :func:`body_strides`)."""
        return body_strides(self.shape, BODY_MASK_SIZE)  # type: ignore[attr-defined]

    def body_mask_lowres(self) -> np.ndarray:
        """The body mask at low resolution, bool ``(ceil(D / sd), ceil(H / sh), ceil(W / sw))``, computed once.

        Raises:
            InputError: when the reader was not opened with ``mask="body"``.

        """
        if self._body is None:
            raise InputError(f"{self.name} was opened without mask='body'; it has no body mask.")  # type: ignore[attr-defined]
        return self._body.get(self._compute_body)

    def _compute_body(self) -> np.ndarray:
        low = read_strided(
            self.read_stored,  # type: ignore[attr-defined] # NaN kept: a non-finite voxel is never body
            self.shape,  # type: ignore[attr-defined]
            self.body_strides(),
            slab_voxels=STRIDED_SLAB_VOXELS,
            slices_apart=self._slices_apart,
        )
        return body_mask(low, threshold_hu=BODY_THRESHOLD_HU if self.threshold is None else self.threshold)

    def _format_mask(self, window: Window, pixels: np.ndarray | None) -> np.ndarray | None:
        if self._body is not None:
            return upsample_mask(self.body_mask_lowres(), window, self.shape, block=self.body_strides())  # type: ignore[attr-defined]
        if self.threshold is None:
            return None
        if pixels is None:
            pixels = self._read_raw(window)  # type: ignore[attr-defined]
        out = foreground_mask(pixels, self.threshold)
        if window.clip(self.shape) != window:  # type: ignore[attr-defined] # boundless part holds fill values
            out &= inside_mask(window, self.shape)  # type: ignore[attr-defined]
        return out


class NiftiReader(_VolumeMask, Reader):
    """NIfTI-1/2 volumes through ``img.dataobj`` slicing (no full load for uncompressed files).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        channels_from_4d: Read a 4D ``(i, j, k, t)`` file as channels ``(C=t, D, H, W)``.
        threshold: Foreground threshold for :meth:`valid_mask` (e.g. ``-500`` HU); None = all valid. With
            ``mask="body"``, the HU above which a voxel may be body (None: ``-500``).
        mask: ``"body"`` for the body mask (see :class:`_VolumeMask`); ``"auto"``/``"none"``: the threshold.

    """

    format = "nifti"

    def __init__(
        self, path: str, *, channels_from_4d: bool = False, threshold: float | None = None, mask: str = "auto"
    ) -> None:
        self.path = str(path)
        self._init_mask(mask, threshold)
        check_exists(self.path)
        img = self._open()
        dims = img.shape
        if len(dims) == 4 and not channels_from_4d:
            raise InputError(
                f"{self.path} is a 4D NIfTI of shape {dims}; to read its 4th axis as channels set "
                f"channels_from_4d=True (config: input.channels_from_4d: true)."
            )
        if len(dims) not in (3, 4):
            raise InputError(
                f"{self.path} has shape {dims}; tiler reads 3D volumes (or 4D with channels_from_4d)."
            )
        self.shape = (int(dims[2]), int(dims[1]), int(dims[0]))
        self.channels = int(dims[3]) if len(dims) == 4 else 1
        check_dtype(self.name, img.get_data_dtype())  # before any pixel is decoded
        probe = np.asarray(img.dataobj[(slice(0, 1),) * len(dims)])
        self.dtype = _native(check_dtype(self.name, probe.dtype))
        self.nodata = None
        affine = np.asarray(img.affine, dtype=float)
        check_affine(self.name, affine)
        self.georef = Georef(kind="volume", affine=affine.tolist(), spacing=spacing_from_affine(affine))
        self._handle = img

    def _open(self) -> Any:
        try:
            return nib.load(self.path)
        except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds
            raise ReadError(
                one_line(f"cannot open {self.path} as NIfTI: {exc}. Check the file is a valid .nii/.nii.gz.")
            ) from exc

    def _close_handle(self, handle: Any) -> None:
        return None  # nibabel opens the file per slice access

    def _read_inside(self, window: Window) -> np.ndarray:
        (d0, h0, w0), (d1, h1, w1) = window.start, window.stop
        if self.channels == 1 and len(self.handle.shape) == 3:
            block = np.asarray(self.handle.dataobj[w0:w1, h0:h1, d0:d1])
            out = block.transpose(2, 1, 0)[None]
        else:
            block = np.asarray(self.handle.dataobj[w0:w1, h0:h1, d0:d1, :])
            out = block.transpose(3, 2, 1, 0)
        return np.ascontiguousarray(out, dtype=self.dtype)


def _split_zarr_path(path: str) -> tuple[str, str | None]:
    """``store.zarr:array_name`` -> (store, array_name); a plain path -> (path, None)."""
    head, sep, tail = path.rpartition(":")
    if sep and head and "/" not in tail[:1] and not (len(head) == 1 and head.isalpha()):
        return head, tail
    return path, None


class ZarrReader(_VolumeMask, Reader):
    """zarr arrays (v3, or v2 read through zarr 3): 3D ``(D, H, W)`` or 4D ``(C, D, H, W)``.

    Args:
        path: An array, ``store.zarr:array_name``, or a group holding exactly one array.
        threshold: Foreground threshold for :meth:`valid_mask`; None = all valid. With ``mask="body"``, the
            HU above which a voxel may be body (None: ``-500``).
        mask: ``"body"`` for the body mask (see :class:`_VolumeMask`); ``"auto"``/``"none"``: the threshold.

    """

    format = "zarr"

    def __init__(self, path: str, *, threshold: float | None = None, mask: str = "auto") -> None:
        self.path = str(path)
        self._init_mask(mask, threshold)
        self.store_path, self.array_name = _split_zarr_path(self.path)
        check_exists(self.store_path)
        arr = self._open()
        if arr.ndim not in (3, 4):
            raise InputError(
                f"zarr array {self.path} has shape {arr.shape}; "
                "tiler reads volumes (D, H, W) or (C, D, H, W)."
            )
        self.shape = tuple(int(n) for n in arr.shape[-3:])
        self.channels = int(arr.shape[0]) if arr.ndim == 4 else 1
        self.dtype = _native(check_dtype(self.name, arr.dtype))
        attrs = dict(arr.attrs)
        fill = attrs.get("nodata")
        self.nodata = float(fill) if fill is not None else None
        georef = Georef.from_attrs(attrs)
        if georef.kind == "none":
            spacing = attrs.get("spacing", (1.0, 1.0, 1.0))
            georef = Georef(
                kind="volume", affine=affine_from_spacing(spacing).tolist(), spacing=tuple(spacing)
            )
        if georef.affine is not None:
            check_affine(self.name, np.asarray(georef.affine))
        self.georef = georef
        self.attrs = attrs
        self._handle = arr

    def _open(self) -> Any:
        try:
            node: Any = zarr.open(self.store_path, mode="r")
            if self.array_name is not None:
                node = node[self.array_name]
            elif isinstance(node, zarr.Group):
                arrays = list(node.array_keys())
                if len(arrays) != 1:
                    raise InputError(
                        f"zarr group {self.store_path} holds arrays {arrays}; name one as "
                        f"'{self.store_path}:<array_name>'."
                    )
                node = node[arrays[0]]
            return node
        except (InputError, ReadError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise ReadError(
                one_line(f"cannot open zarr {self.path}: {exc}. Check the path and the array name.")
            ) from exc

    def _close_handle(self, handle: Any) -> None:
        return None

    def _read_inside(self, window: Window) -> np.ndarray:
        if self.handle.ndim == 4:
            data = self.handle[(slice(None), *window.slices)]
        else:
            data = self.handle[window.slices][None]
        return np.ascontiguousarray(data, dtype=self.dtype)


# -- writing -----------------------------------------------------------------------------------------


def nifti_header(shape: Sequence[int], dtype: np.dtype | str, affine: np.ndarray) -> nib.Nifti1Header:
    """Build a NIfTI-1 single-file header for an exposed ``(D, H, W)`` array of ``dtype`` with ``affine``."""
    d, h, w = (int(n) for n in shape)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((w, h, d))
    hdr.set_data_dtype(np.dtype(dtype).newbyteorder("<"))
    hdr.set_qform(np.asarray(affine, dtype=float), code=1)
    hdr.set_sform(np.asarray(affine, dtype=float), code=1)
    hdr.set_xyzt_units("mm")
    hdr["vox_offset"] = 352
    return hdr


def write_nifti_slabs(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    dtype: np.dtype | str,
    affine: np.ndarray,
    slabs: Iterable[np.ndarray],
) -> None:
    """Write a NIfTI file from ``D``-slabs of an exposed ``(D, H, W)`` array, never holding the volume.

    Args:
        path: ``.nii`` or ``.nii.gz`` output.
        shape: Exposed shape ``(D, H, W)``.
        dtype: Voxel dtype (written little-endian).
        affine: 4x4 NIfTI affine for ``(i, j, k)``.
        slabs: Arrays ``(d_i, H, W)`` in order whose ``d_i`` sum to ``D``.

    """
    path = str(path)
    hdr = nifti_header(shape, dtype, affine)
    disk = np.dtype(dtype).newbyteorder("<")
    opener: Any = gzip.open if path.endswith(".gz") else open
    written = 0
    with opener(path, "wb") as f:
        fh: IO[bytes] = f
        fh.write(hdr.binaryblock)
        fh.write(b"\x00" * 4)  # no extensions
        for slab in slabs:
            if tuple(slab.shape[1:]) != tuple(shape[1:]):
                raise InputError(
                    f"slab of shape {slab.shape} does not match volume {tuple(shape)} writing {path}."
                )
            fh.write(np.ascontiguousarray(slab, dtype=disk).tobytes())
            written += slab.shape[0]
    if written != shape[0]:
        raise InputError(f"wrote {written} slices to {path} but the volume has D={shape[0]}.")

