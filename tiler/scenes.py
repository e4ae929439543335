"""Synthetic scenes: deterministic satellite, CT and slide images with truth, readable window by window.

Every pixel is a pure function of the seed, the scene's global shape and the pixel's global
coordinates, so a scene of any size is produced one window at a time and a pixel reads the same
through every window. Smooth fields come from hashed value noise on coarse lattices; per-pixel
noise comes from one seeded generator per fixed cell (``np.random.default_rng([seed, salt, *cell])``);
shapes (blobs, organs, lesions) are drawn from a seeded list of primitives placed over the whole
extent and evaluated per window.

Arrays are indexed (row, col) in 2D and (z, y, x) in 3D, channel first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiler.errors import ConfigError, GeometryError
from tiler.geometry import Window

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

# --------------------------------------------------------------------------------------------
# Deterministic noise primitives
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# The scene interface
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSpec:
    """What a synthetic scene is: its kind, global shape, seed and kind-specific parameters.

    Attributes:
        kind: ``"satellite"``, ``"ct"`` or ``"slide"``.
        shape: Spatial shape ``(H, W)`` or ``(D, H, W)``.
        seed: Seed of every random choice.
        params: Extra parameters (``bands`` for satellite, ``spacing`` for CT, ``mpp`` for slide).

    """

    kind: str
    shape: tuple[int, ...]
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


class Scene:
    """A synthetic image with ground truth, readable through any window of its spatial extent.

    Attributes:
        spec: The spec the scene was made from.
        shape: Spatial shape ``(H, W)`` or ``(D, H, W)``.
        channels: Number of image channels (bands).
        dtype: Image dtype.
        num_classes: Number of truth classes (labels ``0 .. num_classes - 1``).
        class_names: One name per class.
        class_colors: One RGB colour per class.
        nodata_label: Truth value of nodata pixels.
        image_nodata: Image value marking nodata pixels (in every band), or None when there are none.

    """

    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    nodata_label: int = 255
    image_nodata: float | None = None
    channels: int = 1
    dtype: np.dtype = np.dtype(np.uint8)

    def __init__(self, spec: SceneSpec, ndim: int) -> None:
        shape = tuple(int(s) for s in spec.shape)
        if len(shape) != ndim or any(s < 1 for s in shape):
            raise ConfigError(
                f"scene shape={shape} is not valid for a {spec.kind} scene: give {ndim} positive sizes "
                f"({'(H, W)' if ndim == 2 else '(D, H, W)'})."
            )
        self.spec = spec
        self.shape: tuple[int, ...] = shape
        self.seed = int(spec.seed)
        if self.seed < 0:
            raise ConfigError(f"scene seed={self.seed} must be >= 0.")

    @property
    def num_classes(self) -> int:
        """Number of truth classes."""
        return len(self.class_names)

    @property
    def window(self) -> Window:
        """The whole scene as a window."""
        return Window.from_shape(self.shape)

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generate the image and the truth inside ``window``.

        Args:
            window: Spatial window inside the scene (default: the whole scene).

        Returns:
            image ``(C, *window.shape)`` of :attr:`dtype`, labels ``window.shape`` uint8 (``nodata_label``
            where the image is nodata).

        """
        window = self.window if window is None else window
        if window.ndim != len(self.shape) or not self.window.contains(window):
            raise GeometryError(
                f"window {window} does not lie inside the scene of shape {self.shape}; read windows with "
                f"0 <= start < stop <= shape on each of the {len(self.shape)} axes."
            )
        image, labels = self._render(window)
        return image, labels

    def _render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _coords(self, window: Window) -> list[np.ndarray]:
        return [np.arange(a, b, dtype=np.float64) for a, b in zip(window.start, window.stop, strict=True)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, seed={self.seed}, channels={self.channels})"


# --------------------------------------------------------------------------------------------
# Satellite
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# CT
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Slide
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------

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
