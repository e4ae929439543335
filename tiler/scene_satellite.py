"""The synthetic satellite scene (:mod:`tiler.scenes`): multispectral land cover with a nodata collar."""

from __future__ import annotations

import math

import numpy as np

from tiler.errors import ConfigError
from tiler.geometry import Window
from tiler.scene_base import Scene, SceneSpec
from tiler.scene_noise import _cell_normal, _fractal, _lookup, _value_noise

__all__ = ["SatelliteScene"]


# Reflectance-like means (x 10^-4) per class for (blue, green, red, nir); extra bands repeat swir-like values.
_SAT_WATER, _SAT_FOREST, _SAT_FIELDS, _SAT_URBAN, _SAT_ROAD, _SAT_BARE = range(6)
_SAT_SPECTRA = {
    "water": (700, 800, 550, 300, 150, 100),
    "forest": (300, 550, 350, 2500, 1300, 650),
    "crop": (500, 1000, 650, 3900, 2100, 1050),
    "soil": (1100, 1300, 1600, 2100, 2800, 2400),
    "roof": (1700, 1650, 1750, 2000, 2300, 2200),
    "street": (1150, 1150, 1200, 1350, 1500, 1450),
    "road": (1250, 1250, 1300, 1450, 1650, 1550),
    "bare": (1500, 1650, 1900, 2400, 3200, 2900),
}


