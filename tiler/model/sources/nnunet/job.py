"""An input checked against an nnU-Net configuration before a job runs, and the model options it needs.

nnU-Net preprocesses a case in this order: transpose, crop to the non-zero box, normalise, resample to the
configuration's spacing. tiler reproduces what it can exactly and refuses the rest, naming the fix:

* **Tiling.** nnU-Net's windows are the configuration's patch (a 2D configuration: one slice thick), placed
  by its step rule and weighted by its gaussian: ``tiling.tile`` must be the patch in the input's axis
  order, ``tiling.rule`` and ``tiling.blend`` ``nnunet``, ``tiling.sigma_scale`` 0.125. ``tiling.overlap``
  is nnU-Net's step fraction in pixels (``O = T - f·T``; its default ``f = 0.5`` is ``O = T/2``).
* **Spacing.** Accepted when nnU-Net would not resample the input: ``round(L · s / t) == L`` on every axis
  (``L`` voxels of spacing ``s``, configuration spacing ``t``; nnU-Net's ``compute_new_shape``). Otherwise
  refused with the spacing to resample to. 2D images (rasters, slides) are taken at the configuration's spacing.
* **Cropping.** nnU-Net predicts inside the box of voxels non-zero in some channel and labels everything
  outside 0. ``input.region: auto`` (what a job that gives no region gets) is that box: the tiles are placed
  over it as nnU-Net places them over its crop, and everything outside it is labelled background. A job that
  sets ``input.region: null`` on an image whose box is smaller is refused with the fix.
* **Per-image statistics.** ``ZScoreNormalization`` channels take the image's own mean and std over the
  region (nnU-Net normalises the cropped image), measured out of core, slab by slab, and handed to every worker
  in the model options.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiler.errors import ConfigError, InputError, ModelError
from tiler.geometry import Window
from tiler.io.base import region_window
from tiler.model.sources.nnunet.folder import NnunetSettings, ResultsFolder
from tiler.model.sources.nnunet.intensity import ImageFacts, measure, needs_image_stats, slabs
from tiler.resample import Resampling, merge_value_ranges

__all__ = [
    "RESAMPLING_FN", "back_resampling", "expected_tiling", "forward_resampling", "input_spacing", "job_options",
    "resampling",
]

SIGMA_SCALE = 0.125
_FACTS: OrderedDict[tuple[Any, ...], ImageFacts] = OrderedDict()


def expected_tiling(results: ResultsFolder, ndim: int, *, step: float = 0.5) -> dict[str, Any]:
    """nnU-Net's tiling of an input with ``ndim`` spatial axes, in tiler's keys and the input's axis order.

    The tile is the configuration's patch (``1`` on the slicing axis of a 2D configuration), the overlap
    ``T - round(f · T)`` for step fraction ``f`` (0 on a one-pixel axis).
    """
    patch = results.patch_size if not results.is_2d else (1, *results.patch_size)
    tile = [int(t) for t in results.to_original(patch, ndim)]
    overlap = [t - max(1, round(t * step)) if t > 1 else 0 for t in tile]
    return {"tile": tile, "overlap": overlap, "rule": "nnunet", "blend": "nnunet", "sigma_scale": SIGMA_SCALE}


def _check_tiling(results: ResultsFolder, tiling: Mapping[str, Any], ndim: int) -> None:
    want = expected_tiling(results, ndim)
    wrong = [k for k in ("tile", "rule", "blend", "sigma_scale") if _plain(tiling.get(k)) != want[k]]
    if not wrong:
        return
    have = ", ".join(f"tiling.{k}={_plain(tiling.get(k))!r}" for k in wrong)
    sets = " ".join(f"--set tiling.{k}={_yaml(want[k])}" for k in ("tile", "overlap", "rule", "blend"))
    raise ConfigError(
        f"{have} do not tile like nnU-Net's configuration {results.name!r} of {results.folder}: its windows are the "
        f"patch {want['tile']} (in the input's axis order), placed by its step rule and weighted by its gaussian. "
        f"Fix: {sets} (overlap {want['overlap']} is nnU-Net's default step 0.5; keep sigma_scale 0.125)."
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _yaml(value: Any) -> str:
    return "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list) else str(value)


RESAMPLING_FN = "resample_data_or_seg_to_shape"
"""nnU-Net's resampling function, the one tiler reproduces block by block (:mod:`tiler.resample`)."""


def input_spacing(results: ResultsFolder, reader: Any) -> tuple[float, ...]:
    """The input's voxel spacing (z, y, x) in mm; a 2D image's is nnU-Net's (999, 1, 1) -> ``(1, 1)``.

    Raises:
        InputError: A volume without spacing.
    """
    if len(reader.shape) == 2:
        return (1.0, 1.0)
    spacing = getattr(reader.georef, "spacing", None)
    if spacing is None:
        target = results.to_original(results.spacing, 3)
        raise InputError(
            f"{reader.path} has no voxel spacing, so tiler cannot tell whether nnU-Net configuration "
            f"{results.name!r} (at {list(target)} mm, z, y, x) would resample it; give a NIfTI or DICOM series (or a "
            "zarr with a 'spacing' attribute)."
        )
    return tuple(float(s) for s in spacing)


