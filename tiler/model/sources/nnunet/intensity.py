"""nnU-Net's intensity normalisation per channel, in tiler's terms, and the one pass over an input it may need.

Each channel ``c`` follows the configuration's ``normalization_schemes[c]``; every supported scheme is
``clip(x, low, high)`` then ``(x - mean) / std`` in float32 (:class:`~tiler.model.normalize.Normalization`
kind ``clip_meanstd``):

==========================  ===========================================  ==============================
scheme                      clip ``[low, high]``                         ``mean``, ``std``
==========================  ===========================================  ==============================
``CTNormalization``         ``percentile_00_5``, ``percentile_99_5``     ``mean``, ``max(std, 1e-8)`` of
                            of the plans' foreground intensities         the plans' foreground intensities
``ZScoreNormalization``     none                                         the image's own mean and
                                                                         ``max(std, 1e-8)``, measured by
                                                                         :func:`measure` before inference
``NoNormalization``         none                                         0, 1
``RGBTo01Normalization``    none                                         0, 255
==========================  ===========================================  ==============================

``ZScoreNormalization`` with ``use_mask_for_norm`` (skull-stripped MRI) normalises only inside the
hole-filled non-zero mask of the whole image and leaves the rest 0; a tile cannot tell a hole from the
outside, so it is refused. Other schemes (``RescaleTo01Normalization``, custom classes) are refused too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiler.errors import ModelError
from tiler.geometry import Window
from tiler.model.normalize import Normalization
from tiler.model.sources.nnunet.folder import ResultsFolder

__all__ = ["SCHEMES", "ImageFacts", "measure", "needs_image_stats", "normalization", "slabs"]

SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RGBTo01Normalization")
_EPS = 1e-8
_SLAB_BYTES = 64 << 20


def _schemes(results: ResultsFolder, channels: int) -> list[str]:
    schemes = [str(s) for s in results.configuration["normalization_schemes"]]
    if len(schemes) != channels:
        raise ModelError(
            f"{results.source}: normalization_schemes has {len(schemes)} entries for {channels} input channels."
        )
    masks = results.configuration.get("use_mask_for_norm") or [False] * channels
    for c, scheme in enumerate(schemes):
        if scheme not in SCHEMES:
            raise ModelError(
                f"{results.source}: normalization_schemes[{c}] is {scheme!r}; tiler applies {list(SCHEMES)} "
                "only (nnU-Net would import a class of that name). Refused."
            )
        if scheme == "ZScoreNormalization" and c < len(masks) and masks[c]:
            raise ModelError(
                f"{results.source}: channel {c} uses ZScoreNormalization with use_mask_for_norm=true: nnU-Net "
                "normalises only inside the hole-filled non-zero mask of the whole cropped image and leaves the rest "
                "0, which tiler cannot reproduce tile by tile. Refused."
            )
    return schemes


def needs_image_stats(results: ResultsFolder) -> bool:
    """Whether a channel is normalised with the image's own statistics (``ZScoreNormalization``)."""
    return "ZScoreNormalization" in [str(s) for s in results.configuration["normalization_schemes"]]


def _number(props: Mapping[str, Any], key: str, where: str) -> float:
    value = props.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelError(f"{where} has {key}={value!r}; CTNormalization needs it as a number.")
    return float(value)


def normalization(
    results: ResultsFolder, *, channels: int, image_stats: Sequence[Sequence[float]] | None = None
) -> Normalization:
    """The configuration's normalisation of ``channels`` input channels (see the module table).

    Args:
        results: The results folder.
        channels: Number of input channels.
        image_stats: ``[mean, std]`` of the image per channel (from :func:`measure`); needed by
            ``ZScoreNormalization`` channels only.

    Raises:
        ModelError: An unsupported scheme, missing foreground intensities, or missing image statistics.

    """
    schemes = _schemes(results, channels)
    plans = results.plans
    props = plans.get("foreground_intensity_properties_per_channel")
    if props is None:  # nnU-Net's older name
        props = plans.get("foreground_intensity_properties_by_modality")
    low: list[float] = []
    high: list[float] = []
    mean: list[float] = []
    std: list[float] = []
    for c, scheme in enumerate(schemes):
        lo, hi, m, s = -math.inf, math.inf, 0.0, 1.0
        if scheme == "CTNormalization":
            where = f"{results.plans_path} foreground_intensity_properties_per_channel[{str(c)!r}]"
            entry = props.get(str(c)) if isinstance(props, Mapping) else None
            if not isinstance(entry, Mapping):
                raise ModelError(f"{where} is missing; CTNormalization of channel {c} needs it.")
            lo, hi = _number(entry, "percentile_00_5", where), _number(entry, "percentile_99_5", where)
            m, s = _number(entry, "mean", where), max(_number(entry, "std", where), _EPS)
        elif scheme == "ZScoreNormalization":
            if image_stats is None or len(image_stats) != channels:
                raise ModelError(
                    f"{results.source}: channel {c} uses ZScoreNormalization, which needs the image's own mean and "
                    "std; tiler run measures them in a first pass. From Python, pass nnunet={'image_stats': "
                    "[[mean, std], ...]} (tiler.model.sources.nnunet.measure computes them)."
                )
            m, s = float(image_stats[c][0]), max(float(image_stats[c][1]), _EPS)
        elif scheme == "RGBTo01Normalization":
            s = 255.0
        low.append(lo)
        high.append(hi)
        mean.append(m)
        std.append(s)
    return Normalization("clip_meanstd", mean=tuple(mean), std=tuple(std), low=tuple(low), high=tuple(high))


@dataclass(frozen=True)
class ImageFacts:
    """What one pass over an input tells: its non-zero bounding box and per-channel mean and std.

    Attributes:
        shape: Spatial shape of the input.
        nonzero: The smallest window holding every voxel that is non-zero in some channel (nnU-Net crops to it),
            or None when every voxel is 0.
        mean: Mean per channel, over the whole image.
        std: Population standard deviation per channel, over the whole image.

    """

    shape: tuple[int, ...]
    nonzero: Window | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def stats(self) -> list[list[float]]:
        """``[[mean, std], ...]`` per channel (the ``image_stats`` of a model reference)."""
        return [[m, s] for m, s in zip(self.mean, self.std, strict=True)]


def slabs(reader: Any, area: Window) -> Iterator[tuple[Window, np.ndarray]]:
    """``area`` of ``reader`` read in slabs along its first axis (~64 MB each): ``(window, (C, *window.shape))``."""
    row_bytes = int(reader.channels) * math.prod(area.shape[1:]) * np.dtype(reader.dtype).itemsize
    depth = max(1, _SLAB_BYTES // max(row_bytes, 1))
    for start in range(area.start[0], area.stop[0], depth):
        window = Window((start, *area.start[1:]), (min(start + depth, area.stop[0]), *area.stop[1:]))
        yield window, reader.read(window)


def measure(reader: Any, within: Window | None = None) -> ImageFacts:
    """One pass over ``reader`` in slabs along its first axis (~64 MB each): non-zero box and channel statistics.

    Means and variances are merged slab by slab in float64 (Chan et al.'s pairwise update), so the result
    does not depend on the slab size beyond float rounding.

    Args:
        reader: A tiler reader (``shape``, ``channels``, ``dtype``, ``read(window) -> (C, *S)``).
        within: Measure only this window (nnU-Net's statistics of a cropped image); None: the whole image.
            The non-zero box is in image coordinates either way.

    """
    shape = tuple(int(n) for n in reader.shape)
    area = within if within is not None else Window.from_shape(shape)
    channels = int(reader.channels)
    count = 0
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    hits = [np.zeros(n, dtype=bool) for n in area.shape]
    for window, data in slabs(reader, area):
        flat = data.reshape(channels, -1).astype(np.float64)
        n = flat.shape[1]
        slab_mean = flat.mean(axis=1)
        slab_m2 = ((flat - slab_mean[:, None]) ** 2).sum(axis=1)
        total = count + n
        delta = slab_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + slab_m2 + delta**2 * (count * n / total)
        count = total
        nonzero = (data != 0).any(axis=0)
        for axis in range(len(shape)):
            others = tuple(a for a in range(len(shape)) if a != axis)
            line = nonzero.any(axis=others)
            if axis == 0:
                hits[0][window.start[0] - area.start[0] : window.stop[0] - area.start[0]] |= line
            else:
                hits[axis] |= line
    box = None
    if all(h.any() for h in hits):
        first = tuple(a + int(np.argmax(h)) for a, h in zip(area.start, hits, strict=True))
        last = tuple(a + int(len(h) - np.argmax(h[::-1])) for a, h in zip(area.start, hits, strict=True))
        box = Window(first, last)
    std = np.sqrt(np.maximum(m2 / max(count, 1), 0.0))
    return ImageFacts(shape, box, tuple(float(v) for v in mean), tuple(float(v) for v in std))
