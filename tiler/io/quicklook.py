"""The PNG quicklook: the labels in their class colours over the input, with a legend.

A 2D map is drawn whole, sampled (from stored overviews when there are); a volume as its three orthogonal middle
slices. The PNG is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiler.geometry import Window
from tiler.io.atomic import BeforeMove, atomic_path
from tiler.io.base import Reader
from tiler.io.export_common import _check_writable
from tiler.io.objects import AnyPath, PathArg, as_path
from tiler.io.store import OutputStore


def _normalise(image: np.ndarray) -> np.ndarray:
    """(C, h, w) any dtype -> (h, w, 3) uint8 with a 2-98 percentile stretch per channel."""
    img = image[:3].astype(np.float64)
    if img.shape[0] < 3:
        img = np.repeat(img[:1], 3, axis=0)
    out = np.zeros(img.shape, dtype=np.uint8)
    for c in range(3):
        band = img[c][np.isfinite(img[c])]
        if band.size == 0:
            continue
        lo, hi = np.percentile(band, (2, 98))
        out[c] = np.clip((np.nan_to_num(img[c], nan=lo) - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(
            np.uint8
        )
    return np.moveaxis(out, 0, -1)


QUICKLOOK_PANEL = 384
"""Longest side, in display pixels, of the largest of a volume quicklook's three slices."""
LEGEND_ROWS = 40


def write_quicklook(
    store: OutputStore,
    png_path: PathArg,
    *,
    reader: Reader | None = None,
    max_size: int = 1024,
    alpha: float = 0.5,
    before_move: BeforeMove | None = None,
    overviews: str | os.PathLike[str] | None = None,
) -> AnyPath:
    """Write a PNG of the labels (class colours, nodata transparent), over the input if given, with a legend.

    2D: the whole map, sampled every ``ceil(max(H, W) / max_size)`` rows and columns (read band by band), at
    the top left, over the input sampled the same way (:meth:`~tiler.io.base.Reader.read_sampled`: from a
    COG's overviews or a slide's coarser pyramid level when there is one, never decoding its full resolution);
    the legend (a colour swatch and name per class) to its right. 3D: the three orthogonal
    middle slices (planes z, y and x through the volume's centre) side by side, each titled, drawn with the
    voxel spacing's aspect and scaled so the largest is :data:`QUICKLOOK_PANEL` pixels long; then the legend.
    ``before_move(tmp, final)`` is called with the complete PNG just before it is moved in.
    """
    from PIL import Image

    png_path = as_path(png_path)
    _check_writable(png_path)
    if len(store.shape) == 3:
        picture = _volume_quicklook(store, reader, alpha=alpha, size=min(max_size, QUICKLOOK_PANEL))
    else:
        plane = _plane_quicklook(store, reader, max_size=max_size, alpha=alpha, overviews=overviews)
        picture = Image.fromarray(plane, mode="RGBA")
    picture = _with_legend(picture, store.class_names, store.class_colors)
    with atomic_path(png_path, what="write the quicklook", before_move=before_move) as tmp:
        picture.save(tmp, format="PNG")
    return png_path


def _palette(store: OutputStore) -> np.ndarray:
    palette = np.zeros((max(store.nodata_label, store.num_classes - 1) + 1, 4), dtype=np.uint8)
    for k, c in enumerate(store.class_colors):
        palette[k] = (*c, 255)
    return palette


def _overlay(labels: np.ndarray, palette: np.ndarray, image: np.ndarray | None, alpha: float) -> np.ndarray:
    """(h, w) labels -> (h, w, 4) uint8 colours, blended over (C, h, w) ``image`` when given (then opaque)."""
    rgba = palette[np.clip(labels, 0, len(palette) - 1)]
    if image is None:
        return rgba
    base = _normalise(image)
    a = (rgba[..., 3:4] / 255.0) * alpha
    blended = (base * (1 - a) + rgba[..., :3] * a).astype(np.uint8)
    return np.concatenate([blended, np.full((*labels.shape, 1), 255, np.uint8)], axis=-1)


