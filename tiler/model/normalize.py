"""Input normalisation: fixed per-band statistics turning raw pixels into the network's float32 input.

Every statistic is a stored constant computed at training time, so a pixel's normalised value
never depends on the tile it is read through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiler.errors import ModelError

__all__ = ["KINDS", "Normalization"]

KINDS = ("none", "meanstd", "percentile", "window", "clip_meanstd")


def _floats(name: str, values: Sequence[float] | float | None, *, unbounded: bool = False) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats (±inf too with ``unbounded``: a clip bound that clips nothing).

    Raises:
        ModelError: naming the field, for NaN, strings or anything else that is not a number.
    """
    if values is None:
        return ()
    items = [values] if isinstance(values, int | float) else values
    ok = isinstance(items, Sequence) and not isinstance(items, str | bytes)
    out = tuple(float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)) if ok else ()
    if not ok or len(out) != len(items) or not all(math.isfinite(v) or (unbounded and math.isinf(v)) for v in out):
        raise ModelError(
            f"normalization {name}={values!r} must be a finite number or a list of finite numbers (one per band); "
            "fix the stored normalisation."
        )
    return out


@dataclass(frozen=True)
class Normalization:
    """How raw pixels become network input; all values fixed (stored in the checkpoint).

    Kinds:
        ``none``: cast to float32.
        ``meanstd``: ``(x - mean[c]) / std[c]`` per channel.
        ``percentile``: clip to the pixel values ``[low[c], high[c]]`` (fixed constants, typically band
        percentiles measured on training data by :meth:`fit`) and scale to ``[0, 1]``.
        ``window``: clip to the intensity window ``(lo, hi)`` (e.g. Hounsfield units), then
        ``(x - mean[c]) / std[c]`` when ``mean``/``std`` are given, else scale to ``[0, 1]``.
        ``clip_meanstd``: clip channel ``c`` to ``[low[c], high[c]]`` (pixel values; ``±inf`` leaves it
        unclipped), then ``(x - mean[c]) / std[c]``, in float32 with a true division (nnU-Net's
        ``CTNormalization`` and ``ZScoreNormalization``, one scheme per channel).

    Attributes:
        kind: One of :data:`KINDS`.
        mean: Per-channel means (one value is broadcast to every channel).
        std: Per-channel standard deviations.
        low: Per-channel lower clip values in pixel units (``percentile``, ``clip_meanstd``), never percentiles.
        high: Per-channel upper clip values in pixel units (``percentile``, ``clip_meanstd``), never percentiles.
        percentiles: The percentiles (0-100) ``low``/``high`` were measured at by :meth:`fit`; None when
            the clip values were given directly. A record only: ``apply`` never reads it.
        window: Intensity window ``(lo, hi)`` (``window``).

    """

    kind: str = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    percentiles: tuple[float, float] | None = None
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"normalization kind={self.kind!r} is unknown; choose one of {list(KINDS)}.")
        for name in ("mean", "std", "low", "high"):
            object.__setattr__(self, name, _floats(name, getattr(self, name), unbounded=name in ("low", "high")))
        if self.percentiles is not None:
            percentiles = _floats("percentiles", self.percentiles)
            if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
                raise ModelError(
                    f"normalization percentiles={self.percentiles!r} must be two numbers 0 <= low < high <= 100."
                )
            object.__setattr__(self, "percentiles", percentiles)
        if self.window is not None:
            window = _floats("window", self.window)
            if len(window) != 2:
                raise ModelError(f"normalization window={self.window!r} must be two numbers (lo, hi).")
            object.__setattr__(self, "window", window)
        if len(self.mean) != len(self.std):
            raise ModelError(
                f"normalization mean={self.mean} and std={self.std} must have the same length (one per band)."
            )
        if any(s <= 0 for s in self.std):
            raise ModelError(f"normalization std={self.std} must be > 0 for every band.")
        if self.kind == "meanstd" and not self.mean:
            raise ModelError("normalization kind='meanstd' needs mean and std (one value per band).")
        if self.kind == "percentile":
            if not self.low or len(self.low) != len(self.high):
                raise ModelError(
                    f"normalization kind='percentile' needs fixed low={self.low} and high={self.high} "
                    "values of "
                    f"equal length (measure them on training data with Normalization.fit)."
                )
            if any(h <= lo for lo, h in zip(self.low, self.high, strict=True)):
                raise ModelError(f"normalization low={self.low} must be below high={self.high} for every band.")
        if self.kind == "clip_meanstd":
            if not self.mean or not len(self.low) == len(self.high) == len(self.mean):
                raise ModelError(
                    f"normalization kind='clip_meanstd' needs low={self.low}, high={self.high}, mean={self.mean} and "
                    f"std={self.std} with one value per band each."
                )
            if any(h < lo for lo, h in zip(self.low, self.high, strict=True)):
                raise ModelError(f"normalization low={self.low} must not exceed high={self.high} for any band.")
        if self.kind == "window":
            if self.window is None or len(self.window) != 2 or self.window[1] <= self.window[0]:
                raise ModelError(
                    f"normalization kind='window' needs window=(lo, hi) with lo < hi; got {self.window!r}."
                )

    # ------------------------------------------------------------------ apply
    def _stat(self, values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
        if len(values) not in (1, channels):
            raise ModelError(
                f"normalization {name} has {len(values)} values but the tiles have {channels} channels; "
                f"store one value per band."
            )
        return np.asarray(values * (channels if len(values) == 1 else 1), dtype=np.float32)

    def apply(self, x: np.ndarray, *, spatial_dims: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Normalise tiles.

        Args:
            x: ``(N, C, *S)`` or ``(C, *S)`` raw pixels, any numeric dtype.
            spatial_dims: Number of spatial axes ``len(S)``; needed only when ``x.ndim == 4`` (which is
                both a 2D batch and one 3D tile) and the statistics differ per channel.
            out: Optional float32 array of ``x``'s shape to write into (a reused buffer).

        Returns:
            float32 array of the same shape.

        """
        x = np.asarray(x)
        if out is None:
            out = np.empty(x.shape, dtype=np.float32)
        elif out.shape != x.shape or out.dtype != np.float32:
            raise ModelError(f"out buffer {out.shape} {out.dtype} does not fit tiles {x.shape}; give float32.")
        if self.kind == "none":
            np.copyto(out, x, casting="unsafe")
            return out
        if spatial_dims is not None:
            channel_axis = x.ndim - spatial_dims - 1
        elif x.ndim in (3, 5):
            channel_axis = 1 if x.ndim == 5 else 0
        else:
            per_channel = max(len(self.mean), len(self.low)) > 1
            if per_channel:
                raise ModelError(
                    f"tiles of shape {x.shape} are ambiguous (a 2D batch or one 3D tile); "
                    f"pass spatial_dims=2 or 3 to Normalization.apply."
                )
            channel_axis = 1 if x.ndim == 4 else 0
        if channel_axis not in (0, 1):
            raise ModelError(
                f"tiles of shape {x.shape} do not fit spatial_dims={spatial_dims}; give (N, C, *S) or (C, *S)."
            )
        channels = x.shape[channel_axis]
        bshape = [1] * x.ndim
        bshape[channel_axis] = channels

        def stat(values: tuple[float, ...], name: str) -> np.ndarray:
            return self._stat(values, channels, name).reshape(bshape)

        if self.kind == "meanstd":  # one pass from the raw dtype into float32, then one in place
            np.subtract(x, stat(self.mean, "mean"), out=out, casting="unsafe")
            out *= 1.0 / stat(self.std, "std")
            return out
        np.copyto(out, x, casting="unsafe")
        if self.kind == "clip_meanstd":
            np.clip(out, stat(self.low, "low"), stat(self.high, "high"), out=out)
            out -= stat(self.mean, "mean")
            out /= stat(self.std, "std")
            return out
        if self.kind == "percentile":
            lo, hi = stat(self.low, "low"), stat(self.high, "high")
            np.clip(out, lo, hi, out=out)
            out -= lo
            out /= hi - lo
        else:  # window
            lo_w, hi_w = self.window  # type: ignore[misc]
            np.clip(out, lo_w, hi_w, out=out)
            if self.mean:
                out -= stat(self.mean, "mean")
                out /= stat(self.std, "std")
            else:
                out -= lo_w
                out /= hi_w - lo_w
        return out

    # ------------------------------------------------------------------ fit / plain types
    @classmethod
    def fit(
        cls,
        images: Sequence[np.ndarray],
        kind: str,
        *,
        masks: Sequence[np.ndarray] | None = None,
        percentiles: tuple[float, float] = (1.0, 99.0),
        window: tuple[float, float] | None = None,
    ) -> Normalization:
        """Measure fixed statistics on training images.

        Args:
            images: Images ``(C, *S)`` (same C).
            kind: One of :data:`KINDS`.
            masks: Optional boolean masks ``S`` of the pixels to measure (e.g. excluding nodata).
            percentiles: Percentiles for ``percentile``.
            window: Intensity window for ``window`` (then mean/std are measured inside it).

        Returns:
            The normalisation with its statistics filled in.

        """
        if kind not in KINDS:
            raise ModelError(f"normalization kind={kind!r} is unknown; choose one of {list(KINDS)}.")
        if kind == "none":
            return cls("none")
        channels = images[0].shape[0]
        per_band: list[np.ndarray] = []
        for c in range(channels):
            parts = []
            for i, img in enumerate(images):
                band = img[c]
                parts.append(band[masks[i]] if masks is not None else band.ravel())
            vals = np.concatenate(parts).astype(np.float64)
            if vals.size == 0:
                raise ModelError("Normalization.fit found no pixels to measure (every mask is empty).")
            if window is not None:
                vals = np.clip(vals, window[0], window[1])
            per_band.append(vals)
        if kind == "percentile":
            low = tuple(float(np.percentile(v, percentiles[0])) for v in per_band)
            high = tuple(float(np.percentile(v, percentiles[1])) for v in per_band)
            high = tuple(max(h, lo + 1e-6) for lo, h in zip(low, high, strict=True))
            return cls("percentile", low=low, high=high, percentiles=percentiles)
        mean = tuple(float(v.mean()) for v in per_band)
        std = tuple(max(float(v.std()), 1e-6) for v in per_band)
        return cls(kind, mean=mean, std=std, window=window)

    def to_dict(self) -> dict[str, Any]:
        """Return the normalisation as plain Python types."""
        return {
            "kind": self.kind,
            "mean": list(self.mean),
            "std": list(self.std),
            "low": list(self.low),
            "high": list(self.high),
            "percentiles": list(self.percentiles) if self.percentiles is not None else None,
            "window": list(self.window) if self.window is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "normalization") -> Normalization:
        """Build from a mapping, naming unknown keys."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{source} must be a mapping with key 'kind'; got {data!r}.")
        valid = {"kind", "mean", "std", "low", "high", "percentiles", "window"}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ModelError(f"{source} has unknown key(s) {unknown}; valid keys are {sorted(valid)}.")
        try:
            return cls(**dict(data))
        except ModelError as err:
            raise ModelError(f"{source}: {err}") from None