class SatelliteScene(Scene):
    """A multispectral land-cover scene (uint16 reflectance) with a rotated footprint and nodata collar.

    Classes: water, forest, fields (striped crop/soil), urban (building blocks), road (thin lines),
    bare soil. Per-pixel noise is strong enough that fields and urban blocks need spatial context.
    """

    class_names = ("water", "forest", "fields", "urban", "road", "bare")
    class_colors = ((30, 90, 200), (20, 110, 40), (200, 200, 60), (200, 60, 60), (90, 90, 90), (170, 120, 70))
    image_nodata = 0.0
    dtype = np.dtype(np.uint16)

    parcel = 96  # parcel size in pixels
    noise_sigma = 200.0

    def __init__(self, spec: SceneSpec) -> None:
        super().__init__(spec, 2)
        bands = int(spec.params.get("bands", 4))
        if not 4 <= bands <= 6:
            raise ConfigError(f"satellite bands={bands} is not supported; choose 4, 5 or 6 bands.")
        self.channels = bands
        rng = np.random.default_rng([self.seed, 11])
        self.angle = float(rng.uniform(0.10, 0.18)) * (1 if rng.random() < 0.5 else -1)
        self.extent = (0.46 + 0.02 * float(rng.random()), 0.47 + 0.02 * float(rng.random()))

    def _valid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Return the rotated footprint with a ragged edge: True where the sensor saw the ground."""
        h, w = self.shape
        v = (ys[:, None] + 0.5 - h / 2) / max(h, w)
        u = (xs[None, :] + 0.5 - w / 2) / max(h, w)
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        ru, rv = ca * u + sa * v, -sa * u + ca * v
        rag_rows = _value_noise(self.seed, 90, [ys], 7.0)[:, None] * 0.008
        rag_cols = _value_noise(self.seed, 91, [xs], 7.0)[None, :] * 0.008
        return (np.abs(ru) < self.extent[1] * w / max(h, w) - rag_rows) & (
            np.abs(rv) < self.extent[0] * h / max(h, w) - rag_cols
        )

    def _render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = self._coords(window)
        seed, p = self.seed, self.parcel
        # Warped parcel grid: irregular fields and blocks.
        wy = 18.0 * (_value_noise(seed, 1, [ys, xs], 150.0) - 0.5)
        wx = 18.0 * (_value_noise(seed, 2, [ys, xs], 150.0) - 0.5)
        gy = ys.astype(np.float32)[:, None] + wy
        gx = xs.astype(np.float32)[None, :] + wx
        py = np.floor(gy / p).astype(np.int32)
        px = np.floor(gx / p).astype(np.int32)
        kind = _lookup(seed, 3, py, px)
        labels = np.full(window.shape, _SAT_FOREST, dtype=np.uint8)
        labels[kind >= 0.35] = _SAT_FIELDS
        labels[kind >= 0.70] = _SAT_URBAN
        labels[kind >= 0.90] = _SAT_BARE
        lake = _fractal(seed, 4, [ys, xs], 320.0, octaves=3)
        river = np.abs(_fractal(seed, 16, [ys, xs], 700.0, octaves=2) - 0.5) < 0.012
        water = (lake < 0.30) | river
        labels[water] = _SAT_WATER
        # Roads along every other parcel border (rows and columns independently), never on water.
        road_rows = _lookup(seed, 5, py) < 0.5
        road_cols = _lookup(seed, 6, px) < 0.5
        dy = gy - py * p
        dx = gx - px * p
        road = ((dy < 4.0) & road_rows) | ((dx < 4.0) & road_cols)
        road &= ~water
        labels[road] = _SAT_ROAD

        bands = self.channels
        spectra = {k: np.asarray(v[:bands], dtype=np.float32)[:, None] for k, v in _SAT_SPECTRA.items()}
        image = np.zeros((bands, *window.shape), dtype=np.float32)
        valid = self._valid(ys, xs)
        labels[~valid] = self.nodata_label
        # Each class is drawn on its own pixels only (1-D gathers), which keeps a window cheap.
        m = labels == _SAT_FOREST
        canopy = 0.75 + 0.5 * _value_noise(seed, 7, [ys, xs], 5.0)[m]
        image[:, m] = spectra["forest"] * canopy
        # Fields: stripes of crop and soil at a per-parcel angle and period.
        m = labels == _SAT_FIELDS
        fy, fx, qy, qx = gy[m], gx[m], py[m], px[m]
        theta = np.pi * _lookup(seed, 8, qy, qx)
        period = 7.0 + 7.0 * _lookup(seed, 9, qy, qx)
        ripe = _lookup(seed, 10, qy, qx).astype(np.float32)
        phase = (fx * np.cos(theta) + fy * np.sin(theta)) / period
        stripe = (0.5 + 0.5 * np.sin(2 * np.pi * phase)).astype(np.float32)
        crop = spectra["crop"] * (0.8 + 0.4 * ripe) + (spectra["soil"] - spectra["crop"]) * 0.25 * ripe
        image[:, m] = crop * stripe + spectra["soil"] * (1 - stripe)
        # Urban: buildings on a block grid with streets between them.
        m = labels == _SAT_URBAN
        uy, ux = gy[m], gx[m]
        by = np.floor(uy / 16.0).astype(np.int32)
        bx = np.floor(ux / 16.0).astype(np.int32)
        building = ((uy - by * 16.0) >= 5.0) & ((ux - bx * 16.0) >= 5.0)
        tone = (0.7 + 0.6 * _lookup(seed, 12, by, bx)).astype(np.float32)
        image[:, m] = np.where(building, spectra["roof"] * tone, spectra["street"])
        m = labels == _SAT_BARE
        image[:, m] = spectra["bare"] * (0.85 + 0.3 * _value_noise(seed, 13, [ys, xs], 12.0)[m])
        m = labels == _SAT_WATER
        image[:, m] = spectra["water"] * (1.0 - 0.4 * ((0.30 - lake[m]).clip(0, 0.3) / 0.3))
        image[:, labels == _SAT_ROAD] = spectra["road"]
        # Illumination / haze and sensor noise.
        image *= _value_noise(seed, 14, [ys, xs], 400.0)[None] * 0.2 + 0.9
        image += self.noise_sigma * _cell_normal(seed, 15, window, bands, 256)
        out = np.clip(np.rint(image, out=image), 1, 65535, out=image).astype(np.uint16)
        out[:, ~valid] = 0
        return out, labels
