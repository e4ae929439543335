"""Loading a model: the one entry point, the table of sources it picks from, and the caller's overrides.

:func:`load_model` names the source that reads a path (:func:`tiler.model.sources.detect.resolve_source`), lets
it open the path (:data:`SOURCES`), then applies what the caller gives over what the package stores: the
normalisation, the class names, the class colours. A source never sees those overrides; it only reads what it
stores when asked (:class:`tiler.model.loaded.Opened`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tiler.errors import ModelError
from tiler.model.fetch import local_weights
from tiler.model.loaded import LoadedModel, Opener
from tiler.model.normalize import Normalization
from tiler.model.sources.bundle import open_bundle
from tiler.model.sources.detect import resolve_source
from tiler.model.sources.nnunet import open_nnunet
from tiler.model.sources.onnx import open_onnx
from tiler.model.sources.smp import open_smp
from tiler.model.sources.tiler import open_checkpoint, open_state_dict, open_torchscript
from tiler.model.spec import ModelSpec

__all__ = ["FORMATS", "SOURCES", "load_model"]

SOURCES: Mapping[str, Opener] = {
    "checkpoint": open_checkpoint,  # a tiler checkpoint (detected: any torch.save file, a plain state dict too)
    "state_dict": open_state_dict,  # a plain state dict (torch.save or safetensors) and the caller's spec
    "monai": open_bundle,  # a MONAI bundle folder (a MONAI network's state dict file is read by state_dict)
    "torchscript": open_torchscript,  # a torch.jit.save archive
    "smp": open_smp,  # a segmentation_models_pytorch save_pretrained folder
    "onnx": open_onnx,  # an ONNX graph run by onnxruntime
    "nnunet": open_nnunet,  # an nnU-Net v2 results folder
}
"""Each source by its ``model.format`` name (the config's names, and those :mod:`tiler.model.sources.detect` gives)."""
FORMATS = ("auto", *SOURCES)
"""What ``load_model(format=...)`` and ``model.format`` accept: ``auto`` (detect) or a source's name."""


def load_model(
    path: str | os.PathLike[str],
    *,
    spec: ModelSpec | Mapping[str, Any] | None = None,
    normalization: Normalization | Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    format: str = "auto",
    onnx: Mapping[str, Any] | None = None,
    nnunet: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a model from a tiler checkpoint, a plain state dict, a TorchScript file or a model package.

    Args:
        path: The checkpoint file, ONNX file, MONAI bundle folder, smp ``save_pretrained`` folder or nnU-Net
            results folder.
        spec: The network spec; required for a plain state dict, overrides the file's otherwise.
        normalization: Overrides the stored normalisation (default: stored, or ``none``).
        class_names: Overrides the stored class names.
        class_colors: Overrides the stored class colours.
        format: ``"auto"`` (detect) or a name in :data:`SOURCES`: ``"checkpoint"``, ``"state_dict"`` /
            ``"monai"`` (a state dict of a ``monai.networks.nets`` class, or with a folder a MONAI bundle),
            ``"torchscript"``, ``"smp"``, ``"onnx"`` or ``"nnunet"``.
        onnx: Layout of an ONNX model (:class:`tiler.model.sources.onnx.OnnxOptions` fields).
        nnunet: nnU-Net settings (:class:`tiler.model.sources.nnunet.NnunetSettings` fields, plus ``image_stats``).

    Returns:
        The network (eval mode, CPU) with its spec, normalisation and class names.

    Raises:
        ReadError: The file is missing or not a readable checkpoint.
        ModelError: The file would run code when loaded, its tensors do not fit the spec, or the spec is
            missing or invalid.

    """
    if format not in FORMATS:
        raise ModelError(f"checkpoint format={format!r} is unknown; choose one of {list(FORMATS)}.")
    p = Path(local_weights(str(path)))  # a model in a bucket: this process's cached copy
    name = resolve_source(p, format)
    if isinstance(spec, Mapping):
        spec = ModelSpec.from_dict(spec)
    if isinstance(normalization, Mapping):
        normalization = Normalization.from_dict(normalization)
    settings = {"onnx": onnx, "nnunet": nnunet}.get(name)
    opened = SOURCES[name](p, spec=spec, settings=settings, asked=format)
    # what the caller gives wins; what the package stores is read only where the caller gives nothing
    norm = normalization or opened.normalization() or Normalization()
    names = class_names or opened.class_names()
    network = opened.network()  # after the package's configs, so that they fail before its weights are read
    labels = opened.labels(names, class_colors or opened.class_colors)
    return LoadedModel(network, opened.spec, norm, *labels, p, opened.format)