def resampling(results: ResultsFolder, spacing: Sequence[float], shape: Sequence[int]) -> dict[str, Any] | None:
    """How nnU-Net would resample an image (its crop) of ``shape`` at ``spacing``, or None when it would not.

    nnU-Net resamples when ``round(L · s / t) != L`` on some axis (``compute_new_shape``: ``L`` voxels of spacing
    ``s``, configuration spacing ``t``; a 2D configuration keeps the slicing axis). The answer, in the input's
    axis order: ``spacing``, ``target`` (spacings), ``data`` and ``probabilities`` (the plans' keyword arguments of
    its resampling functions: ``order``, ``order_z``, ``force_separate_z``).

    Raises:
        ModelError: The plans name a resampling function other than nnU-Net's default.
    """
    if len(shape) == 2:
        return None  # a 2D image is taken at the configuration's spacing
    target = tuple(
        float(s) if t is None else float(t)
        for s, t in zip(spacing, results.to_original(results.spacing, 3), strict=True)
    )
    if all(round(s / t * n) == n for s, t, n in zip(spacing, target, shape, strict=True)):
        return None
    conf = results.configuration
    out: dict[str, Any] = {"spacing": list(spacing), "target": list(target)}
    for role, key in (("data", "resampling_fn_data"), ("probabilities", "resampling_fn_probabilities")):
        name = conf.get(key, RESAMPLING_FN)
        if name != RESAMPLING_FN:
            raise ModelError(
                f"{results.source}: {key}={name!r}; tiler resamples as nnU-Net's {RESAMPLING_FN} does and no other "
                "way. Resample the input to the configuration's spacing yourself, or use plans with the default."
            )
        kwargs = conf.get(f"{key}_kwargs") or {}
        out[role] = {k: kwargs.get(k, d) for k, d in (("order", 3 if role == "data" else 1), ("order_z", 0),
                                                       ("force_separate_z", None))}  # fmt: skip
    return out


def forward_resampling(resample: Mapping[str, Any], shape: Sequence[int]) -> Resampling:
    """nnU-Net's resampling of the image (its crop, of ``shape``) to the configuration's spacing.

    Args:
        resample: :func:`resampling`'s answer.
        shape: The crop's shape.
    """
    data = resample["data"]
    return Resampling.nnunet(shape, resample["spacing"], resample["target"], order=int(data["order"]),
                             order_z=int(data["order_z"]), force_separate_z=data["force_separate_z"])  # fmt: skip


def back_resampling(resample: Mapping[str, Any], forward: Resampling) -> Resampling:
    """nnU-Net's resampling of its logits (probabilities) from the model grid back onto the crop's grid."""
    probs = resample["probabilities"]
    return Resampling.nnunet(
        forward.target_shape, resample["target"], resample["spacing"], order=int(probs["order"]),
        order_z=int(probs["order_z"]), force_separate_z=probs["force_separate_z"], target_shape=forward.source_shape,
    )


def _value_range(reader: Any, crop: Window, forward: Resampling) -> np.ndarray:
    """The raw ``(2, C, K)`` value range of the crop that ``forward``'s clip needs, read slab by slab."""
    out = np.empty((2, int(reader.channels), forward.value_range_slices))
    out[0], out[1] = np.inf, -np.inf
    for window, data in slabs(reader, crop):
        out = merge_value_ranges(out, forward.value_range(data, window.relative_to(crop)))
    return out


def _facts(reader: Any, within: Window | None = None) -> ImageFacts:
    path = str(reader.path)
    try:
        st = os.stat(path)
        stamp: tuple[Any, ...] = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = ()
    key = (type(reader).__name__, path, tuple(reader.shape), int(reader.channels), within, *stamp)
    if key not in _FACTS:
        _FACTS[key] = measure(reader, within)
        while len(_FACTS) > 8:
            _FACTS.popitem(last=False)
    return _FACTS[key]


