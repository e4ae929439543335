"""Block-wise resampling: one source grid to one target grid, computed window by window as nnU-Net v2 does it whole.

nnU-Net v2 (``nnunetv2.preprocessing.resampling.default_resampling.resample_data_or_seg_to_shape``)
resamples a whole ``(C, D, H, W)`` array in float64 and returns the input's dtype:

* without a separate axis, skimage ``resize(order, mode='edge', anti_aliasing=False)`` per channel,
  which is ``scipy.ndimage.zoom(order, mode='nearest', grid_mode=True)`` followed by a clip of the
  result to the channel's ``[min, max]`` (skimage's ``clip=True``);
* with a separate (low-resolution) axis, that resize on every slice across the axis (each slice
  clipped to *its own* range), then ``map_coordinates(order=order_z, mode='nearest')`` along the axis.

Both place target voxel ``o`` of an axis of ``n_src`` → ``n_tgt`` voxels at source coordinate
``c = (o + 0.5) · (n_src / n_tgt) - 0.5``. A tensor-product B-spline is separable, so :class:`Resampling`
does the same work axis by axis (equal up to float64 rounding), and only on the source voxels a target
window needs: the spline taps around the coordinates of the window, plus for orders ≥ 2 a halo of
:data:`SPLINE_HALO` voxels for the spline prefilter, which is a recursive filter over the whole axis
whose influence decays like ``|pole|^k``. At a true image edge the source is padded exactly as scipy pads it
(:data:`SCIPY_PREPAD` edge copies); at a block edge inside the image the halo is real data, and the
remaining truncation error is below 1e-9 of the data range (measured ≤ 6e-11 for orders 2-5).

The clip is the one global step: it needs the value range of the whole source (per channel, and per
slice across the separate axis), which :meth:`Resampling.value_range` computes per source window and
:func:`merge_value_ranges` combines, in one streaming pass before resampling.

Arrays are ``(C, *spatial)``; spatial axes are ``(z, y, x)`` for volumes and ``(row, col)`` for images.

Example: 6 voxels upsampled to 12 with linear interpolation, computed as two blocks of the target:

>>> rs = Resampling((6,), (12,), order=1, separate_axis=None)
>>> src = np.arange(6, dtype=np.float32)[None]
>>> left, right = Window((0,), (5,)), Window((5,), (12,))
>>> rs.source_window(left), rs.source_window(right)
(Window(start=(0,), stop=(3,)), Window(start=(2,), stop=(6,)))
>>> blocks = [rs.apply(src[(slice(None), *rs.source_window(t).slices)], rs.source_window(t), t) for t in (left, right)]
>>> np.concatenate(blocks, axis=1)[0].tolist()
[0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.25, 4.75, 5.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage

from tiler.errors import ConfigError, GeometryError, InputError
from tiler.geometry import Shape, Window

ANISO_THRESHOLD: Final = 3.0
"""nnU-Net's ``ANISO_THRESHOLD``: a spacing whose max / min exceeds it has a separate low-resolution axis."""

SPLINE_HALO: dict[int, int] = {2: 12, 3: 16, 4: 20, 5: 24}
"""Extra source voxels read on each side of a block, per spline order ≥ 2, for the spline prefilter.

The prefilter's response to a voxel decays like ``|z|^k`` at distance ``k``, with the largest pole
``|z|`` = 0.172 (order 2), 0.268 (3), 0.361 (4), 0.431 (5); these halos make ``|z|^halo`` ≈ 7e-10, 7e-10,
1.4e-9 and 1.7e-9, so cutting the axis at a block edge changes the result by about that fraction of
the data range, far below float32 rounding. Orders 0 and 1 have no prefilter and need no halo.
"""

SCIPY_PREPAD: Final = 12
"""Edge copies scipy (≥ 1.6) adds at each end of an axis before the prefilter in ``mode='nearest'``
(``scipy.ndimage._interpolation._prepad_for_spline_filter``); reproduced at true image edges."""

MAX_ORDER: Final = 5
"""Highest spline order scipy (and therefore nnU-Net) supports."""


