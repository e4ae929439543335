"""Deterministic noise for the synthetic scenes (:mod:`tiler.scenes`): hashed value noise and per-cell normals.

Every value is a pure function of the seed, a salt and global coordinates, so a window reads the same
wherever it is cut from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from tiler.geometry import Window

_MASK64 = (1 << 64) - 1
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_AXIS_MUL = [np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)]


def _mix(h: np.ndarray) -> np.ndarray:
    """Apply the splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * _C1
    h = (h ^ (h >> np.uint64(27))) * _C2
    return h ^ (h >> np.uint64(31))


def _hash_uniform(seed: int, salt: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) values hashed from integer coordinate arrays (broadcast together)."""
    base = np.uint64(((seed * 0x632BE59BD9B4E019) ^ (salt * 0x85157AF5) ^ 0x5851F42D4C957F2D) & _MASK64)
    with np.errstate(over="ignore"):
        h = np.asarray(_mix(np.asarray(base, dtype=np.uint64)))
        for axis, c in enumerate(coords):
            cu = np.asarray(c, dtype=np.int64).view(np.uint64)
            h = _mix(h ^ (cu * _AXIS_MUL[axis % len(_AXIS_MUL)] + np.uint64(axis + 1)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _lookup(seed: int, salt: int, *indices: np.ndarray) -> np.ndarray:
    """Hashed uniform value per integer index tuple, computed once per distinct index box then gathered.

    Args:
        seed: Scene seed.
        salt: Distinguishes independent fields.
        *indices: Integer arrays, broadcastable together (one per axis).

    Returns:
        Uniform [0, 1) values of the broadcast shape.

    """
    shape = np.broadcast_shapes(*(np.shape(i) for i in indices))
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=np.float64)
    lows = [int(np.min(i)) for i in indices]
    axes = [np.arange(lo, int(np.max(i)) + 1) for lo, i in zip(lows, indices, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    table = _hash_uniform(seed, salt, *grids)
    return table[tuple(np.asarray(i) - lo for i, lo in zip(indices, lows, strict=True))]


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _value_noise(seed: int, salt: int, coords: Sequence[np.ndarray], scale: float) -> np.ndarray:
    """Smooth value noise in [0, 1] on the grid spanned by per-axis coordinate vectors.

    Lattice points every ``scale`` pixels carry hashed values; pixels interpolate them with a
    smoothstep, one axis at a time (separable), so the cost is linear in the window size.

    Args:
        seed: Scene seed.
        salt: Distinguishes independent fields.
        coords: One 1-D float array of global coordinates per axis.
        scale: Lattice spacing in pixels.

    Returns:
        Array of shape ``tuple(len(c) for c in coords)``, float32.

    """
    idx, frac, lows = [], [], []
    for c in coords:
        t = np.asarray(c, dtype=np.float64) / scale
        i0 = np.floor(t).astype(np.int64)
        idx.append(i0)
        frac.append(_smooth(t - i0).astype(np.float32))
        lows.append(int(i0.min()))
    axes = [np.arange(lo, int(i.max()) + 2) for lo, i in zip(lows, idx, strict=True)]
    grid = _hash_uniform(seed, salt, *np.meshgrid(*axes, indexing="ij", sparse=True)).astype(np.float32)
    ndim = len(coords)
    for k in range(ndim):
        shape = [1] * ndim
        shape[k] = -1
        f = frac[k].reshape(shape)
        rel = idx[k] - lows[k]
        grid = np.take(grid, rel, axis=k) * (1.0 - f) + np.take(grid, rel + 1, axis=k) * f
    return grid


def _fractal(seed: int, salt: int, coords: Sequence[np.ndarray], scale: float, octaves: int = 3) -> np.ndarray:
    """Sum of value-noise octaves (halving scale, halving weight), normalised to [0, 1]."""
    total = np.zeros(tuple(len(c) for c in coords), dtype=np.float32)
    weight, norm = 1.0, 0.0
    for o in range(octaves):
        total += weight * _value_noise(seed, salt * 16 + o, coords, scale / (2**o))
        norm += weight
        weight *= 0.5
    return total / norm


def _cell_normal(seed: int, salt: int, window: Window, channels: int, cell: int) -> np.ndarray:
    """Draw standard normal noise per pixel, per fixed cell so it does not depend on the window.

    Returns:
        float32 array ``(channels, *window.shape)``.

    """
    out = np.empty((channels, *window.shape), dtype=np.float32)
    ranges = [range(a // cell, (b - 1) // cell + 1) for a, b in zip(window.start, window.stop, strict=True)]
    for cidx in itertools.product(*ranges):
        cwin = Window.from_shape((cell,) * window.ndim, tuple(i * cell for i in cidx))
        part = cwin.intersection(window)
        if part is None:  # pragma: no cover - ranges only hold intersecting cells
            continue
        rng = np.random.default_rng([seed, salt, *cidx])
        block = rng.standard_normal((channels, *cwin.shape), dtype=np.float32)
        src = (slice(None), *part.relative_to(cwin).slices)
        out[(slice(None), *part.relative_to(window).slices)] = block[src]
    return out
