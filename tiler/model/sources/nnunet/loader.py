"""Opening an nnU-Net results folder as a tiler model: every fold's network, weights, normalisation and labels."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiler.errors import ModelError
from tiler.model.loaded import Opened, class_labels
from tiler.model.sources.files import load_state
from tiler.model.sources.nnunet.ensemble import NnunetEnsemble
from tiler.model.sources.nnunet.folder import NnunetSettings, ResultsFolder
from tiler.model.sources.nnunet.intensity import normalization as plans_normalization
from tiler.model.sources.nnunet.network import build_network, check_size
from tiler.model.sources.nnunet.weights import read_checkpoint

if TYPE_CHECKING:
    from tiler.model.spec import ModelSpec

__all__ = ["open_nnunet"]


def open_nnunet(
    folder: Path, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None = None, asked: str = "nnunet"
) -> Opened:
    """Build the networks of an nnU-Net results folder and load each fold's ``network_weights`` (weights only).

    Args:
        folder: The results folder (``<Trainer>__<Plans>__<configuration>``).
        spec: Must be None: the plans give the network.
        settings: ``model.nnunet`` settings (:class:`NnunetSettings` fields) plus ``image_stats`` (``[[mean, std],
            ...]`` per channel) for ``ZScoreNormalization``.
        asked: The ``model.format`` asked for.

    Returns:
        The opened model, format ``"nnunet"``: its network maps tiles ``(N, C, *S)`` in the input's axis order to
        the folds × mirrors average as logits ``(N, K, *S)``; it stores the plans' normalisation (computed when
        asked) and ``dataset.json``'s label names.

    """
    if spec is not None:
        raise ModelError(f"model {folder} is an nnU-Net folder: its plans give the network, so a spec does not apply.")
    options = dict(settings or {})
    results = ResultsFolder(folder, NnunetSettings.from_mapping(options))
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
    axes = tuple(mirror_axes) if results.settings.mirroring and mirror_axes else ()
    if any(not 0 <= a < spatial for a in axes):
        raise ModelError(
            f"nnU-Net checkpoint {results.folds[0]}: inference_allowed_mirroring_axes={list(axes)} do not fit a "
            f"{spatial}D network; set model.nnunet.mirroring: false."
        )
    ensemble = NnunetEnsemble(
        networks, in_channels=channels, transpose_forward=results.transpose_forward, planar=results.is_2d,
        mirror_axes=axes, average=results.settings.average,
    ).eval()  # fmt: skip
    return Opened(
        "nnunet", None, lambda: ensemble, partial(class_labels, len(labels), model=f"nnU-Net {results.source}"),
        normalization=lambda: plans_normalization(results, channels=channels, image_stats=options.get("image_stats")),
        class_names=lambda: labels,
    )  # fmt: skip