@dataclass(frozen=True)
class Resampling:
    """One resampling from a source grid to a target grid, as nnU-Net v2 does it.

    Attributes:
        source_shape: Spatial shape of the source, ``(D, H, W)`` or ``(H, W)``.
        target_shape: Spatial shape of the target, same number of axes.
        order: Spline order (0-5) on every axis, or on every axis but ``separate_axis`` when one is set.
        separate_axis: The low-resolution axis resampled on its own with ``order_z`` after the others
            (nnU-Net's ``do_separate_z``), or None to resample all axes at once with ``order``.
        order_z: Spline order (0-5) along ``separate_axis``; unused without one.
    """

    source_shape: Shape
    target_shape: Shape
    order: int
    separate_axis: int | None
    order_z: int = 0

    def __post_init__(self) -> None:
        source, target = tuple(int(n) for n in self.source_shape), tuple(int(n) for n in self.target_shape)
        object.__setattr__(self, "source_shape", source)
        object.__setattr__(self, "target_shape", target)
        if len(source) != len(target) or not source or min(source + target) < 1:
            raise GeometryError(
                f"Resampling source_shape={source} and target_shape={target} must have the same, non-zero "
                f"number of axes and at least one voxel per axis."
            )
        for name, value in (("order", self.order), ("order_z", self.order_z)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= MAX_ORDER:
                raise ConfigError(f"Resampling {name}={value!r} must be a spline order 0..{MAX_ORDER}.")
            object.__setattr__(self, name, int(value))
        if self.separate_axis is not None and not 0 <= self.separate_axis < len(source):
            raise ConfigError(
                f"Resampling separate_axis={self.separate_axis!r} is not an axis of a {len(source)}-D shape; "
                f"give 0..{len(source) - 1} or None."
            )
        if self.separate_axis is not None:
            object.__setattr__(self, "separate_axis", int(self.separate_axis))

    @classmethod
    def nnunet(
        cls,
        source_shape: Sequence[int],
        current_spacing: Sequence[float],
        new_spacing: Sequence[float],
        *,
        order: int = 3,
        order_z: int = 0,
        force_separate_z: bool | None = None,
        anisotropy_threshold: float = ANISO_THRESHOLD,
        target_shape: Sequence[int] | None = None,
    ) -> Resampling:
        """The resampling nnU-Net v2 does for these spacings (``resample_data_or_seg_to_shape``).

        The argument order matters as it does in nnU-Net: preprocessing resamples with
        ``(image spacing, plans spacing)``, the export of logits with ``(plans spacing, image spacing)``
        and ``order=1``. The separate axis is decided by :func:`separate_axis` (nnU-Net's
        ``determine_do_sep_z_and_axis``); nnU-Net never resamples a two-axis array (its 2D images are
        ``(1, H, W)`` volumes), so a 2-D ``source_shape`` never gets a separate axis.

        Args:
            source_shape: Spatial shape of the source, ``(D, H, W)`` or ``(H, W)``.
            current_spacing: Voxel size of the source, one per axis.
            new_spacing: Voxel size of the target, one per axis.
            order: Spline order of the (in-plane) resize.
            order_z: Spline order along the separate axis.
            force_separate_z: True / False to force the decision, None to decide from the spacings.
            anisotropy_threshold: Max / min spacing ratio above which an axis is resampled separately.
            target_shape: The target shape; None computes it with :func:`nnunet_target_shape`.
        """
        source_shape = tuple(int(n) for n in source_shape)
        if len(current_spacing) != len(source_shape) or len(new_spacing) != len(source_shape):
            raise GeometryError(
                f"Spacings {tuple(current_spacing)} and {tuple(new_spacing)} must give one value per axis of "
                f"source_shape={source_shape}."
            )
        if target_shape is None:
            target_shape = nnunet_target_shape(source_shape, current_spacing, new_spacing)
        axis = separate_axis(
            current_spacing, new_spacing, force_separate_z=force_separate_z, anisotropy_threshold=anisotropy_threshold
        )
        if len(source_shape) < 3:
            axis = None
        return cls(source_shape, tuple(target_shape), order=order, separate_axis=axis, order_z=order_z)

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.source_shape)

    @property
    def identity(self) -> bool:
        """Whether the shapes are equal: nnU-Net then returns the data unchanged (no float64 round trip)."""
        return self.source_shape == self.target_shape

    @property
    def needs_value_range(self) -> bool:
        """Whether :meth:`apply` needs the source's value range: splines of order ≥ 2 overshoot and are clipped.

        True when ``order`` ≥ 2 and an axis resized with ``order`` (not the separate one) changes size.
        """
        return self.order >= 2 and any(self.source_shape[a] != self.target_shape[a] for a in self._resize_axes())

    @property
    def value_range_slices(self) -> int:
        """``K``, the number of value ranges per channel: one per slice across the separate axis, else 1."""
        return 1 if self.separate_axis is None else self.source_shape[self.separate_axis]

    def axis_order(self, axis: int) -> int:
        """The spline order used along spatial ``axis``."""
        return self.order_z if axis == self.separate_axis else self.order

    def footprint(self, target: Window) -> Window:
        """The source voxels the spline taps of ``target`` reach, without the prefilter halo.

        For orders 0 and 1 these are all the voxels that influence ``target``; for higher orders every
        source voxel of the axis does, faintly, and :meth:`source_window` adds the halo.
        """
        return self._source_span(target, halo=False)

    def source_window(self, target: Window) -> Window:
        """The source window (halo included, clipped to the source) that :meth:`apply` needs for ``target``."""
        return self._source_span(target, halo=True)

    def value_range(self, pixels: np.ndarray, source: Window | None = None) -> np.ndarray:
        """The value range of ``pixels`` that the clip needs, as a ``(2, C, K)`` float64 array.

        ``[0]`` holds minima and ``[1]`` maxima, per channel and per source slice across the separate
        axis (``K`` = :attr:`value_range_slices`); slices outside ``source`` hold +inf / -inf, so ranges of
        windows covering the source combine with :func:`merge_value_ranges` into the whole source's. NaN
        is ignored, as skimage ignores it.

        Args:
            pixels: ``(C, *source.shape)`` source values.
            source: Where ``pixels`` lie in the source; None for the whole source.
        """
        source = Window.from_shape(self.source_shape) if source is None else source
        self._check_pixels(pixels, source, "value_range")
        channels = pixels.shape[0]
        out = np.empty((2, channels, self.value_range_slices), dtype=np.float64)
        out[0], out[1] = np.inf, -np.inf
        values = pixels.astype(np.float64, copy=False)
        if self.separate_axis is None:
            axes = tuple(range(1, values.ndim))
            out[0, :, 0], out[1, :, 0] = np.fmin.reduce(values, axis=axes), np.fmax.reduce(values, axis=axes)
        else:
            sep = self.separate_axis
            axes = tuple(a + 1 for a in range(self.ndim) if a != sep)
            span = slice(source.start[sep], source.stop[sep])
            out[0, :, span], out[1, :, span] = np.fmin.reduce(values, axis=axes), np.fmax.reduce(values, axis=axes)
        return out

    def apply(
        self, pixels: np.ndarray, source: Window, target: Window, *, value_range: np.ndarray | None = None
    ) -> np.ndarray:
        """Resample one target window from the source pixels around it.

        Args:
            pixels: ``(C, *source.shape)`` source values read over ``source``, which must contain
                :meth:`source_window` of ``target`` (more is fine and gives the same result).
            source: Where ``pixels`` lie in the source grid.
            target: The target window to compute.
            value_range: ``(2, C, K)`` range of the *whole* source (:meth:`value_range` merged over
                windows); required when :attr:`needs_value_range`, applied as skimage's clip otherwise too.

        Returns:
            ``(C, *target.shape)`` in the dtype of ``pixels``, computed in float64 and cast like nnU-Net
            (float → float rounds; float → int truncates toward zero). An identity resampling returns
            the pixels of ``target`` unchanged. Order 0 is bit-exact; otherwise the float64 values differ
            from nnU-Net's in the last bits (axis by axis instead of all axes at once), which float32
            output hides up to one ulp, and which integer output of order ≥ 1 can turn into a difference
            of 1 where a value lies at an integer (a few voxels in 10^4; nnU-Net itself resamples float32).
        """
        self._check_pixels(pixels, source, "apply")
        if not Window.from_shape(self.target_shape).contains(target) or target.ndim != self.ndim:
            raise GeometryError(f"Target window {target} lies outside the target grid {self.target_shape}.")
        needed = self.source_window(target)
        if not source.contains(needed):
            raise GeometryError(
                f"Source window {source} does not contain {needed}, the source voxels (halo included) that "
                f"target window {target} needs; read Resampling.source_window(target)."
            )
        if self.identity:
            return pixels[(slice(None), *target.relative_to(source).slices)]
        if value_range is None and self.needs_value_range:
            raise InputError(
                f"Resampling of order {self.order} clips to the source's value range, as skimage's resize does; "
                f"pass value_range=Resampling.value_range(...) of the whole source (merge_value_ranges over "
                f"windows)."
            )
        if value_range is not None and value_range.shape != (2, pixels.shape[0], self.value_range_slices):
            raise InputError(
                f"value_range has shape {value_range.shape}; expected (2, C, K) = "
                f"{(2, pixels.shape[0], self.value_range_slices)} from Resampling.value_range."
            )
        values = pixels[(slice(None), *needed.relative_to(source).slices)].astype(np.float64)
        start = list(needed.start)
        for axis in self._resize_axes():
            values = self._resample_axis(values, axis, start[axis], target, self.order)
            start[axis] = target.start[axis]
        if value_range is not None:
            values = self._clip(values, value_range, needed)
        if self.separate_axis is not None:
            values = self._resample_axis(values, self.separate_axis, start[self.separate_axis], target, self.order_z)
        return values.astype(pixels.dtype, copy=False)

    def _check_pixels(self, pixels: np.ndarray, source: Window, what: str) -> None:
        """Raise unless ``pixels`` is ``(C, *source.shape)`` and ``source`` lies in the source grid."""
        if source.ndim != self.ndim or not Window.from_shape(self.source_shape).contains(source):
            raise GeometryError(f"Source window {source} lies outside the source grid {self.source_shape}.")
        if pixels.ndim != self.ndim + 1 or pixels.shape[1:] != source.shape:
            raise GeometryError(
                f"Resampling.{what} got pixels of shape {pixels.shape}; expected (C, *{source.shape}) for "
                f"source window {source} (add the channel axis for single-channel data)."
            )

    def _resize_axes(self) -> list[int]:
        """The axes resized with ``order`` (all but the separate one), those that shrink most first."""
        axes = [a for a in range(self.ndim) if a != self.separate_axis]
        return sorted(axes, key=lambda a: self.target_shape[a] / self.source_shape[a])

    def _source_span(self, target: Window, *, halo: bool) -> Window:
        """The source window of ``target``'s taps, with the prefilter halo when ``halo``."""
        if target.ndim != self.ndim or not Window.from_shape(self.target_shape).contains(target):
            raise GeometryError(f"Target window {target} lies outside the target grid {self.target_shape}.")
        start, stop = [], []
        for axis, (t0, t1) in enumerate(zip(target.start, target.stop, strict=True)):
            n_src, n_tgt, order = self.source_shape[axis], self.target_shape[axis], self.axis_order(axis)
            if n_src == n_tgt:
                start.append(t0)
                stop.append(t1)
                continue
            first, _ = _taps(_coordinates(np.array([t0, t1 - 1]), n_src, n_tgt), order)
            lo, hi = int(first[0]), int(first[1]) + order + 1
            if halo and order >= 2:
                lo, hi = lo - SPLINE_HALO[order], hi + SPLINE_HALO[order]
            start.append(min(max(lo, 0), n_src - 1))
            stop.append(max(min(hi, n_src), start[-1] + 1))
        return Window(tuple(start), tuple(stop))

    def _resample_axis(self, values: np.ndarray, axis: int, lo: int, target: Window, order: int) -> np.ndarray:
        """Resample spatial ``axis`` of ``values`` ``(C, ...)``, which covers source ``[lo, lo + m)``, to ``target``."""
        n_src, n_tgt = self.source_shape[axis], self.target_shape[axis]
        t0, t1 = target.start[axis], target.stop[axis]
        if n_src == n_tgt:
            return values.take(np.arange(t0 - lo, t1 - lo), axis=axis + 1)
        return _interpolate(values, axis + 1, lo, n_src, _coordinates(np.arange(t0, t1), n_src, n_tgt), order)

    def _clip(self, values: np.ndarray, value_range: np.ndarray, needed: Window) -> np.ndarray:
        """Clip ``values`` ``(C, ...)`` like skimage: per channel, or per source slice across the separate axis."""
        shape = [values.shape[0]] + [1] * self.ndim
        low, high = value_range[0], value_range[1]
        if self.separate_axis is None:
            low, high = low[:, 0], high[:, 0]
        else:
            sep = self.separate_axis
            span = slice(needed.start[sep], needed.stop[sep])
            low, high = low[:, span], high[:, span]
            shape[sep + 1] = values.shape[sep + 1]
        return np.clip(values, low.reshape(shape), high.reshape(shape), out=values)


