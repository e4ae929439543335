"""tiler's own model files: its checkpoint, a plain state dict of a MONAI network, and TorchScript.

* ``checkpoint``: one ``torch.save`` file ``{"format": "tiler-checkpoint", "version": 1, "spec": ...,
  "normalization": ..., "class_names": [...], "class_colors": [...], "state_dict": ...}`` holding only plain
  types and tensors (written by :func:`tiler.model.checkpoint.save_checkpoint`). Detected (``auto``), a
  ``torch.save`` file without that ``format`` key is read as a plain state dict;
* ``state_dict``: a plain state dict (or ``{"state_dict": ...}``, in a ``torch.save`` or safetensors file) whose
  spec the caller gives;
* ``torchscript``: a ``torch.jit.save`` archive (metadata in its ``tiler.json`` extra file when saved by
  :func:`tiler.model.checkpoint.save_torchscript`). A TorchScript file is a serialized program: loading it runs
  the code it was compiled from, so give only TorchScript files you trust.

Pickles are loaded weights-only (:func:`tiler.model.weights.safe_load`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tiler.errors import ModelError, ReadError
from tiler.model.loaded import Labels, Opened, check_names_colors, names_colors
from tiler.model.normalize import Normalization
from tiler.model.sources.files import read_state
from tiler.model.spec import ModelSpec
from tiler.model.weights import check_archive_size, network_from_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "TORCHSCRIPT_META",
    "open_checkpoint",
    "open_state_dict",
    "open_torchscript",
]

CHECKPOINT_FORMAT = "tiler-checkpoint"
CHECKPOINT_VERSION = 1
TORCHSCRIPT_META = "tiler.json"
"""The extra file of a TorchScript archive that holds tiler's metadata (spec, normalisation, class names)."""


def _read(path: Path) -> Mapping[str, Any]:
    data = read_state(path)
    if not isinstance(data, Mapping):
        raise ModelError(
            f"checkpoint {path} holds a {type(data).__name__}, not a state dict or tiler checkpoint; "
            f"save model.state_dict() or use tiler.model.checkpoint.save_checkpoint."
        )
    return data


def open_checkpoint(
    path: Path, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None = None, asked: str = "checkpoint"
) -> Opened:
    """Open a tiler checkpoint (or, detected, a plain state dict): its stored spec, normalisation and labels.

    The caller's spec, when it differs from the stored one, builds the network instead (the weights must fit it).

    Raises:
        ModelError: ``asked`` is ``checkpoint`` and the file is not one, its version is not this tiler's, a key is
            missing, or a stored field is malformed.

    """
    data = _read(path)
    if data.get("format") != CHECKPOINT_FORMAT:
        if asked == "checkpoint":
            raise ModelError(f"checkpoint {path} is not a tiler checkpoint (no format={CHECKPOINT_FORMAT!r} key).")
        return _plain(path, data, spec)
    version = data.get("version")
    if version != CHECKPOINT_VERSION:
        raise ModelError(
            f"checkpoint {path} has version={version!r}; this tiler reads version {CHECKPOINT_VERSION}. "
            f"Re-save it with this version of tiler."
        )
    for key in ("spec", "state_dict"):
        if key not in data:
            raise ModelError(f"checkpoint {path} misses key {key!r}; it is not a complete tiler checkpoint.")
    stored = ModelSpec.from_dict(data["spec"], source=f"checkpoint {path} spec")
    norm = Normalization.from_dict(
        data.get("normalization") or {"kind": "none"}, source=f"checkpoint {path} normalization"
    )
    names, colors = names_colors(stored, data.get("class_names"), data.get("class_colors"), source=f"checkpoint {path}")
    use = spec if spec is not None else stored
    return Opened(
        "checkpoint", use, lambda: network_from_state(data["state_dict"], use, path),
        partial(names_colors, use, source=f"checkpoint {path}"),
        normalization=lambda: norm, class_names=lambda: names, class_colors=colors,
    )  # fmt: skip


def open_state_dict(
    path: Path, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None = None, asked: str = "state_dict"
) -> Opened:
    """Open a plain state dict (or the ``state_dict`` entry of a training checkpoint) for the caller's spec.

    Raises:
        ModelError: No spec is given, or the file holds no mapping.

    """
    return _plain(path, _read(path), spec)


def _plain(path: Path, data: Mapping[str, Any], spec: ModelSpec | None) -> Opened:
    state = data.get("state_dict", data) if isinstance(data.get("state_dict"), Mapping) else data
    if spec is None:
        raise ModelError(
            f"checkpoint {path} is a plain state dict with no spec; pass spec=ModelSpec(architecture=..., "
            "spatial_dims=..., in_channels=..., out_channels=..., args=...) (the model section of the "
            "config)."
        )
    return Opened(
        "state_dict", spec, lambda: network_from_state(state, spec, path),
        partial(names_colors, spec, source=f"checkpoint {path}"),
    )  # fmt: skip


def open_torchscript(
    path: Path, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None = None, asked: str = "torchscript"
) -> Opened:
    """Load a TorchScript archive (this runs its compiled code: trusted files only) with its ``tiler.json``.

    Raises:
        ReadError: torch cannot load the archive.
        ModelError: The archive would inflate too far, or its metadata is malformed.

    """
    check_archive_size(path)
    extra = {TORCHSCRIPT_META: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise ReadError(f"TorchScript file {path} could not be loaded: {err}") from err
    module = module.eval()
    meta = _torchscript_meta(path, extra[TORCHSCRIPT_META])
    where = f"{path} {TORCHSCRIPT_META}"
    stored = ModelSpec.from_dict(meta["spec"], source=where) if meta.get("spec") else None
    use = spec or stored

    def labels(names: Any, colors: Any) -> Labels:
        check_names_colors(meta.get("class_names"), meta.get("class_colors"), source=where)
        return names_colors(use, names, colors, source=f"TorchScript file {path}")

    return Opened(
        "torchscript", use, lambda: module, labels,
        normalization=lambda: Normalization.from_dict(
            meta.get("normalization") or {"kind": "none"}, source=f"{where} normalization"
        ),
        class_names=lambda: meta.get("class_names"), class_colors=meta.get("class_colors"),
    )  # fmt: skip


def _torchscript_meta(path: Path, text: str | bytes) -> dict[str, Any]:
    """The ``tiler.json`` extra file of a TorchScript archive as a dict ({} when absent)."""
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelError(
            f"TorchScript file {path}: its {TORCHSCRIPT_META} is not JSON ({err}); re-save it with "
            "tiler.model.checkpoint.save_torchscript, or give model.spec in the config."
        ) from None
    if not isinstance(meta, dict):
        raise ModelError(
            f"TorchScript file {path}: its {TORCHSCRIPT_META} holds a {type(meta).__name__}, not an object with keys "
            "spec, normalization, class_names, class_colors; re-save it with tiler.model.checkpoint.save_torchscript."
        )
    return meta
