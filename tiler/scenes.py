"""Synthetic scenes: deterministic satellite, CT and slide images with truth, readable window by window.

Every pixel is a pure function of the seed, the scene's global shape and the pixel's global
coordinates, so a scene of any size is produced one window at a time and a pixel reads the same
through every window. Smooth fields come from hashed value noise on coarse lattices; per-pixel
noise comes from one seeded generator per fixed cell (``np.random.default_rng([seed, salt, *cell])``);
shapes (blobs, organs, lesions) are drawn from a seeded list of primitives placed over the whole
extent and evaluated per window.

Arrays are indexed (row, col) in 2D and (z, y, x) in 3D, channel first.

This module makes scenes and re-exports their classes: the noise lives in :mod:`tiler.scene_noise`, the
interface in :mod:`tiler.scene_base`, and each kind in :mod:`tiler.scene_satellite`, :mod:`tiler.scene_ct`
and :mod:`tiler.scene_slide`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tiler.errors import ConfigError
from tiler.scene_base import Scene, SceneSpec
from tiler.scene_ct import CTScene
from tiler.scene_satellite import SatelliteScene
from tiler.scene_slide import SlideScene

__all__ = [
    "Scene",
    "SceneSpec",
    "SatelliteScene",
    "CTScene",
    "SlideScene",
    "satellite_scene",
    "ct_scene",
    "slide_scene",
    "make_scene",
]


_KINDS: dict[str, type[Scene]] = {"satellite": SatelliteScene, "ct": CTScene, "slide": SlideScene}


def make_scene(spec: SceneSpec) -> Scene:
    """Build the scene a :class:`SceneSpec` describes."""
    try:
        cls = _KINDS[spec.kind]
    except KeyError:
        raise ConfigError(f"scene kind={spec.kind!r} is unknown; choose one of {sorted(_KINDS)}.") from None
    return cls(spec)  # type: ignore[call-arg]


def satellite_scene(shape: Sequence[int] = (1024, 1024), *, seed: int = 0, bands: int = 4) -> SatelliteScene:
    """Make a satellite land-cover scene of spatial shape ``(H, W)`` with ``bands`` uint16 bands."""
    return SatelliteScene(SceneSpec("satellite", tuple(shape), seed, {"bands": bands}))


def ct_scene(
    shape: Sequence[int] = (64, 192, 192), *, seed: int = 0, spacing: Sequence[float] = (2.5, 0.8, 0.8)
) -> CTScene:
    """Make a CT-like volume of shape ``(D, H, W)`` (int16 HU) with voxel ``spacing`` in mm (z, y, x)."""
    return CTScene(SceneSpec("ct", tuple(shape), seed, {"spacing": tuple(spacing)}))


def slide_scene(shape: Sequence[int] = (2048, 2048), *, seed: int = 0, mpp: float = 0.5) -> SlideScene:
    """Make a whole-slide-like RGB image of shape ``(H, W)`` at ``mpp`` microns per pixel."""
    return SlideScene(SceneSpec("slide", tuple(shape), seed, {"mpp": mpp}))
