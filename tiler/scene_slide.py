"""The synthetic slide scene (:mod:`tiler.scenes`): a whole-slide-like H&E image."""

from __future__ import annotations

import math

import numpy as np

from tiler.errors import ConfigError
from tiler.geometry import Window
from tiler.scene_base import Scene, SceneSpec
from tiler.scene_noise import _cell_normal, _lookup, _value_noise

__all__ = ["SlideScene"]


class SlideScene(Scene):
    """A whole-slide-like H&E image (uint8 RGB): white glass, pink tissue blobs, dark purple nuclei.

    Tissue covers at most 40% of the area. Classes: background, stroma (tissue), nuclei.

    Attributes:
        mpp: Microns per pixel at full resolution.

    """

    class_names = ("background", "stroma", "nuclei")
    class_colors = ((255, 255, 255), (230, 140, 190), (80, 40, 130))
    image_nodata = None
    dtype = np.dtype(np.uint8)
    channels = 3
    nucleus_cell = 20

    def __init__(self, spec: SceneSpec) -> None:
        super().__init__(spec, 2)
        self.mpp = float(spec.params.get("mpp", 0.5))
        if self.mpp <= 0:
            raise ConfigError(f"slide mpp={self.mpp} must be a positive number of microns per pixel.")
        rng = np.random.default_rng([self.seed, 31])
        h, w = self.shape
        count = int(rng.integers(2, 6))
        share = rng.dirichlet(np.ones(count)) * 0.24 * h * w  # nominal area per blob (24% in all)
        blobs = []
        for a in share:
            aspect = float(rng.uniform(0.6, 1.6))
            ra = math.sqrt(a / math.pi * aspect)
            rb = math.sqrt(a / math.pi / aspect)
            cy = float(rng.uniform(0.15, 0.85)) * h
            cx = float(rng.uniform(0.15, 0.85)) * w
            blobs.append((cy, cx, ra, rb, float(rng.uniform(0, math.pi))))
        self.blobs = tuple(blobs)

    def _tissue(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        scale = max(8.0, min(self.shape) / 12.0)
        wobble = 0.3 * (_value_noise(self.seed, 1, [ys, xs], scale) - 0.5)  # radius factor in [0.85, 1.15]
        tissue = np.zeros((len(ys), len(xs)), dtype=bool)
        for cy, cx, ra, rb, th in self.blobs:
            if ys[-1] < cy - 1.2 * max(ra, rb) or ys[0] > cy + 1.2 * max(ra, rb):
                continue
            if xs[-1] < cx - 1.2 * max(ra, rb) or xs[0] > cx + 1.2 * max(ra, rb):
                continue
            dy = ys[:, None] - cy
            dx = xs[None, :] - cx
            u = (dy * math.cos(th) + dx * math.sin(th)) / ra
            v = (-dy * math.sin(th) + dx * math.cos(th)) / rb
            tissue |= np.sqrt(u * u + v * v) < 1.0 + wobble
        return tissue

    def _render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = self._coords(window)
        seed, c = self.seed, self.nucleus_cell
        tissue = self._tissue(ys, xs)
        iy = (ys // c).astype(np.int64)[:, None]
        ix = (xs // c).astype(np.int64)[None, :]
        present = _lookup(seed, 2, iy, ix) < 0.45
        rad = 3.0 + 3.0 * _lookup(seed, 3, iy, ix)
        oy = iy * c + 6.0 + (c - 12.0) * _lookup(seed, 4, iy, ix)
        ox = ix * c + 6.0 + (c - 12.0) * _lookup(seed, 5, iy, ix)
        nuclei = present & tissue & (((ys[:, None] - oy) ** 2 + (xs[None, :] - ox) ** 2) < rad * rad)
        labels = tissue.astype(np.uint8)
        labels[nuclei] = 2
        tex = _value_noise(seed, 6, [ys, xs], 6.0)[None]
        glass = np.asarray((242, 240, 244), dtype=np.float32)[:, None, None]
        stroma = np.asarray((225, 145, 185), dtype=np.float32)[:, None, None] * (0.88 + 0.2 * tex)
        nucleus = np.asarray((95, 55, 140), dtype=np.float32)[:, None, None] * (0.85 + 0.3 * tex)
        image = np.where(tissue[None], stroma, glass)
        image = np.where(nuclei[None], nucleus, image)
        image += 9.0 * _cell_normal(seed, 7, window, 3, 256)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels
