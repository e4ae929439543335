"""The tiling a model package records, for a job that gives none: nnU-Net's plans, a MONAI bundle's inferer.

A user who brings an nnU-Net results folder or a MONAI bundle should not have to copy the patch, the step and
the blend out of it: the package already says how it was meant to be tiled. :func:`recorded_tiling` reads that
(nothing is built or loaded: only ``plans.json`` / the bundle's inference config) in tiler's ``tiling`` keys,
for an input with ``ndim`` spatial axes. An explicit tiling that differs is still refused when the job is
planned (:func:`tiler.model.sources.nnunet.job_options` names the values to use).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiler.model.sources.detect import bundle_config, is_nnunet_folder

__all__ = ["recorded_tiling"]


def recorded_tiling(
    weights: str | Path, *, format: str = "auto", nnunet: Mapping[str, Any] | None = None, ndim: int | None = None
) -> dict[str, Any] | None:
    """The ``tiling`` keys the model at ``weights`` records, or None when it records none.

    Args:
        weights: ``model.weights``.
        format: ``model.format`` (``auto`` looks at the folder).
        nnunet: The ``model.nnunet`` section (its ``configuration`` picks the plans entry).
        ndim: Spatial axes of the input (an nnU-Net 2D configuration on a volume tiles ``(1, H, W)``);
            None: 3 (nnU-Net's images are volumes; a 2D image is its ``(1, y, x)``).

    Returns:
        ``tile``, ``overlap``, ``rule``, ``blend`` and ``sigma_scale`` (an nnU-Net folder: its patch in the input's
        axis order, step 0.5, its step rule and gaussian), or ``tile``, ``overlap``, ``blend`` (a bundle whose
        inferer gives a literal ``roi_size``).

    Raises:
        ModelError, ReadError: The nnU-Net folder's plans cannot be used (the same message planning would give).
    """
    path = Path(weights)
    if not path.is_dir():
        return None
    if format in ("auto", "nnunet") and is_nnunet_folder(path):
        from tiler.model.sources.nnunet.folder import NnunetSettings, ResultsFolder
        from tiler.model.sources.nnunet.job import expected_tiling

        results = ResultsFolder(path, NnunetSettings.from_mapping(nnunet))
        return expected_tiling(results, ndim or 3)
    config = bundle_config(path) if format in ("auto", "monai") else None
    if config is not None:
        from tiler.model.sources.bundle import read_config

        return bundle_tiling(read_config(config))
    return None


def bundle_tiling(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """A MONAI bundle's ``inferer`` as tiling keys, when its ``roi_size`` is literal (or one ``@key`` away).

    MONAI's ``SlidingWindowInferer`` steps by ``int(roi · (1 - overlap))`` from 0 with the last window flush
    with the edge (tiler's ``overlap`` rule), and blends ``constant`` or ``gaussian`` (sigma_scale 0.125).

    >>> bundle_tiling({"roi": [96, 96, 64], "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi",
    ...                "overlap": 0.25, "mode": "gaussian"}})
    {'tile': [96, 96, 64], 'overlap': [24, 24, 16], 'blend': 'gaussian'}
    """
    inferer = config.get("inferer")
    if not isinstance(inferer, Mapping) or "SlidingWindow" not in str(inferer.get("_target_", "")):
        return None
    roi, fraction, mode = (_literal(config, inferer.get(k)) for k in ("roi_size", "overlap", "mode"))
    if not isinstance(roi, list | tuple) or not all(isinstance(v, int) and v > 0 for v in roi):
        return None
    fraction = fraction if isinstance(fraction, int | float) and 0 <= fraction < 1 else 0.25  # MONAI's default
    tile = [int(v) for v in roi]
    out: dict[str, Any] = {"tile": tile, "overlap": [t - max(1, int(t * (1 - fraction))) for t in tile]}
    if mode in ("constant", "gaussian"):
        out["blend"] = mode
    return out


def _literal(config: Mapping[str, Any], value: Any) -> Any:
    """``value``, or the top-level entry an ``@key`` reference names (one level, no expressions)."""
    if isinstance(value, str) and value.startswith("@") and "#" not in value:
        return config.get(value[1:])
    return value
