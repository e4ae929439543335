"""Blend weights: how much each pixel of a tile counts where tiles overlap.

All weights are float32 arrays of the tile's shape ``(*tile)``: numpy arrays, and the same values as
torch tensors cached per device (:meth:`Blender.weights_on`) so a device accumulator never uploads them twice.

- ``gaussian``: ``exp(-x² / 2σ²)`` per axis with ``x`` centred on ``(T - 1) / 2`` and ``σ = T · sigma_scale``,
  multiplied over axes and floored at ``max(min, 1e-3)`` so no weight is 0. This is exactly
  MONAI's ``compute_importance_map`` so results agree with ``sliding_window_inference``.
- ``nnunet``: nnU-Net's gaussian (``compute_gaussian``): ``exp(-x² / 2σ²)`` per axis with ``x`` centred on
  ``T // 2`` (one pixel past the middle for even ``T``), ``σ = T · sigma_scale`` (nnU-Net: 1/8) and 0 beyond
  ``int(4σ + 0.5)`` pixels, multiplied over axes, scaled to a maximum of 10, rounded to float16 as nnU-Net
  keeps it, and every 0 (float16 underflow far from the centre) raised to the smallest non-zero weight.
- ``hann``: ``sin²(π (i + ½) / T)`` per axis (never 0 inside the tile), multiplied, same floor.
- ``constant``: 1 everywhere: a plain average of overlapping tiles.
- ``crop``: 1 on the part of the image the tile owns (:meth:`TileGrid.interior`), 0 elsewhere, so
  every pixel comes from exactly one tile; tiles at the image border own up to the edge.

Example: the weights of the two 1 x 4 tiles of a 1 x 6 image overlapping by 2, per mode:

>>> grid = TileGrid((1, 6), tile=(1, 4), overlap=(0, 2))
>>> for mode in BlendMode:
...     print(mode.value, [[round(float(w), 3) for w in Blender(mode).weights(grid, p)[0]] for p in grid.positions()])
gaussian [[0.011, 0.607, 0.607, 0.011], [0.011, 0.607, 0.607, 0.011]]
hann [[0.146, 0.854, 0.854, 0.146], [0.146, 0.854, 0.854, 0.146]]
constant [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
crop [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]
nnunet [[0.003, 1.354, 10.0, 1.354], [0.003, 1.354, 10.0, 1.354]]
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from tiler.errors import GeometryError
from tiler.geometry import Shape, TileGrid

if TYPE_CHECKING:  # torch is imported where tensors are made: planning on the driver never needs it
    import torch

WEIGHT_FLOOR = 1e-3


class BlendMode(str, enum.Enum):
    """The blend weight families."""

    GAUSSIAN = "gaussian"
    HANN = "hann"
    CONSTANT = "constant"
    CROP = "crop"
    NNUNET = "nnunet"


def _floored(weights: np.ndarray) -> np.ndarray:
    floor = max(float(weights.min()), WEIGHT_FLOOR)
    return np.maximum(weights, floor).astype(np.float32)


def _outer(profiles: Sequence[np.ndarray]) -> np.ndarray:
    out = profiles[0]
    for p in profiles[1:]:
        out = np.multiply.outer(out, p)
    return out


NNUNET_SCALE = 10.0
"""nnU-Net's ``value_scaling_factor``: the weights' maximum, kept away from float16's underflow."""


def _nnunet_profile(t: int, sigma_scale: float) -> np.ndarray:
    """The normalised 4σ-truncated kernel scipy's ``gaussian_filter`` spreads a delta at ``t // 2`` into."""
    sigma = t * sigma_scale
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (sigma * sigma) * x**2)
    kernel = kernel / kernel.sum()
    offset = np.arange(t) - t // 2
    inside = np.abs(offset) <= radius
    profile = np.zeros(t, dtype=np.float64)
    profile[inside] = kernel[offset[inside] + radius]
    return profile


def _nnunet_gaussian(tile: Shape, sigma_scale: float) -> np.ndarray:
    weights = _outer([_nnunet_profile(t, sigma_scale) for t in tile])
    # float64 -> float32 -> float16, as torch's .to(torch.float16) rounds (straight to float16 differs in a few ulps)
    weights = (weights / (weights.max() / NNUNET_SCALE)).astype(np.float32).astype(np.float16)
    zero = weights == 0
    if zero.any():
        weights[zero] = weights[~zero].min()
    return weights.astype(np.float32)


