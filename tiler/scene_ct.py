"""The synthetic CT scene (:mod:`tiler.scenes`): an abdominal-CT-like volume in Hounsfield units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiler.errors import ConfigError
from tiler.geometry import Window
from tiler.scene_base import Scene, SceneSpec
from tiler.scene_noise import _cell_normal, _fractal, _value_noise

__all__ = ["CTScene"]


@dataclass(frozen=True)
class _Ellipsoid:
    center: tuple[float, float, float]  # normalised (z, y, x)
    radii: tuple[float, float, float]  # normalised

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, wobble: np.ndarray | float = 0.0) -> np.ndarray:
        d = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), self.center, self.radii, strict=True))
        return np.asarray(d < (1.0 + wobble))


class CTScene(Scene):
    """An abdominal-CT-like volume in Hounsfield units (int16) with anisotropic voxel spacing.

    A body ellipse of soft tissue and fat in air (-1000 HU) holds a liver, two kidneys, bone
    (spine ring and ribs) and hypodense liver lesions. Classes: background, liver, kidney, bone, lesion.

    Attributes:
        spacing: Voxel size in mm, (z, y, x).

    """

    class_names = ("background", "liver", "kidney", "bone", "lesion")
    class_colors = ((0, 0, 0), (180, 80, 60), (220, 200, 40), (240, 240, 240), (60, 200, 90))
    image_nodata = None
    dtype = np.dtype(np.int16)
    channels = 1
    noise_sigma = 22.0

    def __init__(self, spec: SceneSpec) -> None:
        super().__init__(spec, 3)
        spacing = tuple(float(s) for s in spec.params.get("spacing", (2.5, 0.8, 0.8)))
        if len(spacing) != 3 or any(s <= 0 for s in spacing):
            raise ConfigError(f"CT spacing={spacing} must be three positive sizes in mm (z, y, x).")
        self.spacing: tuple[float, float, float] = spacing  # type: ignore[assignment]
        rng = np.random.default_rng([self.seed, 21])
        j = lambda s: float(rng.uniform(-s, s))  # noqa: E731
        self.body = (0.5 + j(0.02), 0.5 + j(0.02), 0.34 + j(0.03), 0.44 + j(0.03))  # cy, cx, ry, rx
        self.liver = _Ellipsoid(
            (0.55 + j(0.05), 0.44 + j(0.03), 0.34 + j(0.03)), (0.32, 0.16 + j(0.02), 0.15 + j(0.02))
        )
        kz, ky = 0.45 + j(0.05), 0.62 + j(0.02)
        self.kidneys = (
            _Ellipsoid((kz, ky, 0.36 + j(0.02)), (0.2, 0.07, 0.05)),
            _Ellipsoid((kz + j(0.04), ky + j(0.01), 0.64 + j(0.02)), (0.2, 0.07, 0.05)),
        )
        self.spine = (0.70 + j(0.02), 0.5 + j(0.01))
        lesions = []
        for _ in range(int(rng.integers(2, 4))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            c = tuple(m + 0.5 * r * k for m, r, k in zip(self.liver.center, self.liver.radii, u, strict=True))
            r = float(rng.uniform(0.035, 0.06))
            lesions.append(_Ellipsoid(c, (r * 2.0, r, r)))  # type: ignore[arg-type]
        self.lesions = tuple(lesions)

    def _render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        zc, yc, xc = self._coords(window)
        d, h, w = self.shape
        z = ((zc + 0.5) / d)[:, None, None]
        y = ((yc + 0.5) / h)[None, :, None]
        x = ((xc + 0.5) / w)[None, None, :]
        seed = self.seed
        tex = _fractal(seed, 1, [zc, yc, xc], 24.0, octaves=2)
        wob = 0.25 * (_value_noise(seed, 2, [zc, yc, xc], 10.0) - 0.5)
        cy, cx, ry, rx = self.body
        taper = 1.0 - 0.15 * (z - 0.5) ** 2
        rho = np.sqrt(((y - cy) / (ry * taper)) ** 2 + ((x - cx) / (rx * taper)) ** 2)
        body = rho < 1.0 + 0.5 * wob * 0.1
        hu = np.full(window.shape, -1000.0, dtype=np.float32)
        hu[np.broadcast_to(body, window.shape)] = 0.0
        fat = body & (rho > 0.9)
        muscle = body & ~fat
        hu = np.where(fat, -100.0 + 30 * tex, hu)
        hu = np.where(muscle, 35.0 + 30 * (tex - 0.5), hu)
        labels = np.zeros(window.shape, dtype=np.uint8)
        # Ribs: a broken bony shell inside the fat layer, over the middle of the volume.
        ang = np.arctan2(y - cy, x - cx)
        ribs = body & (rho > 0.84) & (rho < 0.89) & (np.sin(ang * 9.0) > -0.2) & (z > 0.2) & (z < 0.8)
        sy, sx = self.spine
        sr = np.sqrt(((y - sy) / 0.06) ** 2 + ((x - sx) / 0.06) ** 2 + 0 * z)
        spine = (sr < 1.0) & (sr > 0.55)
        marrow = sr <= 0.55
        liver = self.liver.inside(z, y, x, wob) & body
        kidney = (self.kidneys[0].inside(z, y, x, wob) | self.kidneys[1].inside(z, y, x, wob)) & body
        lesion = np.zeros(window.shape, dtype=bool)
        for les in self.lesions:
            lesion |= les.inside(z, y, x, 0.5 * wob)
        lesion &= liver
        hu = np.where(liver, 62.0 + 25.0 * (tex - 0.5), hu)
        hu = np.where(kidney, 150.0 + 20.0 * (tex - 0.5), hu)
        hu = np.where(lesion, 5.0 + 10.0 * (tex - 0.5), hu)
        hu = np.where(marrow, 200.0, hu)
        hu = np.where(spine | ribs, 650.0 + 150.0 * (tex - 0.5), hu)
        labels[liver] = 1
        labels[kidney] = 2
        labels[lesion] = 4
        labels[spine | ribs | marrow] = 3
        hu += self.noise_sigma * _cell_normal(seed, 3, window, 1, 64)[0]
        out = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)[None]
        return out, labels