def merge_value_ranges(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The value range of two windows together: elementwise min of minima, max of maxima, each ``(2, C, K)``.

    >>> a = np.array([[[0.0, np.inf]], [[1.0, -np.inf]]]); b = np.array([[[-1.0, 2.0]], [[0.5, 3.0]]])
    >>> merge_value_ranges(a, b).tolist()
    [[[-1.0, 2.0]], [[1.0, 3.0]]]
    """
    if first.shape != second.shape:
        raise InputError(f"Cannot merge value ranges of shapes {first.shape} and {second.shape}; give equal shapes.")
    return np.stack([np.fmin(first[0], second[0]), np.fmax(first[1], second[1])])


def nnunet_target_shape(
    source_shape: Sequence[int], current_spacing: Sequence[float], new_spacing: Sequence[float]
) -> Shape:
    """nnU-Net's ``compute_new_shape``: ``round(current / new · n)`` per axis (Python's round, half to even).

    >>> nnunet_target_shape((20, 40, 36), (2.5, 0.8, 0.8), (1.0, 1.0, 1.0))
    (50, 32, 29)
    """
    if not len(source_shape) == len(current_spacing) == len(new_spacing):
        raise GeometryError(
            f"source_shape={tuple(source_shape)}, current_spacing={tuple(current_spacing)} and "
            f"new_spacing={tuple(new_spacing)} must have one value per axis."
        )
    shape = tuple(
        int(round(float(c) / float(s) * int(n)))
        for c, s, n in zip(current_spacing, new_spacing, source_shape, strict=True)
    )
    if min(shape) < 1:
        raise GeometryError(
            f"Resampling {tuple(source_shape)} from spacing {tuple(current_spacing)} to {tuple(new_spacing)} "
            f"gives the empty shape {shape}; check the spacings (same units, same axis order)."
        )
    return shape


def separate_axis(
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    force_separate_z: bool | None = None,
    anisotropy_threshold: float = ANISO_THRESHOLD,
) -> int | None:
    """nnU-Net's ``determine_do_sep_z_and_axis``: the axis resampled separately, or None.

    A spacing is anisotropic when max / min > ``anisotropy_threshold``; its low-resolution axes are
    those equal to its max. The current spacing is asked first, then the new one (so the argument
    order matters); ``force_separate_z=True`` takes the current spacing's low-resolution axis whatever
    the ratio, False never separates. Two or more low-resolution axes mean no separate axis.

    >>> separate_axis((2.5, 0.8, 0.8), (1.0, 1.0, 1.0)), separate_axis((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    (0, None)
    """
    current = np.asarray(current_spacing, dtype=np.float64)
    new = np.asarray(new_spacing, dtype=np.float64)
    if force_separate_z is not None:
        low_res = _low_res_axes(current) if force_separate_z else None
    elif current.max() / current.min() > anisotropy_threshold:
        low_res = _low_res_axes(current)
    elif new.max() / new.min() > anisotropy_threshold:
        low_res = _low_res_axes(new)
    else:
        low_res = None
    return None if low_res is None or len(low_res) != 1 else low_res[0]


def _low_res_axes(spacing: np.ndarray) -> list[int]:
    """The axes whose spacing equals the largest (nnU-Net's ``get_lowres_axis``)."""
    return [int(a) for a in np.where(spacing.max() / spacing == 1)[0]]


def _coordinates(outputs: np.ndarray, n_src: int, n_tgt: int) -> np.ndarray:
    """Source coordinates of target voxels ``outputs``: ``(o + 0.5) · (n_src / n_tgt) - 0.5``, as scipy computes it."""
    return (outputs.astype(np.float64) + 0.5) * (n_src / n_tgt) - 0.5


def _taps(coords: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """First tap and ``(n, order + 1)`` B-spline weights of each coordinate, ported from scipy's ``ni_splines.c``.

    Odd orders start at ``floor(c) - order // 2``, even ones at ``floor(c + 0.5) - order // 2`` (so order 0
    rounds halves up, which is what nnU-Net's order-0 resampling does).
    """
    base = np.floor(coords) if order & 1 else np.floor(coords + 0.5)
    first = base.astype(np.intp) - order // 2
    x = coords - base
    w: list[np.ndarray] = []
    if order == 1:
        w = [1.0 - x]
    elif order == 2:
        y = 0.5 - x
        w = [0.5 * y * y, 0.75 - x * x]
    elif order == 3:
        y, z = x, 1.0 - x
        w = [z * z * z / 6.0, (y * y * (y - 2.0) * 3.0 + 4.0) / 6.0, (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0]
    elif order == 4:
        t = x * x
        y, z, u = 1.0 + x, 1.0 - x, 0.5 - x
        w = [
            (u * u) * (u * u) / 24.0,
            y * (y * (y * (5.0 - y) / 6.0 - 1.25) + 5.0 / 24.0) + 55.0 / 96.0,
            t * (t * 0.25 - 0.625) + 115.0 / 192.0,
            z * (z * (z * (5.0 - z) / 6.0 - 1.25) + 5.0 / 24.0) + 55.0 / 96.0,
        ]
    elif order == 5:
        y, z = x, 1.0 - x
        y1, z1 = y + 1.0, z + 1.0
        w = [
            z * (z * z) * (z * z) / 120.0,
            y1 * (y1 * (y1 * (y1 * (y1 / 24.0 - 0.375) + 1.25) - 1.75) + 0.625) + 0.425,
            (y * y) * ((y * y) * (0.25 - y / 12.0) - 0.5) + 0.55,
            (z * z) * ((z * z) * (0.25 - z / 12.0) - 0.5) + 0.55,
            z1 * (z1 * (z1 * (z1 * (z1 / 24.0 - 0.375) + 1.25) - 1.75) + 0.625) + 0.425,
        ]
    last = np.ones_like(coords)
    for weight in w:
        last = last - weight
    return first, np.stack([*w, last], axis=1)


def _interpolate(values: np.ndarray, axis: int, lo: int, n_src: int, coords: np.ndarray, order: int) -> np.ndarray:
    """Evaluate the order-``order`` spline of ``values`` along array ``axis`` at source ``coords``.

    ``values`` covers source voxels ``[lo, lo + m)`` of an axis of ``n_src``. Orders ≥ 2 prefilter it
    first, padded with :data:`SCIPY_PREPAD` edge copies at a true image edge like scipy's ``mode='nearest'``;
    orders 0 and 1 clamp taps to the image like scipy's ``mode='nearest'``.
    """
    first, weights = _taps(coords, order)
    index = first[:, None] + np.arange(order + 1)
    if order >= 2:
        m = values.shape[axis]
        pad = (SCIPY_PREPAD if lo == 0 else 0, SCIPY_PREPAD if lo + m == n_src else 0)
        if pad != (0, 0):
            widths = [(0, 0)] * values.ndim
            widths[axis] = pad
            values = np.pad(values, widths, mode="edge")
        values = ndimage.spline_filter1d(values, order, axis=axis, mode="nearest", output=np.float64)
        index = index - (lo - pad[0])
    else:
        index = np.clip(index, 0, n_src - 1) - lo
    if index.min() < 0 or index.max() >= values.shape[axis]:
        raise GeometryError(
            f"Spline taps {index.min()}..{index.max()} reach outside the {values.shape[axis]} source voxels read "
            f"along axis {axis - 1}; read Resampling.source_window(target)."
        )
    shape = [1] * values.ndim
    shape[axis] = len(coords)
    out = values.take(index[:, 0], axis=axis)
    if order == 0:
        return out
    out *= weights[:, 0].reshape(shape)
    for j in range(1, order + 1):
        out += values.take(index[:, j], axis=axis) * weights[:, j].reshape(shape)
    return out