def _check_input(results: ResultsFolder, reader: Any) -> None:
    ndim = len(reader.shape)
    channels = len(results.channel_names)
    if int(reader.channels) != channels:
        raise InputError(
            f"{reader.path} gives {reader.channels} channel(s) but nnU-Net model {results.folder} reads {channels} "
            f"({', '.join(results.channel_names)}); select them with input.bands (or input.channels_from_4d)."
        )
    if ndim == 2 and (not results.is_2d or results.transpose_forward[0] != 0):
        raise ModelError(
            f"{reader.path} is a 2D image but nnU-Net configuration {results.name!r} of {results.folder} is "
            f"{'3D' if not results.is_2d else 'transposed across the slice axis'}; use a 2d configuration."
        )
    if results.reorients:
        import nibabel as nib

        affine = getattr(reader.georef, "affine", None)
        codes = tuple(nib.aff2axcodes(affine)) if affine is not None else None
        if codes != ("R", "A", "S"):
            raise InputError(
                f"{results.plans_path} reads images with NibabelIOWithReorient (reoriented to RAS) but {reader.path} "
                f"is oriented {codes}; reorient it first (nibabel.as_closest_canonical) so both see the same axes."
            )


def _box(window: Window) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in zip(window.start, window.stop, strict=True)) + "]"


def job_options(
    folder: str | Path,
    *,
    settings: Mapping[str, Any] | None,
    tiling: Mapping[str, Any],
    input: Any,
    tta_flips: Sequence[Any] = (),
    probabilities: str | None = None,
    region: str | Sequence[Sequence[int]] | None = "auto",
) -> dict[str, Any]:
    """Check one input against the results folder and return the ``nnunet`` options of its model reference.

    Args:
        folder: The results folder.
        settings: The ``model.nnunet`` section (None: defaults).
        tiling: The ``tiling`` section as plain types.
        input: The input, as anything whose ``open()`` gives a tiler reader (``shape``, ``channels``,
            ``georef``, ``read``); it is closed again here.
        tta_flips: The config's ``model.tta_flips`` (must be empty: nnU-Net models mirror by their checkpoint).
        probabilities: The config's ``output.probabilities`` (refused with ``average: logits``).
        region: The config's ``input.region``: ``auto`` (nnU-Net's non-zero crop box), a box ``[[start, stop],
            ...]`` per axis, or None (the whole image, refused when the non-zero box is smaller).

    Returns:
        The settings as plain types, plus ``crop`` (the region as ``[[start, stop], ...]``, when it is not the
        whole image) and ``image_stats`` when a channel uses ``ZScoreNormalization`` (measured over the region;
        then the options differ per input, and so do the model references of a run).

    Raises:
        ConfigError: The tiling is not nnU-Net's for this configuration, ``tta_flips`` is set, or probabilities are
            asked for with ``average: logits``.
        InputError: Channels, spacing or the non-zero box that nnU-Net would treat differently.
        ModelError: The folder or configuration cannot be used.

    """
    if tta_flips:
        raise ConfigError(
            f"model.tta_flips={[list(f) for f in tta_flips]} does not apply to the nnU-Net model {folder}: it mirrors "
            "over its checkpoint's inference_allowed_mirroring_axes. Remove it (model.nnunet.mirroring: false turns "
            "mirroring off)."
        )
    results = ResultsFolder(Path(folder), NnunetSettings.from_mapping(settings))
    if probabilities is not None and results.settings.average == "logits":
        raise ConfigError(
            f"output.probabilities={probabilities!r} cannot be stored for the nnU-Net model {folder} with "
            "model.nnunet.average: logits: tiler then blends an affine image of nnU-Net's logits (its labels exactly), "
            "not class probabilities. Remove output.probabilities, or set model.nnunet.average: probabilities."
        )
    reader = input.open()
    try:
        _check_input(results, reader)
        _check_tiling(results, tiling, len(reader.shape))
        spacing = input_spacing(results, reader)
        facts = _facts(reader)
        full = Window.from_shape(tuple(int(n) for n in reader.shape))
        path = reader.path
        if facts.nonzero is None:
            raise InputError(f"{path} is 0 everywhere; nnU-Net would crop it to nothing. Nothing to segment.")
        if region is None and facts.nonzero != full:
            box = _box(facts.nonzero)
            raise InputError(
                f"{path} is non-zero only inside {box} of its shape {list(full.shape)} but input.region is null: "
                "nnU-Net crops to that box, tiles the crop and labels everything outside it 0, so tiling the whole "
                "image would place tiles differently. Fix: set input.region: auto (or leave it out)."
            )
        if isinstance(region, str) or region is None:
            crop = full if region is None else facts.nonzero  # "auto"
        else:
            crop = region_window(region, full.shape, path)
        if crop != full and needs_image_stats(results):
            facts = _facts(reader, crop)
        resample = resampling(results, spacing, crop.shape)
        if resample is not None:
            forward = forward_resampling(resample, crop.shape)
            if forward.needs_value_range:  # skimage clips to the crop's range: one more pass, on the driver
                resample["range"] = _value_range(reader, crop, forward).tolist()
    finally:
        reader.close()
    options = results.settings.to_dict()
    if crop != full:
        options["crop"] = [[a, b] for a, b in zip(crop.start, crop.stop, strict=True)]
    if resample is not None:
        options["resample"] = resample
    if needs_image_stats(results):
        options["image_stats"] = facts.stats
    return options
