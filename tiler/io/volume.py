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
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any

import nibabel as nib
import numpy as np
import zarr

from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io.base import Georef, Reader, check_dtype, check_exists, inside_mask, one_line
from tiler.io.masks import foreground_mask
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


class _VolumeMask:
    """Optional foreground threshold: a voxel is valid when any channel exceeds ``threshold``."""

    threshold: float | None

    def _format_mask(self, window: Window, pixels: np.ndarray | None) -> np.ndarray | None:
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
        threshold: Foreground threshold for :meth:`valid_mask` (e.g. ``-500`` HU); None = all valid.

    """

    format = "nifti"

    def __init__(self, path: str, *, channels_from_4d: bool = False, threshold: float | None = None) -> None:
        self.path = str(path)
        self.threshold = threshold
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
        threshold: Foreground threshold for :meth:`valid_mask`; None = all valid.

    """

    format = "zarr"

    def __init__(self, path: str, *, threshold: float | None = None) -> None:
        self.path = str(path)
        self.threshold = threshold
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

