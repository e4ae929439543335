"""Loading an nnU-Net results folder as a tiler model: every fold's network, weights, normalisation and labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tiler.errors import ModelError
from tiler.model.checkpoint import LoadedModel
from tiler.model.normalize import Normalization
from tiler.model.sources.files import load_state
from tiler.model.sources.nnunet.ensemble import NnunetEnsemble
from tiler.model.sources.nnunet.folder import NnunetSettings, ResultsFolder
from tiler.model.sources.nnunet.intensity import normalization as plans_normalization
from tiler.model.sources.nnunet.network import build_network, check_size
from tiler.model.sources.nnunet.weights import read_checkpoint
from tiler.model.sources.outputs import class_labels

__all__ = ["load_nnunet"]


def load_nnunet(
    folder: Path,
    *,
    options: Mapping[str, Any] | None = None,
    normalization: Normalization | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
) -> LoadedModel:
    """Build the networks of an nnU-Net results folder and load each fold's ``network_weights`` (weights only).

    Args:
        folder: The results folder (``<Trainer>__<Plans>__<configuration>``).
        options: ``model.nnunet`` settings (:class:`NnunetSettings` fields) plus ``image_stats`` (``[[mean, std],
            ...]`` per channel) for ``ZScoreNormalization``.
        normalization: Use this instead of the plans' normalisation.
        class_names: Use these instead of ``dataset.json``'s label names.
        class_colors: One RGB colour per class.

    Returns:
        The model, format ``"nnunet"``: its network maps tiles ``(N, C, *S)`` in the input's axis order to the
        folds × mirrors average as logits ``(N, K, *S)``.

    """
    options = dict(options or {})
    results = ResultsFolder(folder, NnunetSettings.from_mapping(options))
    settings = results.settings
    channels = len(results.channel_names)
    labels = results.labels
    check_size(results.architecture, in_channels=channels, classes=len(labels), patch=results.patch_size,
               source=results.source, folds=len(results.folds))  # fmt: skip
    networks = []
    mirror_axes: tuple[int, ...] | None = None
    for i, path in enumerate(results.folds):
        checkpoint = read_checkpoint(path)
        if checkpoint.configuration is not None and checkpoint.configuration != results.name:
            raise ModelError(
                f"nnU-Net checkpoint {path} was trained as configuration {checkpoint.configuration!r}, not "
                f"{results.name!r}; set model.nnunet.configuration: {checkpoint.configuration}."
            )
        if i == 0:  # nnU-Net's predictor takes the mirroring axes of the first fold
            mirror_axes = checkpoint.mirror_axes
        network = build_network(results.architecture, in_channels=channels, classes=len(labels), source=results.source)
        built = f"{type(network).__name__} of {results.source}"
        networks.append(load_state(network, checkpoint.weights, path=path, built=built))
    spatial = len(results.patch_size)
    axes = tuple(mirror_axes) if settings.mirroring and mirror_axes else ()
    if any(not 0 <= a < spatial for a in axes):
        raise ModelError(
            f"nnU-Net checkpoint {results.folds[0]}: inference_allowed_mirroring_axes={list(axes)} do not fit a "
            f"{spatial}D network; set model.nnunet.mirroring: false."
        )
    ensemble = NnunetEnsemble(
        networks, in_channels=channels, transpose_forward=results.transpose_forward, planar=results.is_2d,
        mirror_axes=axes, average=settings.average,
    )  # fmt: skip
    norm = normalization or plans_normalization(results, channels=channels, image_stats=options.get("image_stats"))
    names, colors = class_labels(len(labels), class_names or labels, class_colors, model=f"nnU-Net {results.source}")
    return LoadedModel(ensemble.eval(), None, norm, names, colors, Path(folder), "nnunet")