@lru_cache(maxsize=64)
def window_weights(mode: BlendMode, tile: Shape, sigma_scale: float = 0.125) -> np.ndarray:
    """Weights of a whole tile for the position-independent modes (not ``crop``).

    Args:
        mode: ``gaussian``, ``nnunet``, ``hann`` or ``constant``.
        tile: Tile shape ``(*T)``.
        sigma_scale: σ as a fraction of the tile size (gaussian only).

    Returns:
        float32 array of shape ``tile``, read-only (it is cached and shared).
    """
    mode = BlendMode(mode)
    if mode is BlendMode.CONSTANT:
        weights = np.ones(tile, dtype=np.float32)
    elif mode is BlendMode.GAUSSIAN:
        if sigma_scale <= 0:
            raise GeometryError(f"sigma_scale={sigma_scale} must be > 0; 0.125 (σ = tile/8) is the usual choice.")
        profiles = []
        for t in tile:
            x = np.arange(t, dtype=np.float32) - np.float32((t - 1) / 2.0)
            sigma = np.float32(t * sigma_scale)
            profiles.append(np.exp(x**2 / (np.float32(-2.0) * sigma**2)).astype(np.float32))
        weights = _floored(_outer(profiles))
    elif mode is BlendMode.NNUNET:
        if sigma_scale <= 0:
            raise GeometryError(f"sigma_scale={sigma_scale} must be > 0; nnU-Net uses 0.125 (σ = tile/8).")
        weights = _nnunet_gaussian(tile, sigma_scale)
    elif mode is BlendMode.HANN:
        profiles = [np.sin(np.pi * (np.arange(t) + 0.5) / t) ** 2 for t in tile]
        weights = _floored(_outer(profiles))
    else:
        raise GeometryError("crop weights depend on the tile's position; use Blender.weights(grid, position).")
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=4096)
def _box(tile: Shape, start: Shape, stop: Shape) -> np.ndarray:
    weights = np.zeros(tile, dtype=np.float32)
    weights[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = 1.0
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=64)
def _window_tensor(mode: BlendMode, tile: Shape, sigma_scale: float, device: torch.device) -> torch.Tensor:
    import torch

    return torch.from_numpy(window_weights(mode, tile, sigma_scale).copy()).to(device)


@lru_cache(maxsize=4096)
def _box_tensor(tile: Shape, start: Shape, stop: Shape, device: torch.device) -> torch.Tensor:
    import torch

    return torch.from_numpy(_box(tile, start, stop).copy()).to(device)


@dataclass(frozen=True)
class Blender:
    """Chooses the weight array for each tile of a grid.

    Attributes:
        mode: Blend family.
        sigma_scale: σ / tile for ``gaussian``.
    """

    mode: BlendMode = BlendMode.GAUSSIAN
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", BlendMode(self.mode))
        except ValueError:
            valid = ", ".join(m.value for m in BlendMode)
            raise GeometryError(f"blend={self.mode!r} is not a blend mode; choose one of: {valid}.") from None
        if self.sigma_scale <= 0:
            raise GeometryError(f"sigma_scale={self.sigma_scale} must be > 0; 0.125 (σ = tile/8) is usual.")

    def weights(self, grid: TileGrid, position: Sequence[int]) -> np.ndarray:
        """Weights for the tile at ``position`` of ``grid``, float32 of shape ``grid.tile``."""
        if self.mode is not BlendMode.CROP:
            return window_weights(self.mode, grid.tile, self.sigma_scale)
        tile = grid.window(position)
        inner = grid.interior(position).relative_to(tile)
        return _box(grid.tile, inner.start, inner.stop)

    def weights_on(self, grid: TileGrid, position: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """:meth:`weights` as a float32 tensor on ``device``, cached: the same tensor object for equal weights.

        Do not modify it in place (it is shared).
        """
        import torch

        device = torch.device(device)
        if self.mode is not BlendMode.CROP:
            return _window_tensor(self.mode, grid.tile, self.sigma_scale, device)
        tile = grid.window(position)
        inner = grid.interior(position).relative_to(tile)
        return _box_tensor(grid.tile, inner.start, inner.stop, device)