def _plane_quicklook(
    store: OutputStore, reader: Reader | None, *, max_size: int, alpha: float,
    overviews: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The whole 2D map sampled to at most ``max_size`` pixels a side: (h, w, 4).

    With ``overviews`` (stored mode levels) the labels come from the coarsest level no coarser than the
    sampling step (each sampled pixel's level cell), never from the full-resolution map.
    """
    h, w = store.shape
    step = max(1, math.ceil(max(h, w) / max_size))
    level = 0
    if overviews is not None:
        from tiler.io.overviews import level_shapes, read_level

        shapes = level_shapes(store.shape)
        level = min(len(shapes), step.bit_length() - 1)  # the coarsest level with 2**level <= step
    if level:  # the level cell holding each sampled pixel: row r*step of the map is row r*step // 2**level there
        labels = read_level(overviews, level, shapes[level - 1],  # type: ignore[arg-type]
                            rows=np.arange(0, h, step) >> level, cols=np.arange(0, w, step) >> level)
    else:
        band = step * max(1, 512 // step)
        labels = np.concatenate(
            [store.read((slice(r0, min(r0 + band, h), step), slice(0, w, step))) for r0 in range(0, h, band)], axis=0
        )
    image = reader.read_sampled(step) if reader is not None else None  # overviews / a pyramid level if any
    return _overlay(labels, _palette(store), image, alpha)


def _volume_quicklook(store: OutputStore, reader: Reader | None, *, alpha: float, size: int) -> Any:
    """Three titled orthogonal middle slices side by side, scaled to ``size`` pixels with the voxel aspect."""
    from PIL import Image, ImageDraw

    d, h, w = store.shape
    spacing = store.georef.spacing if store.georef.spacing and len(store.georef.spacing) == 3 else (1.0, 1.0, 1.0)
    mid = (d // 2, h // 2, w // 2)
    scale = size / max(n * s for n, s in zip(store.shape, spacing, strict=True))  # display pixels per mm
    palette = _palette(store)
    font = _font()
    panels = []
    for axis, name in enumerate(("z", "y", "x")):
        rest = [i for i in range(3) if i != axis]
        step = max(1, math.ceil(max(store.shape[i] for i in rest) / (2 * size)))
        sel = [slice(0, n, step) for n in store.shape]
        sel[axis] = slice(mid[axis], mid[axis] + 1)
        labels = np.squeeze(store.read(tuple(sel)), axis=axis)
        image = None
        if reader is not None:
            start = [0, 0, 0]
            stop = list(store.shape)
            start[axis], stop[axis] = mid[axis], mid[axis] + 1
            data = reader.read(Window(tuple(start), tuple(stop)))
            image = np.squeeze(data, axis=axis + 1)[(slice(None), slice(None, None, step), slice(None, None, step))]
        rgba = _overlay(labels, palette, image, alpha)
        target = tuple(max(1, round(store.shape[i] * spacing[i] * scale)) for i in rest)
        panel = Image.fromarray(rgba, mode="RGBA").resize((target[1], target[0]), Image.Resampling.NEAREST)
        panels.append((f"{name} = {mid[axis]} of {store.shape[axis]}", panel))
    gap, title = 8, _text_height(font) + 6
    width = sum(p.width for _, p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGBA", (width, title + max(p.height for _, p in panels)), (255, 255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for text, panel in panels:
        draw.text((x, 2), text, fill=(0, 0, 0, 255), font=font)
        canvas.paste(panel, (x, title))
        x += panel.width + gap
    return canvas


def _font(size: int = 14) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_height(font: Any) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - top) + 2


def _with_legend(picture: Any, names: Sequence[str], colors: Sequence[Sequence[int]]) -> Any:
    """``picture`` at the top left, the legend (swatch and name per class, on white) to its right."""
    from PIL import Image, ImageDraw

    font = _font()
    row = max(18, _text_height(font) + 4)
    entries = [(str(n), tuple(int(v) for v in c[:3])) for n, c in zip(names, colors, strict=True)]
    shown = entries[:LEGEND_ROWS]
    lines = [n for n, _ in shown] + ([f"... {len(entries) - len(shown)} more"] if len(entries) > len(shown) else [])
    pad, swatch = 8, row - 6
    text_w = max(int(font.getlength(t)) for t in lines) if lines else 0
    legend = Image.new("RGBA", (2 * pad + swatch + 6 + text_w, 2 * pad + row * len(lines)), (255, 255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, text in enumerate(lines):
        y = pad + i * row
        if i < len(shown):
            draw.rectangle((pad, y + 3, pad + swatch, y + 3 + swatch), fill=(*shown[i][1], 255), outline=(0, 0, 0, 255))
        draw.text((pad + swatch + 6, y + 2), text, fill=(0, 0, 0, 255), font=font)
    canvas = Image.new("RGBA", (picture.width + legend.width, max(picture.height, legend.height)), (0, 0, 0, 0))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (picture.width, 0))
    return canvas
